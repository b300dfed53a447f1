"""``compress`` and ``decompress``: response compression (gzip, brotli, zstd) and request decompression.

``compress`` picks an encoding from the request's ``Accept-Encoding`` (q-values; among
equally acceptable ones, the order of ``encodings``) and compresses responses whose
content type is listed and whose known length is at least ``min_length``. A streamed
body is compressed as it flows (each upstream chunk through the encoder into a new
``Body``, with the same backpressure), never collected whole. Left untouched: responses
that already have a ``Content-Encoding``, ranges (206, ``Content-Range``), ``Cache-Control:
no-transform``, 1xx/204/304 and HEAD. ``Vary: Accept-Encoding`` is added to every response
of a compressible type, compressed or not (a cache must not serve one client's encoding to
another). A strong ``ETag`` becomes weak on a compressed response (its bytes changed).

``decompress`` inflates request bodies sent with ``Content-Encoding: gzip``, ``br`` or
``zstd`` as they go upstream: each chunk the client sends is decoded when it arrives and
the decoded pieces (at most ``STEP`` bytes each) flow into the body the upstream reads.
When that body's buffer is full (the upstream not connected yet, or its socket full),
decoding stops between pieces, the compressed rest is kept and the client is paused, so
nothing holds the whole body (a zstd chunk is decoded in ``SLICE``-byte slices of input, a
slice's output made at once). The decoded bytes are counted: a piece that would take the
total past ``max_size`` is never sent (a zip bomb costs its compressed size and one piece),
and the request is answered 413. A stream that does not decode, or ends mid-stream, is
answered 400. When that shows before the forward began (in what arrived with the head,
before the buffer filled), the upstream is never asked; later, the upstream has had part of
the body (never more than ``max_size``): its exchange fails, its connection is closed (not
reused) and a warning is logged, and the client still gets the 413 or 400 unless a response
had begun. The request goes upstream without ``Content-Encoding`` and ``Content-Length``
(chunked). The filter is a plain call: no coroutine.

brotli and zstd need the ``brotli`` and ``zstandard`` packages (``pip install
monolake[edge]``); naming one without its package is a config error.
"""

from __future__ import annotations

import importlib
import logging
import zlib
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from ...core._body import Body
from ...core._ratelimit import RateLimitedLog
from ...core.errors import RemoteProtocolError, Source
from ...core.proto.http1 import Headers, Request, Response
from ...core.service import Context, ContextSlot
from ..proxy._filters import HttpFilter
from ._base import ArgError

log = logging.getLogger("monolake.edge.compress")
cut_log = RateLimitedLog(log, "request bodies cut", level=logging.WARNING)

Encoding = Literal["gzip", "br", "zstd"]

ENCODING = ContextSlot("content_coding", bytes, "The response encoding the compress filter chose for this request.")

DEFAULT_TYPES = [
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/wasm",
    "application/x-ndjson",
    "image/svg+xml",
    "font/ttf",
    "font/otf",
]

_PACKAGES = {"br": "brotli", "zstd": "zstandard"}


class CompressArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    encodings: list[Encoding] = msgspec.field(default_factory=lambda: ["zstd", "br", "gzip"])
    """Encodings offered, preferred first when a client accepts several equally."""
    types: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_TYPES))
    """Content types compressed ("type/subtype", or "type/*"); parameters (charset) are ignored.
    ``text/event-stream`` is not in the default: a stream of small events is held by the encoder."""
    min_length: int = 256
    """Bytes: a response whose known length is smaller is sent as it is (a streamed body of unknown
    length is compressed)."""
    gzip_level: int = 6
    """1 (fastest) .. 9."""
    brotli_quality: int = 4
    """0 (fastest) .. 11."""
    zstd_level: int = 3
    """1 (fastest) .. 19."""
    vary: bool = True
    """Add ``Vary: Accept-Encoding`` to responses of a compressible type."""


class Encoder:
    """One response's encoder: ``compress(data)`` then ``finish()``."""

    __slots__ = ("compress", "finish")

    def __init__(self, compress: Callable[[bytes], bytes], finish: Callable[[], bytes]) -> None:
        self.compress = compress
        self.finish = finish


def _module(name: str) -> Any:
    return importlib.import_module(name)


def encoder_factory(encoding: str, args: CompressArgs) -> Callable[[], Encoder]:
    """A maker of fresh encoders for ``encoding`` at the configured level."""
    if encoding == "gzip":
        level = args.gzip_level

        def gzip() -> Encoder:
            c = zlib.compressobj(level, zlib.DEFLATED, 31)
            return Encoder(c.compress, c.flush)

        return gzip
    if encoding == "br":
        brotli = _module("brotli")
        quality = args.brotli_quality

        def br() -> Encoder:
            c = brotli.Compressor(quality=quality)
            return Encoder(c.process, c.finish)

        return br
    zstandard = _module("zstandard")
    zc = zstandard.ZstdCompressor(level=args.zstd_level)

    def zstd() -> Encoder:
        c = zc.compressobj()
        return Encoder(c.compress, c.flush)

    return zstd


def parse_accept_encoding(value: bytes) -> dict[bytes, float]:
    """``Accept-Encoding`` as {coding: q} (lowercased; "*" included when present)."""
    out: dict[bytes, float] = {}
    for item in value.split(b","):
        name, _, params = item.partition(b";")
        name = name.strip().lower()
        if not name:
            continue
        q = 1.0
        for p in params.split(b";"):
            k, sep, v = p.partition(b"=")
            if sep and k.strip().lower() == b"q":
                try:
                    q = float(v.strip())
                except ValueError:
                    q = 0.0
        out[name] = q
    return out


class _Pipe:
    """Compresses a streamed body: the upstream ``Body``'s sink and the new ``Body``'s producer."""

    __slots__ = ("encoder", "out", "up")

    def __init__(self, up: Body, encoder: Encoder) -> None:
        self.up = up
        self.encoder = encoder
        self.out = Body(self, None)
        up.pipe(self)

    def write(self, data: bytes) -> None:
        out = self.encoder.compress(data)
        if out:
            self.out.feed(out)

    def end(self) -> None:
        tail = self.encoder.finish()
        if tail:
            self.out.feed(tail)
        self.out.feed_eof()

    def abort(self, exc: BaseException) -> None:
        self.out.feed_error(exc)

    def pause_body(self) -> None:
        self.up.pause()

    def resume_body(self) -> None:
        self.up.resume()

    def cancel_body(self) -> None:
        self.up.cancel()


class Compress(HttpFilter):
    """Response compression; see the module docstring."""

    Args = CompressArgs

    def __init__(self, args: CompressArgs) -> None:
        if not args.encodings:
            raise ArgError("encodings", "must name at least one of gzip, br, zstd")
        for key, value, lo, hi in (
            ("gzip_level", args.gzip_level, 1, 9),
            ("brotli_quality", args.brotli_quality, 0, 11),
            ("zstd_level", args.zstd_level, 1, 19),
        ):
            if not lo <= value <= hi:
                raise ArgError(key, f"must be between {lo} and {hi}, got {value}")
        if args.min_length < 0:
            raise ArgError("min_length", "must be >= 0 (bytes)")
        self.makers: dict[bytes, Callable[[], Encoder]] = {}
        for i, enc in enumerate(args.encodings):
            pkg = _PACKAGES.get(enc)
            if pkg is not None:
                try:
                    _module(pkg)
                except ImportError:
                    raise ArgError(
                        f"encodings[{i}]", f"{enc} needs the {pkg} package (pip install monolake[edge])"
                    ) from None
            self.makers[enc.encode()] = encoder_factory(enc, args)
        self.order = tuple(self.makers)
        exact: set[bytes] = set()
        prefixes: set[bytes] = set()
        for i, t in enumerate(args.types):
            main, sep, sub = t.strip().lower().partition("/")
            if not sep or not main or not sub or (sub != "*" and "*" in sub):
                raise ArgError(f"types[{i}]", f"expected 'type/subtype' or 'type/*', got {t!r}")
            (prefixes if sub == "*" else exact).add(f"{main}/".encode() if sub == "*" else t.strip().lower().encode())
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.min_length = args.min_length
        self.vary = args.vary
        self._choices: dict[bytes, bytes | None] = {}

    def choose(self, accept: bytes) -> bytes | None:
        """The encoding to use for an ``Accept-Encoding`` value (cached per distinct value)."""
        choice = self._choices.get(accept, b"")
        if choice != b"":
            return choice
        qs = parse_accept_encoding(accept)
        star = qs.get(b"*", 0.0)
        best: bytes | None = None
        best_q = 0.0
        for enc in self.order:
            q = qs.get(enc, star)
            if q > best_q:
                best, best_q = enc, q
        if len(self._choices) < 1024:  # a client cannot grow it without bound
            self._choices[accept] = best
        return best

    def request_filter(self, req: Request, ctx: Context) -> None:
        if req.method == b"HEAD":
            return None
        accept = req.headers.get(b"accept-encoding")
        if accept:
            enc = self.choose(accept)
            if enc is not None:
                ENCODING.set(ctx, enc)
        return None

    def _compressible_type(self, headers: Headers) -> bool:
        ctype = headers.get(b"content-type")
        if ctype is None:
            return False
        main = ctype.partition(b";")[0].strip().lower()
        return main in self.exact or main.startswith(self.prefixes)

    def response_filter(self, resp: Response, ctx: Context) -> None:
        status = resp.status
        if status < 200 or status in (204, 206, 304):
            return
        headers = resp.headers
        if not self._compressible_type(headers):
            return
        if self.vary:
            _add_vary(headers)
        enc = ENCODING.get(ctx, None)
        if enc is None:
            return
        names = headers.names()
        if b"content-range" in names:
            return
        if b"content-encoding" in names and (headers.get(b"content-encoding") or b"").strip().lower() != b"identity":
            return
        cc = headers.get(b"cache-control")
        if cc is not None and b"no-transform" in cc.lower():
            return
        body = resp.body
        if body is None:
            return
        if isinstance(body, bytes):
            if len(body) < self.min_length or not body:
                return
            e = self.makers[enc]()
            out = e.compress(body) + e.finish()
            resp.body = out
            resp.content_length = len(out)
        elif isinstance(body, Body):
            if resp.content_length is not None and resp.content_length < self.min_length:
                return
            resp.body = _Pipe(body, self.makers[enc]()).out
            resp.content_length = None
        else:
            return
        headers.remove(b"content-length")
        headers.remove(b"accept-ranges")
        headers.set(b"Content-Encoding", enc)
        etag = headers.get(b"etag")
        if etag is not None and not etag.startswith(b"W/"):
            headers.set(b"ETag", b"W/" + etag)


def _add_vary(headers: Headers) -> None:
    for v in headers.get_all(b"vary"):
        for token in v.split(b","):
            t = token.strip().lower()
            if t == b"accept-encoding" or t == b"*":
                return
    headers.add(b"Vary", b"Accept-Encoding")


# -- request decompression --------------------------------------------------------------


class DecompressArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    max_size: int = 10 * 1024 * 1024
    """Bytes a request body may inflate to; past it the request is answered 413."""
    encodings: list[Encoding] = msgspec.field(default_factory=lambda: ["gzip", "br", "zstd"])
    """Request encodings inflated; others go upstream as they are."""


class TooLarge(ValueError):
    pass


STEP = 64 * 1024
"""Bytes of decoded output made per decoder call: a chunk that inflates a lot is fed on in
pieces this size, and one over the cap is refused before it is made whole."""
SLICE = 16 * 1024
"""Bytes of zstd input per decoder call (its decoder has no output bound per call): between
slices the decoding may stop for backpressure."""

Emit = Callable[[bytes], None]
"""Takes the next decoded piece; raises TooLarge when it would pass the cap."""
Held = Callable[[], bool]
"""True while the body going upstream is paused: the decoder stops between pieces."""


def _never() -> bool:
    return False


class _Gzip:
    """gzip (or zlib, by its header) members, one after the other (RFC 1952 §2.2)."""

    __slots__ = ("d", "fed", "more")

    def __init__(self) -> None:
        self.d = zlib.decompressobj(47)
        self.fed = False
        """Input went into the current member's decoder."""
        self.more = False
        """Output is waiting in the decoder (the last call stopped at ``STEP``)."""

    def feed(self, data: bytes, emit: Emit, held: Held = _never) -> bytes | None:
        """Decode ``data``; the input left (b"": output waiting) when ``held`` stopped it, else None."""
        d = self.d
        try:
            while data or self.more:
                if d.eof:  # another member follows
                    d = self.d = zlib.decompressobj(47)
                self.fed = True
                out = d.decompress(data, STEP)
                data = d.unconsumed_tail
                self.more = not data and not d.eof and len(out) == STEP
                if d.eof:
                    data = d.unused_data
                if out:
                    emit(out)
                    if held() and (data or self.more):
                        return data
        except zlib.error as exc:
            raise ValueError(str(exc)) from None
        return None

    def finish(self) -> None:
        if self.fed and not self.d.eof:
            raise ValueError("the gzip stream ends early")


class _Brotli:
    __slots__ = ("d", "error", "fed", "more")

    def __init__(self) -> None:
        brotli = _module("brotli")
        self.d = brotli.Decompressor()
        self.error = brotli.error
        self.fed = False
        self.more = False

    def feed(self, data: bytes, emit: Emit, held: Held = _never) -> bytes | None:
        d = self.d
        if data and d.is_finished():
            raise ValueError("data after the end of the brotli stream")
        try:
            while data or self.more:
                self.fed = True
                out = d.process(data, output_buffer_limit=STEP)
                data = b""
                # Output stopped at the limit (the buffer grows in steps, so a piece may pass it a
                # little) means more may be waiting: it comes from calls with no input, which is all
                # the decoder may be given until it is drained.
                self.more = bool(out) and not d.is_finished() and (len(out) >= STEP or not d.can_accept_more_data())
                if out:
                    emit(out)
                    if self.more and held():
                        return b""
        except self.error as exc:
            raise ValueError(str(exc)) from None
        return None

    def finish(self) -> None:
        if self.fed and not self.d.is_finished():
            raise ValueError("the brotli stream ends early")


class _Zstd:
    """zstd frames through ``zstandard``'s stream writer (it hands its output on in ``STEP`` pieces,
    so a frame that inflates past the cap stops there); ``_ZstdFrames`` tells where frames end."""

    __slots__ = ("emit", "error", "frames", "w")

    def __init__(self) -> None:
        zstandard = _module("zstandard")
        self.w = zstandard.ZstdDecompressor().stream_writer(self, write_size=STEP, closefd=False)
        self.error = zstandard.ZstdError
        self.frames = _ZstdFrames()
        self.emit: Emit | None = None

    def write(self, out: bytes) -> int:  # the stream writer's output
        if self.emit is not None and out:
            self.emit(bytes(out))
        return len(out)

    def feed(self, data: bytes, emit: Emit, held: Held = _never) -> bytes | None:
        self.emit = emit
        try:
            for i in range(0, len(data), SLICE):
                piece = data[i : i + SLICE] if len(data) > SLICE else data
                self.frames.feed(piece)
                self.w.write(piece)
                if i + SLICE < len(data) and held():
                    return data[i + SLICE :]
        except self.error as exc:
            raise ValueError(str(exc)) from None
        finally:
            self.emit = None
        return None

    def finish(self) -> None:
        if not self.frames.complete():
            raise ValueError("the zstd stream ends early")


class _ZstdFrames:
    """Follows the frame and block headers of a zstd stream (RFC 8878 §3.1), only to tell a complete
    stream from a cut one (the decoder says nothing when its input stops mid-frame)."""

    __slots__ = ("buf", "checksum", "need", "skip", "state")

    def __init__(self) -> None:
        self.state = "magic"
        self.need = 4
        """Header bytes the state reads next."""
        self.buf = b""
        self.skip = 0
        """Bytes to pass over first (a frame header's fields, a block's content)."""
        self.checksum = False

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self.skip:
                k = min(self.skip, n - i)
                self.skip -= k
                i += k
                continue
            k = min(self.need - len(self.buf), n - i)
            self.buf += data[i : i + k]
            i += k
            if len(self.buf) == self.need:
                head, self.buf = self.buf, b""
                self._header(head)

    def _header(self, head: bytes) -> None:
        if self.state == "magic":
            magic = int.from_bytes(head, "little")
            if magic == 0xFD2FB528:
                self.state, self.need = "descriptor", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:  # a skippable frame: its size follows
                self.state, self.need = "skippable", 4
            else:
                raise ValueError("not a zstd frame")
        elif self.state == "skippable":
            self.skip = int.from_bytes(head, "little")
            self.state, self.need = "magic", 4
        elif self.state == "descriptor":
            fhd = head[0]
            single = fhd >> 5 & 1
            self.checksum = bool(fhd >> 2 & 1)
            fcs = (single, 2, 4, 8)[fhd >> 6]
            self.skip = (1 - single) + (0, 1, 2, 4)[fhd & 3] + fcs  # window, dictionary id, content size
            self.state, self.need = "block", 3
        else:  # a block header: last-block bit, type, size
            h = int.from_bytes(head, "little")
            self.skip = 1 if (h >> 1) & 3 == 1 else h >> 3  # an RLE block holds one byte
            if h & 1:
                self.skip += 4 if self.checksum else 0
                self.state, self.need = "magic", 4

    def complete(self) -> bool:
        return self.state == "magic" and not self.buf and not self.skip


Decoder = _Gzip | _Brotli | _Zstd

_DECODERS: dict[bytes, Callable[[], Decoder]] = {b"gzip": _Gzip, b"br": _Brotli, b"zstd": _Zstd}


def inflate(encoding: bytes, data: bytes, limit: int) -> bytes:
    """``data`` decoded, at most ``limit`` bytes. Raises TooLarge past ``limit``, ValueError for a
    corrupt or cut stream."""
    decoder = _DECODERS[encoding]()
    parts: list[bytes] = []
    left = limit

    def emit(piece: bytes) -> None:
        nonlocal left
        if len(piece) > left:
            raise TooLarge
        left -= len(piece)
        parts.append(piece)

    decoder.feed(data, emit)
    decoder.finish()
    return b"".join(parts)


def _answer(status: int, text: bytes) -> Response:
    return Response(status, Headers([(b"Content-Type", b"text/plain")]), text)


_TOO_LARGE = b"request body too large once decompressed\n"
_CORRUPT = b"request body does not decode as its Content-Encoding says\n"


class _Inflate:
    """Decodes a request body as it flows: the client's ``Body``'s sink and the producer of the
    ``Body`` that goes upstream. When that one pauses (its buffer or the upstream's socket full),
    decoding stops between pieces, the compressed input left is kept (``stash``) and the client is
    paused; on resume the stash is decoded first."""

    __slots__ = ("decoder", "ending", "failed", "held", "left", "out", "stash", "up")

    def __init__(self, up: Body, decoder: Decoder, limit: int) -> None:
        self.up = up
        self.decoder = decoder
        self.left = limit
        self.failed: RemoteProtocolError | None = None
        self.held = False
        self.stash: bytes | None = None
        """Compressed input not decoded yet (b"": output waiting in the decoder), while held."""
        self.ending = False
        """The client's body ended while input was stashed."""
        self.out = Body(self, None)
        up.pipe(self)  # what the client sent already is decoded now (a hold pauses the client)

    def _emit(self, piece: bytes) -> None:
        if len(piece) > self.left:
            raise TooLarge
        self.left -= len(piece)
        self.out.feed(piece)

    def _held(self) -> bool:
        return self.held

    def _decode(self, data: bytes) -> None:
        try:
            self.stash = self.decoder.feed(data, self._emit, self._held)
        except TooLarge:
            self._fail(413, _TOO_LARGE)
        except ValueError:
            self._fail(400, _CORRUPT)

    def write(self, data: bytes) -> None:
        if self.failed is not None:
            return
        if self.stash is not None:  # a chunk that was in flight when the client was paused
            self.stash += data
            self.up.pause()
            return
        self._decode(data)

    def end(self) -> None:
        if self.failed is not None:
            return
        if self.stash is not None:
            self.ending = True
            return
        self._finish()

    def _finish(self) -> None:
        try:
            self.decoder.finish()
        except ValueError:
            self._fail(400, _CORRUPT)
            return
        self.out.feed_eof()

    def abort(self, exc: BaseException) -> None:
        self.out.feed_error(exc)

    def _fail(self, status: int, text: bytes) -> None:
        exc = self.failed = RemoteProtocolError(text.decode().strip(), status_hint=status, source=Source.DOWNSTREAM)
        self.stash = None
        self.up.detach()  # the rest of the client's body is dropped; the answer closes its connection
        if self.out.piped:
            cut_log.log(
                "decompress: %d for a request body already going upstream (%d decoded bytes sent); "
                "its upstream connection is closed: %s",
                status,
                self.out.received,
                exc,
            )
        self.out.feed_error(exc)  # the upstream exchange fails with it: answered ``status``

    def pause_body(self) -> None:
        self.held = True
        self.up.pause()

    def resume_body(self) -> None:
        self.held = False
        stash = self.stash
        if stash is not None and self.failed is None:
            self.stash = None
            self._decode(stash)
            if self.stash is not None or self.failed is not None:
                return  # held again: the client stays paused
            if self.ending:
                self._finish()
        self.up.resume()

    def cancel_body(self) -> None:
        self.up.cancel()


class Decompress(HttpFilter):
    """Request decompression; see the module docstring."""

    Args = DecompressArgs

    def __init__(self, args: DecompressArgs) -> None:
        if args.max_size < 1:
            raise ArgError("max_size", "must be >= 1 (bytes)")
        for i, enc in enumerate(args.encodings):
            pkg = _PACKAGES.get(enc)
            if pkg is not None:
                try:
                    _module(pkg)
                except ImportError:
                    raise ArgError(
                        f"encodings[{i}]", f"{enc} needs the {pkg} package (pip install monolake[edge])"
                    ) from None
        self.max_size = args.max_size
        self.encodings = frozenset(e.encode() for e in args.encodings)

    def request_filter(self, req: Request, ctx: Context) -> Response | None:
        headers = req.headers
        ce = headers.get(b"content-encoding")
        if ce is None:
            return None
        enc = ce.strip().lower()
        if enc not in self.encodings:
            return None
        body = req.body
        if isinstance(body, Body):
            pipe = _Inflate(body, _DECODERS[enc](), self.max_size)
            failed = pipe.failed
            if failed is not None:  # in what had arrived with the head: nothing went upstream
                return _answer(failed.status_hint, _TOO_LARGE if failed.status_hint == 413 else _CORRUPT)
            new: Body = pipe.out
        else:
            try:
                plain = inflate(enc, body if isinstance(body, bytes) else b"", self.max_size)
            except TooLarge:
                return _answer(413, _TOO_LARGE)
            except ValueError:
                return _answer(400, _CORRUPT)
            new = _complete_body(plain)
        headers.remove(b"content-encoding")
        headers.remove(b"content-length")  # framed from the new body (chunked while it streams)
        req.body = new
        return None


class _Held:
    """The producer of a body that is already complete: nothing to pause or cancel."""

    def pause_body(self) -> None:
        return None

    def resume_body(self) -> None:
        return None

    def cancel_body(self) -> None:
        return None


_HELD = _Held()


def _complete_body(data: bytes) -> Body:
    body = Body(_HELD, len(data))
    if data:
        body.feed(data)
    body.feed_eof()
    return body
