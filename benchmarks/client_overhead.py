"""1. Client overhead: what connect() costs per call compared with a raw grpc.aio channel.

Against one raw server process: a raw channel, connect() with every default middleware and retries
switched off by their settings (round_robin and p2c_ewma), connect() with all defaults, and a
channel with one pass-through middleware of the user's (the cost of the full chain).
Goal: gz >= 0.95x raw rps and <= 1.05x raw p50.

    python -m benchmarks.client_overhead [--quick] [--json]
"""

from __future__ import annotations

import grpc

import gz

from .features import PassThrough, settings_without_middleware, takes_hot_path
from .harness import Children, goal, matrix, serving
from .report import Result, scenario_main


async def clients(address: str, result: Result) -> dict[str, grpc.aio.Channel]:
    """The channels compared; says in the notes when one leaves the hot path."""
    target = f"direct:///{address}"
    bare = settings_without_middleware()
    channels: dict[str, grpc.aio.Channel] = {
        "raw": grpc.aio.insecure_channel(address),
        # A second raw channel on a connection of its own: its ratio to raw is the noise floor.
        "raw A/A": grpc.aio.insecure_channel(address, [("grpc.use_local_subchannel_pool", 1)]),
        "gz": gz.connect(target, balancer="round_robin", settings=bare),
        "gz p2c": gz.connect(target, balancer="p2c_ewma", settings=bare),
        # What users get: p2c_ewma, retries, metrics, call log and deadline.
        "gz+defaults": gz.connect(target),
        # One pass-through middleware of the user's: what the full chain costs (for contrast).
        "gz+chain": gz.connect(target, settings=bare, middleware=[PassThrough()]),
    }
    for name in ("gz", "gz p2c", "gz+defaults"):
        if not await takes_hot_path(channels[name]):
            result.notes.append(f"{name}: unary calls leave the hot path (a chain runs)")
    return channels


async def run(quick: bool) -> Result:
    result = Result("client_overhead", "1. client overhead: connect() vs a raw grpc.aio channel")
    with Children() as children:
        (address,) = await serving(children.server("raw"))
        channels = await clients(address, result)
        try:
            rows = await matrix({name: (ch, None) for name, ch in channels.items()}, "raw", quick)
        finally:
            for channel in channels.values():
                await channel.close()
    result.table("ratios against raw; cpu: client CPU s per 1,000 calls").rows = rows
    for name in [n for n in channels if n.startswith("gz") and n != "gz+chain"]:
        result.notes += [goal(rows, name, "rps_ratio", 0.95, True),
                         goal(rows, name, "p50_ratio", 1.05, False)]  # fmt: skip
    return result


if __name__ == "__main__":
    scenario_main(run, __doc__.splitlines()[0])
