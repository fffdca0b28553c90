from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Nothing(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Received(_message.Message):
    __slots__ = ("text", "binary")
    class TextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class BinaryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BINARY_FIELD_NUMBER: _ClassVar[int]
    text: _containers.ScalarMap[str, str]
    binary: _containers.ScalarMap[str, bytes]
    def __init__(self, text: _Optional[_Mapping[str, str]] = ..., binary: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "note", "kind", "text", "number", "tag", "extras")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Event.Kind]
        KIND_LAST: _ClassVar[Event.Kind]
    KIND_UNSPECIFIED: Event.Kind
    KIND_LAST: Event.Kind
    SEQ_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    EXTRAS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    note: str
    kind: Event.Kind
    text: str
    number: int
    tag: str
    extras: _containers.RepeatedCompositeFieldContainer[Nothing]
    def __init__(self, seq: _Optional[int] = ..., note: _Optional[str] = ..., kind: _Optional[_Union[Event.Kind, str]] = ..., text: _Optional[str] = ..., number: _Optional[int] = ..., tag: _Optional[str] = ..., extras: _Optional[_Iterable[_Union[Nothing, _Mapping]]] = ...) -> None: ...
