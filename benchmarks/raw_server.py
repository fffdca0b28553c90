"""A plain grpc.aio greeter server (no gz), the baseline every benchmark compares against.

    GZ_LISTEN=127.0.0.1:PORT[,127.0.0.1:PORT2,...] python -m benchmarks.raw_server

It reads GZ_LISTEN like a gz server so that tests/support.py ServerProcess starts both kinds.
BENCH_DELAY_MS slows every SayHello (a slow replica). grpc.health.v1 says SERVING, so readiness
is checked as for a gz server. Replies name the first listen address.
"""

from __future__ import annotations

import asyncio
import os

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from examples.greeter import greeter_pb2, greeter_pb2_grpc


class RawGreeter(greeter_pb2_grpc.GreeterServicer):
    def __init__(self, served_by: str, delay: float) -> None:
        self.served_by = served_by
        self.delay = delay

    async def SayHello(self, request, context):
        if self.delay:
            await asyncio.sleep(self.delay)
        return greeter_pb2.HelloReply(message=f"Hello, {request.name}!", served_by=self.served_by)

    async def LotsOfReplies(self, request, context):
        for i in range(request.count or 3):
            yield greeter_pb2.HelloReply(message=str(i), served_by=self.served_by)


async def serve(addresses: list[str], delay: float) -> None:
    server = grpc.aio.server()
    greeter_pb2_grpc.add_GreeterServicer_to_server(RawGreeter(addresses[0], delay), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    for address in addresses:
        server.add_insecure_port(address)
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    addresses = [a.strip() for a in os.environ["GZ_LISTEN"].split(",") if a.strip()]
    delay = float(os.environ.get("BENCH_DELAY_MS", "0")) / 1000
    asyncio.run(serve(addresses, delay))


if __name__ == "__main__":
    main()
