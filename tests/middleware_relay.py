"""A greeter that forwards SayHello to GZ_TARGET_NEXT when set: server A of the middleware tests
(client -> A -> B). As B (no next) the request name picks what it does:

- ``raise``: the handler raises an exception whose text must never reach a client,
- ``flaky...``: UNAVAILABLE the first time a name is seen, then OK (a retried call),
- ``remaining``: replies with the deadline it sees, ``context.time_remaining()``.

python -m tests.middleware_relay
"""

from __future__ import annotations

import os

import grpc

import gz
from examples.greeter import greeter_pb2, greeter_pb2_grpc
from examples.greeter.server import Greeter

SECRET = "secret detail 42"


class Relay(Greeter):
    def __init__(self, settings: gz.ServerSettings | None = None) -> None:
        super().__init__(settings)
        self.next: gz.BalancedChannel | None = None
        self.seen: set[str] = set()

    async def on_start(self) -> None:
        if os.environ.get("GZ_TARGET_NEXT"):
            self.next = gz.connect("next")

    async def SayHello(self, request, context):
        if self.next is not None:
            return await greeter_pb2_grpc.GreeterStub(self.next).SayHello(request)
        if request.name == "raise":
            raise RuntimeError(SECRET)
        if request.name.startswith("flaky") and request.name not in self.seen:
            self.seen.add(request.name)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        if request.name == "remaining":
            return greeter_pb2.HelloReply(message=repr(context.time_remaining()))
        return await super().SayHello(request, context)


if __name__ == "__main__":
    Relay.main()
