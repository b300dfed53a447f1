"""gRPC status codes, the error a handler raises, and how metadata travels as HTTP/2 fields."""

from __future__ import annotations

import base64
import enum
from collections.abc import Iterable, Sequence

Metadata = Sequence[tuple[str, str | bytes]]
"""Call metadata as (key, value) pairs: keys lowercase; a ``-bin`` key's value is bytes."""


class StatusCode(enum.IntEnum):
    """The gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RpcError(Exception):
    """A call that ended with a status other than OK.

    A handler raises it (or calls ``context.abort``) to answer with ``code``, ``message``
    and ``details`` (the serialized ``google.rpc.Status``, sent as ``grpc-status-details-bin``);
    the client raises it for such an answer, with the server's trailing metadata.
    """

    def __init__(
        self,
        code: StatusCode | int,
        message: str = "",
        details: bytes | None = None,
        trailers: Metadata = (),
    ) -> None:
        super().__init__(message)
        self.code = StatusCode(code)
        self.message = message
        self.details = details
        self.trailers = list(trailers)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name

    def __repr__(self) -> str:
        return f"RpcError({self.code.name}, {self.message!r})"


# -- metadata <-> HTTP/2 fields ---------------------------------------------------------

RESERVED = frozenset(
    {
        b"host",
        b"content-type",
        b"te",
        b"grpc-timeout",
        b"grpc-encoding",
        b"grpc-accept-encoding",
        b"grpc-status",
        b"grpc-message",
        b"grpc-status-details-bin",
        b"content-length",
    }
)
"""Fields the protocol owns: never handed to a handler as metadata, never sent from it."""


def b64decode(value: bytes) -> bytes:
    """A ``-bin`` value: base64 with or without padding (both are allowed on the wire)."""
    return base64.b64decode(value + b"=" * (-len(value) % 4))


def b64encode(value: bytes) -> bytes:
    """Unpadded base64, as gRPC implementations send ``-bin`` values."""
    return base64.b64encode(value).rstrip(b"=")


def metadata_in(fields: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str | bytes]]:
    """Metadata from HTTP/2 fields (lowercase names): reserved ones dropped, ``-bin`` decoded."""
    out: list[tuple[str, str | bytes]] = []
    for name, value in fields:
        if name in RESERVED or name[:1] == b":":
            continue
        if name[-4:] == b"-bin":
            try:
                out.append((name.decode("latin-1"), b64decode(value)))
            except ValueError:
                continue  # not base64: dropped like a malformed field
        else:
            out.append((name.decode("latin-1"), value.decode("latin-1")))
    return out


def metadata_out(md: Metadata) -> list[tuple[bytes, bytes]]:
    """HTTP/2 fields for metadata. Raises ValueError for a reserved or malformed key."""
    out: list[tuple[bytes, bytes]] = []
    for key, value in md:
        name = key.lower().encode("ascii")
        if name in RESERVED or not name or name[:1] == b":":
            raise ValueError(f"metadata key {key!r} is reserved by gRPC")
        if name[-4:] == b"-bin":
            raw = value if isinstance(value, bytes) else value.encode()
            out.append((name, b64encode(raw)))
        else:
            text = value.decode("ascii") if isinstance(value, bytes) else value
            out.append((name, text.encode("ascii")))
    return out


def percent_encode(text: str) -> bytes:
    """grpc-message encoding: printable ASCII except '%' as is, other bytes %XX."""
    out = bytearray()
    for b in text.encode():
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def percent_decode(value: bytes) -> str:
    out = bytearray()
    i = 0
    n = len(value)
    while i < n:
        b = value[i]
        if b == 0x25 and i + 2 < n:
            try:
                out.append(int(value[i + 1 : i + 3], 16))
                i += 3
                continue
            except ValueError:
                pass
        out.append(b)
        i += 1
    return out.decode("utf-8", "replace")


def status_fields(code: int, message: str, details: bytes | None, trailers: Metadata = ()) -> list[tuple[bytes, bytes]]:
    """The trailer fields that end a call: status, message, details, then user metadata."""
    fields = [(b"grpc-status", b"%d" % code)]
    if message:
        fields.append((b"grpc-message", percent_encode(message)))
    if details:
        fields.append((b"grpc-status-details-bin", b64encode(details)))
    if trailers:
        fields += metadata_out(trailers)
    return fields
