"""What every scenario shares: server processes (started on loopback, stopped by pid), load
rounds that alternate between the things compared (coroutines on a grpc.aio channel, or threads
making blocking calls on a grpc.Channel), and the statistics of a round.

The server helpers of tests/support.py are used as they are: a raw server reads GZ_LISTEN like a
gz server does, so ServerProcess starts and health-checks both kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from examples.greeter import greeter_pb2, greeter_pb2_grpc
from tests.support import ServerProcess, free_port

REQUEST = greeter_pb2.HelloRequest(name="bench")
STREAM_REQUEST = greeter_pb2.HelloRequest(name="bench", count=10)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Servers log only warnings: log lines would cost the server CPU that the figures count.
QUIET = {"GZ_LOG_LEVEL": "WARNING", "GZ_SHUTDOWN_DRAIN": "0", "GZ_SHUTDOWN_GRACE": "1"}


# -- processes ---------------------------------------------------------------------------------
class Children:
    """Every process a scenario starts; all are killed by pid when the block ends."""

    def __init__(self) -> None:
        self._stops: list[Callable[[], None]] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for stop in reversed(self._stops):
            with contextlib.suppress(Exception):
                stop()

    def server(self, kind: str, listen: str | None = None, **env: str) -> ServerProcess:
        """A started ``raw`` (benchmarks.raw_server; BENCH_PIECES in ``env`` adds pieces of gz
        to it) or ``gz`` (the greeter example) server on ``listen`` (default 127.0.0.1 and a
        free port)."""
        command = ("-m", "benchmarks.raw_server") if kind == "raw" else ()
        listen = listen or f"127.0.0.1:{free_port()}"
        process = ServerProcess(*command, **QUIET, **env, GZ_LISTEN=listen)
        process.address = listen.split(",")[0]  # ServerProcess would name its own free port
        self._stops.append(process.kill)
        return process.start()

    def add(self, stop: Callable[[], None]) -> None:
        self._stops.append(stop)


async def serving(*servers: ServerProcess) -> list[str]:
    """Wait until every server says SERVING; their addresses."""
    await asyncio.gather(*(server.wait_serving() for server in servers))
    return [server.address for server in servers]


def port_free_on(hosts: list[str]) -> int:
    """A port free on every one of ``hosts`` (replicas behind one DNS name share a port)."""
    for _ in range(50):
        port = free_port()
        with contextlib.ExitStack() as probes:
            try:
                for host in hosts:
                    probe = probes.enter_context(socket.socket())
                    probe.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


CPUS = os.cpu_count() or 1
STEAL_RETRIES = 3


def stolen_cpu() -> float:
    """CPU seconds the hypervisor gave other guests instead of this machine since boot, over
    all its CPUs (steal, /proc/stat); 0 where the kernel does not count it."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return int(fields[8]) / CLOCK_TICKS if len(fields) > 8 else 0.0


def process_cpu(pid: int | tuple[int, ...]) -> float:
    """User + system CPU seconds of a process (all its threads), or of several together."""
    if isinstance(pid, tuple):
        return sum(map(process_cpu, pid))
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# -- calls -------------------------------------------------------------------------------------
Call = Callable[[], Awaitable[Any]]
BlockingCall = Callable[[], Any]


def unary(channel: grpc.aio.Channel | grpc.Channel) -> Call | BlockingCall:
    """One SayHello call: awaited on a grpc.aio channel, blocking on a grpc.Channel."""
    say_hello = greeter_pb2_grpc.GreeterStub(channel).SayHello
    return lambda: say_hello(REQUEST)


def server_stream(channel: grpc.aio.Channel) -> Call:
    """One LotsOfReplies call of 10 messages, read to the end."""
    lots_of_replies = greeter_pb2_grpc.GreeterStub(channel).LotsOfReplies

    async def call() -> None:
        async for _reply in lots_of_replies(STREAM_REQUEST):
            pass

    return call


# name -> (how to make a call on a channel, calls per round relative to unary)
SHAPES: dict[str, tuple[Callable[[grpc.aio.Channel], Call], float]] = {
    "unary": (unary, 1.0),
    "stream x10": (server_stream, 0.25),
}
CONCURRENCY = (1, 64)


# -- rounds ------------------------------------------------------------------------------------
@dataclass
class Variant:
    """One of the things compared: how to make a call, and optionally another process whose CPU
    is charged to it (the server under test, or a proxy; or several, whose CPU is added up)."""

    name: str
    call: Call | BlockingCall
    other_pid: int | tuple[int, ...] | None = None


@dataclass
class Samples:
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    client_cpu: float = 0.0
    other_cpu: float = 0.0
    retried: int = 0  # rounds run again (alternate's steal_limit)

    def add(self, other: Samples) -> None:
        """Take in the figures of ``other`` (one round)."""
        self.rates += other.rates
        self.latencies += other.latencies
        self.client_cpu += other.client_cpu
        self.other_cpu += other.other_cpu

    def summary(self, other: str = "") -> dict[str, float]:
        ordered = sorted(self.latencies)
        per_1k = 1000 / len(ordered)
        row = {
            "rps": statistics.median(self.rates),
            "p50_ms": ordered[len(ordered) // 2] * 1000,
            "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
            "cpu_s_per_1k": self.client_cpu * per_1k,
        }
        if other:
            row[f"{other}_cpu_s_per_1k"] = self.other_cpu * per_1k
        return row


async def load_round(call: Call, calls: int, concurrency: int, samples: Samples) -> None:
    """``calls`` calls from ``concurrency`` workers; adds the rate and latencies to samples."""
    per_worker = max(1, calls // concurrency)
    latencies = samples.latencies

    async def worker() -> None:
        for _ in range(per_worker):
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    samples.rates.append(per_worker * concurrency / (time.perf_counter() - started))


async def thread_round(call: BlockingCall, calls: int, concurrency: int, samples: Samples) -> None:
    """load_round for blocking calls (a grpc.Channel's): ``concurrency`` threads, started anew
    and released together, run from a worker thread so that the event loop is not blocked."""
    per_worker = max(1, calls // concurrency)
    latencies = samples.latencies  # list.append holds the GIL: safe from every worker
    start = threading.Barrier(concurrency + 1)

    def worker() -> None:
        start.wait()
        for _ in range(per_worker):
            started = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - started)

    def run() -> float:
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        start.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started

    samples.rates.append(per_worker * concurrency / await asyncio.to_thread(run))


# -- h2load: calls from a C client (docs/benchmarks.md, "Server bisect") -----------------------
H2LOAD = shutil.which("h2load")  # Debian package nghttp2-client; None: not installed
H2LOAD_CONNECTIONS = 8  # at most; each carries concurrency / connections streams


@dataclass
class H2Target:
    """Unary calls of one method, as h2load sends them: ``body`` is a file holding one
    length-prefixed gRPC message. With several ``addresses`` (replicas of one server, which
    differ by a few per cent from process to process), each round goes to the next one."""

    addresses: tuple[str, ...]
    path: str
    body: str
    turn: int = 0

    def next_address(self) -> str:
        self.turn += 1
        return self.addresses[(self.turn - 1) % len(self.addresses)]


def grpc_body(message: Any, directory: str) -> str:
    """A file in ``directory`` holding ``message`` as one uncompressed gRPC message."""
    data = message.SerializeToString()
    path = os.path.join(directory, f"{type(message).__name__}.bin")
    with open(path, "wb") as out:
        out.write(b"\x00" + len(data).to_bytes(4, "big") + data)
    return path


def h2load_shape(concurrency: int) -> tuple[int, int]:
    """(connections, streams per connection) carrying ``concurrency`` calls at once."""
    connections = min(concurrency, H2LOAD_CONNECTIONS)
    return connections, max(1, concurrency // connections)


_H2LOAD_DONE = re.compile(r"requests: (\d+) total, .* (\d+) succeeded, (\d+) failed, (\d+) errored")
_H2LOAD_RATE = re.compile(r"finished in [\d.]+\w+, ([\d.]+) req/s")


async def h2load_round(target: H2Target, calls: int, concurrency: int, samples: Samples) -> None:
    """load_round with h2load as the client (one thread, fresh connections each round): adds
    its rate, the latency of each call (its --log-file) and its CPU (as client CPU). A call
    that does not end in HTTP 200 raises; gRPC's status (a trailer) is not checked."""
    connections, streams = h2load_shape(concurrency)
    address = target.next_address()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    rate = await run_h2load(address, target.path, target.body, calls, connections, streams,
                            samples)  # fmt: skip
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    samples.client_cpu += (children.ru_utime - children_before.ru_utime
                           + children.ru_stime - children_before.ru_stime)  # fmt: skip
    samples.rates.append(rate)


async def run_h2load(
    address: str, path: str, body: str, calls: int, connections: int, streams: int,
    samples: Samples,
) -> float:  # fmt: skip
    """One h2load run of ``calls`` unary calls to ``address`` + ``path``: adds the latency of
    each call to ``samples``; its own rate (calls/s). Raises unless every call got HTTP 200."""
    assert H2LOAD is not None, "h2load is not installed (apt-get install nghttp2-client)"
    with tempfile.NamedTemporaryFile(prefix="h2load-", suffix=".log") as log:
        process = await asyncio.create_subprocess_exec(
            H2LOAD, "-n", str(calls), "-c", str(connections), "-m", str(streams), "-t", "1",
            "-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers",
            "--log-file", log.name, f"http://{address}{path}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output = (await process.communicate())[0].decode(errors="replace")
        done, rate = _H2LOAD_DONE.search(output), _H2LOAD_RATE.search(output)
        if process.returncode or not done or not rate or int(done[2]) != calls:
            raise RuntimeError(f"h2load against {address}: {output.strip()[-400:]}")
        for line in log.read().decode().splitlines():
            _start, status, micros = line.split("\t")[:3]
            if status != "200":
                raise RuntimeError(f"h2load against {address}: HTTP status {status}")
            samples.latencies.append(int(micros) / 1e6)
    return float(rate[1])


Load = Callable[[Any, int, int, Samples], Awaitable[None]]  # load_round, thread_round, h2load_round


async def alternate(
    variants: list[Variant], *, rounds: int, calls: int, concurrency: int,
    load: Load = load_round, steal_limit: float | None = None,
) -> dict[str, Samples]:  # fmt: skip
    """Rounds of every variant, the order rotated each round so that drift in the machine's load
    hits all of them alike. With ``steal_limit``, a round during which the hypervisor took more
    than that share of the machine's CPU time (steal, /proc/stat) is run again, up to
    STEAL_RETRIES times (the last one is kept); ``Samples.retried`` counts them."""
    samples = {v.name: Samples() for v in variants}
    for variant in variants:  # warm up connections and code paths, not measured
        await load(variant.call, min(calls, 200), min(concurrency, 8), Samples())
    for index in range(rounds):
        shift = index % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            into = samples[variant.name]
            for attempt in range(STEAL_RETRIES + 1):
                measured = Samples()
                steal_before, started = stolen_cpu(), time.monotonic()
                other_before = process_cpu(variant.other_pid) if variant.other_pid else 0.0
                cpu_before = time.process_time()
                await load(variant.call, calls, concurrency, measured)
                measured.client_cpu += time.process_time() - cpu_before
                if variant.other_pid:
                    measured.other_cpu += process_cpu(variant.other_pid) - other_before
                machine_time = (time.monotonic() - started) * CPUS
                stolen = (stolen_cpu() - steal_before) / machine_time
                if steal_limit is None or stolen <= steal_limit or attempt == STEAL_RETRIES:
                    break
                into.retried += 1
            into.add(measured)
    return samples


def ratio_rows(
    samples: dict[str, Samples], baseline: str, label: dict[str, Any], other: str = "",
    cpu: bool = False, other_cpu: bool = False,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per variant with its figures and its ratios to ``baseline`` (with ``cpu``, also
    of its client CPU per call; with ``other_cpu``, of the other process's CPU per call)."""
    base = samples[baseline].summary(other)
    rows = []
    for name, sample in samples.items():
        figures = sample.summary(other)
        rows.append({
            **label,
            "variant": name,
            **figures,
            "rps_ratio": figures["rps"] / base["rps"],
            "p50_ratio": figures["p50_ms"] / base["p50_ms"],
            "p99_ratio": figures["p99_ms"] / base["p99_ms"],
        })  # fmt: skip
        if cpu:
            rows[-1]["cpu_ratio"] = figures["cpu_s_per_1k"] / base["cpu_s_per_1k"]
        if other_cpu:
            key = f"{other}_cpu_s_per_1k"
            rows[-1][f"{other}_cpu_ratio"] = figures[key] / base[key]
    return rows


async def matrix(
    targets: dict[str, tuple[Any, int | tuple[int, ...] | None]],
    baseline: str,
    quick: bool,
    other: str = "",
    *,
    shapes: dict[str, tuple[Callable[[Any], Any], float]] = SHAPES,
    concurrencies: tuple[int, ...] = CONCURRENCY,
    load: Load = load_round,
    cpu: bool = False,
    other_cpu: bool = False,
    rounds: int = 6,
    calls: tuple[int, int] = (700, 2000),
    steal_limit: float | None = None,
) -> list[dict[str, Any]]:
    """Every call shape at every concurrency, the targets (name -> channel and the pid of a
    process whose CPU is charged to it, or a tuple of pids) alternating; ratio rows against
    ``baseline``. Blocking calls on grpc.Channels take ``load=thread_round`` (concurrency:
    threads); h2load's calls take ``load=h2load_round`` and H2Targets for channels.
    ``rounds`` and ``calls`` per round (at concurrency 1, and above) are for a full run; quick
    runs 2 rounds of a seventh. ``steal_limit``: see alternate(); each row then says how many
    rounds ran again."""
    rows = []
    for shape, (make_call, weight) in shapes.items():
        for concurrency in concurrencies:
            # Many short rounds: the median of rounds shrugs off a burst of other work.
            per_round = int((calls[0] if concurrency == 1 else calls[1]) * weight
                            / (7 if quick else 1))  # fmt: skip
            variants = [Variant(name, make_call(ch), pid) for name, (ch, pid) in targets.items()]
            samples = await alternate(
                variants, rounds=2 if quick else rounds, calls=per_round,
                concurrency=concurrency, load=load, steal_limit=steal_limit,
            )  # fmt: skip
            label = {"shape": shape, "conc": concurrency}
            rows += ratio_rows(samples, baseline, label, other, cpu, other_cpu)
            if steal_limit is not None:
                for row, sample in zip(rows[-len(samples) :], samples.values(), strict=True):
                    row["rounds_rerun"] = sample.retried
    return rows


def unary_figures(rows: list[dict[str, Any]], variant: str, key: str) -> list[Any]:
    return [r[key] for r in rows if r["variant"] == variant and r["shape"] == "unary"]


def goal(rows: list[dict[str, Any]], variant: str, key: str, limit: float, at_least: bool) -> str:
    """One line saying whether ``variant`` met ``key`` >= (or <=) ``limit`` on unary calls at
    every concurrency, and, when the run has an A/A control, how far that one strayed."""
    found = unary_figures(rows, variant, key)
    met = all(value >= limit if at_least else value <= limit for value in found)
    concurrencies = " / ".join(map(str, unary_figures(rows, variant, "conc")))
    line = (f"goal {variant} unary {key} {'>=' if at_least else '<='} {limit}: "
            f"{' / '.join(f'{v:.3f}' for v in found)} (conc {concurrencies}): "
            f"{'met' if met else 'NOT met'}")  # fmt: skip
    control = unary_figures(rows, "raw A/A", key)
    if control:
        line += f"; A/A control {' / '.join(f'{v:.3f}' for v in control)}"
    return line
