from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class HelloRequest(_message.Message):
    __slots__ = ("name", "count", "delay_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DELAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    count: int
    delay_seconds: float
    def __init__(self, name: _Optional[str] = ..., count: _Optional[int] = ..., delay_seconds: _Optional[float] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("message", "served_by")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    message: str
    served_by: str
    def __init__(self, message: _Optional[str] = ..., served_by: _Optional[str] = ...) -> None: ...
