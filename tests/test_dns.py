"""dns:/// targets: new answers are picked up every refresh, a failing endpoint makes gz look up
again at once, a failed lookup keeps the last set. Servers listen on 127.0.0.1, .2 and .3 (all
loopback on Linux) with one port, as the replicas behind one DNS name would."""

from __future__ import annotations

import asyncio

import gz
from gz.discovery import Endpoint
from gz.discovery.dns import DnsResolver, system_lookup

from .support import (
    Recorder,
    all_ready,
    greeters_on_one_port,
    say_hello,
    wait_until,
)

# A loaded two-core machine needs some slack over the bare refresh interval.
SLACK = 0.5


class FakeDns:
    """The lookup seam of DnsResolver: answers what the test says, counts the questions."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.failure: Exception | None = None
        self.lookups = 0

    async def lookup(self, host: str, port: int) -> list[str]:
        self.lookups += 1
        if self.failure is not None:
            raise self.failure
        return list(self.addresses)


async def served_by(channel: gz.BalancedChannel, calls: int = 20) -> set[str]:
    return {(await say_hello(channel)).served_by for _ in range(calls)}


async def test_a_new_answer_gets_traffic_within_one_refresh():
    servers = await greeters_on_one_port(2)
    port = servers[0].server.port
    first, second = (server.address for server in servers)
    dns = FakeDns("127.0.0.1")
    refresh = 0.5
    resolver = DnsResolver("greeter.test", port, refresh=refresh, lookup=dns.lookup)
    try:
        async with gz.connect(resolver, balancer="round_robin") as channel:
            assert await served_by(channel) == {first}
            dns.addresses = ["127.0.0.1", "127.0.0.2"]

            async def second_serves() -> bool:
                return (await say_hello(channel)).served_by == second

            await wait_until(second_serves, timeout=refresh + SLACK)
            dns.addresses = ["127.0.0.2"]
            only_second = [Endpoint("127.0.0.2", port)]
            await wait_until(lambda: channel.endpoints == only_second, timeout=refresh + SLACK)
            assert await served_by(channel) == {second}
    finally:
        for server in servers:
            await server.server.stop()


async def test_a_failed_endpoint_triggers_a_lookup_long_before_the_refresh():
    servers = await greeters_on_one_port(2)
    port = servers[0].server.port
    first, second = (server.address for server in servers)
    dns = FakeDns("127.0.0.1", "127.0.0.2")
    resolver = DnsResolver("greeter.test", port, refresh=30.0, lookup=dns.lookup)
    try:
        # Without health checks only the lost connection can tell the channel.
        async with gz.connect(resolver, health_check=False, balancer="round_robin") as channel:
            await all_ready(channel, 2)
            assert await served_by(channel) == {first, second}
            assert dns.lookups == 1
            dns.addresses = ["127.0.0.1"]  # what DNS says once the pod is gone
            await servers[1].server.stop()
            await wait_until(lambda: dns.lookups >= 2, timeout=10)  # the refresh is 30 s
            assert channel.endpoints == [Endpoint("127.0.0.1", port)]
            assert await served_by(channel) == {first}
    finally:
        await servers[0].server.stop()


async def test_a_failing_lookup_keeps_the_last_endpoints():
    servers = await greeters_on_one_port(2)
    port = servers[0].server.port
    dns = FakeDns("127.0.0.1", "127.0.0.2")
    resolver = DnsResolver("greeter.test", port, refresh=0.1, lookup=dns.lookup)
    try:
        async with gz.connect(resolver, balancer="round_robin") as channel:
            assert await served_by(channel, 40) == {s.address for s in servers}
            dns.failure = OSError("Temporary failure in name resolution")
            failed_before = dns.lookups
            await wait_until(lambda: dns.lookups >= failed_before + 2, timeout=10)
            assert channel.endpoints == [Endpoint("127.0.0.1", port), Endpoint("127.0.0.2", port)]
            assert await served_by(channel, 40) == {s.address for s in servers}
    finally:
        for server in servers:
            await server.server.stop()


async def test_a_lookup_error_names_the_target_and_the_cause():
    dns = FakeDns("127.0.0.1")
    target = "dns:///greeter.test:8080?refresh=100ms"
    resolver = DnsResolver("greeter.test", 8080, refresh=0.1, lookup=dns.lookup, target=target)
    recorder = Recorder()
    watching = asyncio.ensure_future(resolver.watch(recorder))
    try:
        await wait_until(lambda: bool(recorder.updates), timeout=10)
        dns.failure = OSError("Temporary failure in name resolution")
        await wait_until(lambda: bool(recorder.errors), timeout=10)
    finally:
        watching.cancel()
    assert target in recorder.errors[0]
    assert "Temporary failure in name resolution" in recorder.errors[0]
    assert recorder.updates == [frozenset({Endpoint("127.0.0.1", 8080)})]  # never an empty set


async def test_the_system_resolver_finds_localhost(serve_greeter):
    server = await serve_greeter()
    port = server.server.port
    assert "127.0.0.1" in await system_lookup("localhost", port)
    async with gz.connect(f"dns:///localhost:{port}") as channel:
        assert (await say_hello(channel)).served_by == server.address
        assert Endpoint("127.0.0.1", port) in channel.endpoints
