"""7. Start-up: ``import gz`` time, and exec to SERVING for a gz and a raw server.

Each figure is the median of fresh processes, alternating gz and raw; ``import grpc`` is the
floor any grpc program pays.

    python -m benchmarks.startup [--quick] [--json]
"""

from __future__ import annotations

import statistics
import subprocess
import sys

from tests.support import ROOT

from .harness import Children
from .report import Result, scenario_main

TIMED = "import time; t = time.perf_counter(); {}; print(time.perf_counter() - t)"
# What each row times in a fresh process: gz's side, and the raw floor it is compared with.
# ``import gz`` imports its names on first use, so the second row is what a client pays before
# its first call: the channel's modules and the settings (pydantic-settings).
ROWS = {
    "import gz vs import grpc": ("import gz", "import grpc"),
    "import + a channel: gz.connect() vs grpc.aio.insecure_channel()": (
        "import gz; gz.connect('direct:///127.0.0.1:1')",
        "import grpc; grpc.aio.insecure_channel('127.0.0.1:1')",
    ),
}


def timed_seconds(statement: str) -> float:
    code = TIMED.format(statement)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)  # fmt: skip
    return float(done.stdout)


async def exec_to_serving(kind: str) -> float:
    with Children() as children:
        return await children.server(kind).wait_serving()


async def run(quick: bool) -> Result:
    result = Result("startup", "7. start-up")
    repeats = 2 if quick else 5
    timings: dict[str, list[float]] = {statement: [] for row in ROWS.values() for statement in row}
    serving: dict[str, list[float]] = {"gz": [], "raw": []}
    for _ in range(repeats):
        for statement, samples in timings.items():
            samples.append(timed_seconds(statement))
        for kind, samples in serving.items():
            samples.append(await exec_to_serving(kind))
    rows = result.table(f"median of {repeats} fresh processes").rows
    for what, (ours, raw) in ROWS.items():
        rows.append({"what": what,
                     "gz_ms": statistics.median(timings[ours]) * 1000,
                     "raw_ms": statistics.median(timings[raw]) * 1000})  # fmt: skip
    rows.append({"what": "exec to SERVING, greeter",
                 "gz_ms": statistics.median(serving["gz"]) * 1000,
                 "raw_ms": statistics.median(serving["raw"]) * 1000})  # fmt: skip
    for row in rows:
        row["ratio"] = row["gz_ms"] / row["raw_ms"]
    result.notes.append("SERVING: grpc.health.v1 Check answers SERVING (polled every 50 ms)")
    return result


if __name__ == "__main__":
    scenario_main(run, __doc__.splitlines()[0])
