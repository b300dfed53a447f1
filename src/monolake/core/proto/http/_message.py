"""HTTP messages (version-neutral): one mutable object per message.

These are deliberately mutable and slotted (not frozen events): filters rewrite a
request or response in place, and a frozen copy per phase would cost microseconds
per request on the hot path. Everything is bytes, as it came off the wire; names
keep their original case for forwarding and are compared case-insensitively.
``body`` is whatever the driver attached (a stream object, bytes, or None); this
module never touches it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def _b(s: str | bytes) -> bytes:
    return s.encode("latin-1") if isinstance(s, str) else s


class Headers:
    """An ordered list of (name, value) byte pairs with case-insensitive lookups.

    Beside the pairs, a Headers keeps the names lowercased in a parallel list (filled
    by the parser, which lowercases every name anyway), so a lookup is one C-level
    ``list.index`` instead of a Python loop that lowercases as it goes.

    A Headers may also hold its fields as the wire block they arrived in (``block``:
    ``Name: value\r\n`` lines, hop-by-hop fields already removed). The pairs are then
    built only when something reads or changes a field that is there; a proxy that forwards
    the headers untouched writes the block as it came, without a Python object per field.
    ``add`` appends a line to the block, and a lookup, ``set`` or ``remove`` of a name the
    block does not hold leaves it as it is (a filter adding a response header costs a line).

    ``raw`` hands out the pair list itself for direct edits; the lowered names are
    rebuilt after that. The methods keep both in step.
    """

    __slots__ = ("_block", "_lower", "_raw")

    def __init__(
        self,
        raw: list[tuple[bytes, bytes]] | None = None,
        *,
        block: bytes | None = None,
        lower: list[bytes] | None = None,
    ) -> None:
        if block is not None and raw is None:
            self._raw: list[tuple[bytes, bytes]] | None = None
            self._lower: list[bytes] | None = None
        else:
            self._raw = raw if raw is not None else []
            self._lower = lower
        self._block = block

    def pairs(self) -> list[tuple[bytes, bytes]]:
        """The (name, value) list, for reading; use the methods to change it."""
        r = self._raw
        if r is None:
            r = self._raw = parse_block(self._block or b"")
            self._block = None
        return r

    def names(self) -> list[bytes]:
        """The lowercased names, parallel to ``pairs()``; for reading."""
        low = self._lower
        if low is None:
            low = self._lower = [n.lower() for n, _ in self.pairs()]
        return low

    @property
    def raw(self) -> list[tuple[bytes, bytes]]:
        r = self.pairs()
        self._lower = None  # the caller may edit the list in place
        return r

    @raw.setter
    def raw(self, value: list[tuple[bytes, bytes]]) -> None:
        self._raw = value
        self._lower = None
        self._block = None

    @property
    def block(self) -> bytes | None:
        """The untouched wire block, or None once the fields were parsed."""
        return self._block

    def index(self, lname: bytes) -> int:
        """Position of the first field named ``lname`` (lowercase), or -1."""
        names = self.names()
        return names.index(lname) if lname in names else -1

    def value_at(self, i: int) -> bytes:
        return self.pairs()[i][1]

    def replace_at(self, i: int, value: bytes) -> None:
        r = self.pairs()
        r[i] = (r[i][0], value)

    def _absent(self, lname: bytes) -> bool:
        """True when the fields are still a block and no line starts with ``lname`` (a name
        that only starts with it, or odd spacing, answers False: the pairs then decide)."""
        block = self._block
        return block is not None and (b"\n" + block.lower()).find(b"\n" + lname) < 0

    def get(self, name: str | bytes, default: bytes | None = None) -> bytes | None:
        """First value of ``name``, or ``default``."""
        lname = _b(name).lower()
        if self._absent(lname):
            return default
        names = self.names()
        if lname in names:
            return self.pairs()[names.index(lname)][1]
        return default

    def get_all(self, name: str | bytes) -> list[bytes]:
        lname = _b(name).lower()
        if self._absent(lname):
            return []
        return [v for (_, v), n in zip(self.pairs(), self.names(), strict=True) if n == lname]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str | bytes):
            return False
        lname = _b(name).lower()
        return not self._absent(lname) and lname in self.names()

    def add(self, name: str | bytes, value: str | bytes) -> None:
        """Append a header; existing ones of the same name stay."""
        bname = _b(name)
        block = self._block
        if block is not None:
            self._block = block + bname + b": " + _b(value) + b"\r\n"
            return
        self.pairs().append((bname, _b(value)))
        if self._lower is not None:
            self._lower.append(bname.lower())

    def set(self, name: str | bytes, value: str | bytes) -> None:
        """Replace every header called ``name`` with one (name, value)."""
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str | bytes) -> int:
        """Remove every header called ``name``; return how many were removed."""
        lname = _b(name).lower()
        if self._absent(lname):
            return 0
        names = self.names()
        if lname not in names:
            return 0
        r = self.pairs()
        keep = [i for i, n in enumerate(names) if n != lname]
        removed = len(names) - len(keep)
        r[:] = [r[i] for i in keep]
        names[:] = [names[i] for i in keep]
        return removed

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.pairs())

    def __len__(self) -> int:
        return len(self.pairs())

    def __repr__(self) -> str:
        return f"Headers({self.pairs()!r})"


def parse_block(block: bytes) -> list[tuple[bytes, bytes]]:
    """``Name: value\r\n`` lines (already validated by llhttp) to pairs; values are
    stripped of surrounding whitespace (RFC 9110 §5.5)."""
    out = []
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            out.append((name, value.strip(b" \t")))
    return out


class Request:
    """A request head plus its body handle.

    method: b"GET"; target: the raw request-target; path / query: target split at
    '?' (query without the '?'); host: Host header lowercased without port (b"" if
    absent); version: b"1.1" or b"1.0"; keep_alive: whether the client wants the
    connection kept; headers: end-to-end headers only; hop_headers: the (lowercased
    name, value) fields an HTTP/1 parser set apart (hop-by-hop and framing ones, and
    those named in Connection: RFC 9110 §7.6.1), or None: a proxy does not forward
    them, a service answering itself may read them; ctx: the per-request Context set
    by the server driver.
    """

    __slots__ = (
        "body",
        "ctx",
        "expect_continue",
        "headers",
        "hop_headers",
        "host",
        "keep_alive",
        "method",
        "original_target",
        "path",
        "query",
        "raw_host",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        *,
        version: bytes = b"1.1",
        host: bytes = b"",
        raw_host: bytes | None = None,
        keep_alive: bool = True,
        body: Any = None,
        expect_continue: bool = False,
        upgrade: bytes | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.original_target = target
        path, sep, query = target.partition(b"?")
        self.path = path
        self.query = query if sep else b""
        self.headers = headers
        self.version = version
        self.host = host
        self.raw_host = raw_host
        self.keep_alive = keep_alive
        self.body = body
        self.expect_continue = expect_continue
        self.upgrade = upgrade
        self.hop_headers: list[tuple[bytes, bytes]] | None = None
        self.ctx: Any = None

    def set_path(self, path: bytes) -> None:
        """Replace the path, keeping the query."""
        self.path = path
        self.target = path + b"?" + self.query if self.query else path

    def __repr__(self) -> str:
        return f"<Request {self.method.decode()} {self.target.decode('latin-1')}>"


class Response:
    """A response head plus its body.

    body is bytes (complete), None (no body) or a stream object from a driver.
    content_length is the body length when known, None when it must be chunked or
    delimited by close. hop_headers: as ``Request.hop_headers``, for a response read
    from an HTTP/1 upstream (never written: a server frames its own response).
    """

    __slots__ = ("body", "content_length", "headers", "hop_headers", "keep_alive", "reason", "status", "version")

    def __init__(
        self,
        status: int,
        headers: Headers | None = None,
        body: Any = None,
        reason: bytes = b"",
        version: bytes = b"1.1",
        content_length: int | None = None,
        keep_alive: bool = True,
    ) -> None:
        self.status = status
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.reason = reason
        self.version = version
        if content_length is None and isinstance(body, bytes):
            content_length = len(body)
        self.content_length = content_length
        self.keep_alive = keep_alive
        self.hop_headers: list[tuple[bytes, bytes]] | None = None

    def __repr__(self) -> str:
        return f"<Response {self.status}>"
