"""Spans as a tracing backend receives them: this test's client -> server A -> server B, all
three exporting with OpenTelemetry's own OTLP/gRPC exporter to a TraceService receiver here.

The receiver keeps what arrives as the protobuf messages of opentelemetry-proto, so the test reads
exactly what Jaeger, Tempo or an OpenTelemetry Collector would read.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.semconv._incubating.attributes.rpc_attributes import (
    RPC_GRPC_STATUS_CODE,
    RPC_METHOD,
    RPC_RESPONSE_STATUS_CODE,
    RPC_SERVICE,
    RPC_SYSTEM,
    RPC_SYSTEM_NAME,
    RpcSystemNameValues,
    RpcSystemValues,
)
from opentelemetry.semconv.attributes.network_attributes import (
    NETWORK_PEER_ADDRESS,
    NETWORK_PEER_PORT,
    NETWORK_TYPE,
    NetworkTypeValues,
)
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT

import gz
from gz.middleware.tracing import Tracing

from .support import ServerProcess, free_port, say_hello, wait_until

METHOD = "greeter.v1.Greeter/SayHello"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: (service.name, span) for every span exported to it."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, trace_pb2.Span]] = []
        self._lock = threading.Lock()

    def Export(self, request, context):
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    self.spans += [(resource["service.name"], s) for s in scope_spans.spans]
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: bytes) -> list[tuple[str, trace_pb2.Span]]:
        with self._lock:
            return [(service, span) for service, span in self.spans if span.trace_id == trace_id]


def attributes(pairs) -> dict[str, object]:
    """OTLP KeyValues as a dict of plain values."""
    found = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        found[pair.key] = getattr(pair.value, kind) if kind else None
    return found


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    # a thread-pool server: the test's own exporter blocks the event loop while it sends
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    spans = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(spans, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield spans, f"http://127.0.0.1:{port}"
    finally:
        server.stop(None)


@pytest.fixture(scope="module")
def relay(receiver) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Servers B and A (A forwards to B), exporting their spans to the receiver; B has opted in
    to the newer RPC attribute names."""
    _, endpoint = receiver
    otlp = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    b = ServerProcess("-m", "tests.middleware_relay", GZ_NAME="b", OTEL_SERVICE_NAME="b",
                      OTEL_SEMCONV_STABILITY_OPT_IN="rpc", **otlp)  # fmt: skip
    a = ServerProcess("-m", "tests.middleware_relay", GZ_NAME="a", OTEL_SERVICE_NAME="a",
                      GZ_TARGET_NEXT=f"direct:///{b.address}", **otlp)  # fmt: skip
    try:
        for server in (b, a):
            server.start()
            asyncio.run(server.wait_serving())
        yield a, b
    finally:
        for server in (a, b):
            server.kill()


async def test_one_trace_of_four_spans_reaches_the_backend(receiver, relay):
    spans, endpoint = receiver
    a, b = relay
    provider = TracerProvider(resource=Resource.create({"service.name": "client"}))
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = gz.ClientSettings(tracing=False)
    async with gz.connect(f"direct:///{a.address}", settings=settings,
                          middleware=[Tracing(provider)]) as channel:  # fmt: skip
        with provider.get_tracer("test").start_as_current_span("request") as root:
            await say_hello(channel, "otlp")
    provider.shutdown()
    trace_id = root.get_span_context().trace_id.to_bytes(16, "big")
    await wait_until(lambda: len(spans.of_trace(trace_id)) >= 5, 10, "5 spans received", poll=0.05)
    received = spans.of_trace(trace_id)
    assert len(received) == 5  # the test's own root span, and the four of the call

    def one(service: str, kind: int, parent: trace_pb2.Span) -> trace_pb2.Span:
        (span,) = [
            s for name, s in received
            if name == service and s.kind == kind and s.parent_span_id == parent.span_id
        ]  # fmt: skip
        assert span.name == METHOD
        return span

    (test_root,) = [s for name, s in received if name == "client" and s.name == "request"]
    client = one("client", trace_pb2.Span.SPAN_KIND_CLIENT, test_root)
    a_server = one("a", trace_pb2.Span.SPAN_KIND_SERVER, client)
    a_client = one("a", trace_pb2.Span.SPAN_KIND_CLIENT, a_server)
    b_server = one("b", trace_pb2.Span.SPAN_KIND_SERVER, a_client)
    check_client_span(attributes(client.attributes), a.port)
    check_client_span(attributes(a_client.attributes), b.port)
    check_server_span(attributes(a_server.attributes), new_names=False)
    check_server_span(attributes(b_server.attributes), new_names=True)


def check_client_span(found: dict[str, object], port: int) -> None:
    """A client span as the RPC conventions spell it (the default, pre-opt-in names)."""
    assert found[RPC_SYSTEM] == RpcSystemValues.GRPC.value
    assert (found[RPC_SERVICE], found[RPC_METHOD]) == ("greeter.v1.Greeter", "SayHello")
    assert found[RPC_GRPC_STATUS_CODE] == grpc.StatusCode.OK.value[0]
    assert (found[SERVER_ADDRESS], found[SERVER_PORT]) == ("127.0.0.1", port)
    assert (found[NETWORK_PEER_ADDRESS], found[NETWORK_PEER_PORT]) == ("127.0.0.1", port)
    assert found[NETWORK_TYPE] == NetworkTypeValues.IPV4.value


def check_server_span(found: dict[str, object], new_names: bool) -> None:
    if new_names:  # OTEL_SEMCONV_STABILITY_OPT_IN=rpc
        assert found[RPC_SYSTEM_NAME] == RpcSystemNameValues.GRPC.value
        assert found[RPC_METHOD] == METHOD
        assert found[RPC_RESPONSE_STATUS_CODE] == "OK"
        assert not {RPC_SYSTEM, RPC_SERVICE, RPC_GRPC_STATUS_CODE} & set(found)
    else:
        assert found[RPC_SYSTEM] == RpcSystemValues.GRPC.value
        assert (found[RPC_SERVICE], found[RPC_METHOD]) == ("greeter.v1.Greeter", "SayHello")
        assert found[RPC_GRPC_STATUS_CODE] == grpc.StatusCode.OK.value[0]
    assert found[NETWORK_PEER_ADDRESS] == "127.0.0.1"  # not grpc's "ipv4:127.0.0.1:port"
    assert isinstance(found[NETWORK_PEER_PORT], int) and found[NETWORK_PEER_PORT] > 0
    assert found[NETWORK_TYPE] == NetworkTypeValues.IPV4.value
