"""11. Workers: one greeter instance as GZ_WORKERS=1 vs GZ_WORKERS=2 processes.

Three instances of the greeter example (all default middleware) run side by side: ``1 worker``,
``1 worker A/A`` (a second one: its ratio to the first is the noise floor of the run) and
``2 workers``. Each registers in a real etcd (GZ_REGISTRY=etcd, a key of its own); the workers of
the 2-worker instance listen on the shared port (SO_REUSEPORT) and on a port of their own. Three
drivers, one after the other, each alternating the instances round by round (order rotated):

1. ``shared port``: h2load (a C client, one thread) with 8 connections x 16 streams to the
   instance's GZ_LISTEN port; the kernel hands each connection to one worker.
2. ``own ports``: one h2load per worker, each on the worker's own port, the 8 connections split
   evenly (4 each for 2 workers); for 1 worker, its one port. Calls/s: every call of the round
   over the time until the last h2load ended.
3. ``gz clients``: two Python client processes, each ``gz.connect("etcd://.../KEY")`` (default
   middleware off on the client, so that the client leaves the server as much CPU as it can)
   with 64 calls in flight, for a fixed time; calls/s of both added up.

Each row: median calls/s over rounds, the ratio per round (each round's 2-worker rate over the
same round's 1-worker rate: min / median / max), server CPU per call (supervisor and workers,
from /proc), client CPU per call (h2load or the client processes) and how busy the machine was.
Every call is checked: the SayHello calls an instance counted OK (grpc_server_handled_total of
its /metrics, which the supervisor sums over workers) must equal the calls the driver made, and
none may end with another code. The share each worker took comes from the worker's own /metrics
(read before and after each round); memory from /proc/PID/status (VmRSS) and smaps_rollup (Pss)
after the load; the split of a loaded worker's CPU between Python's thread and grpc's threads
from /proc/PID/task.

    python -m benchmarks.workers [--quick] [--json]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.etcd_server import EtcdServer
from tests.support import ServerProcess, free_port

from .harness import (
    CLOCK_TICKS,
    CPUS,
    H2LOAD,
    REQUEST,
    Children,
    H2Target,
    Load,
    Samples,
    Variant,
    alternate,
    grpc_body,
    h2load_round,
    process_cpu,
    ratio_rows,
    run_h2load,
    serving,
)
from .report import Result, Row, scenario_main

SAY_HELLO = "/greeter.v1.Greeter/SayHello"
# name -> GZ_WORKERS of the instance; the first is the baseline of every ratio
INSTANCES = {"1 worker": 1, "1 worker A/A": 1, "2 workers": 2}
BASELINE, CONTROL, TESTED = INSTANCES
ROUNDS = 6
CONNECTIONS, STREAMS = 8, 16  # h2load: -c 8 -m 16 -t 1
H2LOAD_CALLS = 10_000  # per round and instance (a seventh with --quick)
CLIENTS, IN_FLIGHT = 2, 64  # gz client processes, calls in flight in each
CLIENT_MS = 2_500  # milliseconds of calls per round (a seventh with --quick)
STEAL_LIMIT = 0.02  # as server_bisect: a round the hypervisor took > 2 % of the CPU runs again
GOALS = {"shared port": 1.4, "gz clients": 1.3}  # 2 workers / 1 worker, in every round
SHARE_TOLERANCE = 0.2  # each worker's share within +-20 % of an even one
_OK_LINE = re.compile(r"^grpc_server_handled_total\{([^}]*)\} ([0-9.e+]+)$", re.MULTILINE)


# -- instances ---------------------------------------------------------------------------------
@dataclass
class Instance:
    """One greeter instance: GZ_WORKERS processes behind one shared port."""

    name: str
    workers: int
    key: str  # its etcd key
    server: ServerProcess
    http: str  # its HTTP side (GZ_METRICS_PORT): /metrics, /debug/workers
    pids: tuple[int, ...] = ()  # the supervisor (or the one process), then each worker
    own: list[str] = field(default_factory=list)  # each worker's own address
    worker_metrics: list[str] = field(default_factory=list)  # each worker's /metrics
    shares: dict[str, list[list[int]]] = field(default_factory=dict)  # driver -> rounds' calls
    cpu: dict[str, list[list[float]]] = field(default_factory=dict)  # driver -> rounds' CPU s
    main_busy: dict[str, list[float]] = field(default_factory=dict)  # driver -> rounds' share

    @property
    def shared(self) -> str:
        return self.server.address

    @property
    def worker_pids(self) -> tuple[int, ...]:
        return self.pids if self.workers == 1 else self.pids[1:]

    async def discover(self) -> None:
        """The pids, own addresses and /metrics of the workers, once every one serves."""
        await self.server.wait_serving(timeout=30)
        supervisor = self.server.process.pid
        if self.workers == 1:  # no supervisor: the process serves by itself
            self.pids, self.own = (supervisor,), [self.shared]
            self.worker_metrics = [f"{self.http}/metrics"]
            return
        view = json.loads(await fetch(f"{self.http}/debug/workers"))
        assert view["serving"] and len(view["workers"]) == self.workers, view
        workers = sorted(view["workers"], key=lambda worker: worker["index"])
        self.pids = (supervisor, *(worker["pid"] for worker in workers))
        self.own = [worker["address"] for worker in workers]
        shared_port = int(self.shared.rpartition(":")[2])
        for worker in workers:  # its own /metrics: the port it listens on besides those two
            own_port = int(worker["address"].rpartition(":")[2])
            ports = listening_ports(worker["pid"]) - {shared_port, own_port}
            assert len(ports) == 1, f"worker {worker['index']} listens on {ports}"
            self.worker_metrics.append(f"http://127.0.0.1:{ports.pop()}/metrics")

    def stop(self) -> None:
        """SIGTERM to the supervisor (it stops its workers); then any worker left, by pid."""
        process = self.server.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
        for pid in self.pids[1:]:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"examples.greeter.server" in cmdline.read():
                    os.kill(pid, signal.SIGKILL)

    async def counts(self) -> list[Counter[str]]:
        """SayHello calls each worker has completed so far, by gRPC code."""
        pages = await asyncio.gather(*(fetch(url) for url in self.worker_metrics))
        return [say_hello_codes(page) for page in pages]


def start_instance(children: Children, name: str, workers: int, etcd: EtcdServer) -> Instance:
    metrics_port = free_port()
    key = "greeter-" + re.sub(r"\W+", "-", name)
    server = children.server(
        "gz", GZ_WORKERS=str(workers), GZ_WORKER_PORT="0", GZ_METRICS_PORT=str(metrics_port),
        GZ_METRICS_HOST="127.0.0.1", GZ_REGISTRY="etcd", GZ_ETCD_ENDPOINTS=etcd.endpoint,
        GZ_ETCD_KEY=key,
    )  # fmt: skip
    instance = Instance(name, workers, key, server, f"http://127.0.0.1:{metrics_port}")
    children.add(instance.stop)  # runs before Children's SIGKILL of the supervisor
    return instance


def listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (its sockets in /proc/PID/net/tcp*, state LISTEN)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as lines:
            for line in lines.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


async def fetch(url: str) -> str:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.read().decode()

    return await asyncio.to_thread(get)


def say_hello_codes(page: str) -> Counter[str]:
    """grpc_server_handled_total of SayHello, by grpc_code, from a /metrics page."""
    codes: Counter[str] = Counter()
    for labels, value in _OK_LINE.findall(page):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if pairs.get("grpc_method") == "SayHello":
            codes[pairs.get("grpc_code", "")] += int(float(value))
    return codes


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of a process's main thread (where Python runs its handlers) and of all its
    other threads together (grpc's event engine and polling threads)."""
    main = others = 0.0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            cpu = process_cpu_of(f"/proc/{pid}/task/{task}/stat")  # the thread's alone
            if int(task) == pid:
                main += cpu
            else:
                others += cpu
    return main, others


def main_thread_cpu(pid: int) -> float:
    """CPU seconds of a process's main thread, the one that runs Python's event loop."""
    return process_cpu_of(f"/proc/{pid}/task/{pid}/stat")


def process_cpu_of(stat_path: str) -> float:
    with open(stat_path) as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process in MiB."""
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    pss = 0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as rollup:
        pss = next((int(line.split()[1]) for line in rollup if line.startswith("Pss:")), 0)
    return rss / 1024, pss / 1024


# -- drivers -----------------------------------------------------------------------------------
@dataclass
class OwnPorts:
    """h2load on each worker's own port at once."""

    addresses: list[str]
    body: str
    sum_of_rates: list[float] = field(default_factory=list)  # each round: h2load's own figures


async def h2load_process(
    address: str, calls: int, connections: int, streams: int, body: str, samples: Samples
) -> float:
    """One h2load run with the connections given; its own rate."""
    return await run_h2load(address, SAY_HELLO, body, calls, connections, streams, samples)


async def own_ports_round(target: OwnPorts, calls: int, concurrency: int, samples: Samples) -> None:
    """CONNECTIONS split evenly over the workers' own ports, calls too; the rate is every call
    over the time until the last h2load ended (their own rates added up are kept aside)."""
    count = len(target.addresses)
    connections = max(1, min(concurrency, CONNECTIONS) // count)
    streams = max(1, concurrency // CONNECTIONS) if concurrency >= CONNECTIONS else 1
    each = max(calls // count, connections * streams)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    rates = await asyncio.gather(*(
        h2load_process(address, each, connections, streams, target.body, samples)
        for address in target.addresses
    ))  # fmt: skip
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    samples.client_cpu += after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    samples.rates.append(each * count / elapsed)
    if concurrency >= CONNECTIONS:  # not a warm-up round
        target.sum_of_rates.append(sum(rates))


class Clients:
    """CLIENTS gz client processes (this module with --client), each holding one channel per
    instance; a round is a line of JSON to each: which instance, when to start, for how long."""

    def __init__(self, targets: dict[str, str], expect: dict[str, int], log: str) -> None:
        self.log = log  # their stderr
        spec = json.dumps({"targets": targets, "expect": expect})
        command = [sys.executable, "-m", "benchmarks.workers", "--client", spec]
        with open(log, "ab") as stderr:
            self.processes = [
                subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
                )
                for _ in range(CLIENTS)
            ]
        self.served_by: dict[str, list[Counter[str]]] = {}  # instance -> each round's

    async def ready(self) -> None:
        lines = await self.replies()
        if any(line.strip() != "ready" for line in lines):
            tail = (await asyncio.to_thread(Path(self.log).read_text, errors="replace"))[-600:]
            raise RuntimeError(f"a client process did not start: {lines} {tail}")

    async def replies(self) -> list[str]:
        """The next line of every client process."""
        return await asyncio.gather(*(asyncio.to_thread(p.stdout.readline) for p in self.processes))

    async def round(self, name: str, calls: int, concurrency: int, samples: Samples) -> None:
        """A Load for alternate(): ``calls`` is milliseconds of calls here."""
        start = time.time() + 0.2  # every client starts at once
        order = json.dumps({"target": name, "start": start, "seconds": calls / 1000}) + "\n"
        for process in self.processes:
            process.stdin.write(order)
            process.stdin.flush()
        replies = [json.loads(line) for line in await self.replies()]
        errors = sum(reply["errors"] for reply in replies)
        if errors:
            raise RuntimeError(f"{errors} calls to {name} failed: {replies[0]['error']}")
        samples.rates.append(sum(r["calls"] for r in replies) / max(r["seconds"] for r in replies))
        samples.client_cpu += sum(reply["cpu"] for reply in replies)
        for reply in replies:
            samples.latencies += reply["latencies"]
        if concurrency >= IN_FLIGHT:  # not a warm-up round
            self.served_by.setdefault(name, []).append(
                sum((Counter(reply["served_by"]) for reply in replies), Counter())
            )

    def close(self) -> None:
        for process in self.processes:
            with contextlib.suppress(OSError):
                process.stdin.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def client(spec: dict[str, Any]) -> None:
    """A gz client process: one channel per instance; every line on stdin is a round."""
    from .features import client_settings

    async def main() -> None:
        import gz
        from examples.greeter import greeter_pb2_grpc

        settings = client_settings(tracing=False, metrics=False, call_log=False, deadline=False)
        channels = {name: gz.connect(target, settings=settings)
                    for name, target in spec["targets"].items()}  # fmt: skip
        stubs = {name: greeter_pb2_grpc.GreeterStub(ch) for name, ch in channels.items()}
        for name, stub in stubs.items():  # until calls reach every worker of the instance
            deadline, seen = time.monotonic() + 30, set()
            while len(seen) < spec["expect"][name]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: calls reached only {sorted(seen)}")
                replies = await asyncio.gather(*(stub.SayHello(REQUEST) for _ in range(64)))
                seen |= {reply.served_by for reply in replies}
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            order = json.loads(line)
            print(json.dumps(await client_round(stubs[order["target"]], order)), flush=True)
        for channel in channels.values():
            await channel.close()

    asyncio.run(main())


async def client_round(stub: Any, order: dict[str, Any]) -> dict[str, Any]:
    """IN_FLIGHT calls at once from ``start`` for ``seconds``; then the ones in flight end."""
    await asyncio.sleep(max(0.0, order["start"] - time.time()))
    stop = time.perf_counter() + order["seconds"]
    latencies: list[float] = []
    served_by: Counter[str] = Counter()
    errors: list[str] = []

    async def caller() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                reply = await stub.SayHello(REQUEST)
            except Exception as error:  # counted and reported
                errors.append(repr(error))
                continue
            latencies.append(time.perf_counter() - started)
            served_by[reply.served_by] += 1

    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(IN_FLIGHT)))
    return {"calls": len(latencies), "seconds": time.perf_counter() - started,
            "cpu": time.process_time() - cpu, "latencies": latencies,
            "served_by": served_by, "errors": len(errors),
            "error": errors[0] if errors else ""}  # fmt: skip


# -- rounds and checks -------------------------------------------------------------------------
Took = dict[float, tuple[list[int], list[float], float]]


def counted(load: Load, instance_of: Callable[[Any], Instance], sent: Counter[str],
            took: Took) -> Load:  # fmt: skip
    """``load`` that also reads each worker's SayHello counts and CPU before and after: in
    ``took``, by the round's rate (which tells the round alternate() kept from one it ran
    again), the calls each worker took, the CPU it spent, and how busy the workers' main
    threads (Python's) were on average over the round; in ``sent``, the calls the driver made
    to each instance (one latency per call made)."""

    async def wrapped(target: Any, calls: int, concurrency: int, samples: Samples) -> None:
        instance = instance_of(target)
        pids = instance.worker_pids
        before, made = await instance.counts(), len(samples.latencies)
        cpu_before = [process_cpu(pid) for pid in pids]
        main_before = sum(main_thread_cpu(pid) for pid in pids)
        await load(target, calls, concurrency, samples)
        cpu = [process_cpu(pid) - b for pid, b in zip(pids, cpu_before, strict=True)]
        main = sum(main_thread_cpu(pid) for pid in pids) - main_before
        after = await instance.counts()
        sent[instance.name] += len(samples.latencies) - made
        calls_taken = [a["OK"] - b["OK"] for a, b in zip(after, before, strict=True)]
        seconds = (len(samples.latencies) - made) / samples.rates[-1]  # the load's own time
        took[samples.rates[-1]] = calls_taken, cpu, main / seconds / len(pids)

    return wrapped


def round_ratios(samples: dict[str, Samples], variant: str) -> list[float]:
    """Each round's rate of ``variant`` over the same round's rate of the baseline."""
    pairs = zip(samples[variant].rates, samples[BASELINE].rates, strict=True)
    return [tested / base for tested, base in pairs]


def spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


async def drive(
    driver: str, instances: dict[str, Instance], targets: dict[str, Any], load: Load,
    calls: int, concurrency: int, rounds: int,
) -> tuple[list[Row], list[str]]:  # fmt: skip
    """Rounds of every instance with one driver: its rows and notes."""
    sent: Counter[str] = Counter()
    took: Took = {}
    by_target = {id(target): instances[name] for name, target in targets.items()}
    totals_before = {name: say_hello_codes(await fetch(f"{i.http}/metrics"))
                     for name, i in instances.items()}  # fmt: skip
    wrapped = counted(load, lambda target: by_target[id(target)], sent, took)
    variants = [Variant(name, targets[name], instances[name].pids) for name in instances]
    samples = await alternate(variants, rounds=rounds, calls=calls, concurrency=concurrency,
                              load=wrapped, steal_limit=STEAL_LIMIT)  # fmt: skip
    for name, instance in instances.items():  # each kept round: the calls each worker took
        instance.shares[driver] = [took[rate][0] for rate in samples[name].rates]
        instance.cpu[driver] = [took[rate][1] for rate in samples[name].rates]
        instance.main_busy[driver] = [took[rate][2] for rate in samples[name].rates]
    rows = ratio_rows(samples, BASELINE, {"driver": driver}, other="server", other_cpu=True)
    notes: list[str] = []
    for row, (name, sample) in zip(rows, samples.items(), strict=True):
        row["workers"] = instances[name].workers
        if name != BASELINE:
            ratios = round_ratios(samples, name)
            row["round_ratio_min"] = min(ratios)
            row["round_ratio_median"] = statistics.median(ratios)
            row["round_ratio_max"] = max(ratios)
        row["server_cores"] = row["server_cpu_s_per_1k"] * row["rps"] / 1000
        row["py_thread_busy"] = statistics.median(instances[name].main_busy[driver])
        client_cores = row["cpu_s_per_1k"] * row["rps"] / 1000
        row["machine_busy"] = (row["server_cores"] + client_cores) / CPUS
        row["rounds_rerun"] = sample.retried
    for name, instance in instances.items():  # every call the driver made ended OK
        totals = say_hello_codes(await fetch(f"{instance.http}/metrics"))
        ok = totals["OK"] - totals_before[name]["OK"]
        failed = sum(totals.values()) - sum(totals_before[name].values()) - ok
        if ok != sent[name] or failed:
            notes.append(f"CALLS NOT OK: {driver}, {name}: {sent[name]} sent, {ok} OK, "
                         f"{failed} with another code")  # fmt: skip
    if not notes:
        notes.append(f"{driver}: every call ended OK ({sum(sent.values()):,} calls, counted by "
                     "the instances' /metrics)")  # fmt: skip
    goal = GOALS.get(driver)
    ratios = round_ratios(samples, TESTED)
    line = f"{driver}: 2 workers / 1 worker per round (min / median / max) {spread(ratios)}"
    if goal is not None:
        met = "met" if min(ratios) >= goal else "NOT met"
        line += f"; goal >= {goal} in every round: {met}"
    line += f"; A/A control {spread(round_ratios(samples, CONTROL))}"
    notes.append(line)
    tested = instances[TESTED]
    first = [r[0] / sum(r) for r in tested.shares[driver]]
    if max(first) - min(first) > 0.05:  # the split varies: show each round's with its ratio
        first_cpu = [r[0] / sum(r) for r in tested.cpu[driver]]
        rounds_seen = zip(first, first_cpu, ratios, strict=True)
        each = ", ".join(f"{share:.0%}/{cpu:.0%} {ratio:.2f}" for share, cpu, ratio in rounds_seen)
        notes.append(f"{driver}, 2 workers, each round: worker 0's share of the calls / of the "
                     f"workers' CPU, and the round's ratio: {each}")  # fmt: skip
    return rows, notes


def share_rows(instance: Instance) -> list[Row]:
    """The share of the calls each worker of ``instance`` took, per driver: over all measured
    rounds, and the smallest and largest share of a round."""
    rows = []
    for driver, rounds in instance.shares.items():
        total = [sum(worker) for worker in zip(*rounds, strict=True)]
        cpu = [sum(worker) for worker in zip(*instance.cpu[driver], strict=True)]
        for index, calls in enumerate(total):
            per_round = [r[index] / sum(r) for r in rounds if sum(r)]
            share = calls / sum(total)
            rows.append({
                "driver": driver, "worker": index, "calls": calls, "share": share,
                "vs_even": share * instance.workers - 1,
                "round_share_min": min(per_round), "round_share_max": max(per_round),
                "cpu_share": cpu[index] / sum(cpu),
            })  # fmt: skip
    return rows


# -- the scenario ------------------------------------------------------------------------------
async def run(quick: bool) -> Result:
    result = Result("workers", "11. workers: GZ_WORKERS=2 vs 1 of one greeter instance")
    if H2LOAD is None:
        result.notes.append(
            "not measured: h2load is not installed (apt-get install nghttp2-client)"
        )
        return result
    rounds = 2 if quick else ROUNDS
    h2_calls = H2LOAD_CALLS // (7 if quick else 1)
    client_ms = CLIENT_MS // (7 if quick else 1)
    rows: list[Row] = []
    with Children() as children, tempfile.TemporaryDirectory(prefix="workers-") as scratch:
        etcd = EtcdServer().start()
        children.add(etcd.close)
        instances = {name: start_instance(children, name, count, etcd)
                     for name, count in INSTANCES.items()}  # fmt: skip
        await serving(*(instance.server for instance in instances.values()))
        for instance in instances.values():
            await instance.discover()
        body = grpc_body(REQUEST, scratch)
        threads_before = thread_cpu(instances[BASELINE].pids[0])

        shared = {name: H2Target((i.shared,), SAY_HELLO, body) for name, i in instances.items()}
        found, notes = await drive("shared port", instances, shared, h2load_round, h2_calls,
                                   CONNECTIONS * STREAMS, rounds)  # fmt: skip
        rows += found
        result.notes += notes

        own = {name: OwnPorts(i.own, body) for name, i in instances.items()}
        found, notes = await drive("own ports", instances, own, own_ports_round, h2_calls,
                                   CONNECTIONS * STREAMS, rounds)  # fmt: skip
        rows += found
        result.notes += notes
        added = statistics.median(own[TESTED].sum_of_rates)
        tested_rps = next(r["rps"] for r in found if r["variant"] == TESTED)
        result.notes.append(
            f"own ports, 2 workers: the two h2load processes' own rates added up: median "
            f"{added:,.0f} calls/s ({added / tested_rps - 1:+.1%} on the calls/s above)"
        )

        targets = {name: f"etcd://{etcd.endpoint}/{i.key}" for name, i in instances.items()}
        expect = {name: i.workers for name, i in instances.items()}
        clients = Clients(targets, expect, os.path.join(scratch, "clients.log"))
        children.add(clients.close)
        await clients.ready()
        names = {name: name for name in instances}  # a client round names its instance
        found, notes = await drive("gz clients", instances, names, clients.round, client_ms,
                                   IN_FLIGHT, rounds)  # fmt: skip
        rows += found
        result.notes += notes

        shares = share_rows(instances[TESTED])
        served = sum(clients.served_by[TESTED], Counter())  # what the replies themselves say
        by_reply = " / ".join(
            f"{served[a] / sum(served.values()):.1%}" for a in instances[TESTED].own
        )
        result.notes.append(f"gz clients, 2 workers: share per worker by the replies' served_by: "
                            f"{by_reply}")  # fmt: skip
        worst: dict[str, float] = {}
        for row in shares:
            worst[row["driver"]] = max(worst.get(row["driver"], 0.0), abs(row["vs_even"]))
        for driver, off in worst.items():
            met = "met" if off <= SHARE_TOLERANCE else "NOT met"
            result.notes.append(f"{driver}: the worker furthest from an even share is {off:+.0%} "
                                f"off it; goal within +-{SHARE_TOLERANCE:.0%}: {met}")  # fmt: skip

        main, others = (a - b for a, b in zip(thread_cpu(instances[BASELINE].pids[0]),
                                             threads_before, strict=True))  # fmt: skip
        result.notes.append(
            f"1 worker, its process over the run: Python's main thread {main:.1f} s of CPU, grpc's "
            f"other threads {others:.1f} s ({others / (main + others):.0%} of the process's): "
            f"while its main thread is busy, a worker keeps {1 + others / main:.2f} cores busy"
        )
        memory_rows = []
        for name in (BASELINE, TESTED):
            instance = instances[name]
            roles = ["single process"] if instance.workers == 1 else [
                "supervisor", *(f"worker {i}" for i in range(instance.workers))]  # fmt: skip
            for role, pid in zip(roles, instance.pids, strict=True):
                rss, pss = memory(pid)
                memory_rows.append({"instance": name, "process": role, "rss_mib": rss,
                                    "pss_mib": pss})  # fmt: skip
            total_rss = sum(r["rss_mib"] for r in memory_rows if r["instance"] == name)
            total_pss = sum(r["pss_mib"] for r in memory_rows if r["instance"] == name)
            memory_rows.append({"instance": name, "process": "total", "rss_mib": total_rss,
                                "pss_mib": total_pss})  # fmt: skip

    result.table(
        "calls/s of each instance per driver; ratios against 1 worker (round_ratio_*: each "
        "round's own ratio); cpu_s_per_1k: the client's (h2load or the gz client processes) CPU "
        "s per 1,000 calls; server_cpu: supervisor and workers; server_cores: the cores they kept "
        "busy; py_thread_busy: how busy a worker's main (Python) thread was, median of rounds; "
        f"machine_busy: server and client CPU together over the {CPUS} cores"
    ).rows = rows
    result.table("share of the calls each worker of the 2-worker instance took (its /metrics), "
                 "and of the CPU both workers spent (/proc)").rows = shares  # fmt: skip
    result.table("memory after the load (VmRSS, and PSS: shared pages split between the "
                 "processes that share them)").rows = memory_rows  # fmt: skip
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        client(json.loads(sys.argv[2]))
    else:
        scenario_main(run, __doc__.splitlines()[0])
