"""What connect() returns is a grpc.aio.Channel: generated stubs make all four call kinds through
it exactly as through a raw grpc.aio channel, call objects answer the same questions, and client
middleware and grpc interceptors run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import grpc
import pytest

import gz
from examples.greeter import greeter_pb2, greeter_pb2_grpc
from examples.greeter.server import Greeter
from gz.balancing.calls import ChainedCall
from gz.middleware import CallContext, Method

from .support import all_ready, direct, say_hello, wait_not_serving

Request = greeter_pb2.HelloRequest
UNKNOWN_METHOD = "/greeter.v1.Greeter/NoSuchMethod"


class EchoMetadata(gz.Middleware):
    """Server side: marks the initial metadata and sends the caller's ``x-`` metadata back as
    trailing metadata, so a test can see what the client sent."""

    async def unary(self, ctx: CallContext, request, call_next):
        await self._echo(ctx)
        return await call_next(ctx, request)

    async def stream(self, ctx: CallContext, request, call_next) -> AsyncIterator:
        await self._echo(ctx)
        async for response in call_next(ctx, request):
            yield response

    @staticmethod
    async def _echo(ctx: CallContext) -> None:
        assert ctx.servicer_context is not None
        await ctx.servicer_context.send_initial_metadata((("x-greeter", "echo"),))
        sent = tuple((key, value) for key, value in ctx.metadata if key.startswith("x-"))
        ctx.servicer_context.set_trailing_metadata(sent)


class EchoGreeter(Greeter):
    middleware = (EchoMetadata(),)


@pytest.fixture
async def server(serve_greeter) -> Greeter:
    return await serve_greeter(EchoGreeter)


@pytest.fixture(params=["raw", "connect", "connect-ready"])
async def channel(request: pytest.FixtureRequest, server: Greeter) -> AsyncIterator:
    """The same server through a plain grpc.aio channel and through gz.connect(): fresh
    (the first call waits for resolution on the chained path) or ready (the hot path)."""
    if request.param == "raw":
        made = grpc.aio.insecure_channel(server.address)
    else:
        made = gz.connect(f"direct:///{server.address}")
    async with made:
        if request.param == "connect-ready":
            await made.channel_ready()
        yield made


def stub(channel: grpc.aio.Channel) -> greeter_pb2_grpc.GreeterStub:
    return greeter_pb2_grpc.GreeterStub(channel)


async def requests(*names: str) -> AsyncIterator[greeter_pb2.HelloRequest]:
    for name in names:
        yield Request(name=name)


def as_pairs(metadata: Iterable[tuple[str, str | bytes]]) -> set[tuple[str, str | bytes]]:
    return {(key, value) for key, value in metadata}


# -- the four call kinds, through connect() and through grpc.aio -------------------------------
async def test_unary(channel, server):
    reply = await stub(channel).SayHello(Request(name="unary"))
    assert (reply.message, reply.served_by) == ("Hello, unary!", server.address)


async def test_server_streaming(channel):
    call = stub(channel).LotsOfReplies(Request(name="s", count=4))
    replies = [reply.message async for reply in call]
    assert replies == [f"Hello, s! ({i}/4)" for i in range(1, 5)]
    call = stub(channel).LotsOfReplies(Request(name="r", count=2))
    assert (await call.read()).message == "Hello, r! (1/2)"
    assert (await call.read()).message == "Hello, r! (2/2)"
    assert await call.read() is grpc.aio.EOF


async def test_client_streaming_with_an_iterator(channel):
    reply = await stub(channel).LotsOfGreetings(requests("a", "b", "c"))
    assert reply.message == "Hello, a, b, c!"


async def test_client_streaming_with_write_and_done_writing(channel):
    call = stub(channel).LotsOfGreetings()
    for name in ("x", "y"):
        await call.write(Request(name=name))
    await call.done_writing()
    assert (await call).message == "Hello, x, y!"


async def test_bidi_streaming_with_an_iterator(channel):
    replies = [reply.message async for reply in stub(channel).BidiHello(requests("a", "b"))]
    assert replies == ["Hello, a!", "Hello, b!"]


async def test_bidi_streaming_with_write_and_read(channel):
    call = stub(channel).BidiHello()
    for name in ("p", "q"):
        await call.write(Request(name=name))
        assert (await call.read()).message == f"Hello, {name}!"
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_status_and_metadata_of_a_call(channel):
    call = stub(channel).SayHello(Request(name="m"), metadata=(("x-request-id", "42"),))
    assert (await call).message == "Hello, m!"
    assert await call.code() == grpc.StatusCode.OK
    assert await call.details() == ""
    assert ("x-greeter", "echo") in as_pairs(await call.initial_metadata())
    assert ("x-request-id", "42") in as_pairs(await call.trailing_metadata())
    assert call.done()


async def fails_unimplemented(channel: grpc.aio.Channel) -> grpc.aio.Call:
    """Calls a method the server lacks; the call's status matches the error it raised."""
    call = channel.unary_unary(UNKNOWN_METHOD)(b"")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert await call.code() == grpc.StatusCode.UNIMPLEMENTED
    assert await call.details() == raised.value.details()
    return call


async def test_a_failed_call_reports_its_status(channel):
    await fails_unimplemented(channel)


async def test_a_deadline_is_kept(channel):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub(channel).SayHello(Request(name="slow", delay_seconds=2), timeout=0.2)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_cancelled_call_says_so(channel):
    replies = stub(channel).LotsOfReplies(Request(name="c", count=5, delay_seconds=0.05))
    assert (await replies.read()).message == "Hello, c! (1/5)"
    assert replies.cancel()
    assert replies.cancelled() and replies.done()
    assert await replies.code() == grpc.StatusCode.CANCELLED
    slow = stub(channel).SayHello(Request(name="c", delay_seconds=2))
    await asyncio.sleep(0.05)
    assert slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert await slow.code() == grpc.StatusCode.CANCELLED


async def test_states_from_idle_to_shutdown(server):
    for channel in (
        gz.connect(f"direct:///{server.address}"),
        grpc.aio.insecure_channel(server.address),
    ):
        assert channel.get_state() == grpc.ChannelConnectivity.IDLE
        await asyncio.wait_for(channel.channel_ready(), 5)
        assert channel.get_state() == grpc.ChannelConnectivity.READY
        await channel.close()
        assert channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN
        with pytest.raises(grpc.aio.UsageError):
            await stub(channel).SayHello(Request(name="late"))


@pytest.mark.parametrize("defaults", [True, False], ids=["default-middleware", "none"])
async def test_calls_take_the_hot_path_once_resolved(server, defaults: bool):
    # The default client middleware (metrics, call log, deadline) only observes calls, so unary
    # calls keep the hot path with it too.
    settings = gz.ClientSettings(
        tracing=defaults, metrics=defaults, call_log=defaults, deadline=defaults
    )
    target = f"direct:///{server.address}"
    async with gz.connect(target, settings=settings, retry=False) as channel:
        first = stub(channel).SayHello(Request(name="first"))
        assert isinstance(first, ChainedCall)  # nothing resolved yet: it waits in the chain
        await first
        hot = stub(channel).SayHello(Request(name="hot"))
        assert not isinstance(hot, ChainedCall)  # grpc's own call object, returned as it is
        assert isinstance(hot, grpc.aio.UnaryUnaryCall)
        await hot


async def test_async_with_closes_the_channel(server):
    async with gz.connect(f"direct:///{server.address}") as channel:
        assert isinstance(channel, grpc.aio.Channel)
        await stub(channel).SayHello(Request(name="in"))
    assert channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN


async def test_stubs_made_per_call_share_one_multi_callable(server):
    """A stub per call (a common pattern) costs no per-stub setup and leaks nothing: the channel
    hands every stub the same multi-callable, which keeps one grpc callable per subchannel."""
    async with gz.connect(f"direct:///{server.address}") as channel:
        for _ in range(200):
            await stub(channel).SayHello(Request(name="again"))
        assert stub(channel).SayHello is stub(channel).SayHello
        assert stub(channel).SayHello is not stub(channel).LotsOfReplies
        (subchannel,) = channel._pool.subchannels.values()
        assert len(subchannel.callables) == 1


async def test_channel_ready_gives_up_when_the_channel_closes():
    channel = gz.connect(gz.ManualResolver([], target="test:///never"))
    waiting = asyncio.ensure_future(channel.channel_ready())
    await asyncio.sleep(0.1)
    await channel.close()
    with pytest.raises(grpc.aio.UsageError, match="test:///never"):
        await asyncio.wait_for(waiting, 5)


# -- what only a balanced channel can do --------------------------------------------------------
async def test_no_endpoints_fails_fast_naming_the_target():
    resolver = gz.ManualResolver([], target="test:///nobody")
    async with gz.connect(resolver) as channel:
        call = stub(channel).SayHello(Request(name="lost"), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        # UNAVAILABLE at once, not DEADLINE_EXCEEDED after the 30 s timeout
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "test:///nobody" in raised.value.details()
        assert await call.code() == grpc.StatusCode.UNAVAILABLE
        assert "test:///nobody" in await call.details()


class BrokenResolver(gz.Resolver):
    """Dies before it resolves anything, the way a resolver's own bug would kill it."""

    def __init__(self, death: BaseException) -> None:
        self.target = "test:///broken"
        self.death = death

    async def watch(self, listener) -> None:
        await asyncio.sleep(0)
        raise self.death


@pytest.mark.parametrize(
    "death", [RuntimeError("boom"), asyncio.CancelledError()], ids=["error", "stray-cancel"]
)
async def test_a_resolver_that_dies_fails_calls_fast_instead_of_hanging(death):
    async with gz.connect(BrokenResolver(death)) as channel:
        call = stub(channel).SayHello(Request(name="orphan"), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await asyncio.wait_for(call, 5)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "test:///broken: the resolver stopped" in raised.value.details()


async def test_wait_for_ready_waits_for_an_endpoint(server):
    resolver = gz.ManualResolver([], target="test:///later")
    async with gz.connect(resolver) as channel:
        call = stub(channel).SayHello(Request(name="patient"), timeout=30, wait_for_ready=True)
        waiting = asyncio.ensure_future(call)
        await asyncio.sleep(0.3)
        assert not waiting.done()
        resolver.set_endpoints([server.address])
        assert (await waiting).served_by == server.address


@pytest.mark.parametrize("target", ["direct:///nowhere", "tcp://10.0.0.7:8080", "direct:///"])
def test_a_malformed_target_raises_value_error(target):
    with pytest.raises(ValueError, match="expected"):
        gz.connect(target)


class Stamp(gz.Middleware):
    """A client middleware: records the calls it sees and adds metadata to each."""

    def __init__(self, only: str | None = None) -> None:
        self.only = only
        self.seen: list[tuple[str, str, str]] = []

    def applies_to(self, method: Method) -> bool:
        return self.only is None or method.name == self.only

    async def unary(self, ctx: CallContext, request, call_next):
        self._stamp(ctx, "unary")
        return await call_next(ctx, request)

    async def stream(self, ctx: CallContext, request, call_next) -> AsyncIterator:
        self._stamp(ctx, "stream")
        async for response in call_next(ctx, request):
            yield response

    def _stamp(self, ctx: CallContext, hook: str) -> None:
        self.seen.append((ctx.method.name, hook, ctx.method.side))
        ctx.metadata.append(("x-stamp", hook))


async def test_client_middleware_sees_every_call_kind_and_adds_metadata(server):
    stamp = Stamp()
    async with gz.connect(f"direct:///{server.address}", middleware=[stamp]) as channel:
        greeter = stub(channel)
        call = greeter.SayHello(Request(name="u"), metadata=(("x-request-id", "7"),))
        assert (await call).served_by == server.address
        assert await call.code() == grpc.StatusCode.OK
        assert await call.details() == ""
        assert ("x-greeter", "echo") in as_pairs(await call.initial_metadata())
        assert {("x-stamp", "unary"), ("x-request-id", "7")} <= as_pairs(
            await call.trailing_metadata()
        )

        replies = greeter.LotsOfReplies(Request(name="s", count=2))
        assert len([reply async for reply in replies]) == 2
        assert ("x-stamp", "stream") in as_pairs(await replies.trailing_metadata())

        writer = greeter.LotsOfGreetings()
        await writer.write(Request(name="w"))
        await writer.done_writing()
        assert (await writer).message == "Hello, w!"
        assert (await greeter.LotsOfGreetings(requests("a", "b"))).message == "Hello, a, b!"

        bidi = greeter.BidiHello(requests("b"))
        assert [reply.message async for reply in bidi] == ["Hello, b!"]
        assert ("x-stamp", "stream") in as_pairs(await bidi.trailing_metadata())
    assert stamp.seen == [
        ("SayHello", "unary", "client"),
        ("LotsOfReplies", "stream", "client"),
        ("LotsOfGreetings", "unary", "client"),
        ("LotsOfGreetings", "unary", "client"),
        ("BidiHello", "stream", "client"),
    ]


async def test_a_failed_call_through_middleware_reports_its_status(server):
    async with gz.connect(f"direct:///{server.address}", middleware=[Stamp()]) as channel:
        call = await fails_unimplemented(channel)
        assert ("x-stamp", "unary") not in as_pairs(await call.initial_metadata())


async def test_applies_to_leaves_other_methods_alone(server):
    stamp = Stamp(only="LotsOfReplies")
    async with gz.connect(f"direct:///{server.address}", middleware=[stamp]) as channel:
        call = stub(channel).SayHello(Request(name="plain"))
        await call
        assert ("x-stamp", "unary") not in as_pairs(await call.trailing_metadata())
        assert len([r async for r in stub(channel).LotsOfReplies(Request(name="s"))]) == 3
    assert stamp.seen == [("LotsOfReplies", "stream", "client")]


class Recording:
    """Shared by the interceptors below: records the method, adds metadata."""

    def __init__(self, methods: list[str]) -> None:
        self.methods = methods

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        self.methods.append(method)
        metadata = grpc.aio.Metadata(*(details.metadata or ()), ("x-intercepted", "yes"))
        return details._replace(metadata=metadata)


# grpc.aio files an interceptor under the first interceptor kind it is an instance of, so each
# kind needs its own object.
class UnaryRecorder(Recording, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class StreamRecorder(Recording, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


@pytest.mark.parametrize("middleware", [(), (Stamp(),)], ids=["hot path", "with middleware"])
async def test_grpc_interceptors_run(server, middleware):
    methods: list[str] = []
    interceptors = [UnaryRecorder(methods), StreamRecorder(methods)]
    target = f"direct:///{server.address}"
    async with gz.connect(target, interceptors=interceptors, middleware=middleware) as channel:
        await channel.channel_ready()
        call = stub(channel).SayHello(Request(name="i"))
        assert (await call).message == "Hello, i!"
        assert ("x-intercepted", "yes") in as_pairs(await call.trailing_metadata())
        assert len([r async for r in stub(channel).LotsOfReplies(Request(name="i"))]) == 3
    assert methods == ["/greeter.v1.Greeter/SayHello", "/greeter.v1.Greeter/LotsOfReplies"]


async def test_interceptors_miss_the_health_watch_which_still_works(serve_greeter):
    """gz watches each endpoint's health over a channel without the user's interceptors (they
    would otherwise see calls the user never made); a draining server still loses its calls."""
    draining, other = await serve_greeter(shutdown_drain=1.0), await serve_greeter()
    methods: list[str] = []
    interceptors = [UnaryRecorder(methods), StreamRecorder(methods)]
    async with gz.connect(direct([draining, other]), interceptors=interceptors) as channel:
        await all_ready(channel, 2)
        stopping = asyncio.ensure_future(draining.server.stop())
        await wait_not_serving(channel, draining.address)
        served = {(await say_hello(channel)).served_by for _ in range(20)}
        assert served == {other.address}
        await stopping
    assert methods == ["/greeter.v1.Greeter/SayHello"] * 20
