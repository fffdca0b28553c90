"""The client half of the differential suite: one scenario played through a raw grpc.aio channel
and through gz.connect() channels, against the same raw grpc.aio server.

A scenario is a server script (what the server does, step by step: initial metadata, pauses,
messages, reading or echoing the requests, trailing metadata, a status or an abort) and a client
plan (what the caller does with the call object, in order). Playing it records everything the
caller observes, each with the time it became available relative to the start of the call, plus
what the server saw (the caller's metadata, the requests, how the handler ended). Two recordings
are compared op by op: the same results, and times within TOLERANCE of each other.

The server is plain grpc.aio with bytes in and out (no serializers); the script travels in the
call's metadata (``x-script``, JSON) and the server files what it saw under ``x-call-id``: only
the caller's own ``x-user-*`` metadata, so what gz adds on the way (``traceparent``, a deadline)
is not compared; the caller sees its ``x-user-*`` metadata come back as ``x-echo-*`` trailers.

Scenarios are written so that raw grpc.aio itself is deterministic: the generated server scripts
pause GAP before everything they do, so a caller that acts right after something arrived is never
racing the server's next step (checked: raw against a second raw channel, hundreds of examples).
An operation of raw grpc.aio that does not return in HANG seconds marks the scenario as broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

import gz

SERVICE = "gz.differential.Scenario"
KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
REQUEST_STREAMING = frozenset({"stream_unary", "stream_stream"})
RESPONSE_STREAMING = frozenset({"unary_stream", "stream_stream"})

HANG = 5.0  # seconds an operation may take before it counts as hung
TOLERANCE = 0.1  # how far apart (seconds) raw and gz may be in when a result becomes available
GAP = 0.12  # the pause the generated server scripts make before each thing they do
SETTLE = GAP / 2  # how long a generated caller waits before giving up: half a GAP
END_MARGIN = 0.15  # after the script's own time: the call has ended, its end has arrived
STAGGER = 0.05  # seconds between the starts of scenarios played together

# -- server scripts (JSON-able steps) ---------------------------------------------------------
INIT = ("md", (("x-init", "i"),))  # send initial metadata now
TRAIL = ("trail", (("x-trail", "t"),))  # trailing metadata (and the caller's x-user-* echoed)
RECV = ("recv",)  # read every request (to the caller's done_writing)
ECHO = ("echo",)  # send each request back as it comes, to the caller's done_writing
RAISE = ("raise",)  # the handler raises: UNKNOWN


def sleep(seconds: float) -> tuple[str, float]:
    return ("sleep", seconds)


def send(text: str) -> tuple[str, str]:
    return ("send", text)


def status(code: str, details: str) -> tuple[str, str, str]:
    """End with this status, set on the context (no exception)."""
    return ("status", code, details)


def abort(code: str, details: str) -> tuple[str, str, str]:
    return ("abort", code, details)


def method_path(kind: str) -> str:
    return f"/{SERVICE}/{kind.title().replace('_', '')}"


# -- the server ---------------------------------------------------------------------------------
@dataclass
class ServerRecord:
    """What the server saw of one call."""

    user_metadata: tuple[tuple[str, str], ...]
    requests: list[bytes] = field(default_factory=list)
    outcome: str = "running"  # finished, aborted, raised, cancelled

    def view(self) -> tuple[Any, ...]:
        return (self.user_metadata, tuple(self.requests), self.outcome)


class ScenarioServer:
    """A raw grpc.aio server on 127.0.0.1 playing the script each call carries."""

    def __init__(self) -> None:
        self.records: dict[str, ServerRecord] = {}
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self, port: int = 0) -> None:
        """Serve on ``port`` (0: one the kernel picks; a test may choose it beforehand, to start
        the server after a client waits for it)."""
        server = grpc.aio.server()
        handlers = {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(self._unary_unary),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(self._unary_stream),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(self._stream_unary),
            "StreamStream": grpc.stream_stream_rpc_method_handler(self._stream_stream),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)

    def view(self, call_id: str) -> tuple[Any, ...] | str:
        record = self.records.get(call_id)
        return "never called" if record is None else record.view()

    async def _unary_unary(self, request: bytes, context: Any) -> bytes | None:
        return await self._play(context, request)

    async def _unary_stream(self, request: bytes, context: Any) -> None:
        await self._play(context, request)

    async def _stream_unary(self, requests: Any, context: Any) -> bytes | None:
        return await self._play(context, None)

    async def _stream_stream(self, requests: Any, context: Any) -> None:
        await self._play(context, None)

    async def _play(self, context: Any, request: bytes | None) -> bytes | None:
        metadata = [(key, value) for key, value in context.invocation_metadata() or ()]
        values = dict(metadata)
        user = tuple(sorted((k, v) for k, v in metadata if k.startswith("x-user-")))
        record = self.records[values.get("x-call-id", "")] = ServerRecord(user)
        if request is not None:
            record.requests.append(request)
        echoed = tuple((f"x-echo-{key[7:]}", value) for key, value in user)
        try:
            for step in json.loads(values.get("x-script", "[]")):
                await self._step(context, record, step, echoed)
        except asyncio.CancelledError:
            record.outcome = "cancelled"
            raise
        except grpc.aio.AbortError:
            record.outcome = "aborted"
            raise
        except Exception:
            record.outcome = "raised"
            raise
        record.outcome = "finished"
        return b"reply:" + b",".join(record.requests)

    @staticmethod
    async def _step(context: Any, record: ServerRecord, step: list[Any], echoed: Any) -> None:
        op, args = step[0], step[1:]
        if op == "md":
            await context.send_initial_metadata(tuple(map(tuple, args[0])))
        elif op == "sleep":
            await asyncio.sleep(args[0])
        elif op == "send":
            await context.write(args[0].encode())
        elif op in ("recv", "echo"):
            while (request := await context.read()) is not grpc.aio.EOF:
                record.requests.append(request)
                if op == "echo":
                    await context.write(request)
        elif op == "trail":
            context.set_trailing_metadata((*map(tuple, args[0]), *echoed))
        elif op == "status":
            context.set_code(grpc.StatusCode[args[0]])
            context.set_details(args[1])
        elif op == "abort":
            await context.abort(grpc.StatusCode[args[0]], args[1])
        elif op == "raise":
            raise RuntimeError("scripted failure")
        else:
            raise AssertionError(f"unknown script step {step!r}")


# -- the clients --------------------------------------------------------------------------------
class PassThrough(gz.Middleware):
    """A user's middleware that changes nothing: being there sends every call down the chain."""

    async def unary(self, ctx: Any, request: Any, call_next: Any) -> Any:
        return await call_next(ctx, request)

    async def stream(self, ctx: Any, request: Any, call_next: Any) -> AsyncIterator[Any]:
        async for response in call_next(ctx, request):
            yield response


def _hot_settings() -> gz.ClientSettings:
    return gz.ClientSettings.from_env(tracing=False, metrics=False, call_log=False, deadline=False)


def _target(port: int) -> str:
    return f"direct:///127.0.0.1:{port}"


_fresh = itertools.count()


def _cold(port: int) -> grpc.aio.Channel:
    """A default connect() with a connection of its own (a channel option no other channel has:
    grpc shares connections between channels with the same target and options), as a client
    process that just started has."""
    return gz.connect(_target(port), options=[("gz.differential.fresh", next(_fresh))])


# How each client configuration makes its channel. gz_cold is made afresh for every call, so that
# the call is made before the target is resolved and connected (the chained path).
CHANNELS: dict[str, Callable[[int], grpc.aio.Channel]] = {
    "raw": lambda port: grpc.aio.insecure_channel(f"127.0.0.1:{port}"),
    "gz_default": lambda port: gz.connect(_target(port)),
    "gz_hot": lambda port: gz.connect(_target(port), settings=_hot_settings()),
    "gz_middleware": lambda port: gz.connect(_target(port), middleware=[PassThrough()]),
    "gz_cold": _cold,
}
GZ_CLIENTS = tuple(name for name in CHANNELS if name != "raw")
FRESH = frozenset({"gz_cold"})


# -- scenarios ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """A server script and a client plan for one call of ``kind``.

    Plan ops: ("await",), ("iter",) (async for to the end), ("anext",), ("read",),
    ("write", bytes), ("done_writing",), ("code",), ("details",), ("initial_metadata",),
    ("trailing_metadata",), ("wait_for_connection",) (each awaited, at most HANG seconds);
    ("cancel",) (records cancel(), then cancelled() and done() at once), ("cancelled",),
    ("done",), ("time_remaining",), ("callback",) (add_done_callback), ("sleep", seconds),
    ("within", seconds, op) gives an awaited op that long (asyncio.wait_for); ("bg", op) runs an
    awaited op in a task of its own, its result recorded after the plan. ``iterator``: for
    request-streaming kinds, the requests as an async iterator passed to the call instead of
    write()/done_writing() (FAILING_REQUEST: it raises there).
    ``metadata``: the caller's; the server echoes x-user-* keys back in its trailing metadata.
    """

    name: str
    kind: str
    script: tuple[Any, ...]
    plan: tuple[Any, ...]
    request: bytes = b"req"
    iterator: tuple[bytes, ...] | None = None
    sync_iterator: bool = False  # the requests as a plain iterator, which grpc.aio takes too
    timeout: float | None = None
    metadata: tuple[tuple[str, str | bytes], ...] = (("x-user-a", "1"), ("x-user-b-bin", b"\0\1"))

    def duration(self) -> float:
        """How long the script runs at most (capped by the timeout)."""
        total = sum(step[1] for step in self.script if step[0] == "sleep")
        return total if self.timeout is None else min(total, self.timeout)


Entry = tuple[str, Any, tuple[float, ...]]  # (op label, result, times it became available)


@dataclass
class Observation:
    client: str
    entries: list[Entry]
    server: Any


def _metadata(metadata: Any) -> Any:
    """Metadata as a caller compares it: a tuple of (key, value) pairs."""
    if metadata is None:
        return None
    try:
        return tuple((key, value) for key, value in metadata)
    except (TypeError, ValueError):
        return ("not metadata", repr(metadata))


# grpc core words a passed deadline either way, whichever of the client's timer and the server's
# reset stream reports it first: not something a channel decides.
_SAME_DETAILS = {"Stream removed (Deadline Exceeded)": "Deadline Exceeded"}


def _details(details: Any) -> Any:
    return _SAME_DETAILS.get(details, details) if isinstance(details, str) else details


def _error(error: BaseException) -> tuple[Any, ...]:
    if isinstance(error, grpc.aio.AioRpcError):
        return (
            "AioRpcError",
            error.code().name,
            _details(error.details()),
            _metadata(error.initial_metadata()),
            _metadata(error.trailing_metadata()),
        )
    return (type(error).__name__,)


def _value(value: Any) -> Any:
    if value is grpc.aio.EOF:
        return "EOF"
    if isinstance(value, grpc.StatusCode):
        return value.name
    if isinstance(value, grpc.aio.Metadata):
        return _metadata(value)
    if isinstance(value, float):
        return round(value, 3)
    return value


FAILING_REQUEST = b"!raise"  # in Scenario.iterator: the request iterator raises instead


async def _request_iterator(requests: Sequence[bytes]) -> AsyncIterator[bytes]:
    for request in requests:
        if request == FAILING_REQUEST:
            raise RuntimeError("the request iterator failed")
        yield request


def _sync_request_iterator(requests: Sequence[bytes]) -> Iterator[bytes]:
    for request in requests:
        if request == FAILING_REQUEST:
            raise RuntimeError("the request iterator failed")
        yield request


class _Player:
    """Plays a plan on one call object, recording results and when they arrived."""

    def __init__(self, call: Any, start: float) -> None:
        self.call = call
        self.start = start
        self.loop = asyncio.get_running_loop()
        self.hung = False
        self.background: list[tuple[str, asyncio.Task[Any] | None]] = []  # None: skipped
        self.fired: list[tuple[int, float, bool]] = []  # done callbacks: (op index, time, arg)

    def now(self) -> float:
        return self.loop.time() - self.start

    async def play(self, plan: Sequence[Any]) -> list[Entry]:
        entries: list[Entry] = []
        for index, op in enumerate(plan):
            label = f"{index}:{op[0]}"
            if op[0] == "bg":
                task = None if self.hung else asyncio.ensure_future(self._timed(op[1]))
                self.background.append((f"{index}:bg {op[1][0]}", task))
            elif self.hung:
                entries.append((label, "skipped after a hang", ()))
            elif op[0] in _SYNC_OPS:
                entries.append((label, self._sync(index, op), ()))
            else:
                result, times = await self._timed(op)
                entries.append((label, result, times))
        for label, task in self.background:
            result, times = ("skipped after a hang", ()) if task is None else await task
            entries.append((label, result, times))
        return entries

    def _sync(self, index: int, op: Any) -> Any:
        call = self.call
        try:
            if op[0] == "cancel":
                return (call.cancel(), call.cancelled(), call.done())
            if op[0] == "cancelled":
                return call.cancelled()
            if op[0] == "done":
                return call.done()
            if op[0] == "time_remaining":
                return _value(call.time_remaining())
            before = len(self.fired)

            def fired(arg: Any) -> None:
                self.fired.append((index, self.now(), arg is call))

            call.add_done_callback(fired)
            return ("fired at once", len(self.fired) - before)
        except Exception as error:
            return ("raised", *_error(error))

    async def _timed(self, op: Any) -> tuple[Any, tuple[float, ...]]:
        """Run an awaited op, at most HANG seconds: (result, times)."""
        task = asyncio.ensure_future(self._do(op))
        done, _ = await asyncio.wait({task}, timeout=HANG)
        if not done:
            self.hung = True
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
            return "HANG", ()
        try:
            result, marks = task.result()
        except (Exception, asyncio.CancelledError) as error:
            result, marks = ("raised", *_error(error)), ()
        return result, (*marks, self.now())

    async def _do(self, op: Any) -> tuple[Any, tuple[float, ...]]:
        call, name = self.call, op[0]
        if name == "await":
            return _value(await call), ()
        if name == "iter":
            messages: list[Any] = []
            marks: list[float] = []
            try:
                async for message in call:
                    messages.append(message)
                    marks.append(self.now())
            except (Exception, asyncio.CancelledError) as error:
                return (tuple(messages), ("raised", *_error(error))), tuple(marks)
            return (tuple(messages), "end"), tuple(marks)
        if name == "anext":
            try:
                return _value(await call.__aiter__().__anext__()), ()
            except StopAsyncIteration:
                return "StopAsyncIteration", ()
        if name == "read":
            return _value(await call.read()), ()
        if name == "write":
            return _value(await call.write(op[1])), ()
        if name in ("done_writing", "code", "wait_for_connection"):
            return _value(await getattr(call, name)()), ()
        if name == "details":
            return _details(await call.details()), ()
        if name in ("initial_metadata", "trailing_metadata"):
            return _metadata(await getattr(call, name)()), ()
        if name == "within":  # the caller gives up after op[1] seconds (asyncio.wait_for)
            return await asyncio.wait_for(self._do(op[2]), op[1])
        if name == "sleep":
            await asyncio.sleep(op[1])
            return None, ()
        raise AssertionError(f"unknown plan op {op!r}")


_SYNC_OPS = frozenset({"cancel", "cancelled", "done", "time_remaining", "callback"})


async def play(
    channel: grpc.aio.Channel, server: ScenarioServer, scenario: Scenario, client: str, call_id: str
) -> Observation:
    """Make the scenario's call on ``channel`` and play its plan: what the caller observed."""
    loop = asyncio.get_running_loop()
    metadata = (
        ("x-call-id", call_id),
        ("x-script", json.dumps(scenario.script)),
        *scenario.metadata,
    )
    multicallable = getattr(channel, scenario.kind)(method_path(scenario.kind))
    if scenario.kind in REQUEST_STREAMING and scenario.iterator is not None:
        if scenario.sync_iterator:
            first = _sync_request_iterator(scenario.iterator)
        else:
            first = _request_iterator(scenario.iterator)
    elif scenario.kind in REQUEST_STREAMING:
        first = None
    else:
        first = scenario.request
    start = loop.time()
    call = multicallable(first, timeout=scenario.timeout, metadata=metadata)
    player = _Player(call, start)
    entries: list[Entry] = []
    try:
        entries.append(("call", _call_class(scenario.kind, call), ()))
        entries += await player.play(scenario.plan)
        # Let the script run out: by then the call has ended unless the plan left it waiting.
        await asyncio.sleep(max(0.0, scenario.duration() + END_MARGIN - player.now()))
        entries.append(("end: done(), cancelled()", (call.done(), call.cancelled()), ()))
        fired = sorted(player.fired)
        entries.append(
            (
                "end: done callbacks (op, call object)",
                tuple((index, is_call) for index, _, is_call in fired),
                tuple(at for _, at, _ in fired),
            )
        )
        view = server.view(call_id)
        if isinstance(view, tuple) and _may_cancel(scenario):
            # whether requests written just before a cancel reach the server is a race, raw too
            view = (view[0], "requests: not compared, the call was cancelled", view[2])
        return Observation(client, entries, view)
    finally:
        if not call.done():
            call.cancel()


def _may_cancel(scenario: Scenario) -> bool:
    """Whether the call may be cancelled: by cancel(), a caller giving up, a failing iterator."""
    ops = [op[1] if op[0] == "bg" else op for op in scenario.plan]
    return any(op[0] in ("cancel", "within") for op in ops) or FAILING_REQUEST in (
        scenario.iterator or ()
    )


def _call_class(kind: str, call: Any) -> bool:
    """Whether the call object is an instance of grpc.aio's abstract call class of its kind."""
    return isinstance(call, getattr(grpc.aio, kind.title().replace("_", "") + "Call"))


# -- comparing ----------------------------------------------------------------------------------
def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    if _number(a) and _number(b):  # time_remaining(): grpc says 0 once the deadline passed
        return math.isclose(a, b, abs_tol=TOLERANCE)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _racing_its_status(label: str, expected: Any, got: Any) -> bool:
    """wait_for_connection() asked as the status arrives (a trailers-only answer resolves the
    initial metadata and the status together): grpc.aio's own call returns or raises the error
    depending on which of its two callbacks ran first, so either answer is grpc's."""
    raised = [
        r for r in (expected, got) if isinstance(r, tuple) and r[:2] == ("raised", "AioRpcError")
    ]
    return label.endswith("wait_for_connection") and None in (expected, got) and len(raised) == 1


def _racing_a_cancel(raw: Observation, label: str, expected: Any, got: Any) -> bool:
    """initial_metadata() of a call cancelled while the server's metadata is on its way: whether
    they arrive before the cancel is a race on the wire (raw against raw too), so empty
    metadata on one side and the server's on the other are both grpc's answer."""
    cancelled = any(entry[0].endswith("cancel") for entry in raw.entries)
    return (
        cancelled
        and label.endswith("initial_metadata")
        and () in (expected, got)
        and all(isinstance(r, tuple) for r in (expected, got))
    )


def differences(raw: Observation, other: Observation) -> list[str]:
    """What ``other`` observed differently from ``raw``; empty when they agree."""
    found = [
        f"{label}: raw grpc.aio itself never returned: the scenario is at fault"
        for label, result, _ in raw.entries
        if result == "HANG"
    ]
    for index in range(max(len(raw.entries), len(other.entries))):
        if index >= len(raw.entries) or index >= len(other.entries):
            found.append(f"entry {index} exists in only one of them")
            continue
        (label, expected, at), (label2, got, at2) = raw.entries[index], other.entries[index]
        if label != label2:
            found.append(f"entry {index}: raw has {label}, {other.client} {label2}")
        elif not (
            _same(expected, got)
            or _racing_its_status(label, expected, got)
            or _racing_a_cancel(raw, label, expected, got)
        ):
            found.append(f"{label}: raw -> {expected!r}; {other.client} -> {got!r}")
        elif len(at) != len(at2) or any(
            abs(x - y) > TOLERANCE for x, y in zip(at, at2, strict=True)
        ):
            found.append(f"{label}: available at {_times(at2)} s; raw at {_times(at)} s")
    if raw.server != other.server:
        found.append(f"server saw: raw {raw.server!r}; {other.client} {other.server!r}")
    return found


def _times(times: Sequence[float]) -> str:
    return ", ".join(f"{t:.3f}" for t in times) or "-"


# -- the harness --------------------------------------------------------------------------------
class Harness:
    """One event loop (driven by the tests: hypothesis examples are synchronous), one scenario
    server and one channel per client configuration, for a whole test module."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = ScenarioServer()
        self.channels: dict[str, grpc.aio.Channel] = {}
        self._ids = itertools.count()
        self.results: dict[str, Any] = {}  # for the tests: what they played once, shared

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(awaitable)

    def start(self) -> Harness:
        self.run(self._start())
        return self

    async def _start(self) -> None:
        await self.server.start()
        for name, make in CHANNELS.items():
            if name not in FRESH:
                channel = self.channels[name] = make(self.server.port)
                await asyncio.wait_for(channel.channel_ready(), 10)

    def close(self) -> None:
        try:
            self.run(self._close())
            self.run(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    async def _close(self) -> None:
        for channel in self.channels.values():
            with contextlib.suppress(Exception):
                await channel.close()
        await self.server.stop()
        # What calls left behind (a call's own tasks, request queues nobody reads any more)
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=2.0)

    async def observe(self, scenario: Scenario, client: str) -> Observation:
        call_id = f"{client}-{next(self._ids)}"
        if client not in FRESH:
            return await play(self.channels[client], self.server, scenario, client, call_id)
        channel = CHANNELS[client](self.server.port)
        try:
            return await play(channel, self.server, scenario, client, call_id)
        finally:
            await channel.close()

    async def compare(
        self, scenario: Scenario, clients: Sequence[str] = GZ_CLIENTS
    ) -> dict[str, list[str]]:
        """Play ``scenario`` through the raw channel and every client in ``clients`` at the same
        time: the differences of each from raw."""
        raw, *others = await asyncio.gather(
            self.observe(scenario, "raw"), *(self.observe(scenario, c) for c in clients)
        )
        return {other.client: differences(raw, other) for other in others}

    async def compare_many(
        self, scenarios: Sequence[Scenario], clients: Sequence[str] = GZ_CLIENTS
    ) -> list[dict[str, list[str]]]:
        """compare() for each scenario, all under way together but started STAGGER apart, so
        that what hangs costs HANG once and the calls' start-up does not pile up on the loop
        (which would shift the times compared)."""

        async def later(index: int, scenario: Scenario) -> dict[str, list[str]]:
            await asyncio.sleep(index * STAGGER)
            return await self.compare(scenario, clients)

        return await asyncio.gather(*(later(i, s) for i, s in enumerate(scenarios)))


def report(scenario: Scenario, found: Sequence[str]) -> str:
    lines = "\n    ".join(found)
    return f"{scenario.name} ({scenario.kind}):\n    {lines}\n  scenario: {scenario!r}"
