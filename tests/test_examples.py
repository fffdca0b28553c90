"""The examples run as the README says: `make demo` and the greeter clients, as real processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from .support import ROOT, direct


def run_example(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_the_demo_spreads_calls_survives_a_kill_and_drains():
    """What `make demo` runs: a real etcd, 3 replicas, a client, a SIGKILL, a SIGTERM drain."""
    done = run_example("examples.greeter.demo")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert output.count("succeeded 300/300, failed 0/300") == 2, output
    assert "no greeter/ keys left in etcd" in output
    assert "OK: registered in etcd, balanced, survived a kill, drained cleanly" in output


@pytest.mark.parametrize("example", ["client", "sync_client"])
def test_the_client_examples_count_who_served(server_process, example):
    """The same calls from async code (gz.connect) and from synchronous code (gz.connect_sync)."""
    replicas = [server_process(), server_process()]
    for replica in replicas:
        asyncio.run(replica.wait_serving())
    done = run_example(f"examples.greeter.{example}", direct(replicas), "--calls", "20")
    assert done.returncode == 0, done.stderr
    assert all(r.address in done.stdout for r in replicas), done.stdout
