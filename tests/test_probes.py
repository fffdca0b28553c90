"""The HTTP side (GZ_METRICS_PORT): bounded however many clients connect and however slowly they
talk, only GET and HEAD on its three paths, and bound where GZ_METRICS_HOST says."""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import gz
from gz.probes import REQUEST_TIMEOUT

from .support import free_port, http_get

IDLE_CONNECTIONS = 500


def thread_count(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1])


def open_unfinished(port: int, count: int) -> list[socket.socket]:
    """Connections that never finish a request: half send nothing, half half a request head."""
    opened = []
    for n in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
        if n % 2:
            connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        opened.append(connection)
    return opened


def healthz_seconds(port: int) -> float:
    """Seconds from connecting to the whole /healthz reply."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := connection.recv(4096):
            reply += chunk
    elapsed = time.monotonic() - started
    assert reply.split(b" ", 2)[1] == b"200" and reply.endswith(b"\r\n\r\nok\n"), reply
    return elapsed


def wait_closed_by_server(connections: list[socket.socket], timeout: float) -> int:
    """How many of the connections the server closed (end of stream) within ``timeout``."""
    closed = 0
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for connection in connections:
            connection.setblocking(False)
            selector.register(connection, selectors.EVENT_READ)
        while closed < len(connections) and (remaining := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(remaining):
                try:
                    data = key.fileobj.recv(4096)
                except ConnectionResetError:
                    data = b""
                if not data:
                    selector.unregister(key.fileobj)
                    closed += 1
    return closed


async def test_unfinished_requests_cost_no_thread_and_are_cut_off(server_process):
    port = free_port()
    server = server_process(GZ_METRICS_PORT=str(port))
    await server.wait_serving()
    assert await asyncio.to_thread(healthz_seconds, port) < 5
    assert server.process is not None
    threads_before = thread_count(server.process.pid)
    idle = await asyncio.to_thread(open_unfinished, port, IDLE_CONNECTIONS)
    try:
        # The probes are answered behind the 500 (connections are accepted in order), at once.
        seconds = [await asyncio.to_thread(healthz_seconds, port) for _ in range(5)]
        threads_during = thread_count(server.process.pid)
        assert threads_during <= threads_before + 32, (threads_before, threads_during)
        assert max(seconds) < 0.1, seconds
        closed = await asyncio.to_thread(wait_closed_by_server, idle, REQUEST_TIMEOUT + 3)
        assert closed == IDLE_CONNECTIONS
    finally:
        for connection in idle:
            connection.close()
    assert await asyncio.to_thread(healthz_seconds, port) < 5  # and it goes on serving


def request(url: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body); an error status is an answer too."""
    sent = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(sent, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def test_only_get_and_head_on_its_three_paths(serve_greeter):
    service = await serve_greeter(metrics_port=0)
    assert service.server.probes is not None
    base = f"http://127.0.0.1:{service.server.probes.port}"

    status, _, body = await asyncio.to_thread(request, f"{base}/metrics/../admin")
    assert status == 404 and b"/metrics" in body
    assert (await asyncio.to_thread(request, f"{base}/"))[0] == 404
    status, headers, _ = await asyncio.to_thread(request, f"{base}/metrics", "POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert (await asyncio.to_thread(request, f"{base}/healthz", "DELETE"))[0] == 405

    status, headers, body = await asyncio.to_thread(request, f"{base}/healthz", "HEAD")
    assert (status, headers["Content-Length"], body) == (200, "3", b"")
    openmetrics = "application/openmetrics-text; version=1.0.0"
    status, headers, body = await asyncio.to_thread(request, f"{base}/metrics", Accept=openmetrics)
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    status, headers, body = await asyncio.to_thread(request, f"{base}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert not body.endswith(b"# EOF\n")


async def test_keep_alive_pipelining_and_a_too_large_head(serve_greeter):
    service = await serve_greeter(metrics_port=0)
    assert service.server.probes is not None
    port = service.server.probes.port

    def exchange(data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(data)
            reply = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := connection.recv(65536):
                    reply += chunk
            return reply

    two = b"GET /healthz HTTP/1.1\r\n\r\nGET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n"
    reply = await asyncio.to_thread(exchange, two)
    assert reply.count(b"HTTP/1.1 200 OK\r\n") == 2 and reply.endswith(b"ready\n")
    huge = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"x" * 10_000 + b"\r\n\r\n"
    assert (await asyncio.to_thread(exchange, huge)).startswith(b"HTTP/1.1 431 ")
    assert (await asyncio.to_thread(exchange, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400 ")


async def test_gz_metrics_host_chooses_the_address_the_http_side_binds(serve_greeter):
    # The gRPC port listens on 127.0.0.1; the HTTP side on another loopback address.
    service = await serve_greeter(metrics_port=0, metrics_host="127.0.0.2")
    assert service.server.probes is not None
    port = service.server.probes.port
    assert await asyncio.to_thread(http_get, f"http://127.0.0.2:{port}/healthz") == (200, "ok\n")
    with socket.socket() as elsewhere:
        assert elsewhere.connect_ex(("127.0.0.1", port)) != 0


def test_gz_metrics_host_takes_an_address_without_a_port(monkeypatch):
    monkeypatch.delenv("GZ_METRICS_HOST", raising=False)
    assert gz.ServerSettings.from_env().metrics_host is None  # the listen host
    monkeypatch.setenv("GZ_METRICS_HOST", "[::1]")
    assert gz.ServerSettings.from_env().metrics_host == "::1"
    monkeypatch.setenv("GZ_METRICS_HOST", "")
    assert gz.ServerSettings.from_env().metrics_host is None
    monkeypatch.setenv("GZ_METRICS_HOST", "127.0.0.1:9090")
    with pytest.raises(gz.SettingsError, match=r"GZ_METRICS_HOST.*without a port"):
        gz.ServerSettings.from_env()
