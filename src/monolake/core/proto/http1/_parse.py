"""HTTP/1.1 message readers over httptools (llhttp), without I/O.

``RequestReader`` and ``ResponseReader`` are mixins whose methods are httptools'
callbacks. They turn the callbacks into one ``Request``/``Response`` object per
message plus body chunks, enforce size limits, and set hop-by-hop headers apart
while the headers stream past (RFC 9110 §7.6.1), so nothing walks the header list
twice: a message's ``headers`` hold the end-to-end fields, its ``hop_headers`` the
others (hop-by-hop, framing, and those named in Connection). Not forwarding them is
the proxy's part: it sends ``headers`` on and leaves ``hop_headers`` behind; a
service answering itself may read them (Proxy-Authorization, TE, Connection...).
A driver (server/ or client/) subclasses one and implements the ``*_received``
hooks; it feeds bytes with ``feed`` and gets ``ProtocolError`` (with the HTTP
status to answer) for anything malformed.

llhttp is strict by default and already rejects the request smuggling shapes:
Content-Length with Transfer-Encoding, duplicate Content-Length, obs-fold, bad
chunk sizes, bare LF. We add the limits it does not have (request line length, 414;
head size and header count, 431; body size, 413), refuse transfer codings other than
``chunked`` (RFC 9112 §6.1, 501) and any Transfer-Encoding in an HTTP/1.0 request
(§6.1: faulty framing, 400), answer versions other than HTTP/1.x with 505, and
check the Host field's syntax (RFC 9110 §7.2, RFC 3986 §3.2.2: one host, an
optional port; 400), so an odd one never reaches routing or X-Forwarded-Host.

Time is the driver's: ``feed(data, now)`` takes its clock reading and the reader
notes in ``head_since`` when the head still incomplete after a feed began, so a
driver can enforce a deadline on the whole head (see ``server._http``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import httptools

from ..._compiled import mypyc_attr
from ...errors import ProtocolError, RemoteProtocolError, Source
from ..http._message import Headers, Request, Response, parse_block

if TYPE_CHECKING:
    from ._h1req import Head
_Scanned = tuple[int, int, bytes, bytes, bytes, int, list[tuple[bytes, bytes]] | None]


def _native_response_scan() -> Callable[[bytes, int, int, int], _Scanned | None] | None:
    try:
        from . import _h1resp
    except ImportError:  # built without it (no C compiler at install): llhttp parses every response head
        return None
    return _h1resp.scan


# Final: compiled, a C static read, not a module dict lookup per response.
_scan_head: Final = _native_response_scan()

HOP_BY_HOP: Final = frozenset(
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

_TOKEN_SPLIT: Final = b","
_CHUNKED_HEAD: Final = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
"""What llhttp is fed in place of a chunked response's head read natively: the same framing."""
_HOP_SPLIT: Final = re.compile(
    rb"\n(c(?:onnection|ontent-length)|t(?:ransfer-encoding|e|railer)|keep-alive"
    rb"|proxy-(?:connection|authenticate|authorization)|upgrade)([ \t]*):([^\n]*)"
)
"""A hop-by-hop line in a lowercased block with a newline put in front, without its own line
end: the next line's leading newline stays for the next match. The pattern starts with a
literal, so sre jumps from line start to line start."""


def _cut_hop_by_hop(nblock: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Remove hop-by-hop lines from a validated header block given with a newline in front
    (the status line's LF: sliced from the buffer, no concatenation); return the block without
    that newline and those lines, and the removed (lowercased name, value) pairs."""
    # One split call, no match object: [text, name, ws, value, text, name, ws, value, text...].
    # Offsets in the lowered copy are those of ``nblock``, which gives back the original case.
    parts = _HOP_SPLIT.split(nblock.lower())
    n = len(parts)
    if n == 1:
        return nblock[1:], []
    found = []
    kept = []
    at = len(parts[0])
    # Each kept piece is newline + lines; the first one kept loses its newline (``skip``).
    skip = 1
    if at > 1:
        kept.append(nblock[1:at])
        skip = 0
    i = 1
    while i < n:
        name = parts[i]
        vstart = at + len(name) + len(parts[i + 1]) + 2
        at = vstart + len(parts[i + 2])
        found.append((name, nblock[vstart:at].strip(b" \t\r")))
        size = len(parts[i + 3])
        if size > skip:
            kept.append(nblock[at + skip : at + size])
            skip = 0
        at += size
        i += 4
    return b"".join(kept), found


_REQUEST_SPECIAL: Final = HOP_BY_HOP | {b"host"}
_HOST: Final = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+;=]+)(?::[0-9]*)?")
"""A Host value (RFC 9110 §7.2): uri-host [":" port], the host an IP-literal (without
zone or IPvFuture) or a reg-name / IPv4address. A comma is a sub-delim in RFC 3986
but here it means two values folded into one, so it is refused with them."""
_REG_NAME_CHARS: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+;="
"""The reg-name characters of ``_HOST``: a Host of only these (the common one, without a port)
needs no regex."""
_OWS: Final = (32, 9)
_EMPTY_LINE_START: Final = (b"\r", b"\n")
_VERSIONS: Final = {"1.1": b"1.1", "1.0": b"1.0", "0.9": b"1.0"}
_PLAIN_TOKENS: Final = frozenset({b"close", b"keep-alive", b"upgrade", b""})


_LOWERED: Final[dict[bytes, bytes]] = {}
"""Field names as sent -> lowercased, for the first ``_LOWERED_MAX`` names (of up to 64 bytes) a worker sees: a
client sends the same few names in every request, and a lookup (the lowered name shared, its
hash already known for the set and list searches after it) costs less than ``lower()``. Names
past the bound are lowered per field, as before it."""
_LOWERED_MAX: Final = 512


def _lowered(name: bytes) -> bytes:
    lname = name.lower()
    if len(_LOWERED) < _LOWERED_MAX and len(name) <= 64:
        _LOWERED[name] = lname
    return lname


def _native_scan() -> Callable[[bytes, int, int, int, int], Head | None] | None:
    try:
        from ._h1req import scan_head
    except ImportError:  # not built (no C compiler at install): llhttp parses every head
        return None
    return scan_head


_SCAN: Final = _native_scan()
"""The one-pass scan of a common request head (_h1req.c), or None."""


def _request_version(parser: Any) -> bytes:
    version = _VERSIONS.get(parser.get_http_version())
    if version is None:
        # llhttp takes HTTP/2.0 (and refuses 3.0, 1.2): only 1.x is served here (RFC 9110 §15.6.6).
        raise RemoteProtocolError("HTTP version not supported", status_hint=505, source=Source.DOWNSTREAM)
    return version


def _upstream_error(text: str) -> RemoteProtocolError:
    return RemoteProtocolError(text, status_hint=502, source=Source.UPSTREAM)


@mypyc_attr(allow_interpreted_subclasses=True)  # a base for drivers, and tests' recorders
class RequestReader:
    """httptools callbacks for requests. Subclass and implement the hooks.

    Hooks: ``request_received(req, has_body, content_length)``; ``body_received(data)``;
    ``request_complete()``. ``has_body`` is True for chunked or Content-Length > 0
    bodies; ``content_length`` is None for chunked.

    Heads in one pass: at a message boundary, a request head of the common shape is read by
    one C call (``_h1req.scan_head``: no Python callback per field) and a Content-Length
    body after it is framed here, without llhttp; anything else (an unusual or malformed
    head, one split across reads, chunked bodies...) is fed to llhttp from the message's
    start, as before. The scan accepts only what llhttp accepts and builds the same
    objects, so the hooks cannot tell the two apart. ``native_heads = False`` (or the
    module not built) parses every head with llhttp.

    Tunnels: a driver that sets ``tunnels`` gets CONNECT requests (else 405) and
    upgrade requests (Upgrade listed in Connection, no body) with ``req.upgrade``
    set (b"CONNECT" for CONNECT), and reading stops after such a head: what follows
    goes to ``switch_held(req, rest)`` unparsed, and the driver feeds it again only
    if the request is answered without switching. Other requests that name an
    Upgrade get ``req.upgrade = None``: they are served as plain HTTP. Without
    ``tunnels``, an upgrade request is served as plain HTTP and parsing goes on.
    """

    max_header_bytes = 32768
    max_request_line_bytes = 8192
    max_headers = 100
    max_body_bytes = 0
    tunnels = False
    native_heads = True

    def reader_init(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._scan = _SCAN if self.native_heads else None
        self._idle = True
        """llhttp is between messages (nothing of the next one fed) and keeps the connection:
        a head may be scanned natively."""
        self.head_since = 0.0
        """The ``now`` of the feed in which the incomplete head began (valid while ``_in_head``
        and ``_head_bytes``)."""
        self._in_head = True
        self._began = self._ended = False
        self._head_bytes = 0
        self._nhop = 0
        self._hop: list[tuple[bytes, bytes]] | None = None
        self._lower: list[bytes] = []
        self._cur = 0
        self._url = b""
        self._raw: list[tuple[bytes, bytes]] = []
        self._host: bytes | None = None
        self._conn_tokens: bytes | None = None
        self._cl: int | None = None
        self._chunked = False
        self._expect = False
        self._upgrade: bytes | None = None
        self._body_seen = 0
        self._passthrough = 0
        self._skip_complete = False
        self._switch_req: Request | None = None

    # -- feeding -----------------------------------------------------------

    def feed(self, data: bytes, now: float = 0.0) -> None:
        """Parse ``data``, read at time ``now`` (the driver's clock; only stored, in
        ``head_since``). Raises ProtocolError (status_hint 400/405/413/414/431/501/505)."""
        size = self._cur = len(data)
        self._began = self._ended = False
        while data:
            if self._passthrough:
                data = self._feed_passthrough(data)
                continue
            scan = self._scan
            if scan is not None and self._idle:
                pos = 0
                n = len(data)
                while pos < n:
                    head = scan(data, pos, self.max_request_line_bytes, self.max_header_bytes, self.max_headers)
                    if head is None:
                        break
                    limit = self.max_body_bytes
                    if limit and head[9] > limit:
                        break  # llhttp's path answers 413, after the checks that come first
                    pos = self._native_request(head, data)
                if pos:
                    data = data[pos:] if pos < n else b""
                    if not data or self._passthrough:
                        continue
                # a head the scan declined: llhttp parses it from its first byte
            try:
                self._parser.feed_data(data)
                data = b""
            except httptools.HttpParserUpgrade as exc:
                # Upgrades (WebSocket, h2c) are not tunnelled by this reader: the request
                # is served as plain HTTP without its Upgrade header, and parsing goes on
                # with a fresh parser from where llhttp stopped (after the request's
                # Content-Length body, which llhttp skipped: see on_headers_complete).
                offset = exc.args[0] if exc.args else len(data)
                self._parser = httptools.HttpRequestParser(self)
                self._idle = True
                data = data[offset:]
                held = self._switch_req
                if held is not None:
                    self._switch_req = None
                    self.switch_held(held, data)
                    return
            except httptools.HttpParserCallbackError as exc:
                inner = exc.__context__
                if isinstance(inner, ProtocolError):
                    raise inner from None
                raise
            except httptools.HttpParserError as exc:
                raise RemoteProtocolError(
                    f"malformed request: {exc}", status_hint=400, source=Source.DOWNSTREAM
                ) from None
        if self._in_head:
            # A head still incomplete after this feed: count what it has taken so far.
            # When it began after another message ended within this feed, only its
            # complete lines are known; the partial one is bounded by one read's size.
            if self._began or not self._head_bytes:
                self.head_since = now
            if not self._began:
                self._head_bytes += size
            elif self._ended:
                self._head_bytes = len(self._url) + sum(len(n) + len(v) + 4 for n, v in self._raw)
            else:
                self._head_bytes = size
            if self._head_bytes > self.max_header_bytes:
                raise RemoteProtocolError("request head too large", status_hint=431, source=Source.DOWNSTREAM)

    def _feed_passthrough(self, data: bytes) -> bytes:
        n = self._passthrough
        piece, rest = (data, b"") if len(data) <= n else (data[:n], data[n:])
        self._passthrough -= len(piece)
        self.on_body(piece)
        if not self._passthrough:
            self._ended = True
            self.request_complete()
        return rest

    def _native_request(self, head: Head, data: bytes) -> int:
        """A head ``scan_head`` read from ``data``, and the Content-Length body after it (the
        rest of it is passed through by later feeds); returns where the next message starts."""
        end, method, target, version, raw, lower, hop, host, lhost, cl, expect = head
        self._in_head = False
        self._body_seen = 0
        has_body = cl > 0
        req = Request(
            method,
            target,
            Headers(raw, lower=lower),
            version=version,
            host=lhost,
            raw_host=host,
            keep_alive=True,
            expect_continue=expect and has_body and version == b"1.1",
        )
        if hop is not None:
            req.hop_headers = hop
        if not has_body:
            self.request_received(req, False, None if cl < 0 else cl)
            self._ended = True
            self.request_complete()
            return end
        self.request_received(req, True, cl)
        n = len(data)
        if n - end >= cl:
            self.body_received(data[end : end + cl])
            self._ended = True
            self.request_complete()
            return end + cl
        if n > end:
            self.on_body(data[end:])
        self._passthrough = cl - (n - end)
        return n

    # -- httptools callbacks ---------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._idle = False
        self._began = True
        self._head_bytes = 0
        self._nhop = 0
        self._hop = None
        self._url = b""
        self._raw = []
        self._lower = []
        self._host = None
        self._conn_tokens = None
        self._cl = None
        self._chunked = False
        self._expect = False
        self._upgrade = None
        self._body_seen = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        # The line is method SP target SP HTTP/x.y (CRLF not counted); llhttp may hand the
        # target over in pieces, one per feed, so this runs as it grows. The method is
        # looked at only near the limit (llhttp's longest method has fewer than 22 letters).
        limit = self.max_request_line_bytes
        if len(self._url) > limit - 32 and len(self._parser.get_method()) + len(self._url) + 10 > limit:
            raise RemoteProtocolError("request line too long", status_hint=414, source=Source.DOWNSTREAM)

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = _LOWERED.get(name)
        if lname is None:
            lname = _lowered(name)
        if lname in _REQUEST_SPECIAL:
            self._special(name, lname, value)
        elif self._in_head:
            if value and value[-1] in _OWS:
                value = value.rstrip(b" \t")  # RFC 9110 §5.5: OWS is not part of the value
            self._raw.append((name, value))
            self._lower.append(lname)
        # else: a trailer field of a chunked body; trailers are not forwarded

    def _special(self, name: bytes, lname: bytes, value: bytes) -> None:
        if not self._in_head:
            return
        if lname == b"host":
            if self._host is not None:
                raise RemoteProtocolError("duplicate Host header", status_hint=400, source=Source.DOWNSTREAM)
            self._host = value.rstrip(b" \t")  # RFC 9110 §5.5: OWS is not part of the value
            self._raw.append((name, self._host))
            self._lower.append(b"host")
            return
        self._nhop += 1
        if value and value[-1] in _OWS:
            value = value.rstrip(b" \t")
        hop = self._hop
        if hop is None:
            self._hop = [(lname, value)]
        else:
            hop.append((lname, value))
        if lname == b"content-length":
            self._cl = int(value)
        elif lname == b"transfer-encoding":
            if self._parser.get_http_version() != "1.1":
                # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing;
                # a 1.0 peer may not know chunked, and what it sends after could ride as a request.
                raise RemoteProtocolError(
                    "Transfer-Encoding in an HTTP/1.0 request", status_hint=400, source=Source.DOWNSTREAM
                )
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
        # other hop-by-hop fields are dropped

    def on_headers_complete(self) -> None:
        self._in_head = False
        raw = self._raw
        if len(raw) + self._nhop > self.max_headers:
            raise RemoteProtocolError("too many headers", status_hint=431, source=Source.DOWNSTREAM)
        fed = self._cur + (0 if self._began else self._head_bytes)
        if fed > self.max_header_bytes:
            # The bytes fed since this head began may include a previous message's tail;
            # only then is the exact size worth counting.
            size = len(self._url) + sum(len(n) + len(v) + 4 for n, v in raw)
            if size > self.max_header_bytes:
                raise RemoteProtocolError("request head too large", status_hint=431, source=Source.DOWNSTREAM)
        parser = self._parser
        keep_alive = parser.should_keep_alive()
        tokens = self._conn_tokens
        # llhttp takes only 0.9, 1.0, 1.1 and 2.0, and keeps a request without a Connection field
        # alive only for 1.1: the common request's version without get_http_version(), which
        # formats a str per call.
        version = b"1.1" if keep_alive and tokens is None else _request_version(parser)
        method = parser.get_method()
        if method == b"CONNECT":
            self._connect_received()
            return
        headers = Headers(raw, lower=self._lower)
        if tokens is not None and tokens not in _PLAIN_TOKENS:
            self._hop = _take_connection_listed(headers, tokens, self._hop)
        host = self._host
        if host is None:
            if version == b"1.1":
                raise RemoteProtocolError("missing Host header", status_hint=400, source=Source.DOWNSTREAM)
            lhost = b""
        elif host and not host.translate(None, _REG_NAME_CHARS):
            lhost = host.lower()
        else:
            m = _HOST.fullmatch(host)
            if m is None:
                # Empty included: RFC 9112 §3.2 allows it only for a target without an authority,
                # which no route serves; nginx answers 400 too.
                raise RemoteProtocolError("invalid Host header", status_hint=400, source=Source.DOWNSTREAM)
            lhost = m.group(1).lower()
        cl = self._cl
        limit = self.max_body_bytes
        if limit and cl is not None and cl > limit:
            raise RemoteProtocolError("request body too large", status_hint=413, source=Source.DOWNSTREAM)
        has_body = self._chunked or bool(cl)
        if has_body and parser.should_upgrade():
            # llhttp will skip the body of an upgrade request and stop; we pass a
            # Content-Length body through ourselves (feed) and end the message there.
            if self._chunked:
                raise RemoteProtocolError(
                    "chunked body on an Upgrade request is not supported", status_hint=501, source=Source.DOWNSTREAM
                )
            self._passthrough = cl or 0
            self._skip_complete = True
        upgrade = self._upgrade
        switch = False
        if upgrade is not None and self.tunnels:
            # Only a real upgrade request (RFC 9110 §7.8: Upgrade listed in Connection) is held.
            # Not h2c (deprecated, RFC 9113 §3.1): it names this hop only, so it is answered over
            # HTTP/1.1 (HTTP/2 is served to clients that start with the preface).
            switch = not has_body and parser.should_upgrade() and upgrade.strip().lower() != b"h2c"
            if not switch:
                upgrade = None
        req = Request(
            method,
            self._url,
            headers,
            version=version,
            host=lhost,
            raw_host=host,
            keep_alive=keep_alive,
            expect_continue=self._expect and has_body and version == b"1.1",
            upgrade=upgrade,
        )
        if self._hop is not None:
            req.hop_headers = self._hop
        if switch:
            self._switch_req = req
        self.request_received(req, has_body, None if self._chunked else cl)

    def _connect_received(self) -> None:
        """A CONNECT head (RFC 9110 §9.3.6): the target is authority-form, host:port."""
        if not self.tunnels:
            raise RemoteProtocolError("CONNECT is not enabled", status_hint=405, source=Source.DOWNSTREAM)
        if self._chunked or self._cl:
            raise RemoteProtocolError("CONNECT with a body", status_hint=400, source=Source.DOWNSTREAM)
        url = self._url
        if not url or url.startswith(b"/") or b":" not in url:
            raise RemoteProtocolError("CONNECT target must be host:port", status_hint=400, source=Source.DOWNSTREAM)
        parser = self._parser
        version = _VERSIONS.get(parser.get_http_version(), b"1.1")
        if self._host is None and version == b"1.1":
            raise RemoteProtocolError("missing Host header", status_hint=400, source=Source.DOWNSTREAM)
        if self._host is not None and _HOST.fullmatch(self._host) is None:
            raise RemoteProtocolError("invalid Host header", status_hint=400, source=Source.DOWNSTREAM)
        req = Request(
            b"CONNECT",
            url,
            Headers(self._raw, lower=self._lower),
            version=version,
            host=_host_only(url),
            raw_host=self._host,
            keep_alive=parser.should_keep_alive(),
            upgrade=b"CONNECT",
        )
        # Routes match a path; an authority-form target has none, so CONNECT matches as "/".
        req.path = b"/"
        if self._hop is not None:
            req.hop_headers = self._hop
        self._switch_req = req
        self.request_received(req, False, None)

    def on_body(self, body: bytes) -> None:
        limit = self.max_body_bytes
        if limit:
            self._body_seen += len(body)
            if self._body_seen > limit:
                raise RemoteProtocolError("request body too large", status_hint=413, source=Source.DOWNSTREAM)
        self.body_received(body)

    def on_message_complete(self) -> None:
        self._ended = True
        # After a message that does not keep the connection llhttp refuses what follows: it
        # parses that too, for the same error.
        self._idle = self._parser.should_keep_alive()
        if self._skip_complete:
            self._skip_complete = False
            return
        self.request_complete()

    # -- hooks -------------------------------------------------------------------

    def request_received(self, req: Request, has_body: bool, content_length: int | None) -> None:
        raise NotImplementedError

    def body_received(self, data: bytes) -> None:
        raise NotImplementedError

    def request_complete(self) -> None:
        raise NotImplementedError

    def switch_held(self, req: Request, rest: bytes) -> None:
        """Reading stopped after ``req``'s head (only with ``tunnels``); ``rest`` followed it."""
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)  # a base for drivers, and tests' recorders
class ResponseReader:
    """Response reader for upstream responses. Subclass and implement the hooks.

    Hooks: ``response_received(resp, has_body)``; ``body_received(data)``;
    ``response_complete()``. The driver must set ``expect_no_body`` before a HEAD
    request's response arrives: llhttp cannot know a HEAD response has no body.

    Protocol switches: with ``expect_switch`` set (the request asked to upgrade), a
    101 is handed to ``response_received`` without a body and with ``switch_token``
    set to its Upgrade value; the response is never completed, and the bytes after
    its head go to ``protocol_switched(rest)``; the reader must not be fed again.
    Without ``expect_switch`` a 101 is a RemoteProtocolError.

    llhttp validates and frames the message, but no Python callback runs per header:
    when the head is complete, the head block is cut from the bytes fed (a response
    starts where the previous one ended: upstreams get one request at a time), the
    hop-by-hop lines are removed with one regex split, and the rest is kept as the
    Headers' wire block, parsed into pairs only if something looks at them.

    The common response is read without llhttp (``native_heads``, when the C module
    ``_h1resp`` is built): at a message boundary, a whole head in the bytes fed, of the
    plain shape (see _h1resp.c: never wider than what llhttp accepts) is scanned in one
    native pass that gives the same block and hop-by-hop fields; a body framed by
    Content-Length is sliced off by length, a chunked one goes to llhttp behind a stand-in
    head (its head callback then does nothing). Anything else (a head split across reads,
    close-delimited, 1xx, odd or bad input) goes to llhttp from the message's start, as
    before.
    """

    max_header_bytes = 65536
    max_headers = 200

    def reader_init(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.expect_no_body = False
        self._in_head = False
        self._buf = b""
        self._pos = 0
        self._carry = b""
        self._interim = False
        self._ignore = False
        self._tail = b""
        self._head_here = False
        self._body_here = 0
        self._length: int | None = 0
        self._chunked = False
        self.expect_switch = False
        self.switch_token: bytes | None = None
        self.native_heads = _scan_head is not None
        """Whether common heads are scanned natively (False: llhttp parses every one)."""
        self._boundary = True
        """llhttp is between messages (a fresh or kept-alive parser) and holds no partial head."""
        self._body_left = 0
        """Bytes still due of a body framed here (not by llhttp)."""
        self._stand_in = False
        """llhttp is being fed ``_CHUNKED_HEAD`` for a head already read natively."""

    def feed(self, data: bytes) -> None:
        """Parse ``data``. Raises RemoteProtocolError (status_hint 502)."""
        if self._body_left:
            data = self._rest_of_body(data)
        if self._boundary and self.native_heads and data and not self.expect_switch:
            data = self._native(data)
        while self.expect_no_body and data:
            # A HEAD response: feed exactly up to the end of its head, so that bytes after
            # it (a misbehaving upstream's next response) reach a fresh parser.
            probe = self._tail + data
            end = probe.find(b"\r\n\r\n")
            if end < 0:
                self._tail = probe[-3:]
                break
            cut = end + 4 - len(self._tail)
            self._tail = b""
            self._feed(data[:cut])
            data = data[cut:]
        if data:
            self._feed(data)

    def _native(self, data: bytes) -> bytes:
        """Read the common responses at the start of ``data`` (see the class docstring); return
        what is left for llhttp, from the start of the first response not taken."""
        scan = _scan_head
        assert scan is not None
        pos = 0
        n = len(data)
        while pos < n:
            found = scan(data, pos, self.max_headers, self.max_header_bytes)
            if found is None:
                break
            end, status, reason, version, block, cl, hop = found
            no_body = self.expect_no_body or status == 204 or status == 304
            if cl == -1 and not no_body:
                break  # delimited by close: llhttp
            self.expect_no_body = False
            resp = Response(status, Headers(block=block), None, reason, version, cl if cl >= 0 else None, True)
            if hop is not None:
                resp.hop_headers = hop
            chunked = cl == -2 and not no_body
            has_body = chunked or (cl > 0 and not no_body)
            self._chunked = chunked
            self.response_received(resp, has_body)
            if chunked:
                # llhttp frames the chunks: it gets a stand-in head (the same framing) and the
                # body, and completes the message. As after any chunked body, where a next
                # response would start is not tracked.
                self._length = None
                self._stand_in = True
                self._feed(_CHUNKED_HEAD)
                return data[end:]
            if not has_body:
                pos = end
                self.response_complete()
            elif n - end >= cl:
                pos = end + cl
                self.body_received(data[end:pos])
                self.response_complete()
            else:
                self._boundary = False
                self._body_left = cl - (n - end)
                if n > end:
                    self.body_received(data[end:])
                return b""
        return data[pos:] if pos else data

    def _rest_of_body(self, data: bytes) -> bytes:
        """More of a body framed by ``_native``: handed on as it came, sliced only where it ends."""
        left = self._body_left
        if len(data) < left:
            self._body_left = left - len(data)
            self.body_received(data)
            return b""
        self._body_left = 0
        self._boundary = True
        self.body_received(data if len(data) == left else data[:left])
        self.response_complete()
        return data[left:] if len(data) > left else b""

    def _feed(self, data: bytes) -> None:
        carry = self._carry
        self._buf = carry + data if carry else data
        if not carry:
            self._pos = 0
        self._head_here = False
        self._body_here = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.switch_token is None:
                raise _upstream_error("unexpected protocol switch (101) from upstream") from None
            self.protocol_switched(data[exc.args[0] if exc.args else len(data) :])
            return
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
            pos = self._pos
            if pos < 0:
                raise _upstream_error("upstream sent data after a complete response")
            self._carry = self._buf[pos:] if pos else self._buf
            self._pos = 0
            if len(self._carry) > self.max_header_bytes:
                raise _upstream_error("upstream response head too large")
        else:
            self._carry = b""
        self._buf = b""

    def on_message_begin(self) -> None:
        self._in_head = True
        self._boundary = False

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._stand_in:
            self._stand_in = False
            self._head_here = True
            self._body_here = 0
            return
        buf = self._buf
        pos = self._pos
        # (Bytes compared by index: compiled, a method call each would cost more.)
        if 0 <= pos < len(buf) and (buf[pos] == 13 or buf[pos] == 10):
            # llhttp skips empty lines before a status line (RFC 9112 §2.2); so do we.
            while buf.startswith(_EMPTY_LINE_START, pos):
                pos += 1
        end = buf.find(b"\r\n\r\n", pos) if pos >= 0 else -1
        if end < 0:
            raise _upstream_error("malformed response head from upstream")
        if end + 4 - pos > self.max_header_bytes:
            raise _upstream_error("upstream response head too large")
        line_end = buf.find(b"\r\n", pos)
        self._pos = end + 4
        parser = self._parser
        status = parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                self._switched(buf[line_end + 1 : end + 2], _reason(buf, pos, line_end), parser)
                return
            # Interim responses (100, 103) are not forwarded; llhttp treats them as
            # complete messages and goes on to the final response.
            self._interim = True
            return
        # The block with the status line's LF in front, as _cut_hop_by_hop takes it.
        nblock = buf[line_end + 1 : end + 2]
        # A line takes 3 bytes at least ("x:" and LF): a short block needs no count.
        max_headers = self.max_headers
        if len(nblock) > 3 * max_headers and nblock.count(b"\n") > max_headers + 1:
            raise _upstream_error("too many headers in upstream response")
        cl: int | None = None
        chunked = until_close = False
        tokens: bytes | None = None
        ka_tokens: bytes | None = None  # for keep-alive: Connection's and Proxy-Connection's
        block, cut = _cut_hop_by_hop(nblock)
        hop: list[tuple[bytes, bytes]] | None = cut
        if cut:
            for lname, value in cut:
                if lname == b"content-length":
                    cl = int(value)
                elif lname == b"transfer-encoding":
                    # Only a final "chunked" frames the body; any other coding means the
                    # body runs until the upstream closes (RFC 9112 §6.3). With several
                    # lines, the last one carries the final coding.
                    final = value.rstrip().lower().endswith(b"chunked")
                    chunked, until_close = final, not final
                elif lname == b"connection":
                    tokens = value.lower() if tokens is None else tokens + b"," + value.lower()
                elif lname == b"proxy-connection":
                    # llhttp reads it as Connection for keep-alive; its tokens name no fields.
                    ka_tokens = value.lower() if ka_tokens is None else ka_tokens + b"," + value.lower()
            if ka_tokens is not None and tokens is not None:
                ka_tokens = tokens + b"," + ka_tokens
            elif tokens is not None:
                ka_tokens = tokens
        # From the status line llhttp validated ("HTTP/d.d", the only protocol name starting
        # with H): get_http_version() formats a str per call.
        minor = buf[pos + 7] if buf[pos] == 72 and buf[pos + 5] == 49 else 0
        if minor == 49 or minor == 48:
            version = b"1.1" if minor == 49 else b"1.0"
            # llhttp's verdict (should_keep_alive) without the call: from the version and the
            # Connection tokens; a body that ends at EOF is ruled out below.
            if ka_tokens is None:
                keep_alive = version == b"1.1"
            elif version == b"1.1":
                keep_alive = not _has_token(ka_tokens, b"close")
            else:
                keep_alive = _has_token(ka_tokens, b"keep-alive")
        else:
            version = _VERSIONS.get(parser.get_http_version(), b"1.1")
            # llhttp's verdict: version, Connection tokens, and whether the body ends at EOF;
            # the last is wrong for a HEAD response, which llhttp cannot know has no body.
            keep_alive = parser.should_keep_alive()
            if not keep_alive and self.expect_no_body:
                if ka_tokens is None:
                    keep_alive = version == b"1.1"
                elif version == b"1.1":
                    keep_alive = not _has_token(ka_tokens, b"close")
                else:
                    keep_alive = _has_token(ka_tokens, b"keep-alive")
        if tokens is not None and tokens not in _PLAIN_TOKENS:
            headers = Headers(parse_block(block))
            hop = _take_connection_listed(headers, tokens, hop)
        else:
            headers = Headers(block=block)
        no_body = self.expect_no_body or status in (204, 304)
        if chunked or until_close:
            cl = None
        if cl is None and not chunked and not no_body:
            # Delimited by close: the connection cannot be reused.
            keep_alive = False
        resp = Response(status, headers, None, _reason(buf, pos, line_end), version, cl, keep_alive)
        if hop:
            resp.hop_headers = hop
        has_body = not no_body and (chunked or cl is None or cl > 0)
        self._chunked = chunked
        self._head_here = True
        self._body_here = 0
        self._length = 0 if not has_body else cl
        self.response_received(resp, has_body)
        if self.expect_no_body and status not in (204, 304):
            # A HEAD response announces a body it does not carry and llhttp would wait
            # for it: finish here and give the next response a fresh parser. Whatever
            # the old parser still reports from this buffer is ignored.
            self.expect_no_body = False
            self._parser = httptools.HttpResponseParser(self)
            self._ignore = True
            self._boundary = True
            self.response_complete()

    def _switched(self, nblock: bytes, reason: bytes, parser: Any) -> None:
        """A 101 (RFC 9110 §15.2.2): accepted only when the request asked for it. ``nblock``:
        its header block with a newline in front."""
        if not self.expect_switch:
            raise _upstream_error("unexpected protocol switch (101) from upstream")
        block, hop = _cut_hop_by_hop(nblock)
        token = b""
        for lname, value in hop:
            if lname == b"upgrade":
                token = value
        if not token:
            raise _upstream_error("101 from upstream without an Upgrade header")
        self.switch_token = token
        self._ignore = True  # llhttp completes the message; it is not a response to complete
        version = _VERSIONS.get(parser.get_http_version(), b"1.1")
        resp = Response(101, Headers(block=block), None, reason, version, None, False)
        resp.hop_headers = hop
        self.response_received(resp, False)

    def on_body(self, body: bytes) -> None:
        if not self._ignore:
            self._body_here += len(body)
            self.body_received(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif not self._ignore:
            self.expect_no_body = False
            # Between messages again unless llhttp now waits for the close (it refuses more data).
            self._boundary = self.native_heads and self._parser.should_keep_alive()
            # Where the next response would start in this buffer: known when the body
            # had no framing of its own (Content-Length or none); after a chunked body
            # it is not, and an upstream has no business sending more then anyway.
            if self._length is None:
                self._pos = -1
            else:
                self._pos = (self._pos if self._head_here else 0) + self._body_here
            self.response_complete()

    def response_received(self, resp: Response, has_body: bool) -> None:
        raise NotImplementedError

    def body_received(self, data: bytes) -> None:
        raise NotImplementedError

    def response_complete(self) -> None:
        raise NotImplementedError

    def protocol_switched(self, rest: bytes) -> None:
        """After a 101 (see the class docstring): ``rest`` followed its head."""
        raise NotImplementedError


def _reason(buf: bytes, pos: int, line_end: int) -> bytes:
    """The reason phrase of the status line at ``pos``. Not a plain slice: with no reason
    (``HTTP/1.1 200``) it would end before it starts, which compiled (mypyc) fails."""
    return buf[pos + 13 : line_end] if line_end > pos + 13 else b""


def _has_token(tokens: bytes, token: bytes) -> bool:
    """Whether the comma-separated, lowercased ``tokens`` list contains ``token``."""
    if tokens == token:
        return True
    if tokens in _PLAIN_TOKENS:
        return False
    return any(t.strip() == token for t in tokens.split(_TOKEN_SPLIT))


def _host_only(host: bytes) -> bytes:
    """Lowercased host without port: b"Example.com:8080" -> b"example.com"."""
    if host.startswith(b"["):
        close = host.find(b"]")
        if close < 0:
            raise RemoteProtocolError("malformed Host header", status_hint=400, source=Source.DOWNSTREAM)
        return host[: close + 1].lower()
    colon = host.rfind(b":")
    return (host[:colon] if colon >= 0 else host).lower()


def _take_connection_listed(
    headers: Headers, tokens: bytes, hop: list[tuple[bytes, bytes]] | None
) -> list[tuple[bytes, bytes]] | None:
    """Move the headers named in Connection (RFC 9110 §7.6.1) from ``headers`` to ``hop``."""
    for name in {t.strip() for t in tokens.split(_TOKEN_SPLIT)} - _PLAIN_TOKENS:
        values = headers.get_all(name)
        if values:
            headers.remove(name)
            hop = [*(hop or ()), *((name, v) for v in values)]
    return hop
