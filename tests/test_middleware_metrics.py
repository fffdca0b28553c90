"""Metrics: a real server process's /metrics parsed with prometheus_client's parsers (the classic
text format and OpenMetrics), its probes, exemplars linking buckets to traces, the client-side
families of this process, and a process that only calls serving them on GZ_METRICS_PORT."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

import gz
from examples.greeter import greeter_pb2, greeter_pb2_grpc
from examples.greeter.server import Greeter
from gz.discovery import Listener, Resolver
from gz.middleware.metrics import Metrics
from gz.middleware.tracing import Tracing
from gz.settings import LATENCY_BUCKETS

from .support import ROOT, free_port, http_get, say_hello, wait_until

UNARY = {"grpc_type": "unary", "grpc_service": "greeter.v1.Greeter", "grpc_method": "SayHello"}
STREAM = {**UNARY, "grpc_type": "server_stream", "grpc_method": "LotsOfReplies"}


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of an exposition."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed.get((name, frozenset(labels.items())), 0.0)


OPENMETRICS = "application/openmetrics-text; version=1.0.0"  # what Prometheus asks for, in part


def scrape(url: str, accept: str = "") -> tuple[str, str]:
    """(Content-Type, body) of a GET with ``accept`` as its Accept header."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


def bucket_samples(text: str, family: str, method: str = "SayHello") -> list:
    """The OpenMetrics _bucket samples of ``family`` for a unary greeter ``method``."""
    labels = {**UNARY, "grpc_method": method}
    return [
        sample
        for parsed in openmetrics_parser.text_string_to_metric_families(text)
        if parsed.name == family
        for sample in parsed.samples
        if sample.name == f"{family}_bucket" and labels.items() <= sample.labels.items()
    ]


def bounds(parsed: dict, side: str = "server") -> list[float]:
    return sorted(
        float(dict(labels)["le"])
        for name, labels in parsed
        if name == f"grpc_{side}_handling_seconds_bucket" and ("grpc_method", "SayHello") in labels
    )


async def test_metrics_endpoint_counts_calls_per_code_with_fine_buckets(server_process):
    port = free_port()
    server = server_process("-m", "tests.middleware_relay", GZ_METRICS_PORT=str(port),
                            GZ_SHUTDOWN_DRAIN="2")  # fmt: skip
    await server.wait_serving()
    base = f"http://127.0.0.1:{port}"
    async with grpc.aio.insecure_channel(server.address) as channel:
        for _ in range(3):
            await say_hello(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await say_hello(channel, "raise")
        replies = greeter_pb2_grpc.GreeterStub(channel).LotsOfReplies(
            greeter_pb2.HelloRequest(name="x", count=4)
        )
        assert len([reply async for reply in replies]) == 4

    status, text = await asyncio.to_thread(http_get, f"{base}/metrics")
    assert status == 200
    assert "# {" not in text  # no exemplars in the classic format (nor any without tracing)
    parsed = samples(text)
    assert value(parsed, "grpc_server_started_total", **UNARY) == 4
    assert value(parsed, "grpc_server_handled_total", **UNARY, grpc_code="OK") == 3
    assert value(parsed, "grpc_server_handled_total", **UNARY, grpc_code="Internal") == 1
    assert value(parsed, "grpc_server_msg_received_total", **UNARY) == 4
    assert value(parsed, "grpc_server_msg_sent_total", **UNARY) == 3  # not for the failed one
    assert value(parsed, "grpc_server_msg_sent_total", **STREAM) == 4
    assert value(parsed, "grpc_server_handled_total", **STREAM, grpc_code="OK") == 1
    assert bounds(parsed) == [*LATENCY_BUCKETS, float("inf")]
    assert bounds(parsed)[0] < 0.001  # a sub-millisecond call has a bucket of its own
    assert {0.005, 0.1, 1.0, 10.0} <= set(bounds(parsed))  # Go's DefBuckets, for old dashboards
    assert value(parsed, "grpc_server_handling_seconds_bucket", **UNARY, le="+Inf") == 4
    assert value(parsed, "grpc_server_handling_seconds_count", **UNARY) == 4
    assert value(parsed, "grpc_server_handling_seconds_bucket", **UNARY, le="10.0") == 4
    content_type, open_text = await asyncio.to_thread(scrape, f"{base}/metrics", OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    buckets = bucket_samples(open_text, "grpc_server_handling_seconds")
    assert [sample.labels["le"] for sample in buckets][:2] == ["0.0001", "0.00025"]
    assert buckets[-1].value == 4 and all(sample.exemplar is None for sample in buckets)

    assert await asyncio.to_thread(http_get, f"{base}/healthz") == (200, "ok\n")
    assert (await asyncio.to_thread(http_get, f"{base}/readyz"))[0] == 200
    server.signal()  # draining for GZ_SHUTDOWN_DRAIN: not ready any more, still alive

    async def not_ready() -> bool:
        return (await asyncio.to_thread(http_get, f"{base}/readyz"))[0] == 503

    await wait_until(not_ready, 5, "/readyz 503 while draining", poll=0.05)
    assert (await asyncio.to_thread(http_get, f"{base}/healthz"))[0] == 200
    assert await server.wait_exit() == 0


async def test_client_metrics_resolver_and_picks_in_this_process(server_process):
    server = server_process()
    await server.wait_serving()
    before = samples(generate_latest(REGISTRY).decode())
    target = f"direct:///{server.address}"
    async with gz.connect(target) as channel:
        for _ in range(5):
            await say_hello(channel)
    after = samples(generate_latest(REGISTRY).decode())

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("grpc_client_started_total", **UNARY) == 5
    assert grew("grpc_client_handled_total", **UNARY, grpc_code="OK") == 5
    assert grew("grpc_client_msg_sent_total", **UNARY) == 5
    assert grew("grpc_client_handling_seconds_count", **UNARY) == 5
    assert grew("gz_balancer_picks_total", endpoint=server.address) == 5
    assert value(after, "gz_resolver_endpoints", target=target) == 1
    assert grew("gz_resolver_updates_total", target=target) >= 1


class FailingResolver(Resolver):
    """Reports resolution errors and never an endpoint."""

    target = "test:///failing-resolver"

    def __init__(self, errors: int) -> None:
        self.errors = errors

    async def watch(self, listener: Listener) -> None:
        for _ in range(self.errors):
            listener.error(f"{self.target}: lookup failed")
        await asyncio.Event().wait()


async def test_resolver_errors_are_counted_per_target():
    def errors() -> float:
        parsed = samples(generate_latest(REGISTRY).decode())
        return value(parsed, "gz_resolver_errors_total", target=FailingResolver.target)

    before = errors()
    async with gz.connect(FailingResolver(errors=2)):  # resolving starts on entering
        await wait_until(lambda: errors() - before >= 2, 10, "two errors counted")
    assert errors() - before == 2


async def test_metrics_switched_off_counts_nothing(server_process):
    server = server_process()
    await server.wait_serving()
    before = samples(generate_latest(REGISTRY).decode())
    settings = gz.ClientSettings(metrics=False)
    async with gz.connect(f"direct:///{server.address}", settings=settings) as channel:
        await say_hello(channel)
    after = samples(generate_latest(REGISTRY).decode())
    assert value(after, "grpc_client_started_total", **UNARY) == value(
        before, "grpc_client_started_total", **UNARY
    )


async def test_gz_metrics_buckets_sets_the_bounds_and_a_bad_value_stops_start_up(server_process):
    port = free_port()
    server = server_process(GZ_METRICS_PORT=str(port), GZ_METRICS_BUCKETS="0.0002,0.002,0.02")
    await server.wait_serving()
    async with grpc.aio.insecure_channel(server.address) as channel:
        await say_hello(channel)
    _, text = await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")
    assert bounds(samples(text)) == [0.0002, 0.002, 0.02, float("inf")]

    bad = server_process(GZ_METRICS_BUCKETS="0.1,0.01")
    assert await bad.wait_exit() == 2
    assert bad.stderr().splitlines() == [
        "gz: bad GZ_METRICS_BUCKETS='0.1,0.01': the bounds must increase: expected increasing "
        "upper bounds in seconds, e.g. 0.0005,0.001,0.01,0.1,1"
    ]


EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()  # passed explicitly: the global provider stays unset
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))


class TracedGreeter(Greeter):
    """Tracing outside metrics, as in gz's default chain, with a provider of its own."""

    middleware = (Tracing(PROVIDER), Metrics(exemplars=True))


async def test_openmetrics_buckets_carry_the_trace_id_of_a_recent_call(serve_greeter):
    service = await serve_greeter(TracedGreeter, tracing=False, metrics=False, metrics_port=0)
    settings = gz.ClientSettings(tracing=False, metrics=False)
    middleware = [Tracing(PROVIDER), Metrics(exemplars=True)]
    EXPORTER.clear()
    async with gz.connect(f"direct:///{service.address}", settings=settings,
                          middleware=middleware) as channel:  # fmt: skip
        await say_hello(channel)
    spans = {span.kind: span for span in EXPORTER.get_finished_spans()}
    trace_id = format(spans[SpanKind.CLIENT].context.trace_id, "032x")
    assert format(spans[SpanKind.SERVER].context.trace_id, "032x") == trace_id

    url = f"http://127.0.0.1:{service.server.probes.port}/metrics"
    _, text = await asyncio.to_thread(scrape, url, OPENMETRICS)
    for side in ("server", "client"):
        linked = [
            sample.exemplar
            for sample in bucket_samples(text, f"grpc_{side}_handling_seconds")
            if sample.exemplar is not None
        ]
        assert trace_id in [exemplar.labels["trace_id"] for exemplar in linked], side
        assert all(0 < exemplar.value < 10 and exemplar.timestamp for exemplar in linked)
    _, classic = await asyncio.to_thread(scrape, url)
    assert "trace_id" not in classic
    assert value(samples(classic), "grpc_client_handling_seconds_count", **UNARY) >= 1


def client_only_process(port: int) -> subprocess.Popen[str]:
    """tests/client_only.py with GZ_METRICS_PORT=port on loopback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GZ_METRICS_PORT": str(port),
           "GZ_METRICS_HOST": "127.0.0.1"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "tests.client_only"],
        env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


async def tell(process: subprocess.Popen[str], command: str) -> str:
    """Send one command line; its answer line."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(command + "\n")
    process.stdin.flush()
    return (await asyncio.to_thread(process.stdout.readline)).strip()


async def test_a_process_that_only_calls_serves_its_metrics_on_gz_metrics_port(serve_greeter):
    service = await serve_greeter()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = client_only_process(port)
    try:
        assert await tell(process, f"call direct:///{service.address}") == "called"
        status, text = await asyncio.to_thread(http_get, f"{base}/metrics")
        assert status == 200
        assert value(samples(text), "grpc_client_started_total", **UNARY) == 1
        assert value(samples(text), "grpc_client_handling_seconds_count", **UNARY) == 1
        assert await asyncio.to_thread(http_get, f"{base}/healthz") == (200, "ok\n")
        assert await asyncio.to_thread(http_get, f"{base}/readyz") == (200, "ready\n")
        assert await tell(process, f"call direct:///{service.address}") == "called"  # no rebind
        process.stdin.close()  # exits with the HTTP side still serving: nothing holds it up
        assert await asyncio.to_thread(process.wait, 10) == 0
    finally:
        process.kill()


async def test_a_server_started_after_connect_takes_over_its_http_side(serve_greeter):
    service = await serve_greeter()
    port = free_port()
    process = client_only_process(port)
    try:
        assert await tell(process, f"call direct:///{service.address}") == "called"
        assert await tell(process, "serve") == f"serving {port}"  # the same port, not bound again
        _, text = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
        assert value(samples(text), "grpc_client_started_total", **UNARY) == 1
        assert (await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/readyz"))[0] == 200
        process.stdin.close()
        assert await asyncio.to_thread(process.wait, 10) == 0
    finally:
        process.kill()
