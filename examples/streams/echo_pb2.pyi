from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResponseBehavior(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNARY: _ClassVar[ResponseBehavior]
    STREAM: _ClassVar[ResponseBehavior]
UNARY: ResponseBehavior
STREAM: ResponseBehavior

class Request(_message.Message):
    __slots__ = ("request_id", "code", "body", "response_behavior")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BEHAVIOR_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    code: int
    body: EchoRequest
    response_behavior: ResponseBehavior
    def __init__(self, request_id: _Optional[int] = ..., code: _Optional[int] = ..., body: _Optional[_Union[EchoRequest, _Mapping]] = ..., response_behavior: _Optional[_Union[ResponseBehavior, str]] = ...) -> None: ...

class EchoRequest(_message.Message):
    __slots__ = ("message", "nanotime")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NANOTIME_FIELD_NUMBER: _ClassVar[int]
    message: str
    nanotime: int
    def __init__(self, message: _Optional[str] = ..., nanotime: _Optional[int] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("request_id", "code", "echo", "stream")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ECHO_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    code: int
    echo: EchoResponse
    stream: EchoStream
    def __init__(self, request_id: _Optional[int] = ..., code: _Optional[int] = ..., echo: _Optional[_Union[EchoResponse, _Mapping]] = ..., stream: _Optional[_Union[EchoStream, _Mapping]] = ...) -> None: ...

class EchoResponse(_message.Message):
    __slots__ = ("message", "nanotime")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NANOTIME_FIELD_NUMBER: _ClassVar[int]
    message: str
    nanotime: int
    def __init__(self, message: _Optional[str] = ..., nanotime: _Optional[int] = ...) -> None: ...

class EchoStream(_message.Message):
    __slots__ = ("message", "nanotime", "sequence")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NANOTIME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    message: str
    nanotime: int
    sequence: int
    def __init__(self, message: _Optional[str] = ..., nanotime: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...
