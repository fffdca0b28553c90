"""Services and messages through gRPC server reflection (grpc.reflection.v1alpha, which gz
servers enable), over any channel: a BalancedChannel works, so etcd:// and k8s:// do."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gz.middleware.tracing import untraced

from .errors import BadInput, Failed
from .schema import Schema

_NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]


async def stream_of(messages: list[Any]) -> AsyncIterator[Any]:
    """A request stream; an async generator suits every grpc.aio channel implementation."""
    for message in messages:
        yield message


class _Unknown(BadInput):
    """Reflection does not know the symbol asked about."""


_ATTEMPTS = 3


def _lost_status(error: grpc.aio.AioRpcError) -> bool:
    """grpc's client sometimes reports a stream the server refused at once (UNIMPLEMENTED: no
    reflection) as INTERNAL, when its write of the request loses the race with the server's
    answer (grpc/grpc#36066); asked again, the server's own status usually comes through."""
    return error.code() == grpc.StatusCode.INTERNAL and error.details() == _CORE_ERROR


_CORE_ERROR = "Internal error from Core"


class Reflection(Schema):
    def __init__(
        self,
        channel: grpc.aio.Channel,
        timeout: float,
        metadata: list[tuple[str, str | bytes]] | None = None,
    ) -> None:
        super().__init__()
        self._stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        self._timeout = timeout
        self._metadata = metadata or None  # -H headers go to reflection too, as with grpcurl
        self._files: set[str] = set()

    async def _ask(self, **question: str) -> reflection_pb2.ServerReflectionResponse:
        request = reflection_pb2.ServerReflectionRequest(**question)
        try:
            with untraced():  # the tool's own look-up, not a call the user asked for: no spans
                answers = await self._read(request)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED or _lost_status(error):
                raise Failed(
                    "the server does not offer server reflection: give its protos with "
                    "--proto (gz servers have reflection unless GZ_REFLECTION=false)"
                ) from None
            problem = f"{error.code().name}: {error.details()}"
            raise Failed(f"server reflection failed: {problem}") from None
        if not answers:
            raise Failed("server reflection gave no answer")
        if answers[0].HasField("error_response"):
            error = answers[0].error_response
            unknown = _Unknown if error.error_code == _NOT_FOUND else BadInput
            raise unknown(f"server reflection: {error.error_message or error.error_code}")
        return answers[0]

    async def _read(
        self, request: reflection_pb2.ServerReflectionRequest
    ) -> list[reflection_pb2.ServerReflectionResponse]:
        for attempt in range(_ATTEMPTS):
            call = self._stub.ServerReflectionInfo(
                stream_of([request]), timeout=self._timeout, metadata=self._metadata
            )
            try:
                # read to the end: the server closes the stream once our request is answered
                return [response async for response in call]
            except grpc.aio.AioRpcError as error:
                if not _lost_status(error) or attempt == _ATTEMPTS - 1:
                    raise
        return []  # not reached: the last attempt returns or raises

    async def services(self) -> list[str]:
        response = await self._ask(list_services="")
        return sorted(service.name for service in response.list_services_response.service)

    async def load(self, symbol: str) -> None:
        """Python's reflection does not find a method by name: then its service is asked for.
        An unknown symbol is left out; Schema.symbol says what is missing."""
        with contextlib.suppress(KeyError):
            self.pool.FindFileContainingSymbol(symbol)
            return  # loaded already
        for name in (symbol, symbol.rpartition(".")[0]):
            with contextlib.suppress(_Unknown):
                if name:
                    await self._load(file_containing_symbol=name)
                return

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
                self.pool.Add(proto)
                self._files.add(proto.name)
                del pending[proto.name]
