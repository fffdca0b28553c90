"""6. Scale: pick time, update time and memory with 10, 100, 1,000 and 10,000 endpoints.

Pick: a picker of each balancer over N subchannels, timed over many picks. Update: a channel on a
resolver pushed to by hand; the time to apply N endpoints at once, then one endpoint removed or
added at a time (``one_change``: pushed as the change, as the etcd and Kubernetes resolvers do,
and again with Python's cyclic garbage collector paused; ``whole_set_change``: pushed as the
whole set, as DNS and direct:/// do). Memory: RSS growth once the N subchannels are connected
(raw server processes listening on N ports, 5,000 each), per subchannel, and the same for N raw
grpc.aio channels (not at 10,000). A second table: the same channel with subsetting off and on
(GZ_SUBSET_SIZE=32), whole-process RSS growth.

    python -m benchmarks.scale [--quick] [--json]
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time

import grpc

import gz
from gz.balancing import PICKERS, Subchannel
from gz.discovery import Endpoint, Listener
from gz.settings import ClientSettings
from tests.support import free_port

from .harness import Children, serving
from .report import Result, Row, scenario_main

CONNECT_TIMEOUT = 60.0
PORTS_PER_SERVER = 5000  # a server holds a listening and an accepted socket per port
SUBSET = 32


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


def subset_settings(size: int) -> ClientSettings | None:
    """Client settings with GZ_SUBSET_SIZE=size (0: off); None where gz has no subsetting."""
    if "subset_size" not in ClientSettings.model_fields:
        return None
    return ClientSettings.from_env().model_copy(update={"subset_size": size})


class PushedResolver(gz.Resolver):
    """Pushes what it is given to its channel, whole or as a change, as resolvers do."""

    target = "pushed"

    def __init__(self) -> None:
        self.listeners: list[Listener] = []

    async def watch(self, listener: Listener) -> None:
        self.listeners.append(listener)
        listener.update(frozenset())
        await asyncio.Event().wait()

    def update(self, endpoints: list[Endpoint]) -> None:
        for listener in self.listeners:
            listener.update(frozenset(endpoints))

    def change(self, added: list[Endpoint], removed: list[Endpoint]) -> None:
        for listener in self.listeners:
            listener.change(added, removed)


def change_ms(resolver: PushedResolver, endpoints: list[Endpoint], changes: int) -> float:
    """Milliseconds per endpoint removed or added, pushed as the change."""
    started = time.perf_counter()
    for endpoint in endpoints[:changes]:  # out and back in
        resolver.change([], [endpoint])
        resolver.change([endpoint], [])
    return (time.perf_counter() - started) / (2 * changes) * 1000


def whole_set_change_ms(resolver: PushedResolver, endpoints: list[Endpoint], changes: int) -> float:
    """The same, pushed as the whole set (the resolver's part: making the set)."""
    started = time.perf_counter()
    for index in range(changes):
        resolver.update(endpoints[:index] + endpoints[index + 1 :])
        resolver.update(endpoints)
    return (time.perf_counter() - started) / (2 * changes) * 1000


async def balanced_figures(addresses: list[str], changes: int, subset: int = 0) -> Row:
    endpoints = [Endpoint.parse(a) for a in addresses]
    resolver = PushedResolver()
    channel = gz.connect(resolver, settings=subset_settings(subset))
    await channel.__aenter__()
    await asyncio.sleep(0.1)  # the resolver's watch has started and pushed the empty set
    await settled_sockets()
    baseline, memory = open_sockets(), rss_bytes()
    started = time.perf_counter()
    resolver.update(endpoints)
    first_update = time.perf_counter() - started
    pool = getattr(channel, "_pool", None)
    subchannels = len(pool.subchannels) if pool is not None else len(addresses)
    connected = await until_connected(subchannels, baseline)
    growth = rss_bytes() - memory
    one_change = change_ms(resolver, endpoints, changes)
    gc.disable()  # what is left is gz's own work; the collector's share grows with the heap
    try:
        without_gc = change_ms(resolver, endpoints, changes)
    finally:
        gc.enable()
    row: Row = {"first_update_ms": first_update * 1000, "one_change_ms": one_change,
                "one_change_gc_paused_ms": without_gc,
                "whole_set_change_ms": whole_set_change_ms(resolver, endpoints, changes),
                "connected_s": connected, "subchannels": subchannels, "rss_mib": growth / 2**20,
                "kib_per_subchannel": growth / subchannels / 1024}  # fmt: skip
    await channel.close()
    return row


async def raw_kib_per_channel(addresses: list[str]) -> float:
    memory = rss_bytes()
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), CONNECT_TIMEOUT)
    await asyncio.sleep(0.5)
    per_channel = (rss_bytes() - memory) / len(addresses)
    await asyncio.gather(*(c.close() for c in channels))
    return per_channel / 1024


SUBSET_KEYS = ("endpoints", "subchannels", "rss_mib", "first_update_ms", "one_change_ms",
               "whole_set_change_ms")  # fmt: skip


async def subset_row(addresses: list[str], result: Result) -> Row:
    """The subsetting-on row of ``addresses`` (measured before the larger, all-subchannel run)."""
    on = await balanced_figures(addresses, min(len(addresses), 100), SUBSET)
    if on["subchannels"] != SUBSET:  # no subsetting in this gz: a resolver of K endpoints
        result.notes.append(f"no subsetting at {len(addresses)}: row of {SUBSET} endpoints")
        on = await balanced_figures(addresses[:SUBSET], 20)
    return {"subset": str(SUBSET), **{key: on.get(key) for key in SUBSET_KEYS},
            "endpoints": len(addresses)}  # fmt: skip


async def settled_sockets() -> None:
    """Until the sockets of a closed channel are gone (the count stops changing for 0.3 s)."""
    last, stable_since, started = -1, time.monotonic(), time.monotonic()
    while time.monotonic() - stable_since < 0.3 and time.monotonic() - started < 10:
        now = open_sockets()
        if now != last:
            last, stable_since = now, time.monotonic()
        await asyncio.sleep(0.05)


async def run(quick: bool) -> Result:
    result = Result("scale", "6. scale: pick, update and memory by endpoint count")
    sizes = (10, 100) if quick else (10, 100, 1000, 10_000)
    picks = 20_000 if quick else 200_000
    rows: list[Row] = []
    subset_rows: list[Row] = []
    with Children() as children:
        ports = free_ports(max(sizes))
        chunks = [ports[i : i + PORTS_PER_SERVER] for i in range(0, len(ports), PORTS_PER_SERVER)]
        await serving(*(children.server("raw", ",".join(f"127.0.0.1:{p}" for p in chunk))
                        for chunk in chunks))  # fmt: skip
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
            if size > SUBSET:
                subset_rows.append(await subset_row(all_addresses[:size], result))
            row.update(await balanced_figures(all_addresses[:size], min(size, 100)))
            if size > SUBSET:
                off = {key: row.get(key) for key in SUBSET_KEYS}
                subset_rows.insert(-1, {"subset": "off", **off})
            if size <= 1000:  # 10,000 more connections would add seconds and tell nothing new
                row["raw_kib_per_channel"] = await raw_kib_per_channel(all_addresses[:size])
            rows.append(row)
    result.table("raw server processes listening on every endpoint's port").rows = rows
    result.table(f"subsetting off and on (K = {SUBSET}): whole RSS growth").rows = subset_rows
    result.notes.append(f"balancers: {', '.join(PICKERS)}; one_change: one endpoint removed or "
                        "added, pushed as the change (etcd, k8s) and applied (gc_paused: with "
                        "Python's cyclic garbage collector paused); whole_set_change: "
                        "the same pushed as the whole set (dns, direct); rss, kib: RSS growth "
                        "once connected, in all and per channel")  # fmt: skip
    return result


if __name__ == "__main__":
    scenario_main(run, __doc__.splitlines()[0])
