"""Find a method and its message classes through gRPC server reflection (grpc.reflection.v1alpha,
which gz servers enable), over any channel: a BalancedChannel works, so etcd:// and k8s:// do."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from .errors import BadInput, Failed

_NOT_CALLABLE = {"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}


async def stream_of(messages: list[Any]) -> AsyncIterator[Any]:
    """A request stream; an async generator suits every grpc.aio channel implementation."""
    for message in messages:
        yield message


@dataclass(frozen=True)
class FoundMethod:
    descriptor: MethodDescriptor
    request: type[Any]
    reply: type[Any]

    @property
    def path(self) -> str:
        """/package.Service/Method, as it goes on the wire."""
        return f"/{self.descriptor.containing_service.full_name}/{self.descriptor.name}"


class Reflection:
    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        self._timeout = timeout
        self._pool = descriptor_pool.DescriptorPool()
        self._files: set[str] = set()

    async def _ask(self, **question: str) -> reflection_pb2.ServerReflectionResponse:
        request = reflection_pb2.ServerReflectionRequest(**question)
        answers = []
        try:
            call = self._stub.ServerReflectionInfo(stream_of([request]), timeout=self._timeout)
            # read to the end: the server closes the stream once our one request is answered
            answers = [response async for response in call]
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise Failed(
                    "the server does not offer server reflection; gz servers do, "
                    "other servers must enable grpc_reflection"
                ) from None
            problem = f"{error.code().name}: {error.details()}"
            raise Failed(f"server reflection failed: {problem}") from None
        if not answers:
            raise Failed("server reflection gave no answer")
        if answers[0].HasField("error_response"):
            error = answers[0].error_response
            raise BadInput(f"server reflection: {error.error_message or error.error_code}")
        return answers[0]

    async def services(self) -> list[str]:
        response = await self._ask(list_services="")
        names = [service.name for service in response.list_services_response.service]
        return [name for name in names if name not in _NOT_CALLABLE]

    async def method(self, name: str) -> FoundMethod:
        """``pkg.Service/Method``, ``pkg.Service.Method``, ``Service/Method`` or ``Method``."""
        service_name, method_name = await self._qualify(name)
        await self._load(file_containing_symbol=service_name)
        service = self._pool.FindServiceByName(service_name)
        method = service.methods_by_name.get(method_name)
        if method is None:
            known = ", ".join(sorted(service.methods_by_name))
            raise BadInput(f"{service_name} has no method {method_name!r}; it has {known}")
        return FoundMethod(
            method,
            message_factory.GetMessageClass(method.input_type),
            message_factory.GetMessageClass(method.output_type),
        )

    async def _qualify(self, name: str) -> tuple[str, str]:
        if "/" in name:
            service, _, method = name.lstrip("/").rpartition("/")
        else:
            service, _, method = name.rpartition(".")
        services = await self.services()
        if service:
            matches = [s for s in services if s == service or s.endswith(f".{service}")]
        else:  # a bare method name: whichever service has it
            matches = []
            for candidate in services:
                await self._load(file_containing_symbol=candidate)
                if method in self._pool.FindServiceByName(candidate).methods_by_name:
                    matches.append(candidate)
        if len(matches) != 1:
            problem = "no service offers" if not matches else "more than one service offers"
            raise BadInput(
                f"{problem} {name!r}; write it as SERVICE/METHOD with one of: {', '.join(services)}"
            )
        return matches[0], method

    async def _load(self, **question: str) -> None:
        """Add the file answering ``question`` and everything it imports to the pool."""
        response = await self._ask(**question)
        protos = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in response.file_descriptor_response.file_descriptor_proto
        ]
        pending = {proto.name: proto for proto in protos if proto.name not in self._files}
        while pending:
            ready = [p for p in pending.values() if all(d in self._files for d in p.dependency)]
            if not ready:  # a dependency the server did not send along: ask for it by name
                missing = next(
                    d
                    for p in pending.values()
                    for d in p.dependency
                    if d not in self._files and d not in pending
                )
                await self._load(file_by_filename=missing)
                continue
            for proto in ready:
                self._pool.Add(proto)
                self._files.add(proto.name)
                del pending[proto.name]
