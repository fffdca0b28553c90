"""Three greeter replicas, one balanced client, one replica killed, a graceful stop.

Usage::

    python -m examples.greeter.demo      # or: make demo

1. starts three replicas as real processes on free 127.0.0.1 ports and waits until each one
   answers the standard gRPC health check with SERVING;
2. makes 300 SayHello calls through ``framework.connect("direct:///...")`` and shows how many
   each replica served;
3. SIGKILLs one replica and makes 300 more calls: they keep going to the two others;
4. SIGTERMs the two survivors, which drain and exit 0.

Exits 0 when everything behaved, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import framework

from . import greeter_pb2, greeter_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
REPLICAS = 3
CALLS = 300
BATCH = 10  # calls in flight at once
CALL_TIMEOUT = 5.0  # seconds, per call
READY_TIMEOUT = 20.0  # seconds for a replica to report SERVING
STOP_TIMEOUT = 20.0  # seconds for a replica to drain and exit after SIGTERM
MAX_FAILURE_RATIO = 0.05  # failures tolerated right after the kill, before retries land


@dataclass
class Replica:
    number: int
    address: str
    process: subprocess.Popen[bytes]
    log: Path
    killed: bool = False

    @property
    def label(self) -> str:
        return f"replica {self.number} ({self.address}, pid {self.process.pid})"


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


def start_replica(number: int, port: int, log_dir: Path) -> Replica:
    address = f"127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        GZ_NAME="greeter",
        GZ_LISTEN=address,
        GZ_ADVERTISE_HOST="127.0.0.1",
        GZ_REGISTRY="none",
        GZ_SHUTDOWN_DRAIN="0.2s",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    log = log_dir / f"replica-{number}.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "examples.greeter.server"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=subprocess.STDOUT,
        )
    return Replica(number, address, process, log)


def log_lines(replica: Replica) -> list[str]:
    try:
        return replica.log.read_text(errors="replace").splitlines()
    except OSError:
        return []


def show_log(replica: Replica, last: int = 20) -> None:
    print(f"--- last lines of {replica.label} log ---")
    for line in log_lines(replica)[-last:]:
        print(f"    {line}")


async def wait_serving(replica: Replica) -> None:
    """Poll grpc.health.v1.Health/Check on a raw grpc.aio channel until it says SERVING."""
    deadline = time.monotonic() + READY_TIMEOUT
    async with grpc.aio.insecure_channel(replica.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if replica.process.poll() is not None:
                raise RuntimeError(
                    f"{replica.label} exited with code {replica.process.returncode} during start-up"
                )
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


def print_table(replicas: list[Replica], served: Counter[str], errors: Counter[str]) -> None:
    total = sum(served.values()) + sum(errors.values())
    print(f"  {'replica':<10}{'address':<22}{'calls served':>12}")
    for replica in replicas:
        note = "  (killed)" if replica.killed else ""
        print(f"  {replica.number:<10}{replica.address:<22}{served[replica.address]:>12}{note}")
    known = {replica.address for replica in replicas}
    for address in sorted(set(served) - known):  # served_by we did not expect: show it anyway
        print(f"  {'?':<10}{address:<22}{served[address]:>12}  (unexpected served_by)")
    print(f"  succeeded {sum(served.values())}/{total}, failed {sum(errors.values())}/{total}")
    for error, count in errors.most_common(5):
        print(f"    {count} x {error}")


async def exercise(replicas: list[Replica]) -> bool:
    """Steps 1-3; returns whether everything looked right."""
    ok = True
    await asyncio.gather(*(wait_serving(replica) for replica in replicas))
    for replica in replicas:
        serving = [line for line in log_lines(replica) if "serving" in line]
        print(f"  {replica.label}: SERVING" + (f"  | {serving[0].strip()}" if serving else ""))

    target = "direct:///" + ",".join(replica.address for replica in replicas)
    async with framework.connect(target) as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)

        heading(f"2. {CALLS} calls through framework.connect({target!r})")
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
        heading(f"3. SIGKILL {victim.label}, then {CALLS} more calls")
        victim.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(victim.process.wait)
        victim.killed = True
        print(f"  {victim.label} is gone (exit code {victim.process.returncode})")
        served, errors = await make_calls(stub, CALLS)
        print_table(replicas, served, errors)
        survivors = [replica for replica in replicas if not replica.killed]
        failures = sum(errors.values())
        if failures:
            print(f"  {failures} call(s) failed right after the kill, before it was noticed")
        if failures > MAX_FAILURE_RATIO * CALLS:
            print(f"  PROBLEM: more than {MAX_FAILURE_RATIO:.0%} of the calls failed")
            ok = False
        if served[victim.address]:
            print("  PROBLEM: the killed replica is reported as serving calls")
            ok = False
        idle = [replica.label for replica in survivors if not served[replica.address]]
        if idle:
            print(f"  PROBLEM: no call reached {', '.join(idle)}")
            ok = False
        if not idle and not served[victim.address]:
            print("  calls continued on the two surviving replicas")
    return ok


def stop_gracefully(replicas: list[Replica]) -> bool:
    """Step 4: SIGTERM every live replica, wait, and check each exits 0."""
    survivors = [replica for replica in replicas if not replica.killed]
    heading(f"4. SIGTERM the {len(survivors)} remaining replicas (graceful drain)")
    for replica in survivors:
        replica.process.send_signal(signal.SIGTERM)
    ok = True
    for replica in survivors:
        try:
            code = replica.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"  PROBLEM: {replica.label} still running {STOP_TIMEOUT:.0f}s after SIGTERM")
            show_log(replica)
            ok = False
            continue
        if code == 0:
            print(f"  {replica.label} drained and exited 0")
        else:
            print(f"  PROBLEM: {replica.label} exited with code {code}")
            show_log(replica)
            ok = False
    return ok


def main() -> int:
    replicas: list[Replica] = []
    with tempfile.TemporaryDirectory(prefix="gz-demo-") as log_dir:
        try:
            heading(f"1. starting {REPLICAS} greeter replicas")
            for number, port in enumerate(free_ports(REPLICAS), start=1):
                replicas.append(start_replica(number, port, Path(log_dir)))
            ok = asyncio.run(exercise(replicas))
            ok = stop_gracefully(replicas) and ok
        except Exception as error:
            print(f"\nFAILED: {type(error).__name__}: {error}")
            for replica in replicas:
                show_log(replica)
            return 1
        finally:
            for replica in replicas:
                if replica.process.poll() is None:
                    replica.process.kill()
                    replica.process.wait()
    heading("result")
    print("  OK: balanced, survived a kill, drained cleanly" if ok else "  FAILED: see PROBLEM")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
