"""Service, Layer, Factory and Stack: the onion every proxy is built from.

A ``Service[Req, Resp]`` is anything with ``async def __call__(self, req: Req) -> Resp``.
A ``Layer[Req, Resp]`` turns one such service into another of the same types
(timeouts, limits, panic catching); the protocol-agnostic layers are
``Layer[Any, Any]`` whose ``layer`` method keeps whatever types it is given. A
``Stack[Req, Resp]`` lists layers outermost first over a leaf ``Factory`` of a
``Service[Req, Resp]`` and builds the chain innermost first. All of it is typing
only: a wrong chain (a layer or leaf of other request/response types) is a mypy
error, and nothing is checked or wrapped per request.

Rebuilding is how hot reload keeps state: ``Stack.build(old)`` walks the old
chain's ``inner`` links down to its leaf and hands that to ``leaf.make(old)``, so a
leaf (the proxy and its upstream pools) can carry over what it owns.

Requirements are checked at build time: every layer names the context slots it
``requires`` and ``provides`` (``ContextSlot`` objects or names of built-in or
declared slots); a slot required but not provided by the server or a layer outside
it is a ``ConfigError`` naming the layer and the slot, raised before any socket is
bound.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from ..errors import ConfigError
from ._context import ContextSlot, declared_names, lookup

_T = TypeVar("_T")

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # only mypyc reads it (users subclass Layer and Factory); no runtime dependency

    def mypyc_attr(*attrs: str, **kwattrs: object) -> Callable[[_T], _T]:
        return lambda cls: cls


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Req_contra = TypeVar("Req_contra", contravariant=True)
Resp_co = TypeVar("Resp_co", covariant=True)
S_co = TypeVar("S_co", covariant=True)

SlotRef = str | ContextSlot[Any]
"""How a layer names a context slot: the slot object, or its name."""


class Service(Protocol[Req_contra, Resp_co]):
    """An async function of a request, possibly with state."""

    async def __call__(self, req: Req_contra, /) -> Resp_co: ...


@mypyc_attr(allow_interpreted_subclasses=True)  # users subclass it
class Factory(ABC, Generic[S_co]):
    """Builds a service, optionally from the one it replaces.

    ``Factory[MyService]`` is a ``Factory[Service[Req, Resp]]`` when ``MyService``
    is a ``Service[Req, Resp]``. Set ``service_type`` to the class ``make`` returns
    so that a rebuild hands over ``old`` only when it is one.
    """

    requires: Collection[SlotRef] = frozenset()
    provides: Collection[SlotRef] = frozenset()
    service_type: ClassVar[type[Any] | None] = None

    @abstractmethod
    def make(self, old: Any) -> S_co:
        """Return a new service. ``old`` is the service this one replaces (of
        ``service_type`` when set) or None; its state (pools, counters) may be kept.
        Subclasses annotate it as ``MyService | None``."""


@mypyc_attr(allow_interpreted_subclasses=True)  # users subclass it
class Layer(ABC, Generic[Req, Resp]):
    """Wraps a service. Built services must expose the wrapped one as ``.inner``.

    A layer for one protocol subclasses ``Layer[Request, Response]``; a layer for any
    subclasses ``Layer[Any, Any]`` and types ``layer`` with its own type variables.
    """

    requires: Collection[SlotRef] = frozenset()
    provides: Collection[SlotRef] = frozenset()

    @property
    def name(self) -> str:
        return type(self).__name__

    @abstractmethod
    def layer(self, inner: Service[Req, Resp]) -> Service[Req, Resp]:
        """Return a service that wraps ``inner``."""


def _resolve(owner: str, refs: Iterable[SlotRef], seen: dict[str, ContextSlot[Any]]) -> set[ContextSlot[Any]]:
    out: set[ContextSlot[Any]] = set()
    for ref in refs:
        if isinstance(ref, ContextSlot):
            slot: ContextSlot[Any] = ref
        else:
            found = lookup(ref)
            if found is None:
                known = ", ".join(declared_names())
                raise ConfigError(owner, f"declares unknown context slot {ref!r} (known: {known})")
            slot = found
        other = seen.setdefault(slot.name, slot)
        if other is not slot:
            raise ConfigError(owner, f"declares context slot {slot.name!r}, but another slot of that name is in use")
        out.add(slot)
    return out


def _slots_of(stage: object, attr: str) -> Collection[SlotRef]:
    # A generic lookup, not ``stage.requires``: compiled with mypyc, that would read the
    # base class's default and miss a (Python) subclass's class-level declaration.
    slots: Collection[SlotRef] = getattr(stage, attr)
    return slots


class Stack(Generic[Req, Resp]):
    """Layers outermost first, over a leaf factory.

    ``provided`` are the slots the driver (the server) fills before calling the chain.
    """

    def __init__(
        self,
        layers: Sequence[Layer[Req, Resp]],
        leaf: Factory[Service[Req, Resp]],
        *,
        provided: Iterable[SlotRef] = (),
    ) -> None:
        self.layers = list(layers)
        self.leaf = leaf
        self.provided = tuple(provided)

    def check(self) -> None:
        """Raise ConfigError if some layer requires a slot no outer stage provides, names an
        unknown slot, or two stages name different slots of one name."""
        seen: dict[str, ContextSlot[Any]] = {}
        have = _resolve("the server driver", self.provided, seen)
        stages: list[tuple[str, Collection[SlotRef], Collection[SlotRef]]] = [
            (layer.name, _slots_of(layer, "requires"), _slots_of(layer, "provides")) for layer in self.layers
        ]
        leaf = self.leaf
        stages.append((type(leaf).__name__, _slots_of(leaf, "requires"), _slots_of(leaf, "provides")))
        for name, requires, provides in stages:
            required = _resolve(name, requires, seen)
            provided = _resolve(name, provides, seen)
            missing = sorted(slot.name for slot in required - have)
            if missing:
                raise ConfigError(name, f"requires context slot {missing[0]!r}, which nothing outside it provides")
            have |= provided

    def build(self, old: Any = None) -> Service[Req, Resp]:
        """Check requirements, then build the chain innermost first, reusing ``old``'s leaf."""
        self.check()
        old_leaf = old
        while old_leaf is not None and hasattr(old_leaf, "inner"):
            old_leaf = old_leaf.inner
        want = self.leaf.service_type
        if old_leaf is not None and want is not None and type(old_leaf) is not want:
            old_leaf = None
        svc = self.leaf.make(old_leaf)
        for layer in reversed(self.layers):
            svc = layer.layer(svc)
        return svc
