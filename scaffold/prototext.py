"""Descriptors as proto source, the way grpcurl's describe prints them (types fully qualified with
a leading dot, no comments: reflection does not carry them)."""

from __future__ import annotations

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)

from .schema import Symbol

_Field = descriptor_pb2.FieldDescriptorProto
_INDENT = "  "


def describe(symbol: Symbol) -> str:
    """``pkg.Name is a service:`` and the definition, as grpcurl describe prints it."""
    kind, lines = _definition(symbol)
    article = "an" if kind == "enum" else "a"
    return "\n".join([f"{symbol.full_name} is {article} {kind}:", *lines])


def _definition(symbol: Symbol) -> tuple[str, list[str]]:
    if isinstance(symbol, ServiceDescriptor):
        proto = descriptor_pb2.ServiceDescriptorProto()
        symbol.CopyToProto(proto)
        return "service", [
            f"service {proto.name} {{",
            *(_INDENT + _rpc(method) for method in proto.method),
            "}",
        ]
    if isinstance(symbol, MethodDescriptor):
        service = descriptor_pb2.ServiceDescriptorProto()
        symbol.containing_service.CopyToProto(service)
        method = next(m for m in service.method if m.name == symbol.name)
        return "method", [_rpc(method)]
    if isinstance(symbol, Descriptor):
        message = descriptor_pb2.DescriptorProto()
        symbol.CopyToProto(message)
        return "message", _message(message, _syntax(symbol))
    assert isinstance(symbol, EnumDescriptor)
    enum = descriptor_pb2.EnumDescriptorProto()
    symbol.CopyToProto(enum)
    return "enum", _enum(enum)


def _rpc(method: descriptor_pb2.MethodDescriptorProto) -> str:
    request = f"{'stream ' if method.client_streaming else ''}{method.input_type}"
    reply = f"{'stream ' if method.server_streaming else ''}{method.output_type}"
    return f"rpc {method.name} ( {request} ) returns ( {reply} );"


def _syntax(message: Descriptor) -> str:
    file = descriptor_pb2.FileDescriptorProto()
    message.file.CopyToProto(file)
    return file.syntax or "proto2"


def _message(message: descriptor_pb2.DescriptorProto, syntax: str) -> list[str]:
    maps = {
        nested.name: nested for nested in message.nested_type if nested.options.map_entry
    }  # map<K, V> fields are repeated fields of a generated entry message
    body: list[str | int] = []  # a line, or where a oneof (by index) goes: at its first field
    for nested in message.nested_type:
        if nested.name not in maps:
            body += _message(nested, syntax)
    for enum in message.enum_type:
        body += _enum(enum)
    oneofs: dict[int, list[str]] = {}
    for field in message.field:
        line = _field(field, maps, syntax)
        if not field.HasField("oneof_index") or field.proto3_optional:
            body.append(line)
            continue
        if field.oneof_index not in oneofs:
            body.append(field.oneof_index)
        oneofs.setdefault(field.oneof_index, []).append(line)
    lines = [f"message {message.name} {{"]
    for item in body:
        if isinstance(item, int):
            lines.append(f"{_INDENT}oneof {message.oneof_decl[item].name} {{")
            lines += [_INDENT * 2 + field for field in oneofs[item]]
            lines.append(_INDENT + "}")
        else:
            lines.append(_INDENT + item)
    return [*lines, "}"]


def _field(
    field: descriptor_pb2.FieldDescriptorProto,
    maps: dict[str, descriptor_pb2.DescriptorProto],
    syntax: str,
) -> str:
    entry = maps.get(field.type_name.rpartition(".")[2])
    if entry is not None and field.type == _Field.TYPE_MESSAGE:
        key, value = (_type(f) for f in entry.field)
        return f"map<{key}, {value}> {field.name} = {field.number};"
    label = ""
    if field.label == _Field.LABEL_REPEATED:
        label = "repeated "
    elif field.label == _Field.LABEL_REQUIRED:
        label = "required "
    elif field.proto3_optional or (syntax == "proto2" and not field.HasField("oneof_index")):
        label = "optional "
    return f"{label}{_type(field)} {field.name} = {field.number};"


def _type(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type in (_Field.TYPE_MESSAGE, _Field.TYPE_ENUM, _Field.TYPE_GROUP):
        return field.type_name
    return _Field.Type.Name(field.type).removeprefix("TYPE_").lower()


def _enum(enum: descriptor_pb2.EnumDescriptorProto) -> list[str]:
    values = [f"{_INDENT}{value.name} = {value.number};" for value in enum.value]
    return [f"enum {enum.name} {{", *values, "}"]
