"""connect() over several real servers: spreading, losing one, gaining one."""

from __future__ import annotations

import asyncio
import signal

import grpc

import gz

from .support import all_ready, count_replicas, direct, say_hello, wait_not_serving


async def test_calls_spread_over_every_endpoint(serve_greeter):
    servers = [await serve_greeter() for _ in range(3)]
    async with gz.connect(direct(servers), balancer="round_robin") as channel:
        await all_ready(channel, 3)
        served = await count_replicas(channel, 300)
    assert set(served) == {s.address for s in servers}
    # round robin over three READY endpoints: nobody gets far more than a third
    assert max(served.values()) - min(served.values()) <= 30


async def test_a_stopped_server_gets_no_more_calls(serve_greeter):
    servers = [await serve_greeter() for _ in range(3)]
    async with gz.connect(direct(servers), balancer="round_robin") as channel:
        await count_replicas(channel, 30)
        await servers[0].server.stop()
        for _ in range(200):
            await say_hello(channel)  # a graceful stop loses no call
        served = await count_replicas(channel, 100)
    assert set(served) == {servers[1].address, servers[2].address}


async def test_a_killed_process_costs_only_calls_in_flight(server_process):
    processes = [server_process() for _ in range(3)]
    for process in processes:
        await process.wait_serving()
    async with gz.connect(direct(processes), balancer="round_robin") as channel:
        await count_replicas(channel, 30)
        processes[0].signal(signal.SIGKILL)
        await processes[0].wait_exit()
        failed = 0
        for _ in range(50):  # the channel notices the dead connection within a few calls
            try:
                await say_hello(channel)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                failed += 1
        assert failed <= 2
        served = await count_replicas(channel, 100)
    assert set(served) == {processes[1].address, processes[2].address}


async def test_an_added_endpoint_receives_calls(serve_greeter):
    first, second = await serve_greeter(), await serve_greeter()
    resolver = gz.ManualResolver([first.address], target="test-list")
    async with gz.connect(resolver, balancer="round_robin") as channel:
        assert set(await count_replicas(channel, 20)) == {first.address}
        resolver.set_endpoints([first.address, second.address])
        await all_ready(channel, 2)
        served = await count_replicas(channel, 100)
        assert set(served) == {first.address, second.address}
        resolver.set_endpoints([second.address])
        await asyncio.sleep(0.1)
        assert set(await count_replicas(channel, 20)) == {second.address}
        assert channel.endpoints == [gz.Endpoint.parse(second.address)]


async def test_an_unchanged_endpoint_keeps_its_connection(serve_greeter):
    first, second = await serve_greeter(), await serve_greeter()
    resolver = gz.ManualResolver([first.address])
    async with gz.connect(resolver) as channel:
        await say_hello(channel)
        before = channel._pool.subchannels[gz.Endpoint.parse(first.address)]
        resolver.set_endpoints([first.address, second.address])
        after = channel._pool.subchannels[gz.Endpoint.parse(first.address)]
        assert after is before
        assert after.channel.get_state() == grpc.ChannelConnectivity.READY


async def test_a_removed_endpoint_finishes_its_in_flight_call(serve_greeter):
    first, second = await serve_greeter(), await serve_greeter()
    resolver = gz.ManualResolver([first.address])
    async with gz.connect(resolver) as channel:
        await channel.channel_ready()
        slow = asyncio.ensure_future(say_hello(channel, "slow", delay_seconds=0.5))
        await asyncio.sleep(0.1)
        resolver.set_endpoints([second.address])
        assert (await slow).served_by == first.address
        assert (await say_hello(channel)).served_by == second.address


async def test_a_draining_server_gets_no_new_calls(serve_greeter):
    draining, other = await serve_greeter(shutdown_drain=2.0), await serve_greeter()
    async with gz.connect(direct([draining, other]), balancer="round_robin") as channel:
        await all_ready(channel, 2)
        assert set(await count_replicas(channel, 40)) == {draining.address, other.address}
        stopping = asyncio.ensure_future(draining.server.stop())
        await wait_not_serving(channel, draining.address)
        assert set(await count_replicas(channel, 40)) == {other.address}
        await stopping


async def test_when_every_endpoint_drains_calls_still_go_to_them(serve_greeter):
    """Behind a ClusterIP the one endpoint is whichever pod the connection reached; when it
    drains, failing calls at the client would turn a clean drain into errors. A draining server
    still answers until its drain ends, so with nothing better the client calls it anyway."""
    draining = await serve_greeter(shutdown_drain=2.0)
    async with gz.connect(f"direct:///{draining.address}", retry=False) as channel:
        await channel.channel_ready()
        stopping = asyncio.ensure_future(draining.server.stop())
        await wait_not_serving(channel, draining.address)
        assert (await say_hello(channel)).served_by == draining.address
        await stopping


async def test_without_health_check_a_draining_server_still_gets_calls(serve_greeter):
    draining, other = await serve_greeter(shutdown_drain=2.0), await serve_greeter()
    target = direct([draining, other])
    async with gz.connect(target, health_check=False, balancer="round_robin") as channel:
        await all_ready(channel, 2)
        stopping = asyncio.ensure_future(draining.server.stop())
        await asyncio.sleep(0.2)
        assert set(await count_replicas(channel, 40)) == {draining.address, other.address}
        await stopping
