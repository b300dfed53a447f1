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
``zstd`` before they go upstream. The decompressed size is bounded while inflating
(``max_size``): a body that would inflate past it is answered 413 without producing more
than ``max_size`` + 1 bytes (a zip bomb costs its compressed size). The body is held
while it is decompressed (so the 413 can still be sent), up to ``max_size``.

brotli and zstd need the ``brotli`` and ``zstandard`` packages (``pip install
monolake[edge]``); naming one without its package is a config error.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from ...core._body import Body
from ...core.proto.http1 import Headers, Request, Response
from ...core.service import Context, ContextSlot
from ..proxy._filters import HttpFilter
from ._base import ArgError

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


def inflate(encoding: bytes, data: bytes, limit: int) -> bytes:
    """``data`` decoded, producing at most ``limit`` + 1 bytes. Raises TooLarge past ``limit``,
    ValueError for a corrupt body."""
    if encoding == b"gzip":
        d = zlib.decompressobj(47)  # gzip or zlib, by its header
        try:
            out = d.decompress(data, limit + 1)
        except zlib.error as exc:
            raise ValueError(str(exc)) from None
        if len(out) > limit or (d.unconsumed_tail and not d.eof):
            raise TooLarge
        return out
    if encoding == b"br":
        brotli = _module("brotli")
        dec = brotli.Decompressor()
        try:
            out = dec.process(data, output_buffer_limit=limit + 1)
            while len(out) <= limit and not dec.is_finished() and not dec.can_accept_more_data():
                out += dec.process(b"", output_buffer_limit=limit + 1 - len(out))
        except brotli.error as exc:
            raise ValueError(str(exc)) from None
        if len(out) > limit or not dec.can_accept_more_data():
            raise TooLarge
        return bytes(out)
    zstandard = _module("zstandard")
    try:
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            out = reader.read(limit + 1)
    except zstandard.ZstdError as exc:
        raise ValueError(str(exc)) from None
    if len(out) > limit:
        raise TooLarge
    return bytes(out)


def _answer(status: int, text: bytes) -> Response:
    return Response(status, Headers([(b"Content-Type", b"text/plain")]), text)


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

    async def request_filter(self, req: Request, ctx: Context) -> Response | None:
        headers = req.headers
        ce = headers.get(b"content-encoding")
        if ce is None:
            return None
        enc = ce.strip().lower()
        if enc not in self.encodings:
            return None
        body = req.body
        if isinstance(body, Body):
            # The compressed size is bounded by the server's limits.max_body_bytes.
            data = await body.read_all()
        elif isinstance(body, bytes):
            data = body
        else:
            data = b""
        try:
            plain = inflate(enc, data, self.max_size)
        except TooLarge:
            return _answer(413, b"request body too large once decompressed\n")
        except ValueError:
            return _answer(400, b"request body does not decode as its Content-Encoding says\n")
        headers.remove(b"content-encoding")
        headers.remove(b"content-length")  # framed from the new body's length
        req.body = _complete_body(plain)
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
