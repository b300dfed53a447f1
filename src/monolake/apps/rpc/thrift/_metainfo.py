"""Thrift's names for metainfo: TTHeader string headers (Kitex's and Volo's convention).

The values and the rules (persistent to every hop, transient to the next, backward to
the caller) are ``apps/rpc/_metainfo``'s, shared with gRPC: a value a gRPC caller sets
reaches a Thrift callee and the reverse. Here they only get their TTHeader names, the key
as given after a prefix: ``RPC_PERSIST_<key>``, ``RPC_TRANSIT_<key>``, ``RPC_BACKWARD_<key>``.

``metainfo()`` inside a handler is that call's ``Metainfo`` (every call runs in its own
context), and a ``ThriftClient`` used from inside it reads what to pass on from there.
Frames without info blocks cost nothing: the headers are read only when present.
"""

from __future__ import annotations

from .. import _metainfo as _mi
from .._metainfo import MAX_BYTES as MAX_BYTES
from .._metainfo import Metainfo as Metainfo

PERSIST = "RPC_PERSIST_"
TRANSIT = "RPC_TRANSIT_"
BACKWARD = "RPC_BACKWARD_"
_PREFIX = {_mi.PERSIST: PERSIST, _mi.TRANSIT: TRANSIT}

current = _mi.CURRENT
"""The shared ContextVar of the call being served (gRPC's too)."""

metainfo = _mi.current


def from_headers(headers: dict[str, str]) -> Metainfo:
    """What a server received: persistent and transient values of a call's headers."""
    items: list[tuple[int, str, str]] = []
    for k, v in headers.items():
        if k.startswith(PERSIST):
            items.append((_mi.PERSIST, k[len(PERSIST) :], v))
        elif k.startswith(TRANSIT):
            items.append((_mi.TRANSIT, k[len(TRANSIT) :], v))
    return _mi.received(items) or Metainfo()


def forward_headers(mi: Metainfo | None, extra: dict[str, str] | None = None) -> dict[str, str] | None:
    """The headers a call from ``mi``'s context carries (``extra``: transient values for this
    call only). Raises ValueError over ``MAX_BYTES``."""
    if mi is None and not extra:
        return None
    out = {_PREFIX[kind] + k: v for kind, k, v in _mi.forward(mi, extra)}
    if not out:
        return None
    _mi.check_size(out.items())
    return out


def backward_headers(mi: Metainfo | None) -> dict[str, str] | None:
    if mi is None or not mi.backward:
        return None
    return {BACKWARD + k: v for k, v in _mi.backward(mi)}


def read_backward(headers: dict[str, str]) -> dict[str, str]:
    return {k[len(BACKWARD) :]: v for k, v in headers.items() if k.startswith(BACKWARD)}
