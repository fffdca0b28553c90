"""``python -m tests.interop.server``, what an external interop client is pointed at, serves the
cases as a process of its own."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2

from ..support import ROOT, free_port, health_status, wait_until
from .cases import empty_unary, large_unary, server_streaming, unimplemented_service

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("flags", [(), ("--sync",)], ids=["async", "sync"])
async def test_server_module_serves_the_test_service(flags: tuple[str, ...]) -> None:
    port = free_port()
    command = [sys.executable, "-m", "tests.interop.server", "--port", str(port), *flags]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        address = f"127.0.0.1:{port}"

        async def serving() -> bool:
            assert process.poll() is None, f"exited {process.returncode}"
            return await health_status(address, timeout=0.5) == SERVING

        await wait_until(serving, 30, "the interop server SERVING")
        async with grpc.aio.insecure_channel(address) as channel:
            for case in (empty_unary, large_unary, server_streaming, unimplemented_service):
                await asyncio.wait_for(case(channel, None), 10)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
        assert process.returncode == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
