"""Run every benchmark scenario on loopback and print a table per scenario (or one JSON document).

    python -m benchmarks [--quick] [--json] [--only client_overhead,scale]

Each scenario runs in its own process (``python -m benchmarks.NAME --json``), so what one leaves
behind (threads, channels, imports) never weighs on the next, and one that fails is reported
without stopping the others.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from .report import Result, machine, render

SCENARIOS = ("client_overhead", "server_overhead", "proxy", "balance", "convergence", "scale",
             "startup", "sync_client", "server_bisect", "instructions", "workers")  # fmt: skip
TIMEOUT = {"quick": 60.0, "full": 150.0}  # seconds per scenario
# scenarios that take longer than that in a full run
FULL_TIMEOUT = {"server_bisect": 420.0, "instructions": 300.0, "workers": 300.0}


def run_scenario(name: str, quick: bool) -> Result:
    command = [sys.executable, "-m", f"benchmarks.{name}", "--json", *(["--quick"] * quick)]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        timeout = TIMEOUT["quick"] if quick else FULL_TIMEOUT.get(name, TIMEOUT["full"])
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()  # the scenario then stops the processes it started
        try:
            out, err = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        err = f"timed out; {err}"
    try:
        return Result.from_json(json.loads(out.strip().splitlines()[-1]))
    except (ValueError, IndexError, KeyError):
        failed = Result(name, name, seconds=time.monotonic() - started)
        tail = " | ".join(err.strip().splitlines()[-3:])
        failed.notes.append(f"FAILED (exit {process.returncode}): {tail}")
        return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds each")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--only", default="", help=f"comma list out of {', '.join(SCENARIOS)}")
    args = parser.parse_args()
    chosen = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario {sorted(unknown)[0]!r}")
    about = machine()
    if not args.json:
        print(" ".join(f"{key}={value}" for key, value in about.items()), flush=True)
    started, results = time.monotonic(), []
    for name in chosen:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results.append(run_scenario(name, args.quick))
        if not args.json:
            print(render(results[-1]) + "\n", flush=True)
    total = time.monotonic() - started
    if args.json:
        print(json.dumps({"machine": about, "quick": args.quick, "seconds": total,
                          "scenarios": [r.to_json() for r in results]}, indent=1))  # fmt: skip
    else:
        print(f"all scenarios: {total:.0f} s")


if __name__ == "__main__":
    main()
