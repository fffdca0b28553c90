"""A plain grpc.aio greeter server (no gz), the baseline every benchmark compares against.

    GZ_LISTEN=127.0.0.1:PORT[,127.0.0.1:PORT2,...] python -m benchmarks.raw_server

It reads GZ_LISTEN like a gz server so that tests/support.py ServerProcess starts both kinds.
BENCH_DELAY_MS slows every SayHello (a slow replica). grpc.health.v1 says SERVING, so readiness
is checked as for a gz server. Replies name the first listen address.

BENCH_PIECES (a comma list, for benchmarks.server_bisect) adds pieces of what a gz Service
builds, each as gz builds it, to this otherwise raw server; gz is imported only for them:

- ``options``: the grpc server options gz sets (``gz.server.server_options``);
- ``pool``: a ThreadPoolExecutor as grpc.aio's migration thread pool (gz's, for sync handlers);
- ``reflection``: health SERVING for each service name too, and the reflection service;
- ``wrap``: the greeter registered through gz's per-service wrapping with no middleware;
- ``tracing``, ``metrics``, ``call_log``, ``deadline``, ``recovery``: that one default
  middleware, composed by ``gz.middleware.defaults.server_middleware`` as a Service's is
  (tracing takes part only when a tracer provider is set: OTEL_TRACES_EXPORTER);
- ``logging``: gz's logging configuration (``gz.logs.configure_logging``, GZ_LOG_LEVEL);
- ``imports``: the modules a gz Service with its defaults imports, nothing else.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from examples.greeter import greeter_pb2, greeter_pb2_grpc

MIDDLEWARE = ("tracing", "metrics", "call_log", "deadline", "recovery")
PIECES = ("options", "pool", "reflection", "wrap", *MIDDLEWARE, "logging", "imports")


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


async def serve(addresses: list[str], delay: float, pieces: frozenset[str] = frozenset()) -> None:
    if pieces:
        server = await serve_pieces(RawGreeter(addresses[0], delay), pieces)
    else:
        server = grpc.aio.server()
        greeter_pb2_grpc.add_GreeterServicer_to_server(RawGreeter(addresses[0], delay), server)
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    for address in addresses:
        server.add_insecure_port(address)
    await server.start()
    await server.wait_for_termination()


async def serve_pieces(greeter: RawGreeter, pieces: frozenset[str]) -> grpc.aio.Server:
    """The raw server with ``pieces`` of a gz Service added, each made by gz's own code."""
    from concurrent.futures import ThreadPoolExecutor

    unknown = pieces - set(PIECES)
    if unknown:
        raise SystemExit(f"BENCH_PIECES: unknown {sorted(unknown)}; known: {', '.join(PIECES)}")
    if "imports" in pieces:
        import gz.middleware.defaults
        import gz.middleware.metrics
        import gz.middleware.recovery
        import gz.server  # noqa: F401
    if "logging" in pieces:
        from gz.logs import configure_logging

        configure_logging(os.environ.get("GZ_LOG_LEVEL", "INFO"))
    options: list[tuple[str, Any]] = []
    if "options" in pieces:
        from gz.server import server_options
        from gz.settings import ServerSettings

        options = server_options(ServerSettings())
    executor = ThreadPoolExecutor() if "pool" in pieces else None
    server = grpc.aio.server(migration_thread_pool=executor, options=options)
    middleware = [piece for piece in MIDDLEWARE if piece in pieces]
    if "wrap" in pieces or middleware:
        from gz.middleware.defaults import server_middleware
        from gz.server import _RegistrationRecorder
        from gz.settings import ServerSettings

        alone = ServerSettings(**{name: name in middleware for name in MIDDLEWARE})
        chain = server_middleware(alone, "greeter") if middleware else []
        recorder = _RegistrationRecorder(server, chain, executor or ThreadPoolExecutor())
        greeter_pb2_grpc.add_GreeterServicer_to_server(greeter, recorder)
        recorder.flush()
    else:
        greeter_pb2_grpc.add_GreeterServicer_to_server(greeter, server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    served = [""]
    if "reflection" in pieces:
        from grpc_reflection.v1alpha import reflection

        names = ["greeter.v1.Greeter", health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        served.append("greeter.v1.Greeter")
    for name in served:
        await checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server


def main() -> None:
    addresses = [a.strip() for a in os.environ["GZ_LISTEN"].split(",") if a.strip()]
    delay = float(os.environ.get("BENCH_DELAY_MS", "0")) / 1000
    pieces = frozenset(
        p.strip() for p in os.environ.get("BENCH_PIECES", "").split(",") if p.strip()
    )
    asyncio.run(serve(addresses, delay, pieces))


if __name__ == "__main__":
    main()
