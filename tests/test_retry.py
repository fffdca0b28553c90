"""Retry on another endpoint, on the hot path (UnaryAttempts) and through middleware."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import grpc
import pytest

import gz
from examples.greeter import greeter_pb2, greeter_pb2_grpc
from examples.greeter.server import Greeter
from gz.balancing import outlier
from gz.balancing.attempts import UnaryAttempts
from gz.balancing.calls import ChainedCall

from .support import all_ready, direct, hot_path_settings

REQUEST = greeter_pb2.HelloRequest(name="retry")


class Failing(Greeter):
    """Fails every SayHello and every LotsOfReplies (before its first reply) with ``code``;
    ``names`` has the request name of every SayHello it had."""

    code = grpc.StatusCode.UNAVAILABLE
    calls = 0
    names: tuple[str, ...] = ()

    async def SayHello(self, request, context):
        self.calls += 1
        self.names += (request.name,)
        await asyncio.sleep(request.delay_seconds)
        await context.abort(self.code, f"{self.address} fails on purpose")

    async def LotsOfReplies(self, request, context):
        self.calls += 1
        await context.abort(self.code, f"{self.address} fails on purpose")
        yield  # an async generator, as the method it replaces


class Slow(Greeter):
    """Answers every SayHello after 10 ms."""

    async def SayHello(self, request, context):
        await asyncio.sleep(0.01)
        return await super().SayHello(request, context)


class FailingAfterAReply(Greeter):
    """Every LotsOfReplies sends one reply, then fails with UNAVAILABLE."""

    calls = 0

    async def LotsOfReplies(self, request, context):
        self.calls += 1
        yield self.reply("the first and last")
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.address} fails after a reply")


def connect(*services: Greeter, **options: object) -> gz.BalancedChannel:
    options.setdefault("settings", hot_path_settings())
    return gz.connect(direct(services), balancer="round_robin", **options)


async def ready(channel: gz.BalancedChannel) -> greeter_pb2_grpc.GreeterStub:
    """A stub once every endpoint is READY (calls then take the hot path)."""
    await channel.channel_ready()
    await all_ready(channel, len(channel.endpoints))
    return greeter_pb2_grpc.GreeterStub(channel)


async def test_unavailable_is_retried_on_another_endpoint_on_the_hot_path(serve_greeter):
    failing, healthy = await serve_greeter(Failing), await serve_greeter()
    async with connect(failing, healthy) as channel:
        stub = await ready(channel)
        calls = [stub.SayHello(REQUEST) for _ in range(20)]
        assert all(isinstance(call, UnaryAttempts) for call in calls)
        replies = [await call for call in calls]
        assert {reply.served_by for reply in replies} == {healthy.address}
        assert failing.calls >= 5  # round robin sent it its share; each went on to the other
        assert await calls[0].code() == grpc.StatusCode.OK
        assert await calls[0].details() == ""


async def test_other_codes_are_retried_only_for_idempotent_calls(serve_greeter):
    failing = await serve_greeter(Failing)
    failing.code = grpc.StatusCode.INTERNAL
    healthy = await serve_greeter()
    async with connect(failing, healthy) as channel:
        stub = await ready(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            for _ in range(4):
                await stub.SayHello(REQUEST)
        assert error.value.code() == grpc.StatusCode.INTERNAL
        with gz.idempotent():
            replies = [await stub.SayHello(REQUEST) for _ in range(10)]
        assert {reply.served_by for reply in replies} == {healthy.address}
    settings = hot_path_settings(idempotent_methods=["greeter.v1.Greeter/*"])
    async with connect(failing, healthy, settings=settings) as channel:
        stub = await ready(channel)
        with gz.idempotent(False), pytest.raises(grpc.aio.AioRpcError):
            for _ in range(4):
                await stub.SayHello(REQUEST)
        replies = [await stub.SayHello(REQUEST) for _ in range(10)]
        assert {reply.served_by for reply in replies} == {healthy.address}


async def test_a_call_gets_at_most_max_attempts_each_on_another_endpoint(serve_greeter):
    failing = [await serve_greeter(Failing) for _ in range(4)]
    async with connect(*failing, retry=gz.RetryPolicy(max_attempts=3)) as channel:
        stub = await ready(channel)
        before = sum(s.calls for s in failing)
        call = stub.SayHello(REQUEST)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert sum(s.calls for s in failing) - before == 3
        assert await call.code() == grpc.StatusCode.UNAVAILABLE
        assert "fails on purpose" in await call.details()


async def test_a_lone_failing_call_gets_its_retries_from_the_budget_reserve(serve_greeter):
    """At low traffic 20% of the calls is less than one retry; the reserve still lets a call
    use all its attempts (default policy)."""
    failing = [await serve_greeter(Failing) for _ in range(3)]
    async with connect(*failing) as channel:
        assert channel.retry is not None and channel.retry.policy == gz.RetryPolicy()
        stub = await ready(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.SayHello(REQUEST)
        assert sum(s.calls for s in failing) == 3


@pytest.mark.parametrize("chained", [False, True], ids=["hot_path", "chained"])
async def test_each_attempt_of_a_call_goes_to_another_endpoint_under_p2c_ewma(
    serve_greeter, monkeypatch, chained
):
    """Two of three endpoints fail at once and the healthy one takes 10 ms, so p2c_ewma, which
    favours fast endpoints, keeps drawing the failing ones: only the channel's memory of what a
    call tried sends its next attempt elsewhere, and with 3 attempts every call succeeds."""
    # ejection would take a failing endpoint out of the draw and hide a repeated pick
    monkeypatch.setattr(outlier, "CONSECUTIVE", 10**9)
    monkeypatch.setattr(outlier, "MIN_CALLS", 10**9)
    failing = [await serve_greeter(Failing) for _ in range(2)]
    healthy = await serve_greeter(Slow)
    seen: dict[str, list[tuple[int, str | None]]] = {}  # per call: (attempt, peer) of each

    class Record(gz.Middleware):
        async def unary(self, ctx, request, call_next):
            try:
                return await call_next(ctx, request)
            finally:
                seen.setdefault(request.name, []).append((ctx.state["attempt"], ctx.peer))

    every_retry = gz.RetryPolicy(budget_ratio=2.0)  # the budget is tested elsewhere
    async with gz.connect(
        direct([*failing, healthy]),
        middleware=[Record()] if chained else [],
        retry=every_retry,
        settings=hot_path_settings(),
    ) as channel:
        assert channel.balancer == "p2c_ewma"
        stub = await ready(channel)
        names = [f"call {i}" for i in range(30)]
        replies = [await stub.SayHello(greeter_pb2.HelloRequest(name=name)) for name in names]
    assert {reply.served_by for reply in replies} == {healthy.address}
    for server in failing:  # no call came back to an endpoint that had failed it
        assert len(server.names) == len(set(server.names)), server.names
    tried = {name: sorted(s.address for s in failing if name in s.names) for name in names}
    print("failed attempts per call:", Counter(len(t) for t in tried.values()))
    assert any(len(t) == 2 for t in tried.values())  # some went to all three
    if chained:  # the middleware saw each attempt with its own endpoint
        for name in names:
            attempts, peers = zip(*seen[name], strict=True)
            assert attempts == tuple(range(1, len(tried[name]) + 2))
            assert sorted(peers[:-1]) == tried[name] and peers[-1] == healthy.address


async def test_a_stream_is_not_retried_once_a_reply_arrived(serve_greeter):
    """Part of the answer reached the caller: a retry would repeat it, so the error ends the
    call, on either endpoint, after the first reply."""
    replicas = [await serve_greeter(FailingAfterAReply) for _ in range(2)]
    async with connect(*replicas) as channel:
        stub = await ready(channel)
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as error:
            async for reply in stub.LotsOfReplies(greeter_pb2.HelloRequest(count=3)):
                received.append(reply.message)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "fails after a reply" in (error.value.details() or "")
        assert received == ["the first and last"]
        assert sum(r.calls for r in replicas) == 1


async def test_no_retry_starts_that_would_end_after_the_deadline(serve_greeter):
    failing = [await serve_greeter(Failing) for _ in range(2)]
    slow_retries = gz.RetryPolicy(first_backoff=2.0, max_backoff=2.0)
    async with connect(*failing, retry=slow_retries) as channel:
        stub = await ready(channel)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.SayHello(REQUEST, timeout=0.5)
        assert time.monotonic() - started < 1.5  # not the 2 s backoff, nor a retry after it
        assert sum(s.calls for s in failing) == 1


async def test_retry_can_be_switched_off(serve_greeter):
    failing, healthy = await serve_greeter(Failing), await serve_greeter()
    async with connect(failing, healthy, retry=False) as channel:
        stub = await ready(channel)
        codes = set()
        for _ in range(4):
            try:
                await stub.SayHello(REQUEST)
            except grpc.aio.AioRpcError as error:
                codes.add(error.code())
        assert codes == {grpc.StatusCode.UNAVAILABLE}


async def test_middleware_sees_each_attempt_and_streams_retry_before_a_first_reply(serve_greeter):
    failing, healthy = await serve_greeter(Failing), await serve_greeter()
    seen: list[tuple[str, int, str | None]] = []

    class Record(gz.Middleware):
        async def unary(self, ctx, request, call_next):
            try:
                return await call_next(ctx, request)
            finally:
                seen.append((ctx.method.name, ctx.state["attempt"], ctx.peer))

        async def stream(self, ctx, request, call_next):
            try:
                async for reply in call_next(ctx, request):
                    yield reply
            finally:
                seen.append((ctx.method.name, ctx.state["attempt"], ctx.peer))

    async with connect(failing, healthy, middleware=[Record()]) as channel:
        stub = await ready(channel)
        seen.clear()
        call = stub.SayHello(REQUEST)
        assert isinstance(call, ChainedCall)
        await call
        await stub.SayHello(REQUEST)
        replies = [r async for r in stub.LotsOfReplies(greeter_pb2.HelloRequest(count=2))]
        assert len(replies) == 2
        stream = stub.LotsOfReplies(greeter_pb2.HelloRequest(count=2))
        assert len([r async for r in stream]) == 2
    # round robin: one of each pair of calls went to the failing replica first, then retried
    retried = [s for s in seen if s[1] == 2]
    assert {name for name, _, _ in retried} == {"SayHello", "LotsOfReplies"}
    assert {peer for _, _, peer in retried} == {healthy.address}
    assert (("SayHello", 1, failing.address)) in seen


async def test_a_default_deadline_set_by_middleware_holds_for_the_whole_call(serve_greeter):
    failing = [await serve_greeter(Failing) for _ in range(2)]

    class DefaultTimeout(gz.Middleware):  # as the Deadline middleware does for GZ_TIMEOUT
        async def unary(self, ctx, request, call_next):
            if ctx.deadline is None:
                ctx.deadline = time.monotonic() + 1.0
            return await call_next(ctx, request)

    async with connect(*failing, middleware=[DefaultTimeout()]) as channel:
        stub = await ready(channel)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.SayHello(greeter_pb2.HelloRequest(delay_seconds=0.6))
        # attempt 1 fails after 0.6 s; attempt 2 gets the 0.4 s left (about 1.0 s in all), not
        # a new 1.0 s (1.6 s)
        assert time.monotonic() - started < 1.4
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_retries_keep_the_hot_path_with_default_middleware_and_are_counted(serve_greeter):
    from prometheus_client import REGISTRY, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    def counts() -> dict[tuple[str, str], float]:
        found = {}
        for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
            for sample in family.samples:
                if sample.labels.get("grpc_method") == "SayHello":
                    found[(sample.name, sample.labels.get("grpc_code", ""))] = sample.value
        return found

    failing, healthy = await serve_greeter(Failing), await serve_greeter()
    async with connect(failing, healthy, settings=gz.ClientSettings()) as channel:
        stub = await ready(channel)
        before = counts()
        calls = [stub.SayHello(REQUEST) for _ in range(10)]
        assert all(isinstance(call, UnaryAttempts) for call in calls)  # metrics only observe
        replies = [await call for call in calls]
        assert {reply.served_by for reply in replies} == {healthy.address}
        await asyncio.sleep(0)  # done-callbacks of the last attempts
    after = counts()

    def grew(name: str, code: str = "") -> float:
        return after.get((name, code), 0) - before.get((name, code), 0)

    retried = failing.calls
    assert retried >= 3  # round robin sent it about half of the first attempts
    assert grew("gz_client_retries_total") == retried
    assert grew("grpc_client_handled_total", "Unavailable") == retried
    assert grew("grpc_client_handled_total", "OK") == 10
    assert grew("grpc_client_started_total") == 10 + retried
