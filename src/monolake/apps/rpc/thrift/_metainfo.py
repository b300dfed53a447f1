"""Metainfo: string values carried beside a call in TTHeader headers (Kitex's and Volo's convention).

Three kinds, told apart on the wire by a key prefix (the same prefixes as Kitex's
``metainfo`` package, which Volo follows):

- ``RPC_PERSIST_<key>``: persistent. Set by any caller, it reaches every hop after
  it: a server that calls on from inside a call passes it on by itself.
- ``RPC_TRANSIT_<key>``: transient. It reaches the next hop only: the server reads
  it, but its own calls do not pass it on (Kitex keeps it as "transient-upstream").
- ``RPC_BACKWARD_<key>``: backward. A server sets it while answering; it comes back
  in the reply's headers to the caller, one hop only.

The values of the call being served live in a ``contextvars.ContextVar``: every
call runs in its own context (an async handler in its own task), so ``metainfo()``
inside a handler is that call's ``Metainfo``, and a ``ThriftClient`` used from
inside it reads what to pass on from there. Outside a server call, ``metainfo()``
makes one for the current context (a client-only program sets values on it).
Frames without info blocks cost nothing: the headers are read only when present.
"""

from __future__ import annotations

from contextvars import ContextVar

PERSIST = "RPC_PERSIST_"
TRANSIT = "RPC_TRANSIT_"
BACKWARD = "RPC_BACKWARD_"
MAX_BYTES = 65536
"""Most bytes of metainfo keys and values sent with one call (TTHeader's header limit is 64 KiB)."""


class Metainfo:
    """The metainfo of one call in flight (server side) or of a caller's context.

    ``persistent``: values that go to every later hop (received ones included);
    ``transient``: values this hop sets for its next calls only; ``upstream``: the
    transient values the caller sent us (read with ``get``, never passed on);
    ``backward``: values a server sends back with its reply; ``received_backward``:
    what the last call made from this context brought back.
    """

    __slots__ = ("backward", "persistent", "received_backward", "transient", "upstream")

    def __init__(self) -> None:
        self.persistent: dict[str, str] = {}
        self.transient: dict[str, str] = {}
        self.upstream: dict[str, str] = {}
        self.backward: dict[str, str] = {}
        self.received_backward: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        """A forward value by key: transient (ours, then the caller's) first, then persistent."""
        v = self.transient.get(key)
        if v is None:
            v = self.upstream.get(key)
        if v is None:
            v = self.persistent.get(key)
        return v

    def set_persistent(self, key: str, value: str) -> None:
        _check(key, value)
        self.persistent[key] = value

    def set_transient(self, key: str, value: str) -> None:
        _check(key, value)
        self.transient[key] = value

    def set_backward(self, key: str, value: str) -> None:
        """Send ``key`` back to the caller with this call's reply (server side)."""
        _check(key, value)
        self.backward[key] = value

    def __repr__(self) -> str:
        return (
            f"Metainfo(persistent={self.persistent!r}, transient={self.transient!r}, upstream={self.upstream!r}, "
            f"backward={self.backward!r}, received_backward={self.received_backward!r})"
        )


def _check(key: str, value: str) -> None:
    if not key or not value:
        raise ValueError("metainfo keys and values must be non-empty strings")


current: ContextVar[Metainfo | None] = ContextVar("monolake_rpc_metainfo", default=None)


def metainfo() -> Metainfo:
    """The current call's ``Metainfo`` (inside a handler), else this context's (made on first use)."""
    mi = current.get()
    if mi is None:
        mi = Metainfo()
        current.set(mi)
    return mi


def from_headers(headers: dict[str, str]) -> Metainfo:
    """What a server received: persistent and transient values of a call's headers."""
    mi = Metainfo()
    for k, v in headers.items():
        if k.startswith(PERSIST):
            mi.persistent[k[len(PERSIST) :]] = v
        elif k.startswith(TRANSIT):
            mi.upstream[k[len(TRANSIT) :]] = v
    return mi


def forward_headers(mi: Metainfo | None, extra: dict[str, str] | None = None) -> dict[str, str] | None:
    """The headers a call from ``mi``'s context carries: persistent and our own transient values.

    ``extra``: transient values for this call only. Raises ValueError over ``MAX_BYTES``.
    """
    if mi is None and not extra:
        return None
    out: dict[str, str] = {}
    if mi is not None:
        for k, v in mi.persistent.items():
            out[PERSIST + k] = v
        for k, v in mi.transient.items():
            out[TRANSIT + k] = v
    if extra:
        for k, v in extra.items():
            out[TRANSIT + k] = v
    if not out:
        return None
    if sum(len(k) + len(v) for k, v in out.items()) > MAX_BYTES:
        raise ValueError(f"metainfo over {MAX_BYTES} bytes")
    return out


def backward_headers(mi: Metainfo | None) -> dict[str, str] | None:
    if mi is None or not mi.backward:
        return None
    return {BACKWARD + k: v for k, v in mi.backward.items()}


def read_backward(headers: dict[str, str]) -> dict[str, str]:
    return {k[len(BACKWARD) :]: v for k, v in headers.items() if k.startswith(BACKWARD)}
