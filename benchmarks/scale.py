"""6. Scale: pick time, update time and memory with 10, 100 and 1,000 endpoints.

Pick: a picker of each balancer over N subchannels, timed over many picks. Update: a channel on a
ManualResolver; the time the resolver's update takes to apply N endpoints at once, then one
endpoint replaced at a time. Memory: RSS growth once the N subchannels are connected (one raw
server process listening on N ports), per subchannel, and the same for N raw grpc.aio channels.

    python -m benchmarks.scale [--quick] [--json]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import grpc

import gz
from gz.balancing import PICKERS, Subchannel
from gz.discovery import Endpoint
from tests.support import free_port

from .harness import Children, serving
from .report import Result, Row, scenario_main

CONNECT_TIMEOUT = 60.0


def free_ports(count: int) -> list[int]:
    return sorted(free_port() for _ in range(count))  # free_port never hands one out twice


def pick_ns(balancer: str, endpoints: list[Endpoint], picks: int) -> float:
    """Nanoseconds per pick of a picker over unconnected subchannels."""
    channels = [grpc.aio.insecure_channel(e.address) for e in endpoints]
    subchannels = [Subchannel(e, c, lambda *_: None) for e, c in zip(endpoints, channels)]  # noqa: B905
    pick = PICKERS[balancer](subchannels).pick
    started = time.perf_counter_ns()
    for _ in range(picks):
        pick()
    return (time.perf_counter_ns() - started) / picks


def rss_bytes() -> int:
    """This process's resident memory."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd of the listing itself is gone by now
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


async def until_connected(count: int, baseline: int) -> float:
    """Seconds until this process holds ``count`` more sockets than ``baseline``, and then keeps
    the same number for a moment (connections are made, memory settled)."""
    started = time.monotonic()
    last, stable_since = -1, time.monotonic()
    while time.monotonic() - started < CONNECT_TIMEOUT:
        now = open_sockets()
        if now != last:
            last, stable_since = now, time.monotonic()
        elif now - baseline >= count and time.monotonic() - stable_since > 0.5:
            return stable_since - started
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{count} connections not made within {CONNECT_TIMEOUT}s")


async def balanced_figures(addresses: list[str], changes: int) -> Row:
    resolver = gz.ManualResolver([])
    channel = gz.connect(resolver)
    await channel.__aenter__()
    await asyncio.sleep(0.1)  # the resolver's watch has started and pushed the empty set
    baseline, memory = open_sockets(), rss_bytes()
    started = time.perf_counter()
    resolver.set_endpoints(addresses)
    first_update = time.perf_counter() - started
    connected = await until_connected(len(addresses), baseline)
    per_subchannel = (rss_bytes() - memory) / len(addresses)
    started = time.perf_counter()
    for index in range(changes):  # swap one endpoint out and back in
        resolver.set_endpoints(addresses[:index] + addresses[index + 1 :])
        resolver.set_endpoints(addresses)
    one_change = (time.perf_counter() - started) / (2 * changes)
    await channel.close()
    return {"first_update_ms": first_update * 1000, "one_change_ms": one_change * 1000,
            "connected_s": connected, "kib_per_subchannel": per_subchannel / 1024}  # fmt: skip


async def raw_kib_per_channel(addresses: list[str]) -> float:
    memory = rss_bytes()
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), CONNECT_TIMEOUT)
    await asyncio.sleep(0.5)
    per_channel = (rss_bytes() - memory) / len(addresses)
    await asyncio.gather(*(c.close() for c in channels))
    return per_channel / 1024


async def run(quick: bool) -> Result:
    result = Result("scale", "6. scale: pick, update and memory by endpoint count")
    sizes = (10, 100) if quick else (10, 100, 1000)
    picks = 20_000 if quick else 200_000
    rows: list[Row] = []
    with Children() as children:
        ports = free_ports(max(sizes))
        server = children.server("raw", ",".join(f"127.0.0.1:{p}" for p in ports))
        await serving(server)
        all_addresses = [f"127.0.0.1:{p}" for p in ports]
        # The first channel and picker of the process pay one-time costs; not measured.
        warm = [Endpoint.parse(a) for a in all_addresses[:2]]
        pickers = []
        for balancer in PICKERS:
            try:
                pick_ns(balancer, warm, 1000)
                pickers.append(balancer)
            except (TypeError, AttributeError) as error:  # the picker API changed under us
                result.notes.append(f"pick time of {balancer}: not available ({error})")
        await balanced_figures(all_addresses[:2], 1)
        for size in sizes:
            endpoints = [Endpoint.parse(a) for a in all_addresses[:size]]
            row: Row = {"endpoints": size}
            for balancer in pickers:
                row[f"pick_ns_{balancer}"] = pick_ns(balancer, endpoints, picks)
            row.update(await balanced_figures(all_addresses[:size], min(size, 20)))
            row["raw_kib_per_channel"] = await raw_kib_per_channel(all_addresses[:size])
            rows.append(row)
    result.table("one raw server process listening on every endpoint's port").rows = rows
    result.notes.append(f"balancers: {', '.join(PICKERS)}; one_change: one endpoint removed or "
                        "added, applied; kib: RSS growth once connected, per channel")  # fmt: skip
    return result


if __name__ == "__main__":
    scenario_main(run, __doc__.splitlines()[0])
