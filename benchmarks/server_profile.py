"""Where a loaded gz server spends its time: py-spy on the greeter process (``pip install py-spy``).

Starts the gz greeter with its default middleware (or ``--defaults-off``), puts it under 32
concurrent unary calls from a raw client, samples it with py-spy for a few seconds, and prints
the calls served and the share of the server's samples spent in gz's middleware and server
wrapper. Not part of ``make bench``: it needs py-spy, and ptrace rights on the process.

    python -m benchmarks.server_profile [--seconds 8] [--defaults-off]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from examples.greeter import greeter_pb2, greeter_pb2_grpc

from .features import SERVER_MIDDLEWARE_OFF
from .harness import Children

GZ_FRAMES = ("framework/middleware", "framework/server")


async def load(address: str, seconds: float, concurrency: int = 32) -> int:
    """Calls served in ``seconds`` by ``concurrency`` callers on one raw channel."""
    request = greeter_pb2.HelloRequest(name="profile")
    served = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)
        end = time.monotonic() + seconds

        async def caller() -> None:
            nonlocal served
            while time.monotonic() < end:
                await stub.SayHello(request)
                served += 1

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return served


def gz_share(raw_profile: Path) -> float:
    """The share of samples whose stack passes through gz's middleware or server wrapper."""
    total = in_gz = 0
    for line in raw_profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        if any(frame in stack for frame in GZ_FRAMES):
            in_gz += int(count)
    return in_gz / total if total else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--defaults-off", action="store_true")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        sys.exit("py-spy is not installed: pip install py-spy")
    asyncio.run(profile(py_spy, args.seconds, args.defaults_off))


async def profile(py_spy: str, seconds: float, defaults_off: bool) -> None:
    with Children() as children:
        server = children.server("gz", **(SERVER_MIDDLEWARE_OFF if defaults_off else {}))
        await server.wait_serving()
        await load(server.address, 1.0)  # connect and warm up, not sampled
        with tempfile.TemporaryDirectory() as scratch:
            output = Path(scratch) / "profile.txt"
            spy = subprocess.Popen(
                [py_spy, "record", "-p", str(server.process.pid), "-d", str(int(seconds)),
                 "-r", "200", "-f", "raw", "-o", str(output)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            served = await load(server.address, seconds + 1)
            await asyncio.to_thread(spy.wait)
            share = gz_share(output)
    label = "defaults off" if defaults_off else "defaults on"
    print(f"{label}: {served} calls; gz middleware and server wrapper: {share:.1%} of samples")


if __name__ == "__main__":
    main()
