"""What ``gz new`` needs to know about a proto: its services, their methods and call kinds."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2

from .errors import BadInput
from .gen import describe


@dataclass(frozen=True)
class MessageRef:
    module: str  # the Python module of the stub, e.g. "hello_pb2" or "google.protobuf.empty_pb2"
    local: bool  # generated in the project's package (imported relatively)
    path: str  # attribute path inside the module, e.g. "HelloRequest" or "Outer.Inner"

    @property
    def alias(self) -> str:
        """The name the generated code imports the module as."""
        return self.module.replace(".", "_") if not self.local else self.module

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
    siblings: tuple[Path, ...] = ()  # protos next to it that it imports

    @property
    def grpc_module(self) -> str:
        return f"{self.path.stem}_pb2_grpc"

    @property
    def streaming(self) -> bool:
        return any(m.client_streaming or m.server_streaming for m in self.methods)

    @property
    def stub_module(self) -> str:
        return f"{self.path.stem}_pb2"

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
    local = _local_files(path, files)
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
    siblings = tuple(path.parent / name for name in local if name != main.name)
    return ProtoFile(path, services, siblings)


_WELL_KNOWN = "google/protobuf/"  # shipped with protobuf: imported from google.protobuf


def _local_files(path: Path, files: list[descriptor_pb2.FileDescriptorProto]) -> list[str]:
    """The protos that go into the project's package: ``path`` and the siblings it imports."""
    local = []
    for file in files:
        if file.name.startswith(_WELL_KNOWN):
            continue
        if "/" in file.name:
            raise BadInput(
                f"{path.name} imports {file.name}: gz new takes protos from one directory only; "
                f"put {Path(file.name).name} next to {path.name} and import it by file name"
            )
        local.append(file.name)
    return local


def _qualified(package: str, name: str) -> str:
    return f"{package}.{name}" if package else name


def _message_owners(
    files: list[descriptor_pb2.FileDescriptorProto], local: list[str]
) -> dict[str, MessageRef]:
    """``.pkg.Message`` -> where its Python class lives, for every message of every file."""
    owners: dict[str, MessageRef] = {}
    for file in files:
        is_local = file.name in local
        module = Path(file.name).with_suffix("").as_posix().replace("/", ".") + "_pb2"
        prefix = f".{file.package}." if file.package else "."

        def add(messages: list[descriptor_pb2.DescriptorProto], outer: str) -> None:
            for message in messages:
                path = f"{outer}{message.name}"
                owners[prefix + path] = MessageRef(module, is_local, path)  # noqa: B023
                add(list(message.nested_type), f"{path}.")

        add(list(file.message_type), "")
    return owners
