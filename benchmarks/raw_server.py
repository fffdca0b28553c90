"""A plain grpc.aio greeter server (no gz), the baseline every benchmark compares against.

python -m benchmarks.raw_server PORT
"""

from __future__ import annotations

import asyncio
import sys

import grpc

from examples.greeter import greeter_pb2, greeter_pb2_grpc


class RawGreeter(greeter_pb2_grpc.GreeterServicer):
    async def SayHello(self, request, context):
        return greeter_pb2.HelloReply(message=f"Hello, {request.name}!", served_by="raw")

    async def LotsOfReplies(self, request, context):
        for i in range(request.count or 3):
            yield greeter_pb2.HelloReply(message=str(i), served_by="raw")


async def serve(port: int) -> None:
    server = grpc.aio.server()
    greeter_pb2_grpc.add_GreeterServicer_to_server(RawGreeter(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
