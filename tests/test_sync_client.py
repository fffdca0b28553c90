"""gz.connect_sync(): a grpc.Channel for synchronous code, checked against raw grpc.

Differential tests play one scenario through a raw ``grpc.insecure_channel(address)`` and through
``gz.connect_sync("direct:///" + address)`` to the same server and compare what the caller
observes: responses, error classes (grpc.RpcError, grpc.Call, grpc.Future), status codes,
details, initial and trailing metadata, what the server saw. The server is the raw grpc.aio
scenario server of the async client's differential suite (tests/differential/client_scenarios.py),
run in a loop thread of this module: each call carries its script in its metadata.

Then: one channel shared by 32 threads (no lost call, load or metric), middleware (call observers
only), retries on another endpoint, and the background thread's life (close(), interpreter exit,
a channel dropped without close()).

No assertion here is about how fast anything is: waits are generous bounds on things that should
happen at once.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

import gz
from examples.greeter import greeter_pb2, greeter_pb2_grpc
from examples.greeter.server import Greeter
from gz.middleware import Kind, Method
from gz.middleware.metrics import collector

from .differential.client_scenarios import (
    ECHO,
    INIT,
    RAISE,
    RECV,
    SERVICE,
    TRAIL,
    ScenarioServer,
    abort,
    method_path,
    send,
    sleep,
    status,
)
from .support import ROOT, free_port, start_greeter

HANG = 10.0  # seconds anything that should happen at once may take before the test fails
THREAD_NAME = "gz-sync-client"  # the background thread of the process's sync channels
USER_METADATA = (("x-user-a", "1"), ("x-user-b-bin", b"\0\1"))  # echoed back as x-echo-*
CLOSED = "Cannot invoke RPC on closed channel!"
UU, US, SU, SS = "unary_unary", "unary_stream", "stream_unary", "stream_stream"

OK_SCRIPT = (INIT, sleep(0.05), TRAIL)
ERROR_SCRIPTS = {
    "abort with trailers": (INIT, TRAIL, abort("PERMISSION_DENIED", "not yours")),
    "abort before metadata": (abort("RESOURCE_EXHAUSTED", "too much"),),
    "status set": (INIT, TRAIL, status("NOT_FOUND", "no such thing")),
    "handler raises": (RAISE,),
}


# -- servers in a loop thread of this module ----------------------------------------------------
class Loop:
    """An asyncio loop in a thread of its own, for the servers (the tests themselves are
    synchronous, as connect_sync's callers are)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="test-servers", daemon=True
        )
        self.thread.start()

    def run(self, coroutine: Any, timeout: float = HANG) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(HANG)


class Scenarios:
    """The scenario server, and what the tests need of it."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.server = ScenarioServer()
        loop.run(self.server.start(free_port()))
        self.address = f"127.0.0.1:{self.server.port}"
        self._ids = iter(range(10**9))

    def call(self, label: str, script: Any, extra: tuple[Any, ...] = USER_METADATA) -> tuple:
        """(call id, metadata) of a new call running ``script``."""
        call_id = f"{label}-{next(self._ids)}"
        metadata = (("x-call-id", call_id), ("x-script", json.dumps(script)), *extra)
        return call_id, metadata

    def saw(self, call_id: str) -> Any:
        """What the server saw of the call, once its handler has ended."""
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            record = self.server.records.get(call_id)
            if record is not None and record.outcome != "running":
                return record.view()
            time.sleep(0.01)
        return self.server.view(call_id)


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    servers = Loop()
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def scenarios(loop: Loop) -> Iterator[Scenarios]:
    made = Scenarios(loop)
    yield made
    loop.run(made.server.stop())


@pytest.fixture(autouse=True)
def _no_gz_variables(clean_environment: pytest.MonkeyPatch) -> None:
    """gz's defaults (metrics, retries, health checks), not the developer's GZ_* variables."""


@pytest.fixture
def channels(scenarios: Scenarios) -> Iterator[dict[str, grpc.Channel]]:
    """A raw grpc channel and a gz.connect_sync channel (defaults) to the scenario server."""
    made = {
        "raw": grpc.insecure_channel(scenarios.address),
        "gz": gz.connect_sync("direct:///" + scenarios.address),
    }
    yield made
    for channel in made.values():
        channel.close()


@pytest.fixture
def serve_greeter_sync(loop: Loop) -> Iterator[Callable[..., Greeter]]:
    """In-process greeters (start_greeter's arguments) in this module's server loop; stopped at
    the end of the test."""
    started: list[Greeter] = []

    def start(service_class: type[Greeter] = Greeter, **settings: Any) -> Greeter:
        service = loop.run(start_greeter(service_class, **settings))
        started.append(service)
        return service

    yield start
    for service in started:
        loop.run(service.server.stop())


def compare(channels: dict[str, grpc.Channel], plan: Callable[[grpc.Channel, str], Any]) -> None:
    """Play ``plan(channel, label)`` on both channels: gz must observe what raw grpc does."""
    raw = plan(channels["raw"], "raw")
    ours = plan(channels["gz"], "gz")
    assert ours == raw, f"\n raw grpc: {raw!r}\n gz:       {ours!r}"


# -- what a caller observes, comparable between channels -------------------------------------
_SAME_DETAILS = {"Stream removed (Deadline Exceeded)": "Deadline Exceeded"}  # grpc core's race


def md(metadata: Any) -> Any:
    return None if metadata is None else tuple((key, value) for key, value in metadata)


def error_view(error: BaseException) -> tuple[Any, ...]:
    """An exception as a caller tells it apart: which of grpc's public classes it is, its
    status, details and metadata (not its private class: gz may wrap grpc's objects)."""
    if not isinstance(error, grpc.RpcError):
        return ("raised", type(error).__name__, str(error))
    call = isinstance(error, grpc.Call)
    details = error.details() if call else None
    return (
        "RpcError",
        call,
        isinstance(error, grpc.Future),
        error.code() if call else None,
        _SAME_DETAILS.get(details, details),
        md(error.initial_metadata()) if call else None,
        md(error.trailing_metadata()) if call else None,
    )


def outcome(action: Callable[[], Any]) -> Any:
    try:
        return ("returned", action())
    except Exception as error:
        return error_view(error)


def call_view(call: Any) -> tuple[Any, ...]:
    """A finished call object as a caller sees it."""
    return (
        isinstance(call, grpc.Call),
        isinstance(call, grpc.Future),
        call.code(),
        _SAME_DETAILS.get(call.details(), call.details()),
        md(call.initial_metadata()),
        md(call.trailing_metadata()),
        call.is_active(),
        call.done(),
        call.cancelled(),
    )


def drain(iterator: Any) -> tuple[list[Any], Any]:
    """The messages of a response stream, and how it ended ("end" or the error)."""
    messages: list[Any] = []
    while True:
        try:
            messages.append(next(iterator))
        except StopIteration:
            return messages, "end"
        except Exception as error:
            return messages, error_view(error)


class Fired:
    """Done-callbacks: what they were given, once they ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self._event = threading.Event()

    def callback(self, label: str, expected: Any) -> Callable[[Any], None]:
        def fired(arg: Any) -> None:
            self.calls.append((label, arg is expected))
            self._event.set()

        return fired

    def wait(self, count: int) -> list[tuple[str, bool]]:
        deadline = time.monotonic() + HANG
        while len(self.calls) < count and time.monotonic() < deadline:
            self._event.wait(0.01)
        return sorted(self.calls)


def requests(*items: bytes) -> Iterator[bytes]:
    yield from items


# -- unary calls: __call__, with_call, future() ------------------------------------------------
def test_unary_call_returns_the_response_and_sends_metadata(channels, scenarios):
    def plan(channel, label):
        call_id, metadata = scenarios.call(label, OK_SCRIPT)
        response = channel.unary_unary(method_path(UU))(b"req", metadata=metadata)
        return response, scenarios.saw(call_id)

    compare(channels, plan)


def test_unary_with_call_gives_the_call(channels, scenarios):
    def plan(channel, label):
        call_id, metadata = scenarios.call(label, OK_SCRIPT)
        response, call = channel.unary_unary(method_path(UU)).with_call(b"req", metadata=metadata)
        return response, call_view(call), call.time_remaining(), scenarios.saw(call_id)

    compare(channels, plan)


@pytest.mark.parametrize("how", ["__call__", "with_call"])
@pytest.mark.parametrize("scenario", list(ERROR_SCRIPTS))
def test_unary_errors_carry_code_details_and_trailers(channels, scenarios, how, scenario):
    def plan(channel, label):
        call_id, metadata = scenarios.call(label, ERROR_SCRIPTS[scenario])
        multicallable = getattr(channel.unary_unary(method_path(UU)), how)
        return outcome(lambda: multicallable(b"req", metadata=metadata)), scenarios.saw(call_id)

    compare(channels, plan)


def test_unary_future_result_callbacks_and_call(channels, scenarios):
    def plan(channel, label):
        call_id, metadata = scenarios.call(label, OK_SCRIPT)
        fired = Fired()
        future = channel.unary_unary(method_path(UU)).future(b"req", metadata=metadata)
        future.add_done_callback(fired.callback("before the end", future))
        result = future.result(timeout=HANG)
        callbacks = fired.wait(1)
        future.add_done_callback(fired.callback("after the end", future))  # runs at once
        return (
            result,
            future.exception(timeout=HANG),
            future.traceback(timeout=HANG),
            future.running(),
            future.cancel(),  # too late: False
            call_view(future),
            callbacks,
            fired.wait(2),
            scenarios.saw(call_id),
        )

    compare(channels, plan)


@pytest.mark.parametrize("scenario", list(ERROR_SCRIPTS))
def test_unary_future_error(channels, scenarios, scenario):
    def plan(channel, label):
        call_id, metadata = scenarios.call(label, ERROR_SCRIPTS[scenario])
        fired = Fired()
        future = channel.unary_unary(method_path(UU)).future(b"req", metadata=metadata)
        future.add_done_callback(fired.callback("done", future))
        error = future.exception(timeout=HANG)
        return (
            error_view(error),
            outcome(lambda: future.result(timeout=HANG)),
            future.traceback(timeout=HANG) is not None,
            call_view(future),
            fired.wait(1),
            scenarios.saw(call_id),
        )

    compare(channels, plan)


def test_unary_future_cancelled_while_the_server_works(channels, scenarios):
    def plan(channel, label):
        call_id, metadata = scenarios.call(label, (INIT, sleep(5), TRAIL))
        fired = Fired()
        future = channel.unary_unary(method_path(UU)).future(b"req", metadata=metadata)
        future.add_done_callback(fired.callback("done", future))
        waited = outcome(lambda: future.result(timeout=0.2))  # grpc.FutureTimeoutError
        cancelled = future.cancel()
        return (
            waited,
            cancelled,
            future.cancelled(),
            future.done(),
            future.code(),
            future.details(),
            outcome(lambda: future.result(timeout=HANG)),  # grpc.FutureCancelledError
            outcome(lambda: future.exception(timeout=HANG)),
            fired.wait(1),
            scenarios.saw(call_id),
        )

    compare(channels, plan)


# -- response streams ---------------------------------------------------------------------------
US_OK = (INIT, send("m1"), sleep(0.05), send("m2"), TRAIL)
US_SCRIPTS = {
    "two messages": US_OK,
    "no message": (INIT, TRAIL),
    "abort after one": (INIT, send("m1"), sleep(0.05), TRAIL, abort("NOT_FOUND", "gone")),
    "abort at once": (abort("OUT_OF_RANGE", "nothing for you"),),
    "raise after one": (send("m1"), sleep(0.05), RAISE),
}


@pytest.mark.parametrize("scenario", list(US_SCRIPTS))
def test_response_stream(channels, scenarios, scenario):
    def plan(channel, label):
        call_id, metadata = scenarios.call(label, US_SCRIPTS[scenario])
        fired = Fired()
        call = channel.unary_stream(method_path(US))(b"req", metadata=metadata)
        kind = (isinstance(call, grpc.Call), isinstance(call, grpc.Future), iter(call) is call)
        call.add_done_callback(fired.callback("done", call))
        messages = drain(call)
        return kind, messages, call_view(call), fired.wait(1), scenarios.saw(call_id)

    compare(channels, plan)


def test_response_stream_cancelled_midway(channels, scenarios):
    def plan(channel, label):
        call_id, metadata = scenarios.call(label, (INIT, send("m1"), sleep(5), send("m2")))
        fired = Fired()
        call = channel.unary_stream(method_path(US))(b"req", metadata=metadata)
        call.add_done_callback(fired.callback("done", call))
        first = next(call)
        cancelled = call.cancel()
        return first, cancelled, drain(call), call_view(call), fired.wait(1), scenarios.saw(call_id)

    compare(channels, plan)


# -- request streams and bidi -------------------------------------------------------------------
SU_SCRIPTS = {
    "reads all": (INIT, RECV, TRAIL),
    "aborts after reading": (INIT, RECV, TRAIL, abort("FAILED_PRECONDITION", "bad batch")),
}


@pytest.mark.parametrize("how", ["__call__", "with_call", "future"])
@pytest.mark.parametrize("scenario", list(SU_SCRIPTS))
def test_request_stream_from_an_iterator(channels, scenarios, how, scenario):
    def plan(channel, label):
        call_id, metadata = scenarios.call(label, SU_SCRIPTS[scenario])
        multicallable = channel.stream_unary(method_path(SU))
        iterator = requests(b"a", b"b", b"c")
        if how == "__call__":
            seen = outcome(lambda: multicallable(iterator, metadata=metadata))
        elif how == "with_call":

            def with_call():
                response, call = multicallable.with_call(iterator, metadata=metadata)
                return response, call_view(call)

            seen = outcome(with_call)
        else:
            future = multicallable.future(iterator, metadata=metadata)
            seen = (outcome(lambda: future.result(timeout=HANG)), call_view(future))
        return seen, scenarios.saw(call_id)

    compare(channels, plan)


def test_request_iterator_that_raises(channels, scenarios):
    def failing() -> Iterator[bytes]:
        yield b"a"
        raise RuntimeError("the request iterator failed")

    def plan(channel, label):
        _, metadata = scenarios.call(label, (RECV,))
        return outcome(lambda: channel.stream_unary(method_path(SU))(failing(), metadata=metadata))

    compare(channels, plan)


SS_SCRIPTS = {
    "echo": (INIT, ECHO, send("tail"), TRAIL),
    "speaks first": (INIT, send("first"), ECHO, TRAIL),
    "aborts after echoing": (INIT, ECHO, send("tail"), TRAIL, abort("ABORTED", "stopped")),
}


@pytest.mark.parametrize("scenario", list(SS_SCRIPTS))
def test_bidi_stream(channels, scenarios, scenario):
    def plan(channel, label):
        call_id, metadata = scenarios.call(label, SS_SCRIPTS[scenario])
        call = channel.stream_stream(method_path(SS))(requests(b"a", b"b"), metadata=metadata)
        return drain(call), call_view(call), scenarios.saw(call_id)

    compare(channels, plan)


def test_bidi_stream_cancelled_midway(channels, scenarios):
    def plan(channel, label):
        _, metadata = scenarios.call(label, (INIT, ECHO))
        release = threading.Event()

        def slow_requests() -> Iterator[bytes]:
            yield b"a"
            release.wait(HANG)  # the caller cancels meanwhile

        call = channel.stream_stream(method_path(SS))(slow_requests(), metadata=metadata)
        try:
            first = next(call)
            cancelled = call.cancel()
            # not what the server saw: a handler reading when the call is cancelled may read
            # the end of the requests (grpc.aio's read() gives EOF) or be cancelled, raw too
            return first, cancelled, drain(call), call_view(call)
        finally:
            release.set()

    compare(channels, plan)


# -- deadlines, compression, wait_for_ready -----------------------------------------------------
def _timed_out(how: str, channel: grpc.Channel, metadata: Any) -> Any:
    """Start a call of ``how`` with a 0.3 s timeout and see it to its end."""
    options = {"timeout": 0.3, "metadata": metadata}
    if how == "__call__":
        return channel.unary_unary(method_path(UU))(b"req", **options)
    if how == "with_call":
        return channel.unary_unary(method_path(UU)).with_call(b"req", **options)[0]
    if how == "future":
        return channel.unary_unary(method_path(UU)).future(b"req", **options).result(HANG)
    if how == US:
        return drain(channel.unary_stream(method_path(US))(b"req", **options))
    if how == SU:
        return channel.stream_unary(method_path(SU))(requests(b"a"), **options)
    return drain(channel.stream_stream(method_path(SS))(requests(b"a"), **options))


SLOW_SCRIPTS = {
    "__call__": (INIT, sleep(3)),
    "with_call": (INIT, sleep(3)),
    "future": (INIT, sleep(3)),
    US: (INIT, send("m1"), sleep(3), send("m2")),
    SU: (INIT, RECV, sleep(3)),
    SS: (INIT, RECV, sleep(3)),
}


@pytest.mark.parametrize("how", list(SLOW_SCRIPTS))
def test_timeout_gives_deadline_exceeded(channels, scenarios, how):
    def plan(channel, label):
        call_id, metadata = scenarios.call(label, SLOW_SCRIPTS[how])
        return outcome(lambda: _timed_out(how, channel, metadata)), scenarios.saw(call_id)[2]

    compare(channels, plan)


class Recorder(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """A grpc interceptor recording what each call asks grpc for: on the raw channel the
    caller's arguments, under gz what gz passes on to grpc."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def _record(self, details: grpc.ClientCallDetails) -> None:
        user = tuple(item for item in details.metadata or () if item[0].startswith("x-user-"))
        self.seen.append((details.method, details.compression, details.wait_for_ready, user))

    def intercept_unary_unary(self, continuation, details, request):
        self._record(details)
        return continuation(details, request)

    intercept_unary_stream = intercept_unary_unary

    def intercept_stream_unary(self, continuation, details, request_iterator):
        self._record(details)
        return continuation(details, request_iterator)

    intercept_stream_stream = intercept_stream_unary


@pytest.mark.parametrize(
    "compression", [grpc.Compression.Gzip, grpc.Compression.Deflate], ids=["gzip", "deflate"]
)
def test_compression_and_wait_for_ready_reach_grpc(scenarios, compression):
    def plan(channel, label, recorder):
        seen = []
        options = {"compression": compression, "wait_for_ready": True}
        _, metadata = scenarios.call(label, OK_SCRIPT)
        big = b"z" * 10_000
        seen.append(channel.unary_unary(method_path(UU))(big, metadata=metadata, **options))
        _, metadata = scenarios.call(label, US_OK)
        seen.append(list(channel.unary_stream(method_path(US))(big, metadata=metadata, **options)))
        _, metadata = scenarios.call(label, (RECV,))
        call = channel.stream_unary(method_path(SU)).future
        seen.append(call(requests(big, big), metadata=metadata, **options).result(timeout=HANG))
        _, metadata = scenarios.call(label, (ECHO,))
        call = channel.stream_stream(method_path(SS))
        seen.append(list(call(requests(b"a", big), metadata=metadata, **options)))
        return seen, recorder.seen

    raw_recorder, gz_recorder = Recorder(), Recorder()
    raw = grpc.intercept_channel(grpc.insecure_channel(scenarios.address), raw_recorder)
    ours = gz.connect_sync("direct:///" + scenarios.address, interceptors=[gz_recorder])
    try:
        assert plan(ours, "gz", gz_recorder) == plan(raw, "raw", raw_recorder)
        assert len(raw_recorder.seen) == 4
    finally:
        raw.close()
        ours.close()


def _known_down(channel: grpc.Channel) -> None:
    """Until a gz channel has seen its one endpoint fail to connect (raw grpc: nothing to do)."""
    if not isinstance(channel, gz.SyncBalancedChannel):
        return
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        endpoints = channel.snapshot()["endpoints"]
        if endpoints and endpoints[0]["connectivity"] == "TRANSIENT_FAILURE":
            return
        time.sleep(0.02)
    raise AssertionError(f"the endpoint never failed to connect: {channel.snapshot()}")


@pytest.fixture
def down_channels() -> Iterator[dict[str, grpc.Channel]]:
    """A raw channel and a gz channel (no retries) to a port where nothing listens."""
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    made = {
        "raw": grpc.insecure_channel(address),
        "gz": gz.connect_sync("direct:///" + address, retry=False),
    }
    yield made
    for channel in made.values():
        channel.close()


def _unavailable_plans() -> dict[str, Callable[[grpc.Channel], Any]]:
    def future(channel):
        call = channel.unary_unary(method_path(UU)).future(b"req", timeout=HANG)
        return "returned a future", error_view(call.exception(timeout=HANG))

    def response_stream(channel):
        call = channel.unary_stream(method_path(US))(b"req", timeout=HANG)
        return "returned an iterator", drain(call)[1]

    def request_stream_future(channel):
        call = channel.stream_unary(method_path(SU)).future(requests(b"a"), timeout=HANG)
        return "returned a future", error_view(call.exception(timeout=HANG))

    def bidi(channel):
        call = channel.stream_stream(method_path(SS))(requests(b"a"), timeout=HANG)
        return "returned an iterator", drain(call)[1]

    return {
        "__call__": lambda channel: channel.unary_unary(method_path(UU))(b"req", timeout=HANG),
        "with_call": lambda channel: channel.unary_unary(method_path(UU)).with_call(b"r"),
        "stream_unary": lambda channel: channel.stream_unary(method_path(SU))(requests(b"a")),
        "future": future,
        "unary_stream": response_stream,
        "stream_unary.future": request_stream_future,
        "stream_stream": bidi,
    }


UNAVAILABLE_PLANS = _unavailable_plans()


def _without_details(seen: Any) -> Any:
    """An outcome with the details of its error left out (compared in a test of their own)."""
    if isinstance(seen, tuple) and seen and seen[0] == "RpcError":
        return seen[:4] + seen[5:]
    if isinstance(seen, tuple):
        return tuple(_without_details(item) for item in seen)
    return seen


@pytest.mark.parametrize("how", list(UNAVAILABLE_PLANS))
def test_endpoint_down_fails_the_call_as_grpc_does(down_channels, how):
    """A call to an endpoint that refuses connections: a blocking call raises UNAVAILABLE; a
    future() or a stream is returned, and then fails with UNAVAILABLE (it never raises from the
    call that starts it)."""

    def plan(channel, label):
        outcome(lambda: channel.unary_unary(method_path(UU))(b"first", timeout=HANG))
        _known_down(channel)
        return _without_details(outcome(lambda: UNAVAILABLE_PLANS[how](channel)))

    compare(down_channels, plan)


@pytest.mark.parametrize("wait_for_ready", [False, True])
def test_endpoint_down_details_name_the_target(down_channels, wait_for_ready):
    """A call that finds no endpoint to pick fails as grpc's does, code for code; its details
    say why in gz's words, naming the target, as a connect() channel's do."""

    def plan(channel, label):
        outcome(lambda: channel.unary_unary(method_path(UU))(b"first", timeout=HANG))
        _known_down(channel)
        multicallable = channel.unary_unary(method_path(UU))
        return outcome(lambda: multicallable(b"r", timeout=0.5, wait_for_ready=wait_for_ready))

    compare(down_channels, lambda channel, label: _without_details(plan(channel, label)))
    details = plan(down_channels["gz"], "gz")[4]
    assert down_channels["gz"].target in details


def _wait_for_ready_plan(loop: Loop, how: str) -> Callable[[grpc.Channel, int], Any]:
    """Call (in a thread) with wait_for_ready=True while the endpoint is down, then start the
    server: what the call start returned before the server was up, and the end result."""

    def plan(channel: grpc.Channel, port: int) -> Any:
        outcome(lambda: channel.unary_unary(method_path(UU))(b"first", timeout=HANG))
        _known_down(channel)
        returned = threading.Event()
        result: list[Any] = []

        def start_call() -> None:
            def make() -> Any:
                options = {"timeout": 4 * HANG, "wait_for_ready": True}
                if how == "future":
                    call = channel.unary_unary(method_path(UU)).future(b"req", **options)
                elif how == "unary_stream":
                    call = channel.unary_stream(method_path(US))(b"req", **options)
                else:
                    call = channel.unary_unary(method_path(UU))(b"req", **options)
                returned.set()
                return call

            result.append(outcome(make))

        thread = threading.Thread(target=start_call)
        thread.start()
        blocking = how == "__call__"
        # raw grpc returns a future or a stream at once: 3 s is a generous bound on "at once"
        returned_before_the_server = returned.wait(1.0 if blocking else 3.0)
        server = ScenarioServer()
        loop.run(server.start(port))
        try:
            thread.join(4 * HANG)
            seen = result[0]
            if how == "future" and seen[0] == "returned":
                seen = outcome(lambda: seen[1].result(timeout=4 * HANG))
            elif how == "unary_stream" and seen[0] == "returned":
                seen = drain(seen[1])
            return returned_before_the_server, seen
        finally:
            loop.run(server.stop())

    return plan


@pytest.mark.parametrize("how", ["__call__", "future", "unary_stream"])
def test_wait_for_ready_waits_for_the_server(loop, how):
    """Blocking: waits until the server is up; future() and streams: returned at once, their
    result arrives once the server is up (raw grpc never blocks in future())."""
    plan = _wait_for_ready_plan(loop, how)
    observed = {}
    for label in ("raw", "gz"):
        port = free_port()
        address = f"127.0.0.1:{port}"
        if label == "raw":
            channel = grpc.insecure_channel(address)
        else:
            channel = gz.connect_sync("direct:///" + address, retry=False)
        try:
            observed[label] = plan(channel, port)
        finally:
            channel.close()
    assert observed["gz"] == observed["raw"], "(returned before the server was up, result)"


# -- the channel itself -------------------------------------------------------------------------
CLOSED_CALLS: dict[str, Callable[[grpc.Channel], Any]] = {
    "unary __call__": lambda channel: channel.unary_unary(method_path(UU))(b"x"),
    "unary with_call": lambda channel: channel.unary_unary(method_path(UU)).with_call(b"x"),
    "unary future": lambda channel: channel.unary_unary(method_path(UU)).future(b"x"),
    "unary_stream": lambda channel: channel.unary_stream(method_path(US))(b"x"),
    "stream_unary __call__": lambda channel: channel.stream_unary(method_path(SU))(requests()),
    "stream_unary with_call": lambda ch: ch.stream_unary(method_path(SU)).with_call(requests()),
    "stream_unary future": lambda ch: ch.stream_unary(method_path(SU)).future(requests()),
    "stream_stream": lambda channel: channel.stream_stream(method_path(SS))(requests()),
}


@pytest.mark.parametrize("used", [False, True], ids=["never used", "used"])
def test_call_on_a_closed_channel_raises_value_error(channels, used):
    """Every way of starting a call, on a closed channel: the ValueError grpc raises (grpc words
    it "Cannot invoke RPC on closed channel!" for blocking calls, "Cannot invoke RPC: Channel
    closed!" for future() and streams)."""

    def plan(channel, label):
        if used:
            channel.unary_unary(method_path(UU))(b"x", timeout=HANG)
        channel.close()
        return {how: outcome(lambda call=call: call(channel)) for how, call in CLOSED_CALLS.items()}

    compare(channels, plan)


def test_call_on_a_closed_channel_says_cannot_invoke(channels):
    """A blocking call on a closed channel: grpc's ValueError, in grpc's words."""
    for channel in channels.values():
        channel.close()
        with pytest.raises(ValueError) as raised:
            channel.unary_unary(method_path(UU))(b"x")
        assert str(raised.value) == CLOSED


def test_close_cancels_the_calls_in_flight(channels, scenarios):
    def plan(channel, label):
        # The handlers run on after the cancel (what they saw is compared once they end): 2 s
        # is long enough to be under way at the close, short enough to end soon after.
        future_id, metadata = scenarios.call(label, (INIT, sleep(2)))
        future = channel.unary_unary(method_path(UU)).future(b"req", metadata=metadata)
        stream_id, metadata = scenarios.call(label, (INIT, send("m1"), sleep(2)))
        stream = channel.unary_stream(method_path(US))(b"req", metadata=metadata)
        first = next(stream)
        # Both calls under way at the server first: gz starts a channel's very first call a
        # moment later (once the target is resolved), which would race the close below.
        future.initial_metadata()
        channel.close()
        return (
            error_view(future.exception(timeout=HANG)),
            first,
            drain(stream),
            scenarios.saw(future_id)[2],
            scenarios.saw(stream_id)[2],
        )

    compare(channels, plan)


def test_close_ends_the_calls_waiting_for_an_endpoint(down_channels):
    """Calls waiting (wait_for_ready) for an endpoint that is down when the channel closes end
    CANCELLED, as grpc's do."""

    def plan(channel, label):
        outcome(lambda: channel.unary_unary(method_path(UU))(b"first", timeout=HANG))
        _known_down(channel)
        options = {"timeout": 4 * HANG, "wait_for_ready": True}
        with ThreadPoolExecutor(2) as pool:
            blocking = pool.submit(channel.unary_unary(method_path(UU)), b"req", **options)
            stream = pool.submit(
                lambda: drain(channel.unary_stream(method_path(US))(b"req", **options))
            )
            time.sleep(0.3)  # both are waiting (if not yet, they fail at once all the same)
            channel.close()
            return outcome(lambda: blocking.result(HANG)), outcome(lambda: stream.result(HANG))

    # CANCELLED as grpc; gz's details name the channel that closed (compared without them)
    compare(down_channels, lambda channel, label: _without_details(plan(channel, label)))


def test_close_while_threads_call(serve_greeter_sync):
    """Closing a channel 16 threads are calling through: each call succeeds, ends CANCELLED or
    raises grpc's ValueError; none hangs, nothing else is raised."""
    service = serve_greeter_sync()
    seen: collections.Counter[Any] = collections.Counter()
    lock = threading.Lock()
    channel = gz.connect_sync("direct:///" + service.address)
    stub = greeter_pb2_grpc.GreeterStub(channel)
    request = greeter_pb2.HelloRequest(count=2)

    def calls(worker: int) -> None:
        for i in range(100_000):
            how = (worker + i) % 3
            try:
                if how == 0:
                    stub.SayHello(request)
                elif how == 1:
                    stub.SayHello.future(request).result(timeout=HANG)
                else:
                    list(stub.LotsOfReplies(request))
                found: Any = "ok"
            except grpc.RpcError as error:
                found = ("RpcError", error.code())
            except Exception as error:
                found = (type(error).__name__, str(error))
            with lock:
                seen[found] += 1
            if found != "ok" and found[0] != "RpcError":
                return

    try:
        stub.SayHello(request)
        with ThreadPoolExecutor(16) as pool:
            workers = [pool.submit(calls, worker) for worker in range(16)]
            time.sleep(0.5)
            channel.close()
            for worker in workers:
                worker.result(timeout=HANG)
    finally:
        channel.close()
    assert seen["ok"] > 0
    allowed = {
        ("RpcError", grpc.StatusCode.CANCELLED),
        ("ValueError", CLOSED),
        ("ValueError", "Cannot invoke RPC: Channel closed!"),  # grpc's words in future()
    }
    assert set(seen) - {"ok"} <= allowed, seen
    assert sum(seen[key] for key in seen if key[0] == "ValueError") == 16  # every thread ended


def test_context_manager(scenarios):
    def plan(make: Callable[[], grpc.Channel], label: str) -> Any:
        made = make()
        with made as channel:
            _, metadata = scenarios.call(label, OK_SCRIPT)
            inside = channel.unary_unary(method_path(UU))(b"req", metadata=metadata)
        after = outcome(lambda: channel.unary_unary(method_path(UU))(b"req"))
        return channel is made, inside, after

    raw = plan(lambda: grpc.insecure_channel(scenarios.address), "raw")
    assert plan(lambda: gz.connect_sync("direct:///" + scenarios.address), "gz") == raw


def test_channel_ready_future_and_subscribe(channels):
    def plan(channel, label):
        ready = grpc.channel_ready_future(channel).result(timeout=HANG)
        states: list[grpc.ChannelConnectivity] = []
        seen = threading.Event()

        def callback(state: grpc.ChannelConnectivity) -> None:
            states.append(state)
            seen.set()

        channel.subscribe(callback, try_to_connect=True)
        try:
            assert seen.wait(HANG), f"{label}: the subscriber was never called"
        finally:
            channel.unsubscribe(callback)
            _polling_stopped(channel)
        return ready, states[0]

    compare(channels, plan)


def _polling_stopped(channel: grpc.Channel) -> None:
    """Until raw grpc's connectivity thread has seen it has no subscriber left: it raises in
    its own thread if the channel closes while it polls (grpc's, whatever gz does)."""
    state = getattr(channel, "_connectivity_state", None)
    deadline = time.monotonic() + HANG
    while state is not None and state.polling and time.monotonic() < deadline:
        time.sleep(0.02)


def test_channel_ready_future_of_an_endpoint_that_is_down(down_channels):
    def plan(channel, label):
        ready = grpc.channel_ready_future(channel)
        waited = outcome(lambda: ready.result(timeout=0.5))  # grpc.FutureTimeoutError
        cancelled = ready.cancel()
        _polling_stopped(channel)
        return waited, cancelled, ready.cancelled(), ready.done()

    compare(down_channels, plan)


def test_stubs_made_on_the_channel_work_in_every_kind(serve_greeter_sync):
    """A generated stub takes the channel unchanged, for every call kind."""
    service = serve_greeter_sync()
    with gz.connect_sync("direct:///" + service.address) as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)
        request = greeter_pb2.HelloRequest
        replies = [
            stub.SayHello(request(name="unary")).message,
            *(reply.message for reply in stub.LotsOfReplies(request(name="s", count=2))),
            stub.LotsOfGreetings(iter([request(name="a"), request(name="b")])).message,
            *(reply.message for reply in stub.BidiHello(iter([request(name="x")]))),
        ]
    assert replies == [
        "Hello, unary!", "Hello, s! (1/2)", "Hello, s! (2/2)", "Hello, a, b!", "Hello, x!"
    ]  # fmt: skip


def test_grpc_intercept_channel_takes_the_channel(serve_greeter_sync):
    """grpc.intercept_channel() wraps a gz channel as it wraps grpc's."""
    service = serve_greeter_sync()
    recorder = Recorder()
    with gz.connect_sync("direct:///" + service.address) as channel:
        stub = greeter_pb2_grpc.GreeterStub(grpc.intercept_channel(channel, recorder))
        request = greeter_pb2.HelloRequest
        assert stub.SayHello(request(name="a")).message == "Hello, a!"
        assert len(list(stub.LotsOfReplies(request(name="a", count=2)))) == 2
        assert stub.LotsOfGreetings(iter([request(name="b")])).message == "Hello, b!"
        assert [r.message for r in stub.BidiHello(iter([request(name="c")]))] == ["Hello, c!"]
    assert [seen[0].rpartition("/")[2] for seen in recorder.seen] == [
        "SayHello", "LotsOfReplies", "LotsOfGreetings", "BidiHello"
    ]  # fmt: skip


# -- retries ------------------------------------------------------------------------------------
class Unavailable(Greeter):
    """A replica that answers every call UNAVAILABLE (as an overloaded or draining proxy does),
    counting them."""

    calls = 0

    async def SayHello(self, request, context):
        type(self).calls += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "this replica is going away")


class Attempts(gz.CallObserver):
    """Every attempt of every call: (peer, attempt number, code)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, int, Any]] = []
        self._lock = threading.Lock()

    def end(self, ctx: gz.CallContext, token: Any, error: BaseException | None) -> None:
        code = None if error is None else error.code()  # type: ignore[attr-defined]
        with self._lock:
            self.seen.append((ctx.peer, ctx.state.get("attempt", 1), code))


@pytest.mark.parametrize("how", ["blocking", "future"])
def test_unavailable_from_one_endpoint_is_retried_on_another(serve_greeter_sync, how):
    """Default retries: a call that one endpoint answers UNAVAILABLE is tried again on the
    other (blocking calls in the caller's thread, future() from the background loop)."""
    Unavailable.calls = 0
    failing, live = serve_greeter_sync(Unavailable), serve_greeter_sync()
    target = f"direct:///{failing.address},{live.address}"
    attempts = Attempts()
    with gz.connect_sync(target, middleware=[attempts]) as channel:
        all_usable(channel, 2)  # else a retry may find no other endpoint to go to
        say_hello = greeter_pb2_grpc.GreeterStub(channel).SayHello
        hellos = [greeter_pb2.HelloRequest(name=str(i)) for i in range(20)]
        # one call after the other: the failing endpoint is ejected after a few failures, within
        # the retry budget (a burst of calls could all pick it first and exhaust the budget)
        if how == "blocking":
            served = [say_hello(hello).served_by for hello in hellos]
        else:
            served = [say_hello.future(hello).result(HANG).served_by for hello in hellos]
    assert set(served) == {live.address}
    assert Unavailable.calls > 0, "the failing replica was never picked: nothing was retried"
    retried = [seen for seen in attempts.seen if seen[1] > 1]
    assert retried, attempts.seen
    assert all(peer == live.address and code is None for peer, _, code in retried), attempts.seen
    failed = [seen for seen in attempts.seen if seen[2] is not None]
    expected = [(failing.address, 1, grpc.StatusCode.UNAVAILABLE)] * Unavailable.calls
    assert failed == expected, attempts.seen


def all_usable(channel: gz.SyncBalancedChannel, count: int) -> None:
    """Until ``count`` endpoints of the channel are connected and usable."""
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        endpoints = channel.snapshot()["endpoints"]
        if sum(e["connectivity"] == "READY" and e["usable"] for e in endpoints) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"not {count} endpoints usable: {channel.snapshot()['endpoints']}")


def test_unavailable_without_retries_as_raw_grpc_reports_it(serve_greeter_sync):
    failing = serve_greeter_sync(Unavailable)
    seen = {}
    for label, channel in (
        ("raw", grpc.insecure_channel(failing.address)),
        ("gz", gz.connect_sync("direct:///" + failing.address, retry=False)),
    ):
        with channel:
            stub = greeter_pb2_grpc.GreeterStub(channel)
            seen[label] = outcome(lambda stub=stub: stub.SayHello(greeter_pb2.HelloRequest()))
    assert seen["gz"] == seen["raw"]
    assert seen["raw"][3] == grpc.StatusCode.UNAVAILABLE


def test_calls_succeed_with_a_dead_endpoint_in_the_target(serve_greeter_sync):
    live = serve_greeter_sync()
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    with gz.connect_sync(f"direct:///{dead},{live.address}") as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)
        served = {stub.SayHello(greeter_pb2.HelloRequest()).served_by for _ in range(30)}
    assert served == {live.address}


# -- threads ------------------------------------------------------------------------------------
CALLS = 8_000  # 250 per thread; one call in five through future(), one in five with_call()
SAY_HELLO = Method("/greeter.v1.Greeter/SayHello", Kind.UNARY_UNARY, "client")


def test_one_channel_shared_by_32_threads(server_process):
    replicas = [server_process() for _ in range(3)]

    async def serving() -> None:
        await asyncio.gather(*(replica.wait_serving() for replica in replicas))

    asyncio.run(serving())
    stats = collector().stats(SAY_HELLO)  # metrics are on by default
    with stats.lock:
        started, ok, picks = stats.started, stats.handled.get(grpc.StatusCode.OK, 0), stats.picks
        picks = dict(picks)
    target = "direct:///" + ",".join(replica.address for replica in replicas)
    with gz.connect_sync(target) as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)

        def call(i: int) -> str:
            request = greeter_pb2.HelloRequest(name=str(i))
            if i % 10 == 1:
                return stub.SayHello.with_call(request)[0].served_by
            if i % 10 == 2:
                return stub.SayHello.future(request).result(timeout=HANG).served_by
            return stub.SayHello(request).served_by

        with ThreadPoolExecutor(32) as pool:
            served = collections.Counter(pool.map(call, range(CALLS)))
        endpoints = channel.snapshot()["endpoints"]
    assert sum(served.values()) == CALLS
    assert set(served) == {replica.address for replica in replicas}, served
    assert [endpoint["in_flight"] for endpoint in endpoints] == [0, 0, 0], endpoints
    with stats.lock:
        assert stats.started - started == CALLS
        assert stats.handled.get(grpc.StatusCode.OK, 0) - ok == CALLS
        assert {peer: stats.picks.get(peer, 0) - picks.get(peer, 0) for peer in served} == served


def test_stream_metrics_count_messages_as_connect_does(serve_greeter_sync):
    """grpc_client_msg_sent/received of the four call kinds: connect_sync() counts what
    connect() counts."""
    service = serve_greeter_sync()
    target = "direct:///" + service.address
    request = greeter_pb2.HelloRequest
    kinds = {
        "SayHello": Kind.UNARY_UNARY,
        "LotsOfReplies": Kind.UNARY_STREAM,
        "LotsOfGreetings": Kind.STREAM_UNARY,
        "BidiHello": Kind.STREAM_STREAM,
    }

    def counts() -> dict[str, tuple[int, int, int]]:
        found = {}
        for name, kind in kinds.items():
            stats = collector().stats(Method(f"/greeter.v1.Greeter/{name}", kind, "client"))
            with stats.lock:
                found[name] = (stats.started, stats.sent, stats.received)
        return found

    def counted(calls: Callable[[], None]) -> dict[str, tuple[int, ...]]:
        before = counts()
        calls()
        after = counts()
        return {k: tuple(a - b for a, b in zip(after[k], before[k], strict=True)) for k in after}

    async def with_connect() -> None:
        async with gz.connect(target) as channel:
            stub = greeter_pb2_grpc.GreeterStub(channel)
            await stub.SayHello(request(name="a"))
            [reply async for reply in stub.LotsOfReplies(request(name="a", count=3))]
            await stub.LotsOfGreetings(iter([request(name=n) for n in "abc"]))
            [reply async for reply in stub.BidiHello(iter([request(name=n) for n in "abc"]))]

    def with_connect_sync() -> None:
        with gz.connect_sync(target) as channel:
            stub = greeter_pb2_grpc.GreeterStub(channel)
            stub.SayHello(request(name="a"))
            list(stub.LotsOfReplies(request(name="a", count=3)))
            stub.LotsOfGreetings(iter([request(name=n) for n in "abc"]))
            list(stub.BidiHello(iter([request(name=n) for n in "abc"])))

    expected = counted(lambda: asyncio.run(with_connect()))
    assert expected["LotsOfReplies"] == (1, 1, 3)  # the async client's own counts
    assert counted(with_connect_sync) == expected


# -- middleware ---------------------------------------------------------------------------------
class Rewriting(gz.Middleware):
    async def unary(self, ctx, request, call_next):
        return await call_next(ctx, request)


class StreamWrapping(gz.Middleware):
    def stream(self, ctx, request, call_next):
        return call_next(ctx, request)


class ObserverWithAwait(gz.CallObserver):
    """An observer that also overrides unary: connect() runs its coroutine; a sync channel
    cannot, so it must refuse it rather than skip the override."""

    async def unary(self, ctx, request, call_next):
        response = await call_next(ctx, request)
        return response


@pytest.mark.parametrize("middleware", [Rewriting, StreamWrapping, ObserverWithAwait])
def test_middleware_that_needs_a_loop_is_refused(scenarios, middleware):
    with pytest.raises(TypeError, match=middleware.__name__):
        gz.connect_sync("direct:///" + scenarios.address, middleware=[middleware()])


class Observer(gz.CallObserver):
    """Records begin and end of every call, and adds metadata as the call begins."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def begin(self, ctx: gz.CallContext) -> str:
        ctx.metadata.append(("x-user-observer", "1"))
        with self._lock:
            self.events.append(("begin", ctx.method.name, ctx.peer, threading.get_ident()))
        return ctx.method.name

    def end(self, ctx: gz.CallContext, token: Any, error: BaseException | None) -> None:
        code = None if error is None else error.code()  # type: ignore[attr-defined]
        with self._lock:
            self.events.append(("end", token, ctx.peer, code, isinstance(error, grpc.RpcError)))

    def message(self, ctx: gz.CallContext, is_request: bool) -> None:
        with self._lock:
            self.events.append(("message", ctx.method.name, is_request))

    def ended(self, count: int) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            with self._lock:
                ends = [event for event in self.events if event[0] == "end"]
            if len(ends) >= count:
                return ends
            time.sleep(0.01)
        return ends


def test_call_observer_sees_begin_and_end_of_every_call(scenarios):
    observer = Observer()
    peer = scenarios.address
    caller = threading.get_ident()
    PD = grpc.StatusCode.PERMISSION_DENIED
    with gz.connect_sync("direct:///" + peer, middleware=[observer], retry=False) as channel:
        unary = channel.unary_unary(method_path(UU))
        ok_id, metadata = scenarios.call("observed", OK_SCRIPT)
        unary(b"req", metadata=metadata)
        _, failing = scenarios.call("observed", ERROR_SCRIPTS["abort with trailers"])
        outcome(lambda: unary.with_call(b"req", metadata=failing))
        unary.future(b"req", metadata=failing).exception(timeout=HANG)
        _, metadata = scenarios.call("observed", US_OK)
        list(channel.unary_stream(method_path(US))(b"req", metadata=metadata))
        _, metadata = scenarios.call("observed", (INIT, send("m1"), sleep(5)))
        stream = channel.unary_stream(method_path(US))(b"req", metadata=metadata)
        next(stream)
        stream.cancel()
        _, metadata = scenarios.call("observed", (RECV,))
        channel.stream_unary(method_path(SU))(requests(b"a"), metadata=metadata)
        _, metadata = scenarios.call("observed", (ECHO,))
        list(channel.stream_stream(method_path(SS))(requests(b"a"), metadata=metadata))
        ends = observer.ended(7)
    begins = [event for event in observer.events if event[0] == "begin"]
    # The first call begins before the target is resolved, so without a peer yet (as a
    # connect() channel's first call); every later one after its endpoint is picked.
    assert begins == [
        ("begin", name, peer if i else None, caller)
        for i, name in enumerate(
            ("UnaryUnary",) * 3 + ("UnaryStream",) * 2 + ("StreamUnary", "StreamStream")
        )
    ]
    assert sorted(ends, key=str) == sorted(
        [
            ("end", "UnaryUnary", peer, None, False),
            ("end", "UnaryUnary", peer, PD, True),  # with_call
            ("end", "UnaryUnary", peer, PD, True),  # future()
            ("end", "UnaryStream", peer, None, False),
            ("end", "UnaryStream", peer, grpc.StatusCode.CANCELLED, True),
            ("end", "StreamUnary", peer, None, False),
            ("end", "StreamStream", peer, None, False),
        ],
        key=str,
    )
    assert ("x-user-observer", "1") in scenarios.saw(ok_id)[0]  # begin's metadata was sent
    # the messages of streams (not the one message of a unary side)
    messages = collections.Counter(event[1:] for event in observer.events if event[0] == "message")
    assert messages == {
        ("UnaryStream", False): 3,  # two, then one before the cancel
        ("StreamUnary", True): 1,
        ("StreamStream", True): 1,
        ("StreamStream", False): 1,
    }


# -- the background thread ----------------------------------------------------------------------
def background_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == THREAD_NAME]


def test_close_stops_the_background_thread(scenarios):
    assert background_threads() == [], "a sync channel of another test was left open"
    first = gz.connect_sync("direct:///" + scenarios.address)
    second = gz.connect_sync("direct:///" + scenarios.address)
    for channel in (first, second):
        channel.unary_unary(method_path(UU))(b"req", timeout=HANG)
    assert len(background_threads()) == 1  # one per process, not per channel
    first.close()
    assert len(background_threads()) == 1  # the second channel still needs it
    second.unary_unary(method_path(UU))(b"req", timeout=HANG)
    second.close()
    assert background_threads() == []
    second.close()  # twice is fine


def test_a_process_that_never_closes_its_channel_exits(scenarios):
    script = f"""
import json, gz
channel = gz.connect_sync("direct:///{scenarios.address}")
print(channel.unary_unary("/{SERVICE}/UnaryUnary")(b"req", timeout=10))
stream = channel.unary_stream("/{SERVICE}/UnaryStream")(
    b"req", metadata=(("x-script", json.dumps([["send", "m1"], ["sleep", 5]])),)
)
print(next(stream))  # still streaming as the interpreter exits
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["b'reply:req'", "b'm1'"]
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


def test_a_dropped_channel_is_collected_and_stops_its_work(scenarios):
    """As a grpc.Channel that nobody references any more is collected (and closed), a dropped
    connect_sync channel is collected, and its background work stops."""
    assert background_threads() == [], "a sync channel of another test was left open"
    refs = {}
    for label, make in (
        ("raw", lambda: grpc.insecure_channel(scenarios.address)),
        ("gz", lambda: gz.connect_sync("direct:///" + scenarios.address)),
    ):
        channel = make()
        channel.unary_unary(method_path(UU))(b"req", timeout=HANG)
        refs[label] = weakref.ref(channel)
        del channel
    gc.collect()
    left = refs["gz"]()
    try:
        assert refs["raw"]() is None
        assert left is None, "the gz channel is still referenced after it was dropped"
        deadline = time.monotonic() + HANG
        while background_threads() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert background_threads() == []
    finally:
        if left is not None:
            left.close()  # so that the tests after this one start without it
