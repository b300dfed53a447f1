"""The per-request context: typed slots, not a dict.

Built-in slots are attributes of a ``__slots__`` class, so reading one on the hot
path is an attribute load (``ctx.route``). Users declare more with ``ContextSlot``
at module level::

    USER_ID = ContextSlot("user_id", str)

    USER_ID.set(ctx, "alice")      # typed: a str
    USER_ID.get(ctx)               # -> str; raises UnsetSlotError if no stage set it
    USER_ID.get(ctx, None)         # -> str | None

A request that never sets a declared slot pays nothing for them: their values live
in one dict made on the first ``set``. Which stage fills which slot is declared by
layers (``requires``/``provides``, slot objects or names) and checked when a stack is
built (see ``_service.Stack.check``).
"""

from __future__ import annotations

from typing import Any, Final, Generic, TypeVar, overload

from .._compiled import mypyc_attr

T = TypeVar("T")
D = TypeVar("D")

# Final module constants: mypyc keeps them in C statics (a plain global is a dict lookup per use).
SLOTS: Final = frozenset({"peer", "server", "start", "route", "cluster", "endpoint", "tls", "user"})
"""The built-in slot names (attributes of ``Context``)."""


class Context:
    """Per-request state shared by the stages of one request.

    peer: client address ("ip" or "unix"); server: server name; start: loop time the
    request head completed; route: the matched route; cluster: its upstream cluster;
    endpoint: the chosen upstream endpoint; tls: TLS info or None; user: a dict free for
    filters (deprecated: declare a ``ContextSlot`` instead, which is typed and checked).
    Values of declared slots are in ``user`` too, keyed by their slot object, so a
    request that sets none costs nothing more; replace ``user`` only if it is None.
    """

    __slots__ = ("cluster", "endpoint", "peer", "route", "server", "start", "tls", "user")

    def __init__(self, peer: str, server: str, start: float) -> None:
        self.peer = peer
        self.server = server
        self.start = start
        self.route: Any = None
        self.cluster: Any = None
        self.endpoint: Any = None
        self.tls: Any = None
        self.user: dict[Any, Any] | None = None


class UnsetSlotError(LookupError):
    """A declared context slot was read before any stage of this request set it."""


_MISSING: Final[Any] = object()

_declared: Final[dict[str, ContextSlot[Any]]] = {}
"""Name -> the slot most recently declared with it (a reloaded module's new object wins)."""


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled; users may subclass it
class ContextSlot(Generic[T]):
    """A typed per-request value that layers, filters and services share.

    Declare one at module level: ``USER_ID = ContextSlot("user_id", str)``. The type
    (``kind``) is for mypy, which takes ``T`` from it, and for readers; values are not
    checked at run time. Name it in a layer's ``requires``/``provides`` so that a stack
    where nothing provides it upstream of a stage that requires it fails to build. Two
    different slot objects with one name in the same stack are a build error too (one
    name declared again, by a reloaded module, is fine: names find the newest).
    """

    __slots__ = ("doc", "name", "type")

    def __init__(self, name: str, kind: type[T], doc: str = "") -> None:
        if not name.isidentifier():
            raise ValueError(f"context slot name {name!r} is not an identifier")
        if name in SLOTS:
            raise ValueError(f"context slot name {name!r} is a built-in slot (ctx.{name})")
        self.name = name
        self.type = kind
        self.doc = doc
        _declared[name] = self

    def __repr__(self) -> str:
        return f"ContextSlot({self.name!r}, {getattr(self.type, '__name__', self.type)})"

    @overload
    def get(self, ctx: Context) -> T: ...

    @overload
    def get(self, ctx: Context, default: D) -> T | D: ...

    def get(self, ctx: Context, default: Any = _MISSING) -> Any:
        """This request's value; ``default`` if unset, or UnsetSlotError without one."""
        values = ctx.user
        if values is not None:
            value = values.get(self, _MISSING)
            if value is not _MISSING:
                return value
        if default is _MISSING:
            raise UnsetSlotError(
                f"context slot {self.name!r} is not set for this request (a stage providing it must run first)"
            )
        return default

    def set(self, ctx: Context, value: T) -> None:
        values = ctx.user
        if values is None:
            ctx.user = {self: value}
        else:
            values[self] = value

    def is_set(self, ctx: Context) -> bool:
        values = ctx.user
        return values is not None and self in values


class BuiltinSlot(ContextSlot[Any]):
    """A built-in slot: an attribute of ``Context`` (read it as ``ctx.route``, faster)."""

    __slots__ = ()

    def __init__(self, name: str, kind: type[Any], doc: str = "") -> None:
        self.name = name
        self.type = kind
        self.doc = doc

    def get(self, ctx: Context, default: Any = _MISSING) -> Any:
        value = getattr(ctx, self.name)
        return default if value is None and default is not _MISSING else value

    def set(self, ctx: Context, value: Any) -> None:
        setattr(ctx, self.name, value)

    def is_set(self, ctx: Context) -> bool:
        return getattr(ctx, self.name) is not None


BUILTIN: Final[dict[str, BuiltinSlot]] = {name: BuiltinSlot(name, object) for name in sorted(SLOTS)}
"""The built-in slots as objects, for ``requires``/``provides`` lists."""


def lookup(name: str) -> ContextSlot[Any] | None:
    """The built-in or declared slot of that name, or None."""
    builtin = BUILTIN.get(name)
    return builtin if builtin is not None else _declared.get(name)


def declared_names() -> list[str]:
    """Every slot name a layer may name: built-in and declared, sorted."""
    return sorted({*SLOTS, *_declared})
