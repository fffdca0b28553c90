"""grpc.testing.TestService as gRPC's interop descriptions (doc/interop-test-descriptions.md,
"Server" features) define it, twice: ``AsyncTestService`` with ``async def`` handlers and
``SyncTestService`` with plain ``def`` handlers (run in a thread pool).

Both are generated servicers, usable as they are in a raw ``grpc.aio.server()`` and as the
servicer base of a gz Service (``GzAsyncTestService``, ``GzSyncTestService``).

What a Python server cannot do: see whether a request message arrived compressed (grpc core
decompresses it and drops ``grpc-encoding`` from the metadata handlers see), so the
CompressedRequest feature (``expect_compressed`` on an uncompressed message -> INVALID_ARGUMENT)
is not implemented; the client cases check request compression on the wire instead (see
``wire.py``). Username and OAuth scope echo (``fill_username``, ``fill_oauth_scope``) need
Google credentials and are left out too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

import gz

from .grpc_testing import empty_pb2, messages_pb2, test_pb2_grpc

ECHO_INITIAL_KEY = "x-grpc-test-echo-initial"
ECHO_TRAILING_KEY = "x-grpc-test-echo-trailing-bin"

_CODES = {code.value[0]: code for code in grpc.StatusCode}

Metadata = tuple[tuple[str, str | bytes], ...]


def payload(size: int) -> messages_pb2.Payload:
    """``size`` bytes of zeros, the only payload type (COMPRESSABLE) there is."""
    return messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=bytes(size))


def _echoed(context: Any, key: str) -> Metadata:
    """The ``key`` entries of the call's metadata, to be sent back."""
    return tuple((k, v) for k, v in (context.invocation_metadata() or ()) if k == key)


def _wanted_status(request: Any) -> tuple[grpc.StatusCode, str] | None:
    """The status ``response_status`` asks the call to end with (None: none, or OK)."""
    if not request.HasField("response_status") or request.response_status.code == 0:
        return None
    status = request.response_status
    return _CODES.get(status.code, grpc.StatusCode.UNKNOWN), status.message


def _bad_payload_type(request: Any) -> str | None:
    if request.response_type != messages_pb2.COMPRESSABLE:
        return f"unsupported response_type {request.response_type}"
    return None


def _wants_compression(flag: messages_pb2.BoolValue) -> bool:
    return flag.value  # an unset BoolValue reads as False


class _StreamCompression:
    """Compression of a response stream: the call compresses (``set_compression``, possible
    only before its initial metadata go out) when a response of the first requests wants it,
    and a response that does not is then sent with ``disable_next_message_compression``."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._on: bool | None = None  # decided at the first request

    def decide(self, *requests: Any) -> None:
        if self._on is not None:
            return
        self._on = any(_wants_compression(p.compressed)
                       for r in requests for p in r.response_parameters)  # fmt: skip
        if self._on:
            try:
                self._context.set_compression(grpc.Compression.Gzip)
            except RuntimeError:  # the initial metadata are out (echoed): too late
                self._on = False

    def before(self, parameters: messages_pb2.ResponseParameters) -> None:
        if self._on and not _wants_compression(parameters.compressed):
            self._context.disable_next_message_compression()


def _cacheable_response() -> messages_pb2.SimpleResponse:
    body = str(time.time_ns()).encode()
    return messages_pb2.SimpleResponse(
        payload=messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=body)
    )


# UNARY_COMPRESSION: grpc.aio sends a unary response with the compression set by
# set_compression() only if the handler sent its initial metadata itself (else they go out with
# the response, without the compression); so UnaryCall sends them when asked to compress.

CACHE_CONTROL = (("cache-control", "max-age=60, public"),)


class AsyncTestService(test_pb2_grpc.TestServiceServicer):
    """TestService with ``async def`` handlers. UnimplementedCall is left to the generated base
    (it sets UNIMPLEMENTED and raises NotImplementedError), as gRPC's interop servers do."""

    async def _begin(self, context: grpc.aio.ServicerContext, send: bool = False) -> None:
        """Echo Metadata: the initial entry goes back at once (the initial metadata are sent
        now also when ``send``), the trailing one at the end."""
        initial = _echoed(context, ECHO_INITIAL_KEY)
        if initial or send:
            await context.send_initial_metadata(initial)
        trailing = _echoed(context, ECHO_TRAILING_KEY)
        if trailing:
            context.set_trailing_metadata(trailing)

    async def EmptyCall(self, request, context):
        return empty_pb2.Empty()

    async def UnaryCall(self, request, context):
        compressed = _wants_compression(request.response_compressed)
        if compressed:
            context.set_compression(grpc.Compression.Gzip)
        await self._begin(context, send=compressed)  # see UNARY_COMPRESSION
        if status := _wanted_status(request):
            await context.abort(*status)
        if problem := _bad_payload_type(request):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        return messages_pb2.SimpleResponse(payload=payload(request.response_size))

    async def CacheableUnaryCall(self, request, context):
        await context.send_initial_metadata(CACHE_CONTROL)
        return _cacheable_response()

    async def StreamingInputCall(self, request_iterator, context):
        await self._begin(context)
        total = 0
        async for request in request_iterator:
            total += len(request.payload.body)
        return messages_pb2.StreamingInputCallResponse(aggregated_payload_size=total)

    async def _respond(
        self, request: Any, context: grpc.aio.ServicerContext, compression: _StreamCompression
    ) -> AsyncIterator[messages_pb2.StreamingOutputCallResponse]:
        """The responses one StreamingOutputCallRequest asks for (Echo Status first)."""
        if status := _wanted_status(request):
            await context.abort(*status)
        if problem := _bad_payload_type(request):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        compression.decide(request)
        for parameters in request.response_parameters:
            if parameters.interval_us:
                await asyncio.sleep(parameters.interval_us / 1e6)
            compression.before(parameters)
            yield messages_pb2.StreamingOutputCallResponse(payload=payload(parameters.size))

    async def StreamingOutputCall(self, request, context):
        compression = _StreamCompression(context)
        compression.decide(request)  # before the echoed initial metadata go out
        await self._begin(context)
        async for response in self._respond(request, context, compression):
            yield response

    async def FullDuplexCall(self, request_iterator, context):
        await self._begin(context)
        compression = _StreamCompression(context)
        async for request in request_iterator:
            async for response in self._respond(request, context, compression):
                yield response

    async def HalfDuplexCall(self, request_iterator, context):
        await self._begin(context)
        requests = [request async for request in request_iterator]
        compression = _StreamCompression(context)
        compression.decide(*requests)
        for request in requests:
            async for response in self._respond(request, context, compression):
                yield response


class SyncTestService(test_pb2_grpc.TestServiceServicer):
    """TestService with plain ``def`` handlers, written as for grpc's thread-pool server: the
    context's methods are synchronous and ``abort()`` raises."""

    def _begin(self, context: grpc.ServicerContext, send: bool = False) -> None:
        initial = _echoed(context, ECHO_INITIAL_KEY)
        if initial or send:
            context.send_initial_metadata(initial)
        trailing = _echoed(context, ECHO_TRAILING_KEY)
        if trailing:
            context.set_trailing_metadata(trailing)

    def EmptyCall(self, request, context):
        return empty_pb2.Empty()

    def UnaryCall(self, request, context):
        compressed = _wants_compression(request.response_compressed)
        if compressed:
            context.set_compression(grpc.Compression.Gzip)
        self._begin(context, send=compressed)  # see UNARY_COMPRESSION
        if status := _wanted_status(request):
            context.abort(*status)
        if problem := _bad_payload_type(request):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        return messages_pb2.SimpleResponse(payload=payload(request.response_size))

    def CacheableUnaryCall(self, request, context):
        context.send_initial_metadata(CACHE_CONTROL)
        return _cacheable_response()

    def StreamingInputCall(self, request_iterator, context):
        self._begin(context)
        total = sum(len(request.payload.body) for request in request_iterator)
        return messages_pb2.StreamingInputCallResponse(aggregated_payload_size=total)

    def _respond(
        self, request: Any, context: grpc.ServicerContext, compression: _StreamCompression
    ) -> Iterator[messages_pb2.StreamingOutputCallResponse]:
        if status := _wanted_status(request):
            context.abort(*status)
        if problem := _bad_payload_type(request):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        compression.decide(request)
        for parameters in request.response_parameters:
            if parameters.interval_us:
                time.sleep(parameters.interval_us / 1e6)
            compression.before(parameters)
            yield messages_pb2.StreamingOutputCallResponse(payload=payload(parameters.size))

    def StreamingOutputCall(self, request, context):
        compression = _StreamCompression(context)
        compression.decide(request)
        self._begin(context)
        yield from self._respond(request, context, compression)

    def FullDuplexCall(self, request_iterator, context):
        self._begin(context)
        compression = _StreamCompression(context)
        for request in request_iterator:
            yield from self._respond(request, context, compression)

    def HalfDuplexCall(self, request_iterator, context):
        self._begin(context)
        requests = list(request_iterator)
        compression = _StreamCompression(context)
        compression.decide(*requests)
        for request in requests:
            yield from self._respond(request, context, compression)


class GzAsyncTestService(gz.Service, AsyncTestService):
    """The async TestService as a gz Service."""


class GzSyncTestService(gz.Service, SyncTestService):
    """The sync TestService as a gz Service."""
