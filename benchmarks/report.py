"""What a scenario returns (tables of rows, notes), how it prints, and the command line every
scenario module shares: ``python -m benchmarks.NAME [--quick] [--json]``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

Row = dict[str, Any]


@dataclass
class Table:
    title: str
    rows: list[Row] = field(default_factory=list)


@dataclass
class Result:
    scenario: str
    title: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def table(self, title: str) -> Table:
        table = Table(title)
        self.tables.append(table)
        return table

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        tables = [Table(t["title"], t["rows"]) for t in data.get("tables", [])]
        return cls(data["scenario"], data["title"], tables, data.get("notes", []),
                   data.get("seconds", 0.0))  # fmt: skip


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def render(result: Result) -> str:
    lines = [f"== {result.title} ({result.scenario}, {result.seconds:.0f} s)"]
    for table in result.tables:
        lines.append(f"-- {table.title}")
        if not table.rows:
            lines.append("   (no rows)")
            continue
        columns = list(dict.fromkeys(key for row in table.rows for key in row))
        cells = [[cell(row.get(column)) for column in columns] for row in table.rows]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        lines.append("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    lines += [f"   note: {note}" for note in result.notes]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """Where the figures were taken; absolute numbers mean nothing without it."""
    import grpc

    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                model,
            )
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "load_average_1m": os.getloadavg()[0],
    }


Scenario = Callable[[bool], Awaitable[Result]]


def scenario_main(run: Scenario, description: str) -> None:
    """The command line of one scenario module."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    # SIGTERM (the runner's timeout) and SIGINT, even where a shell ignores it, interrupt the
    # run so that its finally blocks stop the processes it started.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.default_int_handler)
    started = time.monotonic()
    result = asyncio.run(run(args.quick))
    result.seconds = time.monotonic() - started
    print(json.dumps(result.to_json()) if args.json else render(result))
    sys.stdout.flush()
