"""A greeter server as a real process: start-up, health, SIGTERM drain, exit codes."""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2

import gz
from examples.greeter import greeter_pb2, greeter_pb2_grpc

from .support import direct, health_status, say_hello, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_serves_health_overall_and_per_service(server_process):
    server = server_process()
    await server.wait_serving()
    assert await health_status(server.address) == SERVING
    assert await health_status(server.address, "greeter.v1.Greeter") == SERVING
    async with grpc.aio.insecure_channel(server.address) as channel:
        reply = await say_hello(channel, "process")
    assert reply.message == "Hello, process!"
    assert reply.served_by == server.address
    server.signal(signal.SIGTERM)
    assert await server.wait_exit() == 0


async def test_logs_the_advertised_address_once(server_process):
    server = server_process()
    await server.wait_serving()
    server.signal(signal.SIGTERM)
    assert await server.wait_exit() == 0
    lines = [line for line in server.stderr().splitlines() if "serving greeter on" in line]
    assert len(lines) == 1
    assert f"serving greeter on {server.address}" in lines[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_drain_finishes_in_flight_call_and_refuses_new_ones(server_process, signum):
    server = server_process(GZ_SHUTDOWN_DRAIN="1s", GZ_SHUTDOWN_GRACE="10s")
    await server.wait_serving()
    async with grpc.aio.insecure_channel(server.address) as channel:
        slow = asyncio.ensure_future(say_hello(channel, "slow", delay_seconds=4.0))
        await asyncio.sleep(0.3)  # the slow call is in the handler now
        server.signal(signum)

        # during the drain: still answering, but health says NOT_SERVING
        async def not_serving() -> bool:
            return await health_status(server.address) == NOT_SERVING

        await wait_until(not_serving, 5, "NOT_SERVING")
        assert await health_status(server.address, "greeter.v1.Greeter") == NOT_SERVING
        # after the drain, while the slow call still runs: new calls are refused
        refused = await first_refusal(server.address, until=slow)
        assert refused is not None and refused.code() is grpc.StatusCode.UNAVAILABLE, refused
        assert not slow.done() and server.process.poll() is None
        reply = await slow
        assert reply.message == "Hello, slow!"
    assert await server.wait_exit() == 0


async def first_refusal(address: str, until: asyncio.Future[object]) -> grpc.aio.AioRpcError | None:
    """Call ``address`` on fresh connections until a call is refused; its error (None if
    ``until`` finished first). A call that reaches the server in the very moment it stops
    listening is cancelled by grpc's core before any handler sees it (grpc.aio's own race, raw
    or not): at most one such call is let pass, and calling goes on."""
    cancelled = 0
    while not until.done():
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                await greeter_pb2_grpc.GreeterStub(channel).SayHello(
                    greeter_pb2.HelloRequest(name="late"), timeout=1
                )
            except grpc.aio.AioRpcError as error:
                if error.code() is not grpc.StatusCode.CANCELLED or cancelled:
                    return error
                cancelled += 1
        await asyncio.sleep(0.05)
    return None


async def test_second_signal_stops_at_once(server_process):
    server = server_process(GZ_SHUTDOWN_DRAIN="30s")
    await server.wait_serving()
    server.signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    assert server.process.poll() is None  # still draining
    server.signal(signal.SIGTERM)
    assert await server.wait_exit(timeout=5) == 1
    assert "stopping without draining" in server.stderr()


async def test_client_over_processes_survives_a_graceful_stop(server_process):
    """A graceful stop of one replica under a steady call stream loses no call."""
    servers = [server_process(GZ_SHUTDOWN_DRAIN="0.5s") for _ in range(3)]
    for server in servers:
        await server.wait_serving()
    served: dict[str, int] = {}
    stopped = asyncio.Event()
    async with gz.connect(direct(servers), balancer="round_robin") as channel:

        async def call_until_stopped() -> None:
            while not stopped.is_set():
                reply = await say_hello(channel)
                served[reply.served_by] = served.get(reply.served_by, 0) + 1
                await asyncio.sleep(0.002)

        calls = asyncio.gather(*(call_until_stopped() for _ in range(4)))
        await asyncio.sleep(0.3)
        servers[0].signal(signal.SIGTERM)
        assert await servers[0].wait_exit() == 0
        before = sum(served.values())
        await asyncio.sleep(0.5)  # keep calling after the replica is gone
        stopped.set()
        await calls  # raises if any call failed
    assert set(served) == {server.address for server in servers}
    assert sum(served.values()) > before


async def test_gz_run_serves_a_service_class(server_process):
    server = server_process("-m", "gz.scaffold.cli", "run", "examples.greeter.server:Greeter")
    await server.wait_serving()
    async with gz.connect(f"direct:///{server.address}") as channel:
        assert (await say_hello(channel, "run")).served_by == server.address
    server.signal(signal.SIGTERM)
    assert await server.wait_exit() == 0


async def test_bad_setting_exits_2_with_one_line_naming_it(server_process):
    server = server_process(GZ_SHUTDOWN_GRACE="soon")
    assert await server.wait_exit() == 2
    lines = server.stderr().strip().splitlines()
    assert len(lines) == 1
    assert "GZ_SHUTDOWN_GRACE" in lines[0] and "'soon'" in lines[0]


async def test_second_server_on_a_taken_port_exits_1_naming_it(server_process):
    first = server_process()
    await first.wait_serving()
    second = server_process(GZ_LISTEN=first.address)
    assert await second.wait_exit() == 1
    assert f"cannot listen on GZ_LISTEN={first.address}" in second.stderr()
    assert await health_status(first.address) == SERVING
