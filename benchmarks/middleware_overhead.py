"""What gz's default middleware costs per unary call, on each side, against raw grpc.aio.

Client side: one raw grpc.aio server process; in this process a raw channel, connect() with the
default middleware, and connect() with every default switched off, in alternating rounds.
Server side: a raw client in this process against three server processes (raw grpc.aio, a gz
Service with its default middleware, and one with the defaults off); the CPU each server process
spends per call is read from /proc, so the figure holds on a busy machine.

    python -m benchmarks.middleware_overhead [--rounds 6] [--calls 3000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import grpc

import gz
from tests.support import DEFAULT_MIDDLEWARE_OFF

from .features import SERVER_MIDDLEWARE_OFF
from .harness import Children, Samples, load_round, process_cpu, serving, unary


async def unary_round(channel: grpc.aio.Channel, calls: int, concurrency: int) -> float:
    """Calls per second of ``calls`` unary calls made by ``concurrency`` workers."""
    samples = Samples()
    await load_round(unary(channel), calls, concurrency, samples)
    return samples.rates[0]


async def alternate(channels: dict, rounds: int, calls: int, concurrency: int, pids=None) -> dict:
    """Per channel: median calls/s, and the median over rounds of its CPU per call divided by
    raw's in the same round (this process's CPU, or each channel's server process when ``pids``
    is given). Rounds rotate the order, so a noisy neighbour hits every channel alike."""
    rates: dict[str, list[float]] = {name: [] for name in channels}
    cpu: dict[str, list[float]] = {name: [] for name in channels}
    names = list(channels)
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            clock = (lambda n=name: process_cpu(pids[n])) if pids else time.process_time
            before = clock()
            rates[name].append(await unary_round(channels[name], calls, concurrency))
            cpu[name].append((clock() - before) / (calls // concurrency * concurrency))
    return {
        name: (
            statistics.median(rates[name]),
            statistics.median(cpu[name]) * 1e6,
            statistics.median(c / raw for c, raw in zip(cpu[name], cpu["raw"], strict=True)),
        )
        for name in channels
    }


async def client_side(rounds: int, calls: int, concurrency: int) -> dict:
    with Children() as children:
        (address,) = await serving(children.server("raw"))
        channels = {
            "raw": grpc.aio.insecure_channel(address),
            "gz defaults": gz.connect(f"direct:///{address}"),
            "gz defaults off": gz.connect(
                f"direct:///{address}", settings=gz.ClientSettings(**DEFAULT_MIDDLEWARE_OFF)
            ),
        }
        return await measure(channels, rounds, calls, concurrency)


async def measure(channels: dict, rounds: int, calls: int, concurrency: int, pids=None) -> dict:
    for channel in channels.values():  # warm up connections and code paths
        await unary_round(channel, 500, 8)
    try:
        return await alternate(channels, rounds, calls, concurrency, pids)
    finally:
        for channel in channels.values():
            await channel.close()


async def server_side(rounds: int, calls: int, concurrency: int) -> dict:
    with Children() as children:
        servers = {
            "raw": children.server("raw"),
            "gz defaults": children.server("gz"),
            "gz defaults off": children.server("gz", **SERVER_MIDDLEWARE_OFF),
        }
        await serving(*servers.values())
        channels = {name: grpc.aio.insecure_channel(s.address) for name, s in servers.items()}
        pids = {name: server.process.pid for name, server in servers.items()}
        return await measure(channels, rounds, calls, concurrency, pids)


class FakeServicerContext:
    """Just what the server chain asks of grpc's context for an OK call (``deadline``: the
    seconds it has left, None for none)."""

    def __init__(self, deadline: float | None = None) -> None:
        self._deadline = deadline

    def time_remaining(self) -> float | None:
        return self._deadline

    def code(self) -> None:
        return None


async def echo(request: object, context: object) -> object:
    return request


async def chain_cost(calls: int = 50_000) -> dict[str, float]:
    """Microseconds per call that the default chains add around a handler that does nothing:
    the middleware alone, without grpc, so the figure does not depend on machine load."""
    from concurrent.futures import ThreadPoolExecutor

    from gz.middleware import CallContext, Kind, Method, compose
    from gz.middleware.defaults import client_middleware, server_middleware
    from gz.middleware.handlers import wrap_method_handler

    name = "/greeter.v1.Greeter/SayHello"
    with ThreadPoolExecutor(1) as executor:
        server = wrap_method_handler(
            name, grpc.unary_unary_rpc_method_handler(echo),
            server_middleware(gz.ServerSettings()), executor,
        ).unary_unary  # fmt: skip
    method = Method(name, Kind.UNARY_UNARY, "client")

    async def endpoint(ctx: CallContext, request: object) -> object:
        return request

    client = compose(client_middleware(gz.ClientSettings()), method, endpoint)
    context = FakeServicerContext()
    runs = {
        "none": lambda: echo(1, context),
        "server defaults": lambda: server(1, context),
        "client defaults": lambda: client(CallContext(method, []), 1),
    }
    cost = {}
    for label, run in runs.items():
        for _ in range(1000):
            await run()
        started = time.process_time()
        for _ in range(calls):
            await run()
        cost[label] = (time.process_time() - started) / calls * 1e6
    return {label: value - cost["none"] for label, value in cost.items() if label != "none"}


def report(title: str, figures: dict) -> None:
    raw_rate = figures["raw"][0]
    print(f"{title:<22}{'calls/s':>9}{'ratio':>7}{'cpu us/call':>13}{'cpu ratio':>10}")
    for name, (rate, cpu, cpu_ratio) in figures.items():
        print(f"  {name:<20}{rate:>9.0f}{rate / raw_rate:>7.3f}{cpu:>13.1f}{cpu_ratio:>10.3f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    for label, micros in (await chain_cost()).items():
        print(f"{label} alone, without grpc: {micros:.1f} us per unary call")
    report("client side", await client_side(args.rounds, args.calls, args.concurrency))
    report("server side", await server_side(args.rounds, args.calls, args.concurrency))
    print("(calls/s: median of rounds; cpu: of the client process, or of each server process;")
    print(" cpu ratio: median over rounds of cpu per call / raw's in the same round)")


if __name__ == "__main__":
    asyncio.run(main())
