"""`python -m benchmarks --quick --json` runs and prints the documented JSON shape. Benchmarks
are programs that print figures, not pass/fail tests: no timing is checked here."""

from __future__ import annotations

import json
import subprocess
import sys

from .support import ROOT


def test_quick_json_run_of_four_scenarios_has_the_documented_shape():
    command = [sys.executable, "-m", "benchmarks", "--quick", "--json"]
    scenarios = ["client_overhead", "scale", "sync_client", "server_bisect"]
    done = subprocess.run(
        [*command, "--only", ",".join(scenarios)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {"machine", "quick", "seconds", "scenarios"} <= report.keys()
    assert {"cpus", "cpu_model", "python", "grpcio"} <= report["machine"].keys()
    assert report["quick"] is True
    assert [s["scenario"] for s in report["scenarios"]] == scenarios
    for scenario in report["scenarios"]:
        assert not [note for note in scenario["notes"] if note.startswith("FAILED")], scenario
        assert scenario["tables"] and all(table["rows"] for table in scenario["tables"])
    overhead, scale, sync, bisect = (s["tables"][0]["rows"] for s in report["scenarios"])
    assert {row["variant"] for row in overhead} >= {"raw", "gz"}
    for row in overhead + sync:
        assert {"shape", "conc", "rps", "p50_ms", "p99_ms", "cpu_s_per_1k", "rps_ratio",
                "p50_ratio", "p99_ratio"} <= row.keys()  # fmt: skip
    assert {row["variant"] for row in sync} == {"raw", "raw A/A", "gz", "gz+defaults"}
    assert {row["conc"] for row in sync} == {1, 8}
    assert all("cpu_ratio" in row for row in sync)
    sync_goals = [n for n in report["scenarios"][2]["notes"] if n.startswith("goal ")]
    assert len(sync_goals) == 3 and all("A/A control" in note for note in sync_goals)
    assert [row["endpoints"] for row in scale] == [10, 100]
    assert all("pick_ns_round_robin" in row and "kib_per_subchannel" in row for row in scale)
    # one row per server variant at each of two concurrencies, server CPU per call as a ratio
    wanted = {"raw", "raw A/A", "+options", "+wrap", "+metrics", "gz defaults", "gz defaults off"}
    assert {row["variant"] for row in bisect} >= wanted
    assert len({row["conc"] for row in bisect}) == 2
    for row in bisect:
        assert {"rps", "server_cpu_s_per_1k", "rps_ratio", "server_cpu_ratio",
                "rounds_rerun"} <= row.keys()  # fmt: skip
    assert any("answered SayHello correctly" in n for n in report["scenarios"][3]["notes"])


def test_the_instruction_counts_child_makes_calls_through_each_chain():
    """Scenario 10 runs its child under valgrind; the child itself must work without it."""
    for side in ("server", "client"):
        command = [sys.executable, "-m", "benchmarks.instructions", "--child", side, "50"]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
