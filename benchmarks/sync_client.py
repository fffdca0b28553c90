"""8. Sync client overhead: what connect_sync() costs per call compared with a raw grpc.Channel.

Against one raw server process: a raw grpc.insecure_channel, a second one on a connection of its
own (raw A/A, the noise floor), connect_sync() with the default middleware (tracing, metrics,
call log, deadline) switched off by its settings, and connect_sync() with all defaults. Blocking
unary calls from 1 and 8 threads. Goals: gz >= 0.95x raw rps and <= 1.05x raw p50 (defaults
off); gz+defaults <= 1.10x raw client CPU per call.

    python -m benchmarks.sync_client [--quick] [--json]
"""

from __future__ import annotations

import grpc

import gz
from tests.support import hot_path_settings

from .harness import Children, goal, matrix, serving, thread_round, unary
from .report import Result, scenario_main

THREADS = (1, 8)


def clients(address: str) -> dict[str, grpc.Channel]:
    """The channels compared."""
    target = f"direct:///{address}"
    return {
        "raw": grpc.insecure_channel(address),
        # A second raw channel on a connection of its own: its ratio to raw is the noise floor.
        "raw A/A": grpc.insecure_channel(address, [("grpc.use_local_subchannel_pool", 1)]),
        # The default middleware off; retries stay on (on success they count the call in the
        # budget).
        "gz": gz.connect_sync(target, settings=hot_path_settings()),
        # What users get: p2c_ewma, retries, tracing, metrics, call log and deadline.
        "gz+defaults": gz.connect_sync(target),
    }


async def run(quick: bool) -> Result:
    result = Result("sync_client", "8. sync client overhead: connect_sync() vs a raw grpc.Channel")
    with Children() as children:
        (address,) = await serving(children.server("raw"))
        channels = clients(address)
        try:
            rows = await matrix(
                {name: (channel, None) for name, channel in channels.items()}, "raw", quick,
                shapes={"unary": (unary, 1.0)}, concurrencies=THREADS, load=thread_round,
                cpu=True,
            )  # fmt: skip
        finally:
            for channel in channels.values():
                channel.close()
    result.table("ratios against raw; conc: threads; cpu: client CPU s per 1,000 calls (all "
                 "threads)").rows = rows  # fmt: skip
    result.notes += [goal(rows, "gz", "rps_ratio", 0.95, True),
                     goal(rows, "gz", "p50_ratio", 1.05, False),
                     goal(rows, "gz+defaults", "cpu_ratio", 1.10, False)]  # fmt: skip
    return result


if __name__ == "__main__":
    scenario_main(run, __doc__.splitlines()[0])
