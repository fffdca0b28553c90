"""Sync handlers of all four call kinds run in the server's thread pool, never on the loop."""

from __future__ import annotations

import threading

import gz
from examples.greeter import greeter_pb2, greeter_pb2_grpc
from examples.greeter.server import Greeter

Request = greeter_pb2.HelloRequest


class SyncGreeter(Greeter):
    """Each reply says which thread made it, so the test can see it was not the loop's."""

    def reply(self, message: str) -> greeter_pb2.HelloReply:
        return super().reply(f"{message} [{threading.current_thread().name}]")

    def SayHello(self, request, context):
        return self.reply(f"Hello, {request.name}!")

    def LotsOfReplies(self, request, context):  # a sync generator, advanced off the loop
        for i in range(request.count or 3):
            yield self.reply(f"{request.name} {i + 1}")

    def LotsOfGreetings(self, request_iterator, context):  # iterates the async stream
        return self.reply("Hello, " + ", ".join(r.name for r in request_iterator) + "!")

    def BidiHello(self, request_iterator, context):
        for request in request_iterator:
            yield self.reply(f"Hello, {request.name}!")


async def requests(*names: str):
    for name in names:
        yield Request(name=name)


async def test_sync_handlers_of_every_kind_run_in_the_thread_pool(serve_greeter):
    service = await serve_greeter(SyncGreeter)
    async with gz.connect(f"direct:///{service.address}") as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)
        replies = [
            await stub.SayHello(Request(name="unary")),
            *[r async for r in stub.LotsOfReplies(Request(name="stream", count=4))],
            await stub.LotsOfGreetings(requests("a", "b", "c")),
            *[r async for r in stub.BidiHello(requests("x", "y"))],
        ]
    messages = [r.message.split(" [")[0] for r in replies]
    assert messages == [
        "Hello, unary!", "stream 1", "stream 2", "stream 3", "stream 4",
        "Hello, a, b, c!", "Hello, x!", "Hello, y!",
    ]  # fmt: skip
    threads = {r.message.split(" [")[1].rstrip("]") for r in replies}
    assert all(name.startswith(f"gz-{service.name}") for name in threads), threads
