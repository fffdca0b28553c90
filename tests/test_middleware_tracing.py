"""Tracing in this process, for all four call kinds: client and server spans linked through the
traceparent metadata, and baggage carried along. Providers are passed explicitly, so the global
one stays unset for the other tests."""

from __future__ import annotations

import pytest
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import framework
from examples.greeter import greeter_pb2, greeter_pb2_grpc
from examples.greeter.server import Greeter
from framework.middleware.tracing import Tracing

from .support import start_greeter

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))


class TracedGreeter(Greeter):
    middleware = (Tracing(PROVIDER),)

    async def SayHello(self, request, context):
        # What the handler sees of the caller's baggage (propagated with the traceparent).
        return self.reply(str(baggage.get_baggage("tenant")))


@pytest.fixture
async def traced():
    service = await start_greeter(TracedGreeter, tracing=False)
    settings = framework.ClientSettings(tracing=False)
    channel = framework.connect(f"direct:///{service.address}", settings=settings,
                                middleware=[Tracing(PROVIDER)])  # fmt: skip
    EXPORTER.clear()
    yield greeter_pb2_grpc.GreeterStub(channel)
    await channel.close()
    await service.server.stop()


def requests():
    return iter([greeter_pb2.HelloRequest(name="a"), greeter_pb2.HelloRequest(name="b")])


async def test_every_call_kind_has_a_client_span_and_a_server_child(traced):
    await traced.SayHello(greeter_pb2.HelloRequest(name="x"))
    assert len([r async for r in traced.LotsOfReplies(greeter_pb2.HelloRequest(count=2))]) == 2
    await traced.LotsOfGreetings(requests())
    assert len([r async for r in traced.BidiHello(requests())]) == 2

    spans = EXPORTER.get_finished_spans()
    clients = {s.name: s for s in spans if s.kind is SpanKind.CLIENT}
    servers = {s.name: s for s in spans if s.kind is SpanKind.SERVER}
    names = {f"greeter.v1.Greeter/{m}" for m in
             ("SayHello", "LotsOfReplies", "LotsOfGreetings", "BidiHello")}  # fmt: skip
    assert set(clients) == set(servers) == names
    for name in names:
        client, server = clients[name], servers[name]
        assert server.parent.span_id == client.context.span_id
        assert server.context.trace_id == client.context.trace_id
        assert server.attributes["rpc.grpc.status_code"] == 0
        assert client.attributes["network.peer.address"].startswith("127.0.0.1:")


async def test_baggage_reaches_the_handler(traced):
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        reply = await traced.SayHello(greeter_pb2.HelloRequest(name="x"))
    finally:
        context.detach(token)
    assert reply.message == "acme"
