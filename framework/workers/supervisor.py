"""The supervisor of a GZ_WORKERS instance: N worker processes that serve as one.

The process started with GZ_WORKERS above 1 hands over to ``python -m gz.workers`` (exec: same
pid, so signals and Kubernetes see no change), which imports neither grpc nor pydantic nor the
service: a supervisor costs a small part of a worker's memory. It starts each worker as the
command line the process was started with (``sys.orig_argv``), with
``_GZ_WORKER`` telling the worker its index, the shared address and its own. It reports the
instance SERVING (to every worker, which reports it on gRPC health, and on /readyz) only while
every worker listens; restarts a worker that dies, with backoff; and on SIGTERM stops every worker
at once, each of which runs the shutdown order (NOT_SERVING and deregister, drain, finish
in-flight calls). Workers run in sessions of their own, so a Ctrl-C in a terminal reaches only
the supervisor, which passes it on once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

from ..backoff import Backoff
from ..netaddr import join_host_port, parse_host_port
from ..stopsignals import stop_signals
from .link import VARIABLE, WorkerLink

if TYPE_CHECKING:
    from ..probes import ProbeServer
    from ..settings import ServerSettings

log = logging.getLogger("gz.workers")

STABLE = 10.0
"""Seconds a worker must have served for its next crash to restart it without delay."""
START_FAILURES = 5
"""A worker that exits this many times in a row before listening stops the instance."""


PLAN = "_GZ_INSTANCE"
"""The Plan, as JSON, from the service's process to the supervisor that replaces it."""


@dataclass(frozen=True)
class Plan:
    """What the supervisor needs of the service's settings and command line."""

    service: str  # the Service class's name, for messages
    command: list[str]  # each worker's command line, after the interpreter
    listen: str  # GZ_LISTEN
    worker_ports: list[int]  # each worker's own port (0: any free one)
    metrics_host: str  # the HTTP side, if metrics_port is set
    metrics_port: int | None
    log_level: str
    log_format: str

    @classmethod
    def of(cls, service: str, settings: ServerSettings) -> Plan:
        host, _ = parse_host_port(settings.listen, listening=True)
        return cls(
            service, sys.orig_argv[1:], settings.listen, settings.worker_ports(),
            settings.metrics_host or host, settings.metrics_port, settings.log_level,
            settings.log_format,
        )  # fmt: skip


def hand_over(plan: Plan) -> NoReturn:
    """Replace this process with the supervisor of ``plan``."""
    sys.stdout.flush()
    sys.stderr.flush()
    environ = {**os.environ, PLAN: json.dumps(dataclasses.asdict(plan))}
    os.execve(sys.executable, [sys.executable, "-m", "gz.workers"], environ)


def read_plan() -> Plan:
    return Plan(**json.loads(os.environ.pop(PLAN)))


@dataclass
class Worker:
    """One worker process as the supervisor sees it (``/debug/workers`` shows these)."""

    index: int
    own: str  # where it listens on its own
    pid: int = 0
    listening: bool = False
    port: int = 0  # its own port, once listening
    metrics_port: int = 0  # its /metrics on 127.0.0.1, once listening (0: none)
    restarts: int = 0
    started: float = 0.0  # time.monotonic() of its start
    code: int | None = None  # its last exit code (negative: the signal that killed it)
    last_exit: str = ""
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    writer: asyncio.StreamWriter | None = field(default=None, repr=False)


class Supervisor:
    """``run()`` serves the instance until SIGTERM/SIGINT and returns the exit code."""

    def __init__(self, plan: Plan, listen: str) -> None:
        self.command = plan.command
        self.listen = listen  # the shared address, with its real port
        host, _ = parse_host_port(listen, listening=True)
        self.workers = [
            Worker(index, join_host_port(host, own)) for index, own in enumerate(plan.worker_ports)
        ]
        self.serving = False  # what the workers were last told
        self.served = False  # the instance has served once: later start failures are retried
        self.stopping = False
        self.side: ProbeServer | None = None  # the instance's HTTP side (GZ_METRICS_PORT)
        self._failed: asyncio.Future[int] | None = None
        self._stopped = asyncio.Event()  # set with ``stopping``: ends a restart's backoff

    async def run(self) -> int:
        with stop_signals() as signals:
            return await self._run(signals)

    async def _run(self, signals: asyncio.Queue[int]) -> int:
        self._failed = asyncio.get_running_loop().create_future()
        keepers = asyncio.gather(*(self._keep(worker) for worker in self.workers))
        log.info("starting %d workers on %s", len(self.workers), self.listen)
        first = asyncio.ensure_future(signals.get())
        await asyncio.wait({first, self._failed}, return_when=asyncio.FIRST_COMPLETED)
        self.stopping = True
        self._stopped.set()
        self._tell(False)
        code = 0
        if first.done():
            log.info("%s: stopping every worker gracefully", signal.Signals(first.result()).name)
        else:
            first.cancel()
            code = self._failed.result()
        self._signal_all(signal.SIGTERM)
        again = asyncio.ensure_future(signals.get())
        await asyncio.wait({keepers, again}, return_when=asyncio.FIRST_COMPLETED)
        if again.done():
            log.warning("%s again: stopping without draining", signal.Signals(again.result()).name)
            self._signal_all(signal.SIGTERM)  # a worker's second signal stops it at once
            code = code or 1
            await keepers
        again.cancel()
        if code == 0 and any(worker.code != 0 for worker in self.workers):
            code = 1
        log.info("every worker has stopped")
        return code

    async def _keep(self, worker: Worker) -> None:
        """Run one worker, and again whenever it dies, until the instance stops; a worker that
        cannot even be started (no such interpreter, out of processes) stops the instance."""
        try:
            await self._keep_running(worker)
        except Exception:
            log.exception("worker %d: cannot start or follow it: stopping the instance",
                          worker.index)  # fmt: skip
            self._fail(1)

    async def _keep_running(self, worker: Worker) -> None:
        backoff = Backoff(first=0.1, cap=10.0)
        failures = 0  # exits in a row before listening
        while True:
            listened = await self._run_once(worker)
            if self.stopping:
                return
            self._update_health()
            if listened:
                failures = 0
                if time.monotonic() - worker.started >= STABLE:
                    backoff.reset()
            else:
                failures += 1
                if not self.served or failures >= START_FAILURES:
                    times = f" {failures} times in a row" if failures > 1 else ""
                    log.error("worker %d %s%s before it listened: stopping the instance",
                              worker.index, worker.last_exit, times)  # fmt: skip
                    return self._fail(worker.code if worker.code and worker.code > 0 else 1)
            delay = backoff.next_delay()
            log.warning("worker %d (pid %d) %s; restarting it in %.2fs", worker.index,
                        worker.pid, worker.last_exit, delay)  # fmt: skip
            with contextlib.suppress(TimeoutError):  # unless the instance stops meanwhile
                await asyncio.wait_for(self._stopped.wait(), delay)
            if self.stopping:
                return
            worker.restarts += 1

    async def _run_once(self, worker: Worker) -> bool:
        """Start the worker and follow what it says until it exits; whether it listened."""
        mine, theirs = socket.socketpair()
        link = WorkerLink(worker.index, theirs.fileno(), self.listen, worker.own)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, *self.command,
                env={**os.environ, VARIABLE: link.to_env()},
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )  # fmt: skip
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        worker.process, worker.pid = process, process.pid
        if self.stopping:  # the instance began to stop while this worker was being started
            process.send_signal(signal.SIGTERM)
        worker.listening, worker.started = False, time.monotonic()
        reader, worker.writer = await asyncio.open_unix_connection(sock=mine)
        with contextlib.suppress(ConnectionError):
            while words := (await reader.readline()).decode().split():
                if words[0] == "listening" and len(words) == 3:
                    worker.port, worker.metrics_port = int(words[1]), int(words[2])
                    worker.listening = True
                    self._update_health()
        listened, worker.listening = worker.listening, False  # the line closed: it is going
        worker.code = await process.wait()
        worker.writer.close()
        worker.writer = None
        worker.last_exit = _describe_exit(worker.code)
        return listened

    def _update_health(self) -> None:
        """The instance serves while every worker listens."""
        self._tell(not self.stopping and all(worker.listening for worker in self.workers))

    def _tell(self, serving: bool) -> None:
        """Tell every worker the instance's health when it changes."""
        if serving == self.serving:
            return
        self.serving = serving
        self.served |= serving
        if self.side is not None:
            self.side.ready = serving
        word = b"serving\n" if serving else b"not-serving\n"
        for worker in self.workers:
            if worker.writer is not None and worker.listening:
                with contextlib.suppress(ConnectionError):
                    worker.writer.write(word)
        if serving:
            ports = ", ".join(str(worker.port) for worker in self.workers)
            log.info("all %d workers listen (own ports %s): serving", len(self.workers), ports)
        elif not self.stopping:
            log.warning("a worker is down: every worker reports NOT_SERVING until it is back")

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    def _fail(self, code: int) -> None:
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(code)


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def supervise(plan: Plan) -> int:
    """Serve one instance as GZ_WORKERS processes; the exit code. OSError when a port is taken."""
    host, port = parse_host_port(plan.listen, listening=True)
    with _shared_port(host, port) as port:
        for own in plan.worker_ports:
            if own:
                _check_free(host, own, f"{join_host_port(host, own)} (GZ_WORKER_PORT)")
        supervisor = Supervisor(plan, join_host_port(host, port))
        if plan.metrics_port is not None:
            from ..httpside import server_side
            from .side import instance_pages

            pages = instance_pages(supervisor)
            supervisor.side = server_side(plan.metrics_host, plan.metrics_port, pages)
        try:
            return asyncio.run(supervisor.run())
        finally:
            if supervisor.side is not None:
                supervisor.side.close()


@contextlib.contextmanager
def _shared_port(host: str, port: int) -> Iterator[int]:
    """The shared port, checked free and then held (bound with SO_REUSEPORT, not listening)
    while the instance runs: port 0 becomes a real one every worker binds, even a restarted
    worker after all others died."""
    port = _check_free(host, port, f"GZ_LISTEN={join_host_port(host, port)}")
    family = _family(host)
    with socket.socket(family, socket.SOCK_STREAM) as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind((host, port))
        yield port


def _check_free(host: str, port: int, culprit: str) -> int:
    """Bind ``host:port`` without SO_REUSEPORT, so that a port another process listens on,
    even with SO_REUSEPORT, is refused instead of shared; the port bound."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise OSError(f"cannot listen on {culprit}: {error.strerror}") from None
        return probe.getsockname()[1]


def _family(host: str) -> socket.AddressFamily:
    infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return infos[0][0]
