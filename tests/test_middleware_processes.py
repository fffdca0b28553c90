"""Tracing and deadlines across real processes: this test's client -> server A -> server B.

A and B are tests/middleware_relay.py processes that export their spans with OTEL's console
exporter to a file each; the client exports to memory. A forwards SayHello to B through a
connect() channel, with a default deadline (GZ_TIMEOUT) of its own of 5 s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import gz
from examples.greeter import greeter_pb2, greeter_pb2_grpc
from gz.middleware.tracing import Tracing

from .middleware_relay import SECRET
from .support import ServerProcess, say_hello, wait_until

METHOD = "greeter.v1.Greeter/SayHello"
OTEL = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50", "GZ_TIMEOUT": "5"}


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ...]]:
    """Servers B and A (A forwards to B), each writing its spans to .spans_path."""
    directory = tmp_path_factory.mktemp("spans")
    b = ServerProcess("-m", "tests.middleware_relay", GZ_NAME="b", OTEL_SERVICE_NAME="b", **OTEL)
    a = ServerProcess("-m", "tests.middleware_relay", GZ_NAME="a", OTEL_SERVICE_NAME="a",
                      GZ_TARGET_NEXT=f"direct:///{b.address}", **OTEL)  # fmt: skip
    for name, server in (("b", b), ("a", a)):
        server.spans_path = directory / f"{name}.json"
        server.stdout = server.spans_path.open("w")
        server.start()
    try:
        for server in (a, b):
            asyncio.run(server.wait_serving())
        yield a, b
    finally:
        for server in (a, b):
            server.kill()
            server.stdout.close()


def exported_spans(path: Path) -> list[dict]:
    """The spans the console exporter wrote: indented JSON objects one after another."""
    text, spans, decoder, index = path.read_text(), [], json.JSONDecoder(), 0
    while (index := _skip_space(text, index)) < len(text):
        span, index = decoder.raw_decode(text, index)
        spans.append(span)
    return spans


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


async def trace_of(servers: tuple[ServerProcess, ...], trace_id: int, count: int) -> list[dict]:
    """The ``count`` spans of a trace that the servers exported (they export every 50 ms)."""
    wanted = f"0x{trace_id:032x}"

    def spans() -> list[dict]:
        return [
            {**span, "service": server.env["GZ_NAME"]}
            for server in servers
            for span in exported_spans(server.spans_path)
            if span["context"]["trace_id"] == wanted
        ]

    await wait_until(lambda: len(spans()) >= count, 10, f"{count} spans exported", poll=0.05)
    return spans()


def children(spans: list[dict], parent_span_id: str, service: str, kind: str) -> list[dict]:
    return [
        s for s in spans
        if s["parent_id"] == parent_span_id and s["service"] == service and s["kind"] == kind
    ]  # fmt: skip


@pytest.fixture
def traced_client(relay):
    """A connect() channel to A whose spans go to memory, and the exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    a, _ = relay
    channel = gz.connect(
        f"direct:///{a.address}",
        settings=gz.ClientSettings(tracing=False),
        middleware=[Tracing(provider)],
    )
    return channel, exporter


async def one_call(channel, exporter, name: str) -> tuple[object, grpc.StatusCode]:
    """Call A; the client span of the call and the status code."""
    exporter.clear()
    try:
        await say_hello(channel, name)
        code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as error:
        code = error.code()
    (span,) = exporter.get_finished_spans()
    return span, code


async def test_one_trace_spans_client_a_and_b_with_parent_links(relay, traced_client):
    channel, exporter = traced_client
    async with channel:
        client_span, code = await one_call(channel, exporter, "hi")
    assert code is grpc.StatusCode.OK
    assert (client_span.name, client_span.kind) == (METHOD, SpanKind.CLIENT)
    assert client_span.attributes["rpc.system"] == "grpc"
    assert client_span.attributes["rpc.grpc.status_code"] == 0
    assert client_span.status.status_code is StatusCode.UNSET

    spans = await trace_of(relay, client_span.context.trace_id, 3)
    (a_server,) = children(spans, f"0x{client_span.context.span_id:016x}", "a", "SpanKind.SERVER")
    (a_client,) = children(spans, a_server["context"]["span_id"], "a", "SpanKind.CLIENT")
    (b_server,) = children(spans, a_client["context"]["span_id"], "b", "SpanKind.SERVER")
    for span in (a_server, a_client, b_server):
        assert span["name"] == METHOD
        assert span["attributes"]["rpc.service"] == "greeter.v1.Greeter"
        assert span["attributes"]["rpc.method"] == "SayHello"
        assert span["attributes"]["rpc.grpc.status_code"] == 0
        assert span["status"]["status_code"] == "UNSET"
    assert a_server["resource"]["attributes"]["service.name"] == "a"


async def test_a_failed_call_is_an_error_at_every_hop(relay, traced_client):
    channel, exporter = traced_client
    async with channel:
        client_span, code = await one_call(channel, exporter, "raise")
    assert code is grpc.StatusCode.INTERNAL
    assert client_span.status.status_code is StatusCode.ERROR
    assert client_span.attributes["rpc.grpc.status_code"] == code.value[0]

    spans = await trace_of(relay, client_span.context.trace_id, 3)
    (a_server,) = children(spans, f"0x{client_span.context.span_id:016x}", "a", "SpanKind.SERVER")
    (a_client,) = children(spans, a_server["context"]["span_id"], "a", "SpanKind.CLIENT")
    (b_server,) = children(spans, a_client["context"]["span_id"], "b", "SpanKind.SERVER")
    for span in (a_server, a_client, b_server):
        assert span["status"]["status_code"] == "ERROR"
        assert span["attributes"]["rpc.grpc.status_code"] == code.value[0]
    # B recorded its handler's exception with the error id; A's client saw only INTERNAL.
    assert b_server["attributes"]["gz.error_id"]
    (event,) = b_server["events"]
    assert event["attributes"]["exception.message"] == SECRET


async def test_a_retried_call_has_one_span_per_attempt(relay, traced_client):
    channel, exporter = traced_client
    async with channel:
        client_span, code = await one_call(channel, exporter, "flaky-trace")
    assert code is grpc.StatusCode.OK

    spans = await trace_of(relay, client_span.context.trace_id, 5)
    (a_server,) = children(spans, f"0x{client_span.context.span_id:016x}", "a", "SpanKind.SERVER")
    attempts = children(spans, a_server["context"]["span_id"], "a", "SpanKind.CLIENT")
    attempts.sort(key=lambda span: span["start_time"])
    assert [s["attributes"]["rpc.grpc.status_code"] for s in attempts] == [14, 0]  # UNAVAILABLE
    assert [s["attributes"]["gz.attempt"] for s in attempts] == [1, 2]
    assert [s["status"]["status_code"] for s in attempts] == ["ERROR", "UNSET"]
    for attempt, code in zip(attempts, (14, 0), strict=True):
        (b_server,) = children(spans, attempt["context"]["span_id"], "b", "SpanKind.SERVER")
        assert b_server["attributes"]["rpc.grpc.status_code"] == code
    assert a_server["status"]["status_code"] == "UNSET"


async def test_the_deadline_follows_the_call_from_a_to_b(relay):
    a, _ = relay
    async with gz.connect(f"direct:///{a.address}") as channel:
        await say_hello(channel, "warm-up")
        reply = await greeter_pb2_grpc.GreeterStub(channel).SayHello(
            greeter_pb2.HelloRequest(name="remaining"), timeout=0.2
        )
    remaining = float(reply.message)
    # B sees what is left of the client's 200 ms (grpc-timeout rounds up a little), not the
    # 5 s of A's own GZ_TIMEOUT.
    assert 0.1 < remaining < 0.21
