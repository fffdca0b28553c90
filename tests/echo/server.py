"""``python -m tests.echo.server``: Echo and Mirror as one gz service (GZ_* settings)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

import gz

from . import echo_pb2, echo_pb2_grpc


class EchoService(gz.Service, echo_pb2_grpc.EchoServicer, echo_pb2_grpc.MirrorServicer):
    async def Headers(
        self, request: echo_pb2.Nothing, context: grpc.aio.ServicerContext
    ) -> echo_pb2.Received:
        received = echo_pb2.Received()
        for key, value in context.invocation_metadata() or ():
            if isinstance(value, bytes):  # a -bin key
                received.binary[key] = value
            else:
                received.text[key] = value
        return received

    async def Watch(
        self, request: echo_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[echo_pb2.Event]:
        for seq in range(1, request.count + 1):
            last = echo_pb2.Event.KIND_LAST if seq == request.count else None
            yield echo_pb2.Event(seq=seq, kind=last)


if __name__ == "__main__":
    EchoService.main()
