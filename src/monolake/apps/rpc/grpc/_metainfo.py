"""gRPC's names for metainfo: ``rpc-persist-KEY``, ``rpc-transit-KEY``, ``rpc-backward-KEY`` metadata.

The values and the rules (persistent to every hop, transient to the next, backward to the
caller, in the trailers) are ``apps/rpc/_metainfo``'s, shared with Thrift: a value a gRPC
caller sets reaches a Thrift callee and the reverse. Keys are kept as Volo keeps them, upper
case with underscores (``TRACE_ID``), and go on the wire lower case with dashes
(``rpc-persist-trace-id``); the TTHeader side names the same value ``RPC_PERSIST_TRACE_ID``.

Nothing is built for a call without ``rpc-`` metadata until a handler asks for ``current()``.
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import _metainfo as _mi
from .._metainfo import Metainfo
from .._metainfo import current as current
from .._metainfo import peek as peek
from .._metainfo import reset as reset

MetaInfo = Metainfo
"""The shared ``Metainfo`` (this module's first name for it)."""

PERSIST = "rpc-persist-"
TRANSIT = "rpc-transit-"
BACKWARD = "rpc-backward-"
_PREFIX = {_mi.PERSIST: PERSIST, _mi.TRANSIT: TRANSIT}


def wire_key(key: str) -> str:
    """ "TRACE_ID" -> "trace-id" (the part after the prefix)."""
    return key.replace("_", "-").lower()


def info_key(wire: str) -> str:
    """ "trace-id" -> "TRACE_ID"."""
    return wire.replace("-", "_").upper()


def outgoing(mi: Metainfo) -> list[tuple[bytes, bytes]]:
    """Request fields for a call made from ``mi``'s context: persistent and transient values."""
    return [((_PREFIX[kind] + wire_key(k)).encode(), v.encode()) for kind, k, v in _mi.forward(mi)]


def backward_fields(mi: Metainfo) -> list[tuple[bytes, bytes]]:
    return [((BACKWARD + wire_key(k)).encode(), v.encode()) for k, v in _mi.backward(mi)]


def take_backward(mi: Metainfo, fields: Iterable[tuple[bytes, bytes]]) -> None:
    for name, value in fields:
        if name.startswith(b"rpc-backward-"):
            mi.received_backward[info_key(name[13:].decode("latin-1"))] = value.decode("latin-1")


def from_request(fields: Iterable[tuple[bytes, bytes]]) -> Metainfo | None:
    """A server call's Metainfo from its request fields, set for the current task; None (and
    nothing set) when the call carries none."""
    items: list[tuple[int, str, str]] = []
    for name, value in fields:
        if name[:4] != b"rpc-":
            continue
        if name.startswith(b"rpc-persist-"):
            items.append((_mi.PERSIST, info_key(name[12:].decode("latin-1")), value.decode("latin-1")))
        elif name.startswith(b"rpc-transit-"):
            items.append((_mi.TRANSIT, info_key(name[12:].decode("latin-1")), value.decode("latin-1")))
    mi = _mi.received(items) if items else None
    if mi is not None:
        _mi.CURRENT.set(mi)
    return mi
