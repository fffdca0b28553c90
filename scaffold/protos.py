"""What ``gz new`` needs to know about a proto: its services, their methods and call kinds."""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2

from .errors import BadInput
from .gen import describe


def stub_module(proto_path: str) -> str:
    """The module protoc writes for the proto at PROTO_PATH (its path from the import root),
    dotted, with the ``_pb2`` suffix: protoc strips ``.proto``, makes ``-`` a ``_`` and each ``.``
    or ``/`` a package separator (``my-api.proto``: ``my_api_pb2``, ``shop.v1.proto``:
    ``shop.v1_pb2``, ``api/money.proto``: ``api.money_pb2``)."""
    return proto_path.removesuffix(".proto").replace("-", "_").replace("/", ".") + "_pb2"


def alias(module: str) -> str:
    """The name generated code imports a stub module as: ``shop.v1_pb2``: ``shop_v1_pb2``."""
    return module.replace(".", "_")


def import_lines(modules: Iterable[str], where: str) -> list[str]:
    """Import statements for stubs in the project's package (WHERE: ``.`` or its name), in
    isort's order: ``from WHERE import a_pb2`` for those at its top, ``from WHERE.shop import
    v1_pb2 as shop_v1_pb2`` for those in its folders."""
    top = sorted(module for module in modules if "." not in module)
    lines = [f"from {where} import {', '.join(top)}"] if top else []
    for module in sorted({module for module in modules if "." in module}):
        package, _, name = module.rpartition(".")
        lines.append(f"from {where.rstrip('.')}.{package} import {name} as {alias(module)}")
    return lines


@dataclass(frozen=True)
class MessageRef:
    module: str  # the Python module of the stub, e.g. "hello_pb2" or "google.protobuf.empty_pb2"
    local: bool  # generated in the project's package (imported relatively)
    path: str  # attribute path inside the module, e.g. "HelloRequest" or "Outer.Inner"

    @property
    def alias(self) -> str:
        """The name the generated code imports the module as."""
        return alias(self.module)

    @property
    def expression(self) -> str:
        return f"{self.alias}.{self.path}"


@dataclass(frozen=True)
class Method:
    service: str  # full name: greeter.v1.Greeter
    name: str
    request: MessageRef
    reply: MessageRef
    client_streaming: bool
    server_streaming: bool

    @property
    def kind(self) -> str:
        return {
            (False, False): "unary",
            (False, True): "server streaming",
            (True, False): "client streaming",
            (True, True): "bidirectional streaming",
        }[self.client_streaming, self.server_streaming]


@dataclass(frozen=True)
class Service:
    full_name: str
    name: str
    methods: tuple[Method, ...]


@dataclass(frozen=True)
class ProtoFile:
    path: Path
    services: tuple[Service, ...]
    siblings: tuple[Path, ...] = ()  # protos it imports from its import root (not well-known)
    module: str = ""  # its stub's module from the import root, e.g. shop.v1_pb2 (stub_module)
    root: Path = Path()  # its import root (gen.import_roots): the folder siblings are named from

    @property
    def grpc_module(self) -> str:
        """The name generated code imports its _grpc module as."""
        return alias(self.module) + "_grpc"

    @property
    def streaming(self) -> bool:
        return any(m.client_streaming or m.server_streaming for m in self.methods)

    @property
    def stub_module(self) -> str:
        """The name generated code imports its stub as (``alias`` of ``module``)."""
        return alias(self.module)

    def import_lines(self, modules: Iterable[str], where: str) -> list[str]:
        """``import_lines`` of ``modules`` and its _grpc module."""
        return import_lines([*modules, self.module + "_grpc"], where)

    @property
    def methods(self) -> list[Method]:
        return [method for service in self.services for method in service.methods]

    def imports(self, methods: Iterable[Method], replies: bool = True) -> Imports:
        """The modules defining the requests (and replies) of ``methods``, for import lines."""
        refs = [m.request for m in methods] + ([m.reply for m in methods] if replies else [])
        return Imports(
            installed=sorted({ref.module for ref in refs if not ref.local}),
            local=sorted({ref.module for ref in refs if ref.local}),
        )


@dataclass(frozen=True)
class Imports:
    installed: list[str]  # e.g. google.protobuf.empty_pb2, imported as google_protobuf_empty_pb2
    local: list[str]  # stubs generated in the project's package, imported relatively


def read_proto(path: Path) -> ProtoFile:
    """Services and methods of ``path``; BadInput if protoc rejects it or it has no service."""
    files = list(describe(path).file)
    main = files[-1]  # protoc lists imports first
    local = [file.name for file in files if not file.name.startswith(_WELL_KNOWN)]
    for name in local:  # generated code imports each by its module name: it must be one
        _check_module(name)
    owners = _message_owners(files, local)
    services = tuple(
        Service(
            full_name=_qualified(main.package, service.name),
            name=service.name,
            methods=tuple(
                Method(
                    service=_qualified(main.package, service.name),
                    name=method.name,
                    request=owners[method.input_type],
                    reply=owners[method.output_type],
                    client_streaming=method.client_streaming,
                    server_streaming=method.server_streaming,
                )
                for method in service.method
            ),
        )
        for service in main.service
    )
    if not services:
        raise BadInput(f"{path.name} defines no service: add one, e.g. service Hello {{ ... }}")
    names = [method.name for service in services for method in service.methods]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise BadInput(
            f"{path.name}: method {twice[0]} is in more than one service; a gz service class "
            "serves them all, so rename one"
        )
    root = path.resolve().parents[len(Path(main.name).parts) - 1]
    siblings = tuple(root / name for name in local if name != main.name)
    return ProtoFile(path, services, siblings, stub_module(main.name), root)


_WELL_KNOWN = "google/protobuf/"  # shipped with protobuf: imported from google.protobuf
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # ASCII: a file name is no NFKC identifier


def _check_module(proto_path: str) -> None:
    module = stub_module(proto_path)
    parts = module.split(".")
    if not all(_IDENTIFIER.fullmatch(part) and not keyword.iskeyword(part) for part in parts):
        raise BadInput(
            f"{proto_path}: protoc would name its stub {module!r}, which Python cannot import; "
            "rename it to letters, digits and '_', e.g. hello.proto"
        )


def _qualified(package: str, name: str) -> str:
    return f"{package}.{name}" if package else name


def _message_owners(
    files: list[descriptor_pb2.FileDescriptorProto], local: list[str]
) -> dict[str, MessageRef]:
    """``.pkg.Message`` -> where its Python class lives, for every message of every file."""
    owners: dict[str, MessageRef] = {}
    for file in files:
        is_local = file.name in local
        module = stub_module(file.name)
        prefix = f".{file.package}." if file.package else "."

        def add(messages: list[descriptor_pb2.DescriptorProto], outer: str) -> None:
            for message in messages:
                path = f"{outer}{message.name}"
                owners[prefix + path] = MessageRef(module, is_local, path)  # noqa: B023
                add(list(message.nested_type), f"{path}.")

        add(list(file.message_type), "")
    return owners
