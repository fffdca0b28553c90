"""2. Server overhead: a gz Service (all its default middleware) vs a raw grpc.aio server.

Both serve the greeter in their own process; the same raw client alternates between them.
Server CPU is read from /proc for each. Goal: gz >= 0.95x raw rps.

    python -m benchmarks.server_overhead [--quick] [--json]
"""

from __future__ import annotations

import grpc

from .harness import Children, goal, matrix, serving
from .report import Result, scenario_main


async def run(quick: bool) -> Result:
    result = Result("server_overhead", "2. server overhead: gz Service vs a raw grpc.aio server")
    with Children() as children:
        # A second raw server: its ratio to the first is the noise floor of this run.
        servers = {"raw": children.server("raw"), "raw A/A": children.server("raw"),
                   "gz Service": children.server("gz")}  # fmt: skip
        await serving(*servers.values())
        targets = {
            name: (grpc.aio.insecure_channel(server.address), server.process.pid)
            for name, server in servers.items()
        }
        try:
            rows = await matrix(targets, "raw", quick, other="server")
        finally:
            for channel, _pid in targets.values():
                await channel.close()
    result.table(
        "ratios against the raw server; server_cpu: server CPU s per 1,000 calls"
    ).rows = rows
    result.notes.append(goal(rows, "gz Service", "rps_ratio", 0.95, True))
    return result


if __name__ == "__main__":
    scenario_main(run, __doc__.splitlines()[0])
