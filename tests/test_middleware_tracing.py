"""Tracing in this process, for all four call kinds: client and server spans linked through the
traceparent metadata, baggage carried along, the trace id in the call log, and server streams the
client cancels. Providers are passed explicitly, so the global one stays unset for the other
tests."""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys

import grpc
import pytest
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import rpc_attributes as rpc
from opentelemetry.semconv.attributes import error_attributes as err
from opentelemetry.semconv.attributes import network_attributes as net
from opentelemetry.semconv.attributes import server_attributes as srv
from opentelemetry.trace import SpanKind

import gz
from examples.greeter import greeter_pb2, greeter_pb2_grpc
from examples.greeter.server import Greeter
from gz.logs import TraceIds
from gz.middleware import CallContext, CallObserver, Kind, Method, compose
from gz.middleware.calllog import CallLog
from gz.middleware.spanattributes import endpoint_peer, grpc_peer
from gz.middleware.tracing import Tracing, untraced

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
        assert server.attributes[rpc.RPC_GRPC_STATUS_CODE] == 0
        assert client.attributes[net.NETWORK_PEER_ADDRESS] == "127.0.0.1"


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


def capture_call_log(caplog: pytest.LogCaptureFixture) -> None:
    """Capture gz.call's lines with the ids gz's own log handler gives them."""
    caplog.set_level(logging.INFO, logger="gz.call")
    caplog.handler.addFilter(TraceIds())


async def test_call_log_lines_carry_the_trace_id_of_the_calls_spans(traced, caplog):
    """The client span is never current, so the client line takes the trace id from the span the
    tracing middleware left in the call's state; here tracing is inside the call log on the server
    too (a service's own middleware), so its span is no longer current when the line is written."""
    capture_call_log(caplog)
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
    assert lines["client"].span_id == format(client.context.span_id, "016x")
    assert lines["server"].span_id == format(server.context.span_id, "016x")


async def test_without_a_span_of_its_own_the_call_log_names_the_current_trace(caplog):
    """Spans made by other instrumentation than gz's tracing: the current one names the trace."""
    capture_call_log(caplog)
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
    capture_call_log(caplog)
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
    assert span.attributes[rpc.RPC_GRPC_STATUS_CODE] == grpc.StatusCode.CANCELLED.value[0]
    assert span.attributes[net.NETWORK_PEER_ADDRESS] == "127.0.0.1"
    if call_log:
        line = call_log_lines(caplog)["server"]
        assert (line.code, line.trace_id) == ("CANCELLED", trace_id(span))
        assert line.peer == f"ipv4:127.0.0.1:{span.attributes[net.NETWORK_PEER_PORT]}"


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


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


async def test_spans_carry_the_rpc_conventions_attributes_and_no_others(serve_greeter):
    """Every attribute of both spans, named by the semantic conventions package: the client's
    server is the target's host and port, its peer the endpoint; the server's peer is the
    client's address and port, parsed from grpc's ipv4:127.0.0.1:port."""
    service = await serve_greeter(TracedGreeter, tracing=False)
    channel = traced_channel(service)
    EXPORTER.clear()
    try:
        stub = greeter_pb2_grpc.GreeterStub(channel)
        await stub.SayHello(greeter_pb2.HelloRequest(name="x"))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.SayHello(greeter_pb2.HelloRequest(name="missing"))
    finally:
        await channel.close()
    spans = EXPORTER.get_finished_spans()
    (ok_client, failed_client) = [s for s in spans if s.kind is SpanKind.CLIENT]
    (ok_server, failed_server) = [s for s in spans if s.kind is SpanKind.SERVER]
    port = port_of(service.address)
    common = {
        rpc.RPC_SYSTEM: rpc.RpcSystemValues.GRPC.value,
        rpc.RPC_SERVICE: "greeter.v1.Greeter",
        rpc.RPC_METHOD: "SayHello",
        net.NETWORK_PEER_ADDRESS: "127.0.0.1",
        net.NETWORK_TRANSPORT: net.NetworkTransportValues.TCP.value,
        net.NETWORK_TYPE: net.NetworkTypeValues.IPV4.value,
    }
    client = {
        **common,
        srv.SERVER_ADDRESS: "127.0.0.1",
        srv.SERVER_PORT: port,
        net.NETWORK_PEER_PORT: port,
        "gz.attempt": 1,
    }
    assert dict(ok_client.attributes) == {**client, rpc.RPC_GRPC_STATUS_CODE: 0}
    assert dict(failed_client.attributes) == {
        **client, rpc.RPC_GRPC_STATUS_CODE: 5, err.ERROR_TYPE: "NOT_FOUND",
    }  # fmt: skip
    client_port = ok_server.attributes[net.NETWORK_PEER_PORT]
    assert isinstance(client_port, int) and client_port not in (0, port)
    server = {**common, net.NETWORK_PEER_PORT: client_port}
    assert dict(ok_server.attributes) == {**server, rpc.RPC_GRPC_STATUS_CODE: 0}
    # NOT_FOUND is the caller's doing: no error on the server span, so no error.type
    assert dict(failed_server.attributes) == {**server, rpc.RPC_GRPC_STATUS_CODE: 5}


async def test_a_target_of_several_endpoints_names_the_endpoint_as_the_server(serve_greeter):
    service = await serve_greeter(Greeter, tracing=False)
    address = service.address
    settings = gz.ClientSettings(tracing=False)
    channel = gz.connect(f"direct:///{address},{address}", settings=settings,
                         middleware=[Tracing(PROVIDER)])  # fmt: skip
    EXPORTER.clear()
    try:
        await greeter_pb2_grpc.GreeterStub(channel).SayHello(greeter_pb2.HelloRequest(name="x"))
    finally:
        await channel.close()
    (span,) = EXPORTER.get_finished_spans()
    assert span.attributes[srv.SERVER_ADDRESS] == span.attributes[net.NETWORK_PEER_ADDRESS]
    assert span.attributes[srv.SERVER_PORT] == span.attributes[net.NETWORK_PEER_PORT]
    assert span.attributes[srv.SERVER_PORT] == port_of(address)


@pytest.mark.parametrize(
    ("peer", "address", "port", "network_type"),
    [
        ("ipv4:10.0.0.9:51234", "10.0.0.9", 51234, "ipv4"),
        ("ipv6:[::1]:51234", "::1", 51234, "ipv6"),
        ("ipv6:[fe80::1%eth0]:7", "fe80::1%eth0", 7, "ipv6"),
    ],
)
def test_grpc_peers_become_address_port_and_type(peer, address, port, network_type):
    assert grpc_peer(peer) == {
        net.NETWORK_PEER_ADDRESS: address,
        net.NETWORK_PEER_PORT: port,
        net.NETWORK_TYPE: network_type,
        net.NETWORK_TRANSPORT: net.NetworkTransportValues.TCP.value,
    }


def test_a_unix_socket_peer_is_its_path():
    assert grpc_peer("unix:/run/app.sock") == {
        net.NETWORK_PEER_ADDRESS: "/run/app.sock",
        net.NETWORK_TRANSPORT: net.NetworkTransportValues.UNIX.value,
    }


def test_endpoint_peers():
    assert endpoint_peer("[::1]:8080", False)[net.NETWORK_PEER_ADDRESS] == "::1"
    assert endpoint_peer("[::1]:8080", False)[net.NETWORK_TYPE] == "ipv6"
    named = endpoint_peer("greeter-0.greeter:8080", True)
    assert net.NETWORK_TYPE not in named  # a host name: no address family to tell
    assert (named[srv.SERVER_ADDRESS], named[srv.SERVER_PORT]) == ("greeter-0.greeter", 8080)


async def test_untraced_calls_make_no_client_spans(traced):
    with untraced():
        await traced.SayHello(greeter_pb2.HelloRequest(name="x"))
        assert len([r async for r in traced.BidiHello(requests())]) == 2
    await wait_until(lambda: len(EXPORTER.get_finished_spans()) == 2, 10, "the server spans")
    spans = EXPORTER.get_finished_spans()
    assert {s.kind for s in spans} == {SpanKind.SERVER}
    assert all(s.parent is None for s in spans)  # no traceparent went out


@pytest.mark.parametrize(
    ("opt_in", "expected"),
    [
        ("", {rpc.RPC_SYSTEM: "grpc", rpc.RPC_SERVICE: "greeter.v1.Greeter",
              rpc.RPC_METHOD: "SayHello", rpc.RPC_GRPC_STATUS_CODE: 5}),
        ("http, rpc", {rpc.RPC_SYSTEM_NAME: "grpc", rpc.RPC_METHOD: "greeter.v1.Greeter/SayHello",
                       rpc.RPC_RESPONSE_STATUS_CODE: "NOT_FOUND"}),
        ("rpc/dup", {rpc.RPC_SYSTEM: "grpc", rpc.RPC_SERVICE: "greeter.v1.Greeter",
                     rpc.RPC_SYSTEM_NAME: "grpc", rpc.RPC_METHOD: "greeter.v1.Greeter/SayHello",
                     rpc.RPC_GRPC_STATUS_CODE: 5, rpc.RPC_RESPONSE_STATUS_CODE: "NOT_FOUND"}),
    ],
)  # fmt: skip
def test_the_rpc_names_follow_the_conventions_opt_in(opt_in, expected):
    """OTEL_SEMCONV_STABILITY_OPT_IN is read once per process: each case in a process of its own."""
    code = (
        "import grpc, json\n"
        "from gz.middleware import Kind, Method\n"
        "from gz.middleware.spanattributes import method_attributes, status_attributes\n"
        "method = Method('/greeter.v1.Greeter/SayHello', Kind.UNARY_UNARY, 'server')\n"
        "found = {**method_attributes(method),\n"
        "         **status_attributes(set())[grpc.StatusCode.NOT_FOUND]}\n"
        "print(json.dumps(found))\n"
    )
    environment = {**os.environ, "OTEL_SEMCONV_STABILITY_OPT_IN": opt_in}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environment, check=True)  # fmt: skip
    assert json.loads(done.stdout) == expected
