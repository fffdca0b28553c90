"""The examples run as the README says: `make demo` and the greeter clients, as real processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys

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


def test_the_client_example_counts_who_served(server_process):
    replicas = [server_process(), server_process()]
    for replica in replicas:
        asyncio.run(replica.wait_serving())
    done = run_example("examples.greeter.client", direct(replicas), "--calls", "20")
    assert done.returncode == 0, done.stderr
    assert all(r.address in done.stdout for r in replicas), done.stdout


def test_the_sync_client_example_counts_who_served(server_process):
    """The same calls from synchronous code, through gz.connect_sync()."""
    replicas = [server_process(), server_process()]
    for replica in replicas:
        asyncio.run(replica.wait_serving())
    done = run_example("examples.greeter.sync_client", direct(replicas), "--calls", "20")
    assert done.returncode == 0, done.stderr
    assert all(r.address in done.stdout for r in replicas), done.stdout
