"""Metainfo for Thrift and gRPC alike: the values and the persist/transit/backward rules, once.

Values travel beside the calls of a chain, as Kitex and Volo carry them:

- persistent: set by any caller, it reaches every hop after it: a server that calls on
  from inside a call passes what it received, with what it added;
- transient: reaches the next hop only: the server reads it (``upstream``), but its own
  calls do not pass it on; it sets its own (``transient``) for its callees;
- backward: a server sets it while answering; it comes back with the reply to the
  caller (``received_backward``), one hop only.

The values of the call being served live in one ``ContextVar`` (``CURRENT``) shared by
both protocols: a gRPC handler that calls a Thrift service (or the reverse) passes its
persistent values on. Each protocol only names them on its wire (``thrift/_metainfo``:
TTHeader string headers ``RPC_PERSIST_KEY``; ``grpc/_metainfo``: metadata
``rpc-persist-key``, keys upper case with underscores in Python, lower case with dashes
on the wire), through ``forward``, ``backward`` and ``received``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextvars import ContextVar

PERSIST, TRANSIT, BACKWARD = 0, 1, 2
"""The three kinds (what a protocol maps onto its prefixes)."""

MAX_BYTES = 65536
"""Most bytes of metainfo keys and values sent with one call (TTHeader's header limit is 64 KiB)."""


class Metainfo:
    """The metainfo of one call in flight (server side) or of a caller's context.

    ``persistent``: values that go to every later hop (received ones included);
    ``transient``: values this hop sets for its next calls only; ``upstream``: the
    transient values the caller sent us (never passed on); ``backward``: values a
    server sends back with its reply; ``received_backward``: what calls made from this
    context brought back.
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

    def get_persistent(self, key: str) -> str | None:
        return self.persistent.get(key)

    def get_transient(self, key: str) -> str | None:
        """A transient value the caller sent this hop (or one set here for the next)."""
        v = self.upstream.get(key)
        return v if v is not None else self.transient.get(key)

    def get_backward(self, key: str) -> str | None:
        """A value a callee sent back."""
        return self.received_backward.get(key)

    # gRPC's first names for two of the fields.
    @property
    def upstream_transient(self) -> dict[str, str]:
        return self.upstream

    @property
    def backward_out(self) -> dict[str, str]:
        return self.backward

    def __repr__(self) -> str:
        return (
            f"Metainfo(persistent={self.persistent!r}, transient={self.transient!r}, upstream={self.upstream!r}, "
            f"backward={self.backward!r}, received_backward={self.received_backward!r})"
        )


def _check(key: str, value: str) -> None:
    if not key or not value:
        raise ValueError("metainfo keys and values must be non-empty strings")


CURRENT: ContextVar[Metainfo | None] = ContextVar("monolake_rpc_metainfo", default=None)


def current() -> Metainfo:
    """The current call's ``Metainfo`` (inside a handler), else this context's (made on first use)."""
    mi = CURRENT.get()
    if mi is None:
        mi = Metainfo()
        CURRENT.set(mi)
    return mi


def peek() -> Metainfo | None:
    """This context's Metainfo if it has one (no allocation)."""
    return CURRENT.get()


def reset() -> None:
    """Forget this context's Metainfo (a fresh call chain)."""
    CURRENT.set(None)


# -- the rules -----------------------------------------------------------------------------


def forward(mi: Metainfo | None, extra: dict[str, str] | None = None) -> Iterator[tuple[int, str, str]]:
    """(kind, key, value) a call made from ``mi``'s context carries: every persistent value and
    this hop's own transient ones (never the caller's), plus ``extra`` transient values for
    this call only."""
    if mi is not None:
        for k, v in mi.persistent.items():
            yield PERSIST, k, v
        for k, v in mi.transient.items():
            yield TRANSIT, k, v
    if extra:
        for k, v in extra.items():
            yield TRANSIT, k, v


def backward(mi: Metainfo | None) -> Iterator[tuple[str, str]]:
    """(key, value) a server sends back with its reply."""
    if mi is not None:
        yield from mi.backward.items()


def received(items: Iterable[tuple[int, str, str]]) -> Metainfo | None:
    """A server call's Metainfo from the (kind, key, value) it received: persistent values stay
    persistent, transient ones are the caller's (``upstream``). None when there are none."""
    mi: Metainfo | None = None
    for kind, k, v in items:
        if mi is None:
            mi = Metainfo()
        if kind == PERSIST:
            mi.persistent[k] = v
        elif kind == TRANSIT:
            mi.upstream[k] = v
    return mi


def check_size(fields: Iterable[tuple[str, str]]) -> None:
    """Raises ValueError when the fields (wire names and values) pass ``MAX_BYTES``."""
    if sum(len(k) + len(v) for k, v in fields) > MAX_BYTES:
        raise ValueError(f"metainfo over {MAX_BYTES} bytes")
