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

IMPORT_TIMING = "import time; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"


def import_seconds(module: str) -> float:
    code = IMPORT_TIMING.format(module)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)  # fmt: skip
    return float(done.stdout)


async def exec_to_serving(kind: str) -> float:
    with Children() as children:
        return await children.server(kind).wait_serving()


async def run(quick: bool) -> Result:
    result = Result("startup", "7. start-up")
    repeats = 2 if quick else 5
    imports: dict[str, list[float]] = {"gz": [], "grpc": []}
    serving: dict[str, list[float]] = {"gz": [], "raw": []}
    for _ in range(repeats):
        for module, samples in imports.items():
            samples.append(import_seconds(module))
        for kind, samples in serving.items():
            samples.append(await exec_to_serving(kind))
    rows = result.table(f"median of {repeats} fresh processes").rows
    rows.append({"what": "import gz vs import grpc",
                 "gz_ms": statistics.median(imports["gz"]) * 1000,
                 "raw_ms": statistics.median(imports["grpc"]) * 1000})  # fmt: skip
    rows.append({"what": "exec to SERVING, greeter",
                 "gz_ms": statistics.median(serving["gz"]) * 1000,
                 "raw_ms": statistics.median(serving["raw"]) * 1000})  # fmt: skip
    for row in rows:
        row["ratio"] = row["gz_ms"] / row["raw_ms"]
    result.notes.append("SERVING: grpc.health.v1 Check answers SERVING (polled every 50 ms)")
    return result


if __name__ == "__main__":
    scenario_main(run, __doc__.splitlines()[0])
