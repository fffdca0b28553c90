"""Tracing in this process, for all four call kinds: client and server spans linked through the
traceparent metadata, baggage carried along, the trace id in the call log, and server streams the
client cancels. Providers are passed explicitly, so the global one stays unset for the other
tests."""

from __future__ import annotations

import gc
import logging

import grpc
import pytest
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import gz
from examples.greeter import greeter_pb2, greeter_pb2_grpc
from examples.greeter.server import Greeter
from gz.middleware import CallContext, CallObserver, Kind, Method, compose
from gz.middleware.calllog import CallLog
from gz.middleware.tracing import Tracing

from .support import start_greeter, wait_until

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))


class TracedGreeter(Greeter):
    middleware = (Tracing(PROVIDER),)

    async def SayHello(self, request, context):
        if request.name == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such name")
        # What the handler sees of the caller's baggage (propagated with the traceparent).
        return self.reply(str(baggage.get_baggage("tenant")))


def traced_channel(service: Greeter) -> gz.BalancedChannel:
    """A channel to service whose client spans go to EXPORTER (gz's own tracing off)."""
    settings = gz.ClientSettings(tracing=False)
    return gz.connect(f"direct:///{service.address}", settings=settings,
                             middleware=[Tracing(PROVIDER)])  # fmt: skip


@pytest.fixture
async def traced(serve_greeter):
    channel = traced_channel(await serve_greeter(TracedGreeter, tracing=False))
    EXPORTER.clear()
    yield greeter_pb2_grpc.GreeterStub(channel)
    await channel.close()


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


def trace_id(span) -> str:
    return format(span.context.trace_id, "032x")


def call_log_lines(caplog: pytest.LogCaptureFixture) -> dict[str, logging.LogRecord]:
    return {r.side: r for r in caplog.records if r.name == "gz.call"}


async def test_call_log_lines_carry_the_trace_id_of_the_calls_spans(traced, caplog):
    """The client span is never current, so the client line takes the trace id from the span the
    tracing middleware left in the call's state; here tracing is inside the call log on the server
    too (a service's own middleware), so its span is no longer current when the line is written."""
    caplog.set_level(logging.INFO, logger="gz.call")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await traced.SayHello(greeter_pb2.HelloRequest(name="missing"))
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND

    def spans() -> dict[SpanKind, object]:
        return {s.kind: s for s in EXPORTER.get_finished_spans()}

    # The client's line is written from the call's done-callback, the server's after its status.
    await wait_until(lambda: len(call_log_lines(caplog)) == len(spans()) == 2, 10, "both lines")
    lines, by_kind = call_log_lines(caplog), spans()
    client, server = by_kind[SpanKind.CLIENT], by_kind[SpanKind.SERVER]
    assert (lines["client"].code, lines["server"].code) == ("NOT_FOUND", "NOT_FOUND")
    assert getattr(lines["client"], "trace_id", None) == trace_id(client)
    assert getattr(lines["server"], "trace_id", None) == trace_id(server) == trace_id(client)


async def test_without_a_span_of_its_own_the_call_log_names_the_current_trace(caplog):
    """Spans made by other instrumentation than gz's tracing: the current one names the trace."""
    caplog.set_level(logging.INFO, logger="gz.call")
    method = Method("/pkg.S/M", Kind.UNARY_UNARY, "server")

    async def endpoint(ctx: CallContext, request: object) -> None:
        return None

    handler = compose([CallLog(slow=0)], method, endpoint)  # every call is slow: logged
    with PROVIDER.get_tracer("test").start_as_current_span("outside") as span:
        await handler(CallContext(method, []), None)
    (line,) = [r for r in caplog.records if r.name == "gz.call"]
    assert line.trace_id == format(span.get_span_context().trace_id, "032x")


@pytest.mark.parametrize("call_log", [True, False])
async def test_a_server_stream_the_client_cancels_ends_its_span_cleanly(call_log, caplog):
    """A stream cancelled while grpc waits to send a response is left suspended by grpc and
    closed later by the event loop, in a task of its own, after grpc released the call. Its span
    must end there without an OpenTelemetry context to detach (which fails in another context:
    "Failed to detach context") and without asking grpc for the peer (which crashes then)."""
    caplog.set_level(logging.INFO, logger="gz.call")
    service = await start_greeter(TracedGreeter, tracing=False, call_log=call_log)
    channel = traced_channel(service)
    EXPORTER.clear()

    def server_spans() -> list:
        gc.collect()  # the dropped stream is closed once it is collected
        return [s for s in EXPORTER.get_finished_spans() if s.kind is SpanKind.SERVER]

    def ended() -> bool:
        return bool(server_spans()) and (not call_log or "server" in call_log_lines(caplog))

    try:
        # No delay: the handler never awaits, so the stream is always waiting at a yield.
        call = greeter_pb2_grpc.GreeterStub(channel).LotsOfReplies(
            greeter_pb2.HelloRequest(name="x", count=1_000_000)
        )
        received = 0
        async for _ in call:
            received += 1
            if received == 3:
                break
        call.cancel()
        await wait_until(ended, 10, "the server span (and call log line) ended")
    finally:
        await channel.close()
        await service.server.stop()
    assert "Failed to detach" not in caplog.text
    (span,) = server_spans()
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert span.attributes["network.peer.address"].startswith("ipv4:127.0.0.1:")
    if call_log:
        line = call_log_lines(caplog)["server"]
        assert (line.code, line.trace_id) == ("CANCELLED", trace_id(span))
        assert line.peer == span.attributes["network.peer.address"]


class PeerAtEnd(CallObserver):
    """A user's observer that asks for the peer when the call ends, as a log line would."""

    def __init__(self) -> None:
        self.peers: list[str | None] = []

    def end(self, ctx: CallContext, token: object, error: BaseException | None) -> None:
        self.peers.append(ctx.peer)


async def test_a_users_observer_may_read_the_peer_when_a_cancelled_stream_ends(serve_greeter):
    """The peer of a server stream is read while its call is alive: asked for after grpc freed
    the call (a cancelled stream closed later by the event loop) it would crash the process."""
    observer = PeerAtEnd()

    class Observed(Greeter):
        middleware = (observer,)

    service = await serve_greeter(Observed, tracing=False, call_log=False)
    async with grpc.aio.insecure_channel(service.address) as channel:
        call = greeter_pb2_grpc.GreeterStub(channel).LotsOfReplies(
            greeter_pb2.HelloRequest(name="x", count=1_000_000)
        )
        async for _ in call:
            break
        call.cancel()

        def ended() -> bool:
            gc.collect()  # the dropped stream is closed once it is collected
            return bool(observer.peers)

        await wait_until(ended, 10, "the stream ended")
    (peer,) = observer.peers
    assert peer is not None and peer.startswith("ipv4:127.0.0.1:")
