"""What connect() costs per call compared with a raw grpc.aio channel to the same server.

Both clients run in this process against one raw server process, in alternating rounds, so the
ratios hold even on a noisy machine. Also measures `import framework` and exec-to-SERVING.

    python -m benchmarks.client_overhead [--rounds 6] [--calls 2000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import framework
from examples.greeter import greeter_pb2, greeter_pb2_grpc
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
REQUEST = greeter_pb2.HelloRequest(name="bench")


async def unary_round(
    stub: greeter_pb2_grpc.GreeterStub, calls: int, concurrency: int
) -> tuple[float, list[float]]:
    """(calls per second, per-call latencies) for one round."""
    latencies: list[float] = []
    per_worker = calls // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            started = time.perf_counter()
            await stub.SayHello(REQUEST)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return per_worker * concurrency / (time.perf_counter() - started), latencies


async def stream_round(
    stub: greeter_pb2_grpc.GreeterStub, calls: int, concurrency: int
) -> tuple[float, list[float]]:
    """Server-streaming calls of 10 messages each; rate in calls per second."""
    latencies: list[float] = []
    per_worker = max(1, calls // concurrency // 10)
    request = greeter_pb2.HelloRequest(name="bench", count=10)

    async def worker() -> None:
        for _ in range(per_worker):
            started = time.perf_counter()
            async for _reply in stub.LotsOfReplies(request):
                pass
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return per_worker * concurrency / (time.perf_counter() - started), latencies


async def compare(address: str, rounds: int, calls: int) -> list[dict]:
    raw = grpc.aio.insecure_channel(address)
    balanced = framework.connect(f"direct:///{address}")
    clients = {
        "raw": greeter_pb2_grpc.GreeterStub(raw),
        "gz": greeter_pb2_grpc.GreeterStub(balanced),
    }
    for stub in clients.values():  # warm up connections and code paths
        await unary_round(stub, 500, 8)
    rows = []
    scenarios: list[tuple[str, Callable[..., Awaitable[tuple[float, list[float]]]], int]] = [
        ("unary", unary_round, 1),
        ("unary", unary_round, 64),
        ("server-stream x10", stream_round, 1),
        ("server-stream x10", stream_round, 64),
    ]
    for name, run, concurrency in scenarios:
        rates: dict[str, list[float]] = {"raw": [], "gz": []}
        latencies: dict[str, list[float]] = {"raw": [], "gz": []}
        cpu: dict[str, float] = {"raw": 0.0, "gz": 0.0}
        for index in range(rounds):
            order = ["raw", "gz"] if index % 2 == 0 else ["gz", "raw"]
            for client in order:
                cpu_before = time.process_time()
                rate, lat = await run(clients[client], calls, concurrency)
                cpu[client] += time.process_time() - cpu_before
                rates[client].append(rate)
                latencies[client].extend(lat)
        row = {"scenario": name, "concurrency": concurrency}
        for client in ("raw", "gz"):
            lat = sorted(latencies[client])
            row[f"{client}_rps"] = statistics.median(rates[client])
            row[f"{client}_p50_ms"] = lat[len(lat) // 2] * 1000
            row[f"{client}_p99_ms"] = lat[int(len(lat) * 0.99)] * 1000
            row[f"{client}_cpu_s_per_1k"] = cpu[client] / len(lat) * 1000
        row["rps_ratio"] = row["gz_rps"] / row["raw_rps"]
        row["p50_ratio"] = row["gz_p50_ms"] / row["raw_p50_ms"]
        rows.append(row)
    await raw.close()
    await balanced.close()
    return rows


def import_time(repeats: int = 5) -> float:
    """Median seconds for `import framework` in a fresh interpreter."""
    code = "import time; t=time.perf_counter(); import framework; print(time.perf_counter()-t)"
    samples = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
            ).stdout
        )
        for _ in range(repeats)
    ]
    return statistics.median(samples)


async def exec_to_serving(repeats: int = 3) -> float:
    """Median seconds from exec of a gz greeter process to health SERVING."""
    samples = []
    for _ in range(repeats):
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "GZ_LISTEN": f"127.0.0.1:{port}",
            "GZ_SHUTDOWN_DRAIN": "0",
        }
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "examples.greeter.server"],
            env=env,
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while True:
                    try:
                        reply = await stub.Check(
                            health_pb2.HealthCheckRequest(), timeout=0.2, wait_for_ready=True
                        )
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.005)
            samples.append(time.perf_counter() - started)
        finally:
            process.terminate()
            process.wait()
    return statistics.median(samples)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.raw_server", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        rows = await compare(f"127.0.0.1:{port}", args.rounds, args.calls)
    finally:
        server.terminate()
        server.wait()
    startup = {
        "import_framework_ms": import_time() * 1000,
        "exec_to_serving_ms": await exec_to_serving() * 1000,
    }
    if args.json:
        print(json.dumps({"client_overhead": rows, "startup": startup}, indent=2))
        return
    print(
        f"{'scenario':<20}{'conc':>5}{'raw rps':>10}{'gz rps':>10}{'ratio':>7}"
        f"{'raw p50':>9}{'gz p50':>9}{'ratio':>7}{'raw cpu':>9}{'gz cpu':>8}"
    )
    for r in rows:
        print(
            f"{r['scenario']:<20}{r['concurrency']:>5}{r['raw_rps']:>10.0f}{r['gz_rps']:>10.0f}"
            f"{r['rps_ratio']:>7.3f}{r['raw_p50_ms']:>8.3f}m{r['gz_p50_ms']:>8.3f}m"
            f"{r['p50_ratio']:>7.3f}{r['raw_cpu_s_per_1k']:>9.3f}{r['gz_cpu_s_per_1k']:>8.3f}"
        )
    print("(rps: calls per second, median of rounds; p50 in ms; cpu: client CPU s per 1,000 calls)")
    print(
        f"import framework: {startup['import_framework_ms']:.0f} ms; "
        f"exec to SERVING: {startup['exec_to_serving_ms']:.0f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
