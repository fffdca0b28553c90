"""The services and messages of a server, as gz call, gz list and gz describe see them: from server
reflection (reflection.py) or from .proto files compiled here (``--proto``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)

from .errors import BadInput
from .gen import describe

Symbol = ServiceDescriptor | MethodDescriptor | Descriptor | EnumDescriptor

# Served by every gz server but not for calling by hand.
_NOT_CALLABLE = {"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
# A bare method name means the user's own method before one of these (Health/Watch).
_INFRASTRUCTURE = ("grpc.", "google.")


@dataclass(frozen=True)
class FoundMethod:
    descriptor: MethodDescriptor
    request: type[Any]
    reply: type[Any]

    @property
    def path(self) -> str:
        """/package.Service/Method, as it goes on the wire."""
        return f"/{self.descriptor.containing_service.full_name}/{self.descriptor.name}"


class Schema:
    """Finds services, methods and messages by name in ``pool``, which subclasses fill."""

    def __init__(self) -> None:
        self.pool = descriptor_pool.DescriptorPool()

    async def services(self) -> list[str]:
        """Every service the server (or the protos) offer, sorted."""
        raise NotImplementedError

    async def load(self, symbol: str) -> None:
        """Make the file defining ``symbol`` (a full name) findable in the pool, if it exists."""
        raise NotImplementedError

    async def service(self, name: str) -> ServiceDescriptor:
        """A service by its full name or an unambiguous end of it (``Greeter``)."""
        services = await self.services()
        matches = [s for s in services if s == name] or [
            s for s in services if s.endswith(f".{name}")
        ]
        if len(matches) != 1:
            problem = "no service" if not matches else "more than one service"
            raise BadInput(f"{problem} is named {name!r}; one of: {', '.join(services)}")
        await self.load(matches[0])
        return self.pool.FindServiceByName(matches[0])

    async def method(self, name: str) -> FoundMethod:
        """``pkg.Service/Method``, ``pkg.Service.Method``, ``Service/Method`` or ``Method``."""
        service_name, _, method_name = name.lstrip("/").rpartition("/")
        if not service_name:
            service_name, _, method_name = name.rpartition(".")
        if service_name:
            service = await self.service(service_name)
        else:
            service = await self._offering(method_name)
        method = service.methods_by_name.get(method_name)
        if method is None:
            known = ", ".join(sorted(service.methods_by_name))
            raise BadInput(f"{service.full_name} has no method {method_name!r}; it has {known}")
        return FoundMethod(
            method,
            message_factory.GetMessageClass(method.input_type),
            message_factory.GetMessageClass(method.output_type),
        )

    async def _offering(self, method: str) -> ServiceDescriptor:
        """The one service with ``method``, the user's own before grpc.* and google.* ones."""
        services = [s for s in await self.services() if s not in _NOT_CALLABLE]
        offering = []
        for name in services:
            await self.load(name)
            service = self.pool.FindServiceByName(name)
            if method in service.methods_by_name:
                offering.append(service)
        own = [s for s in offering if not s.full_name.startswith(_INFRASTRUCTURE)]
        matches = own or offering
        if not matches:
            raise BadInput(
                f"no service offers {method!r}; write it as SERVICE/METHOD with one of: "
                f"{', '.join(services)}"
            )
        if len(matches) > 1:
            paths = ", ".join(f"{s.full_name}/{method}" for s in matches)
            raise BadInput(f"more than one service offers {method!r}: name one of {paths}")
        return matches[0]

    async def symbol(self, name: str) -> Symbol:
        """A service, method, message or enum by its full name (``/`` also separates a method)."""
        full_name = name.strip("./").replace("/", ".")
        await self.load(full_name)
        finders = (
            self.pool.FindServiceByName,
            self.pool.FindMethodByName,
            self.pool.FindMessageTypeByName,
            self.pool.FindEnumTypeByName,
        )
        for find in finders:
            try:
                return find(full_name)
            except KeyError:
                continue
        raise BadInput(
            f"no service, method, message or enum is named {name!r}: give its full name, "
            "e.g. greeter.v1.Greeter (gz list TARGET shows the services)"
        )


class ProtoFiles(Schema):
    """The protos given with ``--proto`` (``-I`` directories to find them and their imports)."""

    def __init__(self, protos: Sequence[Path], includes: Sequence[Path] = ()) -> None:
        super().__init__()
        for directory in includes:
            if not directory.is_dir():
                raise BadInput(f"-I {directory}: no such directory")
        includes = [directory.resolve() for directory in includes]  # protoc wants one kind
        found = [_find_proto(proto, includes) for proto in protos]
        files = describe(*found, includes=includes).file
        for file in files:  # imports first, as protoc lists them
            self.pool.Add(file)
        self._services = sorted(
            f"{file.package}.{service.name}" if file.package else service.name
            for file in files
            for service in file.service
        )

    async def services(self) -> list[str]:
        return self._services

    async def load(self, symbol: str) -> None:
        """Everything is in the pool already."""


def _find_proto(proto: Path, includes: Sequence[Path]) -> Path:
    """A path as given, else relative to an import directory, as protoc and grpcurl take it."""
    if proto.is_file() or proto.is_absolute():
        return proto
    return next((d / proto for d in includes if (d / proto).is_file()), proto)
