"""Helpers shared by the tests: free ports, in-process greeter servers, server processes, polling,
a resolver Listener that records what it is told, and the gz command run in this process."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import gz
from examples.greeter import greeter_pb2, greeter_pb2_grpc
from examples.greeter.server import Greeter
from gz.discovery import Endpoint, apply_change

ROOT = Path(__file__).resolve().parent.parent


def _ephemeral_ports() -> range:
    """The ports the kernel picks for outgoing connections and port-0 binds."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default


_EPHEMERAL = _ephemeral_ports()
_CANDIDATES = [p for p in range(20_000, 65_536) if p not in _EPHEMERAL]
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port that is free now, for a server started later. Never one the kernel may
    give a client connection or a port-0 bind in the meantime (the ephemeral range), and never
    the same one twice in a run, so two servers of one test cannot end up on one port."""
    for _ in range(1000):
        port = random.choice(_CANDIDATES)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise AssertionError("no free loopback port outside the ephemeral range")


def gz_command(*args: str) -> list[str]:
    """The gz command as a process of its own: for a test whose event loop must keep running
    (gz runs its own), or that reads ``--watch`` output as it comes."""
    return [sys.executable, "-m", "gz.scaffold.cli", *args]


def run_gz(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Run the gz command in this process: (exit code, stdout, stderr)."""
    from click.testing import CliRunner  # only the CLI tests need click and scaffold

    from gz.scaffold.cli import main as gz_main

    result = CliRunner().invoke(gz_main, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


async def start_greeter(service_class: type[Greeter] = Greeter, **settings: object) -> Greeter:
    """A Greeter (or subclass) served in this process on a free loopback port (stop with
    .server.stop())."""
    values = {"listen": "127.0.0.1:0", "shutdown_drain": 0, "shutdown_grace": 1, **settings}
    service = service_class(gz.ServerSettings(**values))
    await service.server.start()
    return service


async def greeters_on_one_port(count: int, first_host: int = 1) -> list[Greeter]:
    """``count`` greeters on 127.0.0.<first_host>, the next loopback address, ... all on one port,
    as the replicas behind one DNS name or the pods of one Deployment are."""
    for _ in range(10):
        port, started = free_port(), []
        try:
            for n in range(count):
                started.append(await start_greeter(listen=f"127.0.0.{first_host + n}:{port}"))
            return started
        except OSError:  # that port was taken on another loopback address: try another
            for service in started:
                await service.server.stop()
    raise AssertionError("no port free on every loopback address")


def direct(servers: Iterable[Any]) -> str:
    """The direct:/// target of servers (anything with an .address)."""
    return "direct:///" + ",".join(server.address for server in servers)


# The settings that switch off each of gz's default middleware, on a client and on a server.
DEFAULT_MIDDLEWARE_OFF = {"tracing": False, "metrics": False, "call_log": False, "deadline": False}


def hot_path_settings(**values: object) -> gz.ClientSettings:
    """Client settings with gz's default middleware off, so calls take the channel's hot path."""
    return gz.ClientSettings.from_env(**DEFAULT_MIDDLEWARE_OFF, **values)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; an HTTP error status is an answer too, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def health_status(address: str, service: str = "", timeout: float = 1.0) -> int | None:
    """The grpc.health.v1 status of address, or None when it does not answer."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.aio.AioRpcError:
            return None
        return reply.status


async def say_hello(channel: grpc.aio.Channel, name: str = "test", **kwargs: object):
    return await greeter_pb2_grpc.GreeterStub(channel).SayHello(
        greeter_pb2.HelloRequest(name=name, **kwargs)
    )


async def count_replicas(channel: grpc.aio.Channel, calls: int) -> Counter[str]:
    """Which replica served each of ``calls`` concurrent SayHello calls."""
    replies = await asyncio.gather(*(say_hello(channel) for _ in range(calls)))
    return Counter(reply.served_by for reply in replies)


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float,
    what: str = "true",
    poll: float = 0.02,
) -> float:
    """Poll until ``condition()`` (plain or async) holds; the seconds it took. Fails after
    ``timeout`` seconds."""
    started = time.monotonic()

    async def holds() -> bool:
        held = condition()
        return bool(await held if inspect.isawaitable(held) else held)

    while not await holds():
        if time.monotonic() - started >= timeout:
            # Once more after the watchers had a turn: a stalled machine can wake this loop
            # past the deadline before the tasks that would have made the condition true.
            await asyncio.sleep(poll)
            assert await holds(), f"not {what} within {timeout}s"
            break
        await asyncio.sleep(poll)
    return time.monotonic() - started


async def all_ready(channel: gz.BalancedChannel, count: int) -> None:
    """Until ``count`` of the channel's subchannels are READY (picks then reach all of them)."""
    await channel.channel_ready()

    def ready() -> bool:
        subchannels = channel._pool.subchannels.values()
        return sum(s.state == grpc.ChannelConnectivity.READY for s in subchannels) == count

    try:
        await wait_until(ready, 30, f"{count} subchannels READY")
    except AssertionError as error:  # say which ones were not, and what grpc itself says
        states = [(s, s.channel.get_state()) for s in channel._pool.subchannels.values()]
        raise AssertionError(f"{error}: {states}") from None


async def wait_not_serving(channel: gz.BalancedChannel, address: str) -> None:
    """Until the channel's health watch has seen ``address`` say NOT_SERVING."""

    def seen() -> bool:
        pool = channel._pool
        return pool is not None and any(
            s.peer == address and not s.serving for s in pool.subchannels.values()
        )

    await wait_until(seen, 10, f"{address} NOT_SERVING at the client")


class Recorder:
    """A resolver Listener that keeps every endpoint set, the time each arrived, and every
    error."""

    def __init__(self) -> None:
        self.updates: list[frozenset[Endpoint]] = []
        self.arrived: list[float] = []  # time.monotonic() of each update
        self.errors: list[str] = []
        self.changes: list[tuple[frozenset[Endpoint], frozenset[Endpoint]]] = []  # as pushed
        self._changed = asyncio.Event()

    def update(self, endpoints: frozenset[Endpoint]) -> None:
        self.updates.append(endpoints)
        self.arrived.append(time.monotonic())
        self._changed.set()

    def change(self, added: Collection[Endpoint], removed: Collection[Endpoint]) -> None:
        """Recorded as the whole set it makes."""
        self.changes.append((frozenset(added), frozenset(removed)))
        self.update(apply_change(self.updates[-1] if self.updates else frozenset(), added, removed))

    def error(self, message: str) -> None:
        self.errors.append(message)
        self._changed.set()

    @property
    def current(self) -> set[str]:
        """The addresses of the last set (empty before the first)."""
        return {e.address for e in self.updates[-1]} if self.updates else set()

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> float:
        """Wait until ``condition()`` holds; the time the last set arrived."""
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                last = sorted(self.current) if len(self.current) <= 8 else len(self.current)
                raise AssertionError(f"timed out; last set: {last}, errors: {self.errors}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self.arrived[-1] if self.arrived else time.monotonic()

    async def wait_for_set(self, expected: set[str], timeout: float = 5.0) -> float:
        """Wait until the last set is exactly ``expected``; the time it arrived."""
        return await self.wait_for(lambda: self.current == expected, timeout)


class ServerProcess:
    """``python -m examples.greeter.server`` as a real process on a free loopback port."""

    def __init__(self, *command: str, **env: str) -> None:
        self.command = command or ("-m", "examples.greeter.server")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "GZ_LISTEN": self.address,
            "GZ_NAME": "greeter",
            "GZ_SHUTDOWN_DRAIN": "0.2",
            "GZ_SHUTDOWN_GRACE": "5",
            **env,
        }
        self.process: subprocess.Popen[str] | None = None
        self.started_at = 0.0
        self.cwd = ROOT  # a test may run it inside another project
        self.stdout: Any = None  # a file to write stdout to (default: inherited)
        # stderr goes to a file (removed with this object): readable while the server runs,
        # and a chatty server never blocks on a full pipe
        self._log_dir = tempfile.TemporaryDirectory(prefix="gz-server-")
        self.log_path = Path(self._log_dir.name) / "stderr.log"

    def start(self) -> ServerProcess:
        self.started_at = time.monotonic()
        with self.log_path.open("a") as log:  # O_APPEND: the child's writes always land at the end
            self.process = subprocess.Popen(
                [sys.executable, *self.command],
                env=self.env,
                cwd=self.cwd,
                stdout=self.stdout,
                stderr=log,
                text=True,
            )
        return self

    async def wait_serving(self, timeout: float = 20.0) -> float:
        """Seconds from exec to SERVING; fails if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}: {self.stderr()}")
            if (
                await health_status(self.address, timeout=0.5)
                == health_pb2.HealthCheckResponse.SERVING
            ):
                return time.monotonic() - self.started_at
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.address} not SERVING after {timeout}s")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.address} still running after {timeout}s")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def stderr(self) -> str:
        """Everything the server has logged so far."""
        return self.log_path.read_text()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
