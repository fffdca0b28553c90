"""The greeter service: one replica of it per process.

Run it with ``python -m examples.greeter.server``; settings come from GZ_* variables
(GZ_NAME, GZ_LISTEN default 0.0.0.0:8080, GZ_SHUTDOWN_DRAIN, ...). SIGTERM drains and exits 0.
"""

import asyncio

import gz

from . import greeter_pb2, greeter_pb2_grpc


class Greeter(gz.Service, greeter_pb2_grpc.GreeterServicer):
    """Says hello in all four gRPC call kinds; every reply names the replica that served it."""

    def reply(self, message: str) -> greeter_pb2.HelloReply:
        return greeter_pb2.HelloReply(message=message, served_by=self.address)

    async def SayHello(self, request, context):
        if request.delay_seconds:
            await asyncio.sleep(request.delay_seconds)
        return self.reply(f"Hello, {request.name}!")

    async def LotsOfReplies(self, request, context):
        count = request.count or 3
        for i in range(count):
            if request.delay_seconds:
                await asyncio.sleep(request.delay_seconds)
            yield self.reply(f"Hello, {request.name}! ({i + 1}/{count})")

    async def LotsOfGreetings(self, request_iterator, context):
        names = [request.name async for request in request_iterator]
        return self.reply(f"Hello, {', '.join(names)}!")

    async def BidiHello(self, request_iterator, context):
        async for request in request_iterator:
            if request.delay_seconds:
                await asyncio.sleep(request.delay_seconds)
            yield self.reply(f"Hello, {request.name}!")


if __name__ == "__main__":
    Greeter.main()
