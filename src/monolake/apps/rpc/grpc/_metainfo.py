"""Metainfo: values that travel beside the messages of a call chain, as Volo/Kitex carry them.

Three kinds, carried as gRPC metadata with the prefixes Volo's ``metainfo`` crate and
Kitex use for HTTP-style headers:

- persistent (``rpc-persist-KEY``): set by a caller, it reaches every hop below it: a
  server that calls on passes what it received, with what it added;
- transient (``rpc-transit-KEY``): reaches the next hop only: a server sees what its
  caller set (``upstream_transient``) but does not pass it on; it sets its own for its
  callees;
- backward (``rpc-backward-KEY``): set by a server for its caller, sent back with the
  answer (in the trailers); the caller reads it after the call (``backward``).

Keys are kept as Volo keeps them: upper case with underscores (``TRACE_ID``), and go
on the wire lower case with dashes (``rpc-persist-trace-id``); that is also how the
TTHeader side (``RPC_PERSIST_TRACE_ID``) names them, so a value crosses protocols.

The current ``MetaInfo`` is a context variable: a server call sets it for its handler's
task, a client call made from that task reads it. Nothing is built for a call without
``rpc-`` metadata until a handler asks for ``current()``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable

PERSIST = "rpc-persist-"
TRANSIT = "rpc-transit-"
BACKWARD = "rpc-backward-"


def wire_key(key: str) -> str:
    """ "TRACE_ID" -> "trace-id" (the part after the prefix)."""
    return key.replace("_", "-").lower()


def info_key(wire: str) -> str:
    """ "trace-id" -> "TRACE_ID"."""
    return wire.replace("-", "_").upper()


class MetaInfo:
    """The metainfo of one call's task (see the module docstring)."""

    __slots__ = ("backward", "backward_out", "persistent", "transient", "upstream_transient")

    def __init__(self) -> None:
        self.persistent: dict[str, str] = {}
        """Received from the caller or set here: sent to every callee."""
        self.transient: dict[str, str] = {}
        """Set here for the next hop: sent to callees."""
        self.upstream_transient: dict[str, str] = {}
        """Received from the caller for this hop only: not sent on."""
        self.backward_out: dict[str, str] = {}
        """Set by a handler: sent back to its caller."""
        self.backward: dict[str, str] = {}
        """Received back from callees."""

    def set_persistent(self, key: str, value: str) -> None:
        self.persistent[key] = value

    def set_transient(self, key: str, value: str) -> None:
        self.transient[key] = value

    def set_backward(self, key: str, value: str) -> None:
        """(In a handler) send ``key`` back to the caller."""
        self.backward_out[key] = value

    def get_persistent(self, key: str) -> str | None:
        return self.persistent.get(key)

    def get_transient(self, key: str) -> str | None:
        """A transient value the caller sent this hop (or one set here for the next)."""
        v = self.upstream_transient.get(key)
        return v if v is not None else self.transient.get(key)

    def get_backward(self, key: str) -> str | None:
        """A value a callee sent back."""
        return self.backward.get(key)

    # -- wire --------------------------------------------------------------------------

    def outgoing(self) -> list[tuple[bytes, bytes]]:
        """Request fields for a call made from this task: persistent and transient values."""
        out = [((PERSIST + wire_key(k)).encode(), v.encode()) for k, v in self.persistent.items()]
        out += [((TRANSIT + wire_key(k)).encode(), v.encode()) for k, v in self.transient.items()]
        return out

    def backward_fields(self) -> list[tuple[bytes, bytes]]:
        return [((BACKWARD + wire_key(k)).encode(), v.encode()) for k, v in self.backward_out.items()]

    def take_backward(self, fields: Iterable[tuple[bytes, bytes]]) -> None:
        for name, value in fields:
            if name.startswith(b"rpc-backward-"):
                self.backward[info_key(name[13:].decode("latin-1"))] = value.decode("latin-1")


_CURRENT: contextvars.ContextVar[MetaInfo | None] = contextvars.ContextVar("monolake_rpc_metainfo", default=None)


def current() -> MetaInfo:
    """This task's MetaInfo (made, and set for the task, on first use)."""
    mi = _CURRENT.get()
    if mi is None:
        mi = MetaInfo()
        _CURRENT.set(mi)
    return mi


def peek() -> MetaInfo | None:
    """This task's MetaInfo if it has one (no allocation)."""
    return _CURRENT.get()


def from_request(fields: Iterable[tuple[bytes, bytes]]) -> MetaInfo | None:
    """A server call's MetaInfo from its request fields, set for the current task; None (and
    nothing set) when the call carries none."""
    mi: MetaInfo | None = None
    for name, value in fields:
        if name[:4] != b"rpc-":
            continue
        if name.startswith(b"rpc-persist-"):
            mi = mi or MetaInfo()
            mi.persistent[info_key(name[12:].decode("latin-1"))] = value.decode("latin-1")
        elif name.startswith(b"rpc-transit-"):
            mi = mi or MetaInfo()
            mi.upstream_transient[info_key(name[12:].decode("latin-1"))] = value.decode("latin-1")
    if mi is not None:
        _CURRENT.set(mi)
    return mi


def reset() -> None:
    """Forget this task's MetaInfo (a fresh call chain)."""
    _CURRENT.set(None)
