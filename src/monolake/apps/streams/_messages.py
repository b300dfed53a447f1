"""The RPC envelope: a message id and a control code, read through the user's message type.

protosocket-rpc adds nothing to the wire: every request and response carries a u64
id and a control code in fields of the user's own message type, and the framework
reads and writes them through accessors (its ``Message`` trait). ``RpcMessages`` is
that trait as an object: ``Fields`` implements it for any message class with an id
and a code attribute (protobuf messages, msgspec Structs, dataclasses).

Control codes (protosocket's ``ProtosocketControlCode``): 0 normal (a call, or one of
its replies), 1 cancel (the caller gave up, or the server aborted the call), 2 end (a
server stream is over). An unknown code reads as cancel, as in protosocket.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")

NORMAL = 0
CANCEL = 1
END = 2


class RpcMessages(Protocol[T]):
    """How the RPC layer reads and makes messages of type ``T`` (protosocket-rpc's ``Message``)."""

    def message_id(self, message: T, /) -> int: ...

    def control_code(self, message: T, /) -> int:
        """0 normal, 1 cancel, 2 end (anything else is read as cancel)."""
        ...

    def set_message_id(self, message: T, message_id: int, /) -> None: ...

    def cancelled(self, message_id: int, /) -> T:
        """A message of this type saying "cancel call ``message_id``"."""
        ...

    def ended(self, message_id: int, /) -> T:
        """A message of this type saying "the stream of call ``message_id`` is over"."""
        ...


class Fields(Generic[T]):
    """``RpcMessages`` over two attributes of ``message_type``: the id (``id_field``) and the
    control code (``code_field``; None: the type has none, and a message whose ``body_field``
    is unset reads as a cancel, as protosocket's first example-proto did).

    ``cancelled``/``ended`` build ``message_type(**{id_field: id, code_field: code})``.
    """

    __slots__ = ("_get_code", "_get_id", "body_field", "code_field", "id_field", "message_type")

    def __init__(
        self,
        message_type: type[T],
        *,
        id_field: str = "request_id",
        code_field: str | None = "code",
        body_field: str | None = None,
    ) -> None:
        self.message_type = message_type
        self.id_field = id_field
        self.code_field = code_field
        self.body_field = body_field
        self._get_id = attrgetter(id_field)  # called per message: no name lookup by string each time
        self._get_code = attrgetter(code_field) if code_field is not None else None

    def message_id(self, message: T, /) -> int:
        return int(self._get_id(message))

    def control_code(self, message: T, /) -> int:
        get = self._get_code
        if get is not None:
            code = int(get(message))
            return code if code <= END else CANCEL
        body = self.body_field
        if body is not None and not _has(message, body):
            return CANCEL
        return NORMAL

    def set_message_id(self, message: T, message_id: int, /) -> None:
        setattr(message, self.id_field, message_id)

    def _make(self, message_id: int, code: int) -> T:
        kw: dict[str, Any] = {self.id_field: message_id}
        if self.code_field is not None:
            kw[self.code_field] = code
        return self.message_type(**kw)

    def cancelled(self, message_id: int, /) -> T:
        return self._make(message_id, CANCEL)

    def ended(self, message_id: int, /) -> T:
        return self._make(message_id, END)


def _has(message: Any, field: str) -> bool:
    has = getattr(message, "HasField", None)
    if has is not None:  # protobuf: a submessage is "set" or not
        return bool(has(field))
    return getattr(message, field, None) is not None
