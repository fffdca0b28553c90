"""/debug/targets on the HTTP side and gz debug: what the process's client channels see, live."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import grpc

import gz
from examples.greeter.server import Greeter
from gz.discovery import Listener, Resolver

from .support import (
    ROOT,
    all_ready,
    direct,
    free_port,
    gz_command,
    http_get,
    run_gz,
    say_hello,
    wait_not_serving,
    wait_until,
)

TOKEN = "s3cret-token-for-the-debug-page"
PASSWORD = "s3cret-etcd-password"


class Failing(Greeter):
    """Every SayHello fails with UNAVAILABLE, a code outlier ejection counts."""

    async def SayHello(self, request, context):
        await context.abort(grpc.StatusCode.UNAVAILABLE, "fails on purpose")


class Broken(Resolver):
    """A resolver that only ever fails, naming what it tried."""

    target = "broken:///nowhere"

    async def watch(self, listener: Listener) -> None:
        listener.error("broken:///nowhere: lookup failed on purpose")
        await asyncio.Event().wait()

    def resolve_now(self) -> None:
        pass


async def page(port: int, path: str = "/debug/targets") -> tuple[int, str]:
    """Read from another thread: the page asks this test's event loop for the views."""
    return await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}{path}")


async def channel_view(port: int, target: str) -> dict | None:
    """This target's channel on the page (other tests' channels may be alive in this process)."""
    status, body = await page(port)
    assert status == 200, body
    return next((c for c in json.loads(body)["channels"] if c["target"] == target), None)


def by_address(view: dict) -> dict[str, dict]:
    return {endpoint["address"]: endpoint for endpoint in view["endpoints"]}


async def test_the_page_shows_each_channel_its_endpoints_and_retry_budget(serve_greeter):
    port = free_port()
    first = await serve_greeter(metrics_port=port, metrics_host="127.0.0.1")
    second = await serve_greeter()
    target = direct([first, second])
    unused = gz.connect("direct:///127.0.0.1:9")
    async with gz.connect(target, balancer="round_robin") as channel:
        await all_ready(channel, 2)
        for _ in range(10):
            await say_hello(channel)
        view = await channel_view(port, target)
        assert view is not None
        assert (view["balancer"], view["state"]) == ("round_robin", "READY")
        assert view["resolver"]["resolved"] and view["resolver"]["error"] is None
        assert view["resolver"]["last_update_seconds_ago"] >= 0
        assert view["retry_budget"]["max_attempts"] == 3 and view["retry_budget"]["calls"] >= 10
        endpoints = by_address(view)
        assert set(endpoints) == {first.address, second.address}
        for endpoint in endpoints.values():
            assert endpoint["connectivity"] == "READY" and endpoint["health"] == "SERVING"
            assert endpoint["usable"] and not endpoint["ejected"]
            assert endpoint["recent_calls"] == 5 and endpoint["recent_failures"] == 0
            assert endpoint["latency_ms"] > 0 and endpoint["in_flight"] == 0
        never_used = await channel_view(port, "direct:///127.0.0.1:9")
        assert never_used is not None and never_used["state"] == "IDLE"
        assert never_used["endpoints"] == [] and not never_used["resolver"]["resolved"]
    await unused.close()
    assert await channel_view(port, target) is None  # closed: gone from the page
    assert await channel_view(port, "direct:///127.0.0.1:9") is None


async def test_a_failing_endpoint_shows_its_failures_then_its_ejection(serve_greeter):
    port = free_port()
    failing = await serve_greeter(Failing, metrics_port=port, metrics_host="127.0.0.1")
    healthy = [await serve_greeter(), await serve_greeter()]
    target = direct([failing, *healthy])
    async with gz.connect(target, balancer="round_robin", retry=False) as channel:
        await all_ready(channel, 3)

        async def calls(count: int) -> None:
            for _ in range(count):  # round robin: every third call goes to the failing one
                try:
                    await say_hello(channel)
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE

        await calls(6)
        endpoint = by_address(await channel_view(port, target))[failing.address]
        assert (endpoint["recent_failures"], endpoint["recent_calls"]) == (2, 2)
        assert endpoint["consecutive_failures"] == 2 and not endpoint["ejected"]
        await calls(9)  # five failures in a row: ejected
        endpoint = by_address(await channel_view(port, target))[failing.address]
        assert endpoint["ejected"] and endpoint["ejections"] == 1 and not endpoint["usable"]
        assert 0 < endpoint["ejected_seconds_left"] <= 30
        status, html = await page(port, "/debug/targets.html")
        assert status == 200 and "ejected, " in html and failing.address in html


async def test_a_draining_endpoint_shows_not_serving(serve_greeter):
    port = free_port()
    draining = await serve_greeter(shutdown_drain=2.0, metrics_port=port, metrics_host="127.0.0.1")
    other = await serve_greeter()
    target = direct([draining, other])
    async with gz.connect(target) as channel:
        await all_ready(channel, 2)
        stopping = asyncio.ensure_future(draining.server.stop())
        await wait_not_serving(channel, draining.address)
        endpoints = by_address(await channel_view(port, target))
        assert endpoints[draining.address]["health"] == "NOT_SERVING"
        assert not endpoints[draining.address]["usable"]
        assert endpoints[other.address]["health"] == "SERVING"
        await stopping


async def test_the_resolver_error_shows_and_the_html_is_escaped_without_script(serve_greeter):
    port = free_port()
    await serve_greeter(metrics_port=port, metrics_host="127.0.0.1")
    tricky = gz.ManualResolver([], target="<script>alert(1)</script>&x")
    async with gz.connect(Broken()) as broken, gz.connect(tricky) as other:
        broken.get_state(try_to_connect=True)
        other.get_state(try_to_connect=True)
        await wait_until(lambda: broken._pool.last_error is not None, 5, "the resolver failed")
        view = await channel_view(port, "broken:///nowhere")
        assert view["resolver"]["error"] == "broken:///nowhere: lookup failed on purpose"
        status, html = await page(port, "/debug/targets.html")
    assert status == 200 and "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;x" in html
    assert "error: broken:///nowhere: lookup failed on purpose" in html


async def test_no_token_or_password_appears(serve_greeter, monkeypatch):
    monkeypatch.setenv("GZ_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("GZ_ETCD_USERNAME", "gz")
    monkeypatch.setenv("GZ_ETCD_PASSWORD", PASSWORD)
    port = free_port()
    server = await serve_greeter(metrics_port=port, metrics_host="127.0.0.1")
    closed = free_port()
    async with (
        gz.connect(direct([server])) as channel,
        gz.connect(f"etcd://127.0.0.1:{closed}/greeter") as etcd,
    ):
        await say_hello(channel)
        etcd.get_state(try_to_connect=True)
        await wait_until(lambda: etcd._pool.last_error is not None, 10, "etcd unreachable")
        pages = [(await page(port, path))[1] for path in ("/debug/targets", "/debug/targets.html")]
    for text in pages:
        assert server.address in text and "etcd did not answer" in text
        assert TOKEN not in text and PASSWORD not in text


async def test_a_blocked_event_loop_is_reported_not_waited_for(serve_greeter):
    port = free_port()
    server = await serve_greeter(metrics_port=port, metrics_host="127.0.0.1")
    async with gz.connect(direct([server])) as channel:
        await say_hello(channel)
        started = time.monotonic()
        # read in this thread: the loop that would build the view is blocked meanwhile
        status, body = http_get(f"http://127.0.0.1:{port}/debug/targets")
        took = time.monotonic() - started
    view = next(c for c in json.loads(body)["channels"] if c["target"] == direct([server]))
    assert status == 200 and "did not answer within 0.5s" in view["unavailable"]
    assert took < 3


async def test_a_server_without_client_channels_shows_an_empty_list(server_process):
    port = free_port()
    process = server_process(GZ_METRICS_PORT=str(port), GZ_METRICS_HOST="127.0.0.1")
    await process.wait_serving()
    status, body = await page(port)
    assert status == 200 and json.loads(body) == {"channels": []}
    status, html = await page(port, "/debug/targets.html")
    assert status == 200 and "No client channels" in html


async def test_a_process_that_only_calls_shows_its_channels(serve_greeter):
    """The HTTP side connect() starts in a process without a server (tests/client_only.py)."""
    server = await serve_greeter()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GZ_METRICS_PORT": str(port),
           "GZ_METRICS_HOST": "127.0.0.1"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.client_only"],
        env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(f"call {direct([server])}\n")
        process.stdin.flush()
        assert (await asyncio.to_thread(process.stdout.readline)).strip() == "called"
        view = await channel_view(port, direct([server]))
        assert view is not None and by_address(view)[server.address]["recent_calls"] == 1
        process.stdin.close()
        assert await asyncio.to_thread(process.wait, 10) == 0
    finally:
        process.kill()


async def test_gz_debug_prints_the_table_once(serve_greeter):
    port = free_port()
    server = await serve_greeter(metrics_port=port, metrics_host="127.0.0.1")
    async with gz.connect(direct([server]), balancer="round_robin") as channel:
        await say_hello(channel)
        process = await asyncio.create_subprocess_exec(
            *gz_command("debug", f"127.0.0.1:{port}"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
    text = out.decode()
    assert process.returncode == 0, err.decode()
    assert f"\n{direct([server])}\n  state: READY, balancer: round_robin\n" in text
    header = next(line for line in text.splitlines() if "ENDPOINT" in line)
    assert header.split() == ["ENDPOINT", "CONNECTIVITY", "HEALTH", "USABLE", "IN", "FLIGHT",
                              "LATENCY", "OUTLIER", "FAILURES"]  # fmt: skip
    row = next(line for line in text.splitlines() if line.strip().startswith(server.address))
    assert row.split()[1:5] == ["READY", "SERVING", "yes", "0"]


def test_gz_debug_fails_in_one_line_when_it_cannot_read():
    code, out, err = run_gz("debug", f"127.0.0.1:{free_port()}")
    assert code == 1 and out == ""
    assert err.startswith("gz: cannot read http://127.0.0.1:") and err.count("\n") == 1
    code, _, err = run_gz("debug", "nowhere")
    assert code == 2 and err.startswith("gz: ") and err.count("\n") == 1
