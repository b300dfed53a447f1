"""Service, Layer, Factory and Stack: the onion every proxy is built from.

A ``Service`` is anything with ``async def __call__(self, req) -> resp``. A
``Layer`` turns one service into another (timeouts, limits, panic catching). A
``Stack`` lists layers outermost first over a leaf ``Factory`` and builds the chain
innermost first.

Rebuilding is how hot reload keeps state: ``Stack.build(old)`` walks the old
chain's ``inner`` links down to its leaf and hands that to ``leaf.make(old)``, so a
leaf (the proxy and its upstream pools) can carry over what it owns.

Requirements are checked at build time: every layer names the context slots it
``requires`` and ``provides``; a slot required but not provided by the server or a
layer outside it is a ``ConfigError`` naming the layer and the slot, raised before
any socket is bound.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from ..errors import ConfigError
from ._context import SLOTS

Req = TypeVar("Req", contravariant=True)
Resp = TypeVar("Resp", covariant=True)
S = TypeVar("S")


class Service(Protocol[Req, Resp]):
    """An async function of a request, possibly with state."""

    async def __call__(self, req: Req, /) -> Resp: ...


class Factory(ABC, Generic[S]):
    """Builds a service, optionally from the one it replaces."""

    requires: frozenset[str] = frozenset()
    provides: frozenset[str] = frozenset()

    @abstractmethod
    def make(self, old: S | None) -> S:
        """Return a new service. ``old`` is the service this one replaces (same
        factory type), whose state (pools, counters) may be kept."""


class Layer(ABC):
    """Wraps a service. Built services must expose the wrapped one as ``.inner``."""

    requires: frozenset[str] = frozenset()
    provides: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return type(self).__name__

    @abstractmethod
    def layer(self, inner: Any) -> Any:
        """Return a service that wraps ``inner``."""


def _check_slots(owner: str, names: Iterable[str]) -> None:
    for slot in names:
        if slot not in SLOTS:
            raise ConfigError(owner, f"declares unknown context slot {slot!r} (known: {', '.join(sorted(SLOTS))})")


class Stack(Generic[S]):
    """Layers outermost first, over a leaf factory.

    ``provided`` are the slots the driver (the server) fills before calling the chain.
    """

    def __init__(self, layers: Sequence[Layer], leaf: Factory[S], *, provided: Iterable[str] = ()):
        self.layers = list(layers)
        self.leaf = leaf
        self.provided = frozenset(provided)

    def check(self) -> None:
        """Raise ConfigError if some layer requires a slot no outer stage provides."""
        _check_slots("the server driver", self.provided)
        have = set(self.provided)
        stages: list[tuple[str, frozenset[str], frozenset[str]]] = [
            (layer.name, layer.requires, layer.provides) for layer in self.layers
        ]
        stages.append((type(self.leaf).__name__, self.leaf.requires, self.leaf.provides))
        for name, requires, provides in stages:
            _check_slots(name, requires | provides)
            missing = sorted(requires - have)
            if missing:
                raise ConfigError(name, f"requires context slot {missing[0]!r}, which nothing outside it provides")
            have |= provides

    def build(self, old: Any = None) -> Any:
        """Check requirements, then build the chain innermost first, reusing ``old``'s leaf."""
        self.check()
        old_leaf = old
        while old_leaf is not None and hasattr(old_leaf, "inner"):
            old_leaf = old_leaf.inner
        if old_leaf is not None and type(old_leaf) is not getattr(self.leaf, "service_type", type(old_leaf)):
            old_leaf = None
        svc: Any = self.leaf.make(old_leaf)
        for layer in reversed(self.layers):
            svc = layer.layer(svc)
        return svc
