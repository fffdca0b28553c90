"""gz.connect_sync in a real WSGI app: examples/greeter/wsgi_app.py served by waitress in a process
of its own, calling greeter replicas that are processes too."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from pathlib import Path

import pytest

from examples.greeter import wsgi_app

from .support import ROOT, ServerProcess, free_port, http_get

DRAIN = "0.5"  # the replicas' GZ_SHUTDOWN_DRAIN: short, but a real drain
REQUESTS = 200
BEFORE = 60  # requests sent before the restart starts (the SIGTERM waits for 40 answers)
DURING = 90  # then paced while the replica drains, exits and starts again; the rest after


class Processes:
    """Every process a test starts; all killed (by pid) at the end, passed or failed."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.replicas: list[ServerProcess] = []
        self.others: list[tuple[subprocess.Popen[str], Path]] = []

    def replica(self, address: str | None = None) -> ServerProcess:
        """A greeter replica on a free port, or on ``address`` (a port a replica had)."""
        env = {"GZ_SHUTDOWN_DRAIN": DRAIN}
        if address is not None:
            env["GZ_LISTEN"] = address
        replica = ServerProcess(**env)
        if address is not None:  # ServerProcess picked a free port; it listens on this one
            replica.address, replica.port = address, int(address.rsplit(":", 1)[1])
        self.replicas.append(replica.start())
        return replica

    def app(self, command: list[str], env: dict[str, str], port: int) -> subprocess.Popen[str]:
        """``command`` (a WSGI server of the example app) started, once it accepts on ``port``."""
        log = self.tmp_path / f"app-{len(self.others)}.log"
        with log.open("w") as stderr:
            process = subprocess.Popen(
                command,
                env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                cwd=ROOT,
                stdout=stderr,
                stderr=stderr,
                text=True,
            )
        self.others.append((process, log))
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"{command} exited {process.returncode}: {log.read_text()}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return process
            assert time.monotonic() < deadline, f"{command} not listening: {log.read_text()}"
            time.sleep(0.05)

    def log(self, process: subprocess.Popen[str]) -> str:
        return next(log.read_text() for p, log in self.others if p is process)

    def stop(self) -> None:
        for replica in self.replicas:
            replica.kill()
        for process, _ in self.others:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def processes(tmp_path: Path, clean_environment):
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def waitress(port: int, threads: int) -> list[str]:
    return [
        sys.executable, "-m", "waitress", "--host", "127.0.0.1", "--port", str(port),
        f"--threads={threads}", "examples.greeter.wsgi_app:app",
    ]  # fmt: skip


def get(url: str) -> tuple[int | None, str]:
    """(status, body) of a GET; (None, the error) when no HTTP answer came at all."""
    try:
        return http_get(url, timeout=30)
    except (urllib.error.URLError, OSError) as error:
        return None, repr(error)


def test_a_flask_app_answers_every_request_while_a_replica_restarts(processes):
    """200 concurrent requests through one waitress process (32 threads sharing one sync
    channel) while one of three replicas drains, exits and comes back on its port: every
    request is answered, and the calls spread over the replicas."""
    replicas = [processes.replica() for _ in range(3)]
    for replica in replicas:
        asyncio.run(replica.wait_serving())
    port = free_port()
    target = "direct:///" + ",".join(r.address for r in replicas)
    app = processes.app(waitress(port, threads=32), {"GZ_TARGET_GREETER": target}, port)

    stopping, back = threading.Event(), threading.Event()
    started_at: dict[str, float] = {"requests": time.monotonic()}
    phases = ["?"] * REQUESTS

    def request(i: int) -> tuple[int | None, str]:
        """Request i, paced: the first ones at once, the middle ones spread over the restart,
        the last ones after it."""
        if i < BEFORE:
            pause_until(started_at["requests"] + i * 0.01)
        elif i < BEFORE + DURING:
            stopping.wait()
            pause_until(started_at["stopping"] + (i - BEFORE) * 0.02)
        else:
            back.wait()
            pause_until(started_at["back"] + (i - BEFORE - DURING) * 0.01)
        phases[i] = "after" if back.is_set() else "during" if stopping.is_set() else "before"
        return get(f"http://127.0.0.1:{port}/hello/r{i}")

    restarted = replicas[0]
    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(request, i) for i in range(REQUESTS)]
        try:
            wait_all(futures[:40])
            started_at["stopping"] = time.monotonic()
            restarted.signal(signal.SIGTERM)
            stopping.set()
            assert asyncio.run(restarted.wait_exit()) == 0, restarted.stderr()
            restarted = processes.replica(restarted.address)
            asyncio.run(restarted.wait_serving())
        finally:  # whatever happened, the requests waiting for these go
            started_at.setdefault("stopping", time.monotonic())
            stopping.set()
            started_at["back"] = time.monotonic()
            back.set()
        answers = [future.result() for future in futures]

    failed = []
    served: Counter[str] = Counter()
    for i, (status, body) in enumerate(answers):
        reply = json.loads(body) if status == 200 else {}
        if reply.get("message") != f"Hello, r{i}!":
            failed.append((i, phases[i], status, body))
        served[reply.get("served_by")] += 1
    assert not failed, (
        f"{len(failed)}/{REQUESTS} requests failed (number, sent, status, body): {failed}\n"
        f"app log:\n{processes.log(app)}"
    )
    assert phases.count("during") >= 10, f"the restart did not overlap the requests: {phases}"
    assert set(served) == {r.address for r in replicas}, served
    assert min(served.values()) >= 5, served

    # and the replica that came back gets calls again, once the channel has reconnected to it
    deadline, again = time.monotonic() + 30, Counter[str]()
    while restarted.address not in again:
        assert time.monotonic() < deadline, f"no call reached the restarted replica: {again}"
        status, body = get(f"http://127.0.0.1:{port}/hello/again")
        assert status == 200, (status, body)
        again[json.loads(body)["served_by"]] += 1
        time.sleep(0.05)


def pause_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


# -- the example as its docstring shows it -------------------------------------------------------
def docstring_commands() -> tuple[dict[str, str], list[str], str, str]:
    """From the example's docstring: the exported variables, the commands that serve the app, the
    curl command and the line it prints."""
    lines = [line.strip() for line in (wsgi_app.__doc__ or "").splitlines()]
    exported = dict(
        line.removeprefix("export ").split("=", 1) for line in lines if line.startswith("export ")
    )
    servers = [line for line in lines if line.startswith("python -m ")]
    curl = next(i for i, line in enumerate(lines) if line.startswith("curl "))
    return exported, servers, lines[curl], lines[curl + 1]


def test_the_example_runs_as_its_docstring_says(processes):
    """Each way the docstring serves the app answers its curl command with the line it shows;
    when the greeter is gone, the app answers 503 with the gRPC status code."""
    exported, servers, curl, printed = docstring_commands()
    assert exported == {"GZ_TARGET_GREETER": "direct:///127.0.0.1:8080"}
    assert servers == [
        "python -m waitress --host 127.0.0.1 --port 8000 examples.greeter.wsgi_app:app",
        "python -m examples.greeter.wsgi_app 8000",
    ]
    assert curl == "curl http://127.0.0.1:8000/hello/world"
    assert wsgi_app.TARGET == "greeter"  # GZ_TARGET_GREETER resolves it

    replica = processes.replica()
    asyncio.run(replica.wait_serving())
    ports = {"8080": str(replica.port)}

    def here(text: str) -> str:  # the docs' ports are this test's ports
        return re.sub(r"\b(8080|8000)\b", lambda m: ports[m.group(1)], text)

    served = []
    for command in servers:
        ports["8000"] = str(port := free_port())
        argv = [sys.executable, *shlex.split(here(command))[1:]]
        env = {name: here(value) for name, value in exported.items()}
        app = processes.app(argv, env, port)
        served.append((command, app, port))
        status, body = http_get(here(curl).removeprefix("curl "))
        assert (status, body.strip()) == (200, here(printed)), (command, processes.log(app))

    replica.kill()
    for command, app, port in served:
        status, body = http_get(f"http://127.0.0.1:{port}/hello/world", timeout=30)
        assert status == 503, (command, status, body, processes.log(app))
        assert json.loads(body)["code"] in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, body
