"""HTTP/1.1 message readers over httptools (llhttp), without I/O.

``RequestReader`` and ``ResponseReader`` are mixins whose methods are httptools'
callbacks. They turn the callbacks into one ``Request``/``Response`` object per
message plus body chunks, enforce size limits, and drop hop-by-hop headers while
the headers stream past (RFC 9110 §7.6.1), so nothing walks the header list twice.
A driver (server/ or client/) subclasses one and implements the ``*_received``
hooks; it feeds bytes with ``feed`` and gets ``ProtocolError`` (with the HTTP
status to answer) for anything malformed.

llhttp is strict by default and already rejects the request smuggling shapes:
Content-Length with Transfer-Encoding, duplicate Content-Length, obs-fold, bad
chunk sizes, bare LF. We add the limits it does not have (head size, header count,
body size) and refuse transfer codings other than ``chunked`` (RFC 9112 §6.1, 501).
"""

from __future__ import annotations

import httptools

from ...errors import ProtocolError, RemoteProtocolError, Source
from ._message import Headers, Request, Response

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
    }
)
"""Headers that never cross the proxy as-is. Content-Length and Expect are rebuilt
by the writer from the framing it chooses."""

_TOKEN_SPLIT = b","
_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0", "0.9": b"1.0"}
_PLAIN_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade", b""})


def _upstream_error(text: str) -> RemoteProtocolError:
    return RemoteProtocolError(text, status_hint=502, source=Source.UPSTREAM)


class RequestReader:
    """httptools callbacks for requests. Subclass and implement the hooks.

    Hooks: ``request_received(req, has_body, content_length)``; ``body_received(data)``;
    ``request_complete()``. ``has_body`` is True for chunked or Content-Length > 0
    bodies; ``content_length`` is None for chunked.
    """

    max_header_bytes = 32768
    max_headers = 100
    max_body_bytes = 0

    def reader_init(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._in_head = True
        self._head_bytes = 0
        self._url = b""
        self._raw: list[tuple[bytes, bytes]] = []
        self._host: bytes | None = None
        self._conn_tokens: bytes | None = None
        self._cl: int | None = None
        self._chunked = False
        self._expect = False
        self._upgrade: bytes | None = None
        self._body_seen = 0

    # -- feeding -----------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse ``data``. Raises ProtocolError (status_hint 400/413/431/501)."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # Upgrades (WebSocket, h2c) are not tunnelled by this reader: the request is
            # served as plain HTTP without its Upgrade header, and parsing continues on
            # a fresh parser from where llhttp stopped.
            offset = exc.args[0] if exc.args else len(data)
            self._parser = httptools.HttpRequestParser(self)
            if offset < len(data):
                self.feed(data[offset:])
        except httptools.HttpParserCallbackError as exc:
            inner = exc.__context__
            if isinstance(inner, ProtocolError):
                raise inner from None
            raise
        except httptools.HttpParserError as exc:
            raise RemoteProtocolError(f"malformed request: {exc}", status_hint=400, source=Source.DOWNSTREAM) from None
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                raise RemoteProtocolError("request head too large", status_hint=431, source=Source.DOWNSTREAM)

    # -- httptools callbacks ---------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._url = b""
        self._raw = []
        self._host = None
        self._conn_tokens = None
        self._cl = None
        self._chunked = False
        self._expect = False
        self._upgrade = None
        self._body_seen = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        raw = self._raw
        if len(raw) >= self.max_headers:
            raise RemoteProtocolError("too many headers", status_hint=431, source=Source.DOWNSTREAM)
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"content-length":
                self._cl = int(value)
            elif lname == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    raise RemoteProtocolError("unsupported transfer coding", status_hint=501, source=Source.DOWNSTREAM)
                self._chunked = True
            elif lname == b"connection":
                self._conn_tokens = (
                    value.lower() if self._conn_tokens is None else (self._conn_tokens + b"," + value.lower())
                )
            elif lname == b"expect":
                if value.strip().lower() != b"100-continue":
                    raise RemoteProtocolError("unsupported expectation", status_hint=417, source=Source.DOWNSTREAM)
                self._expect = True
            elif lname == b"upgrade":
                self._upgrade = value
            return
        if lname == b"host":
            if self._host is not None:
                raise RemoteProtocolError("duplicate Host header", status_hint=400, source=Source.DOWNSTREAM)
            self._host = value
        raw.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        version = _VERSIONS.get(parser.get_http_version(), b"1.1")
        keep_alive = parser.should_keep_alive()
        raw = self._raw
        tokens = self._conn_tokens
        if tokens is not None:
            _drop_connection_listed(raw, tokens)
        host = self._host
        if host is None:
            if version == b"1.1":
                raise RemoteProtocolError("missing Host header", status_hint=400, source=Source.DOWNSTREAM)
            lhost = b""
        else:
            lhost = _host_only(host)
        cl = self._cl
        limit = self.max_body_bytes
        if limit and cl is not None and cl > limit:
            raise RemoteProtocolError("request body too large", status_hint=413, source=Source.DOWNSTREAM)
        has_body = self._chunked or bool(cl)
        req = Request(
            parser.get_method(),
            self._url,
            Headers(raw),
            version=version,
            host=lhost,
            raw_host=host,
            keep_alive=keep_alive,
            expect_continue=self._expect and has_body and version == b"1.1",
            upgrade=self._upgrade,
        )
        self.request_received(req, has_body, None if self._chunked else cl)

    def on_body(self, body: bytes) -> None:
        limit = self.max_body_bytes
        if limit:
            self._body_seen += len(body)
            if self._body_seen > limit:
                raise RemoteProtocolError("request body too large", status_hint=413, source=Source.DOWNSTREAM)
        self.body_received(body)

    def on_message_complete(self) -> None:
        self.request_complete()

    # -- hooks -------------------------------------------------------------------

    def request_received(self, req: Request, has_body: bool, content_length: int | None) -> None:
        raise NotImplementedError

    def body_received(self, data: bytes) -> None:
        raise NotImplementedError

    def request_complete(self) -> None:
        raise NotImplementedError


class ResponseReader:
    """httptools callbacks for responses from an upstream. Subclass and implement hooks.

    Hooks: ``response_received(resp, has_body)``; ``body_received(data)``;
    ``response_complete()``. The driver must set ``expect_no_body`` before a HEAD
    request's response arrives: llhttp cannot know a HEAD response has no body.
    """

    max_header_bytes = 65536
    max_headers = 200

    def reader_init(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.expect_no_body = False
        self._in_head = True
        self._head_bytes = 0
        self._raw: list[tuple[bytes, bytes]] = []
        self._conn_tokens: bytes | None = None
        self._cl: int | None = None
        self._chunked = False
        self._reason = b""
        self._interim = False
        self._ignore = False

    def feed(self, data: bytes) -> None:
        """Parse ``data``. Raises RemoteProtocolError (status_hint 502)."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            inner = exc.__context__
            if isinstance(inner, ProtocolError):
                raise inner from None
            raise
        except httptools.HttpParserError as exc:
            raise _upstream_error(f"malformed response from upstream: {exc}") from None
        finally:
            self._ignore = False
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                raise _upstream_error("upstream response head too large")

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._raw = []
        self._conn_tokens = None
        self._cl = None
        self._chunked = False
        self._reason = b""
        self._interim = False

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        raw = self._raw
        if len(raw) >= self.max_headers:
            raise _upstream_error("too many headers in upstream response")
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"content-length":
                self._cl = int(value)
            elif lname == b"transfer-encoding":
                self._chunked = True
            elif lname == b"connection":
                self._conn_tokens = (
                    value.lower() if self._conn_tokens is None else (self._conn_tokens + b"," + value.lower())
                )
            return
        raw.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # Interim responses (100, 103) are not forwarded; llhttp treats them as
            # complete messages and goes on to the final response.
            self._interim = True
            return
        version = _VERSIONS.get(parser.get_http_version(), b"1.1")
        tokens = self._conn_tokens
        if version == b"1.1":
            keep_alive = tokens is None or b"close" not in tokens
        else:
            keep_alive = tokens is not None and b"keep-alive" in tokens
        raw = self._raw
        if tokens is not None:
            _drop_connection_listed(raw, tokens)
        no_body = self.expect_no_body or status in (204, 304)
        cl = None if self._chunked else self._cl
        if cl is None and not self._chunked and not no_body:
            # Delimited by close: the connection cannot be reused.
            keep_alive = False
        resp = Response(
            status,
            Headers(raw),
            reason=self._reason,
            version=version,
            content_length=cl,
            keep_alive=keep_alive,
        )
        has_body = not no_body and (self._chunked or cl is None or cl > 0)
        self.response_received(resp, has_body)
        if self.expect_no_body and status not in (204, 304):
            # A HEAD response announces a body it does not carry and llhttp would wait
            # for it: finish here and give the next response a fresh parser. Whatever
            # the old parser still reports from this buffer is ignored.
            self.expect_no_body = False
            self._parser = httptools.HttpResponseParser(self)
            self._ignore = True
            self.response_complete()

    def on_body(self, body: bytes) -> None:
        if not self._ignore:
            self.body_received(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif not self._ignore:
            self.expect_no_body = False
            self.response_complete()

    def response_received(self, resp: Response, has_body: bool) -> None:
        raise NotImplementedError

    def body_received(self, data: bytes) -> None:
        raise NotImplementedError

    def response_complete(self) -> None:
        raise NotImplementedError


def _host_only(host: bytes) -> bytes:
    """Lowercased host without port: b"Example.com:8080" -> b"example.com"."""
    if host.startswith(b"["):
        return host[: host.find(b"]") + 1].lower()
    colon = host.rfind(b":")
    return (host[:colon] if colon >= 0 else host).lower()


def _drop_connection_listed(raw: list[tuple[bytes, bytes]], tokens: bytes) -> None:
    """Remove headers named in Connection (RFC 9110 §7.6.1), besides the usual ones."""
    if tokens in _PLAIN_TOKENS:
        return
    names = {t.strip() for t in tokens.split(_TOKEN_SPLIT)} - _PLAIN_TOKENS
    if names:
        raw[:] = [(n, v) for n, v in raw if n.lower() not in names]
