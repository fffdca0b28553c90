"""The server half of the differential suite: one servicer, hosted once by a raw
``grpc.aio.server()`` and once by a gz Service, called by the same raw grpc.aio client.

ScenarioServicer implements every method of server_scenarios.proto in the handler style the
method's name says (``async def``, async generator, ``context.read()``/``context.write()``,
plain ``def``, sync generator); the ``Unimplemented*`` methods are left to the generated base.
What a handler does is a :class:`Script`, registered under a call id before the call (the id
travels in the call's metadata), so the very same operations run in both servers. Each operation's
outcome (what the context method returned, or what it raised) goes to the servicer's
:class:`Journal` under that call id, normalised so the raw server's and gz's can be compared.
On the client, :func:`invoke` records status, details, metadata, messages and when each arrived.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import itertools
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import grpc

import gz

from . import server_scenarios_pb2 as pb
from . import server_scenarios_pb2_grpc as pb_grpc

Message = pb.ScenarioMessage
SERVICE = "gz.differential.server.v1.Scenarios"
CALL_ID = "x-scenario-call"  # the metadata key naming the script a handler runs

# Every method name of grpc.ServicerContext and grpc.aio.ServicerContext: which of them a
# handler's context has is part of what it observes ("surface").
CONTEXT_SURFACE = (
    "abort", "abort_with_status", "add_callback", "add_done_callback", "auth_context", "cancel",
    "cancelled", "code", "details", "disable_next_message_compression", "done",
    "invocation_metadata", "is_active", "peer", "peer_identities", "peer_identity_key", "read",
    "send_initial_metadata", "set_code", "set_compression", "set_details",
    "set_trailing_metadata", "time_remaining", "trailing_metadata", "write",
)  # fmt: skip

# Context methods a script may call without arguments (op ("call", name)).
GETTERS = (
    "peer", "time_remaining", "cancelled", "done", "invocation_metadata", "code", "details",
    "trailing_metadata", "auth_context", "peer_identities", "peer_identity_key", "is_active",
    "disable_next_message_compression",
)  # fmt: skip


@dataclass(frozen=True)
class Style:
    """A method of the scenario service: its call kind and how its handler is written."""

    method: str
    request_streaming: bool
    response_streaming: bool
    sync: bool = False  # a plain def / sync generator: grpc gives it _SyncServicerContext
    context_io: bool = False  # reads with context.read() and writes with context.write()
    implemented: bool = True
    # Odd styles, left out of the general scenarios and tested on their own. A plain def
    # returning a list is called by grpc.aio on the event loop itself, where the sync
    # context's blocking methods (send_initial_metadata, abort) would deadlock.
    odd: bool = False

    @property
    def kind(self) -> str:
        return {
            (False, False): "unary_unary",
            (False, True): "unary_stream",
            (True, False): "stream_unary",
            (True, True): "stream_stream",
        }[(self.request_streaming, self.response_streaming)]


STYLES = {
    style.method: style
    for style in (
        Style("UnaryAsync", False, False),
        Style("ServerStreamAsync", False, True),
        Style("ClientStreamAsync", True, False),
        Style("BidiAsync", True, True),
        Style("ClientStreamReader", True, False, context_io=True),
        Style("ServerStreamWriter", False, True, context_io=True),
        Style("BidiWriter", True, True, context_io=True),
        Style("UnarySync", False, False, sync=True),
        Style("ServerStreamSync", False, True, sync=True),
        Style("ClientStreamSync", True, False, sync=True),
        Style("BidiSync", True, True, sync=True),
        Style("ServerStreamSyncList", False, True, sync=True, odd=True),
        Style("ServerStreamAsyncReturning", False, True, odd=True),
        Style("UnimplementedUnary", False, False, implemented=False),
        Style("UnimplementedServerStream", False, True, implemented=False),
        Style("UnimplementedClientStream", True, False, implemented=False),
        Style("UnimplementedBidi", True, True, implemented=False),
    )
}
IMPLEMENTED = [name for name, style in STYLES.items() if style.implemented and not style.odd]
ASYNC_STYLES = [name for name in IMPLEMENTED if not STYLES[name].sync]
SYNC_STYLES = [name for name in IMPLEMENTED if STYLES[name].sync]
UNIMPLEMENTED = [name for name, style in STYLES.items() if not style.implemented]


# -- scripts ------------------------------------------------------------------------------------
#
# A script is a sequence of operations, each a tuple whose first item names it:
#   ("initial", md)                   context.send_initial_metadata(md)
#   ("trailing", md)                  context.set_trailing_metadata(md)
#   ("code", StatusCode)              context.set_code(code)
#   ("details", str)                  context.set_details(details)
#   ("compression", Compression)      context.set_compression(compression)
#   ("abort", code, details, md|None) context.abort(code, details[, md])
#   ("abort_status", code, details, md) context.abort_with_status(<grpc.Status>)
#   ("call", name)                    context.<name>() (GETTERS), what it returns or raises
#   ("callback",)                     add_done_callback (async) / add_callback (sync context)
#   ("surface",)                      which CONTEXT_SURFACE methods the context has
#   ("write", n)                      n response messages (yield, or context.write())
#   ("read", n)                       n requests (request iterator, or context.read())
#   ("sleep", seconds)                asyncio.sleep / time.sleep
#   ("raise", text)                   raise ValueError(text)
# Metadata is a tuple of (key, value) pairs. Async handlers await what a context method
# returns when it is awaitable; sync handlers never do (they have no loop to await on).

SYNC_WRITE_PAUSE = 0.03  # seconds a sync generator handler pauses after each item it yields
ENDING_OPS = frozenset({"abort", "abort_status"})  # what these raise propagates


@dataclass(frozen=True)
class Script:
    ops: tuple[tuple[Any, ...], ...] = ()
    # Context methods called (without arguments) as the handler exits, however it exits.
    on_exit: tuple[str, ...] = ()
    reply: str = "reply"
    # ServerStreamSyncList only: return None instead of the list (a plain def that forgot to
    # return its responses; grpc.aio then fails iterating None).
    return_none: bool = False


class GrpcStatus(collections.namedtuple("GrpcStatus", ("code", "details", "trailing_metadata")),
                 grpc.Status):  # fmt: skip
    """A grpc.Status as grpcio-status's rpc_status.to_status() makes one."""


SCRIPTS: dict[str, Script] = {}
_call_ids = itertools.count()


class RequestsSent:
    """Set by the client once it wrote all its requests and half-closed. Handlers of request
    streams wait for it before running their script: a server that ends a call while the
    client still writes makes grpc's client report INTERNAL "Internal error from Core" now and
    then, whichever server it is (a race in grpc, not a difference between servers)."""

    def __init__(self) -> None:
        self._loop_event = asyncio.Event()  # made on the servers' loop, where the client runs
        self._thread_event = threading.Event()

    def set(self) -> None:
        self._loop_event.set()
        self._thread_event.set()

    async def wait(self) -> None:
        await asyncio.wait_for(self._loop_event.wait(), 10)

    def wait_in_thread(self) -> None:
        assert self._thread_event.wait(10), "the client never finished writing"


REQUESTS_SENT: dict[str, RequestsSent] = {}


def new_call(script: Script) -> str:
    """Register ``script`` under a fresh call id (the same id is used on both servers)."""
    call_id = f"call-{next(_call_ids)}"
    SCRIPTS[call_id] = script
    return call_id


# -- what handlers observe ----------------------------------------------------------------------

_PEER = re.compile(r"^(ipv4:127\.0\.0\.1|ipv6:\[::1\]):\d+$")


def observed(value: Any) -> Any:
    """``value`` made comparable between the two servers: ports of peers masked, awaitables
    closed and named, floats tagged (compared with a tolerance), containers as tuples."""
    if value is None or isinstance(value, bool | int | bytes):
        return value
    if isinstance(value, str):
        match = _PEER.match(value)
        return f"{match.group(1)}:<port>" if match else value
    if isinstance(value, float):
        return ("float", value)
    if isinstance(value, grpc.StatusCode | grpc.Compression):
        return value.name
    if inspect.iscoroutine(value):
        value.close()  # it will never be awaited: no "never awaited" warning
        return ("awaitable", type(value).__name__)
    if inspect.isawaitable(value):
        return ("awaitable", type(value).__name__)
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), observed(v)) for k, v in value.items())))
    if isinstance(value, tuple | list):
        return tuple(observed(item) for item in value)
    if isinstance(value, Message):
        return ("message", value.text, value.index)
    return ("object", type(value).__name__)


def observed_result(method: str, value: Any) -> Any:
    """What a context method returned, as observed. time_remaining() is a number of seconds,
    compared with a tolerance whatever its type: grpc returns the int 0 once the deadline
    passed, a float just before."""
    if method == "time_remaining" and isinstance(value, int | float) and value is not True:
        return ("float", float(value))
    return observed(value)


def raised(error: BaseException) -> tuple[Any, ...]:
    """An exception as observed: its class and message (for a missing attribute, its name,
    so a gz context class of its own may miss the same methods as grpc's)."""
    if isinstance(error, AttributeError):
        return ("raised", "AttributeError", error.name)
    name = type(error).__name__
    return ("raised", name, str(error))


@dataclass
class CallJournal:
    """What the handler of one call observed."""

    entries: list[tuple[Any, ...]] = field(default_factory=list)
    callbacks_added: int = 0
    callbacks: list[tuple[Any, ...]] = field(default_factory=list)
    ended: bool = False

    def record(self, *entry: Any) -> None:
        self.entries.append(entry)

    def view(self) -> tuple[Any, ...]:
        return (tuple(self.entries), tuple(self.callbacks), self.ended)


class Journal:
    """CallJournals by call id; handlers of sync styles write from worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, CallJournal] = {}

    def call(self, call_id: str) -> CallJournal:
        with self._lock:
            return self._calls.setdefault(call_id, CallJournal())

    def get(self, call_id: str) -> CallJournal | None:
        with self._lock:
            return self._calls.get(call_id)


# -- the servicer -------------------------------------------------------------------------------


class _Run:
    """One handler running its script."""

    def __init__(self, journal: Journal, context: Any, style: str) -> None:
        call_id = dict(context.invocation_metadata() or ()).get(CALL_ID, "")
        self.script = SCRIPTS.get(call_id, Script())
        self.requests_sent = REQUESTS_SENT.get(call_id) if STYLES[style].request_streaming else None
        self.journal = journal.call(call_id)
        self.journal.record("start", style)
        self.context = context
        self.read_count = 0
        self.written = 0

    # The context method (and arguments) an operation calls.
    def _context_call(self, op: tuple[Any, ...], sync: bool) -> tuple[str, tuple[Any, ...]]:
        name, *args = op
        if name == "initial":
            return "send_initial_metadata", (args[0],)
        if name == "trailing":
            return "set_trailing_metadata", (args[0],)
        if name == "code":
            return "set_code", (args[0],)
        if name == "details":
            return "set_details", (args[0],)
        if name == "compression":
            return "set_compression", (args[0],)
        if name == "abort":
            code, details, trailing = args
            return "abort", (code, details) if trailing is None else (code, details, trailing)
        if name == "abort_status":
            return "abort_with_status", (GrpcStatus(*args),)
        if name == "call":
            return args[0], ()
        if name == "callback":
            if sync:
                return "add_callback", (self._sync_callback,)
            return "add_done_callback", (self._async_callback,)
        raise AssertionError(f"unknown operation {op!r}")

    def _async_callback(self, context: Any) -> None:
        self.journal.callbacks.append(
            ("done callback", context is self.context, _try(context, "cancelled"),
             _try(context, "done"))
        )  # fmt: skip

    def _sync_callback(self, *args: Any) -> None:
        self.journal.callbacks.append(("callback", len(args)))

    def _prepare(self, op: tuple[Any, ...], sync: bool) -> Callable[[], Any] | None:
        """The call an operation makes on the context, or None for the others."""
        if op[0] not in ("initial", "trailing", "code", "details", "compression", "abort",
                         "abort_status", "call", "callback"):  # fmt: skip
            return None
        method, args = self._context_call(op, sync)
        if op[0] == "callback":
            self.journal.callbacks_added += 1

        def call() -> Any:
            return getattr(self.context, method)(*args)

        return call

    def _done(self, index: int, op: tuple[Any, ...], result: Any, error: Exception | None) -> None:
        if error is None:
            method = op[1] if op[0] == "call" else op[0]
            self.journal.record(index, op[0], "returned", observed_result(method, result))
        else:
            self.journal.record(index, op[0], *raised(error))
            if op[0] in ENDING_OPS:
                raise error

    def _message(self) -> Message:
        message = Message(text=f"m{self.written}", index=self.written)
        self.written += 1
        return message

    def reply(self) -> Message:
        return Message(text=self.script.reply, index=self.read_count)

    def _read(self, index: int, item: Any) -> None:
        if isinstance(item, Message):
            self.read_count += 1
            self.journal.record(index, "read", item.text)
        else:
            self.journal.record(index, "read", observed(item))

    async def run_async(self, requests: Any, context_io: bool) -> AsyncIterator[Message]:
        """The script in an async handler: yields the messages it does not write itself."""
        if self.requests_sent is not None:
            await self.requests_sent.wait()
        for index, op in enumerate(self.script.ops):
            name = op[0]
            call = self._prepare(op, sync=False)
            if call is not None:
                result, error = None, None
                try:
                    result = call()
                    if inspect.isawaitable(result):
                        result = await result
                except Exception as caught:
                    error = caught
                self._done(index, op, result, error)
            elif name == "surface":
                self.journal.record(index, name, _surface(self.context))
            elif name == "write":
                for _ in range(op[1]):
                    if context_io:
                        try:
                            result = await self.context.write(self._message())
                        except Exception as caught:
                            self.journal.record(index, name, *raised(caught))
                            raise
                        self.journal.record(index, name, "returned", observed(result))
                    else:
                        self.journal.record(index, name, "yield")
                        yield self._message()
            elif name == "read":
                for _ in range(op[1]):
                    if context_io:
                        item = await self.context.read()
                        self._read(index, "EOF" if item is grpc.aio.EOF else item)
                    else:
                        try:
                            item = await anext(requests)
                        except StopAsyncIteration:
                            item = "StopAsyncIteration"
                        self._read(index, item)
            elif name == "sleep":
                await asyncio.sleep(op[1])
            elif name == "raise":
                self.journal.record(index, name)
                raise ValueError(op[1])
            else:
                raise AssertionError(f"unknown operation {op!r}")

    def run_sync(self, requests: Iterator[Any] | None) -> Iterator[Message]:
        """The script in a sync handler: yields the messages to send."""
        if self.requests_sent is not None:
            self.requests_sent.wait_in_thread()
        for index, op in enumerate(self.script.ops):
            name = op[0]
            call = self._prepare(op, sync=True)
            if call is not None:
                result, error = None, None
                try:
                    result = call()
                except Exception as caught:
                    error = caught
                self._done(index, op, result, error)
            elif name == "surface":
                self.journal.record(index, name, _surface(self.context))
            elif name == "write":
                for _ in range(op[1]):
                    self.journal.record(index, name, "yield")
                    yield self._message()
                    # grpc.aio runs a sync generator in a worker thread that goes on at once
                    # while the loop writes the item: without a pause, what the handler does
                    # next (abort, send_initial_metadata) races that write in grpc itself.
                    time.sleep(SYNC_WRITE_PAUSE)
            elif name == "read":
                assert requests is not None
                for _ in range(op[1]):
                    self._read(index, next(requests, "StopIteration"))
            elif name == "sleep":
                time.sleep(op[1])
            elif name == "raise":
                self.journal.record(index, name)
                raise ValueError(op[1])
            else:
                raise AssertionError(f"unknown operation {op!r}")

    @contextlib.contextmanager
    def lifetime(self) -> Iterator[None]:
        """Records how the handler ended, and what ``on_exit`` context methods say then."""
        try:
            yield
        except GeneratorExit:
            self.journal.record("end", "closed")
            raise
        except BaseException as error:
            self.journal.record("end", *raised(error))
            raise
        else:
            self.journal.record("end", "returned")
        finally:
            for name in self.script.on_exit:
                self.journal.record("on exit", name, _try(self.context, name))
            self.journal.ended = True


def _try(context: Any, name: str) -> Any:
    """What context.<name>() returns, or what calling it raises."""
    try:
        return ("returned", observed_result(name, getattr(context, name)()))
    except Exception as error:
        return raised(error)


def _surface(context: Any) -> tuple[str, ...]:
    return tuple(name for name in CONTEXT_SURFACE if hasattr(context, name))


class ScenarioServicer(pb_grpc.ScenariosServicer):
    """Every implemented method runs the script its call names, in the style its name says."""

    def __init__(self) -> None:
        self.journal = Journal()

    def _run(self, context: Any, style: str) -> _Run:
        return _Run(self.journal, context, style)

    # async def / async generators
    async def UnaryAsync(self, request, context):
        run = self._run(context, "UnaryAsync")
        with run.lifetime():
            async for _ in run.run_async(None, context_io=False):
                pass
            return run.reply()

    async def ServerStreamAsync(self, request, context):
        run = self._run(context, "ServerStreamAsync")
        with run.lifetime():
            async for message in run.run_async(None, context_io=False):
                yield message

    async def ClientStreamAsync(self, request_iterator, context):
        run = self._run(context, "ClientStreamAsync")
        with run.lifetime():
            async for _ in run.run_async(aiter(request_iterator), context_io=False):
                pass
            return run.reply()

    async def BidiAsync(self, request_iterator, context):
        run = self._run(context, "BidiAsync")
        with run.lifetime():
            async for message in run.run_async(aiter(request_iterator), context_io=False):
                yield message

    # async def with context.read() / context.write()
    async def ClientStreamReader(self, request_iterator, context):
        run = self._run(context, "ClientStreamReader")
        with run.lifetime():
            async for _ in run.run_async(None, context_io=True):
                pass
            return run.reply()

    async def ServerStreamWriter(self, request, context):
        run = self._run(context, "ServerStreamWriter")
        with run.lifetime():
            async for _ in run.run_async(None, context_io=True):
                pass

    async def BidiWriter(self, request_iterator, context):
        run = self._run(context, "BidiWriter")
        with run.lifetime():
            async for _ in run.run_async(None, context_io=True):
                pass

    # plain def / sync generators
    def UnarySync(self, request, context):
        run = self._run(context, "UnarySync")
        with run.lifetime():
            for _ in run.run_sync(None):
                pass
            return run.reply()

    def ServerStreamSync(self, request, context):
        run = self._run(context, "ServerStreamSync")
        with run.lifetime():
            yield from run.run_sync(None)

    def ClientStreamSync(self, request_iterator, context):
        run = self._run(context, "ClientStreamSync")
        with run.lifetime():
            for _ in run.run_sync(iter(request_iterator)):
                pass
            return run.reply()

    def BidiSync(self, request_iterator, context):
        run = self._run(context, "BidiSync")
        with run.lifetime():
            yield from run.run_sync(iter(request_iterator))

    def ServerStreamSyncList(self, request, context):
        run = self._run(context, "ServerStreamSyncList")
        with run.lifetime():
            responses = list(run.run_sync(None))
            return None if run.script.return_none else responses

    async def ServerStreamAsyncReturning(self, request, context):
        run = self._run(context, "ServerStreamAsyncReturning")
        with run.lifetime():
            responses = [message async for message in run.run_async(None, context_io=False)]

        async def stream() -> AsyncIterator[Message]:
            for message in responses:
                yield message

        return stream()

    # The Unimplemented* methods are the generated base's: set_code(UNIMPLEMENTED),
    # set_details("Method not implemented!"), raise NotImplementedError.


class GzScenarios(gz.Service, ScenarioServicer):
    """The same servicer as a gz Service."""

    def __init__(self, settings: gz.ServerSettings) -> None:
        ScenarioServicer.__init__(self)
        gz.Service.__init__(self, settings)


# -- the two servers ----------------------------------------------------------------------------


@dataclass
class Server:
    """One of the two servers, with the channel the client calls it on."""

    label: str
    servicer: ScenarioServicer
    address: str
    channel: grpc.aio.Channel | None = None
    stop: Callable[[], Any] | None = None


def _private_tracing() -> tuple[Any, Any] | tuple[None, None]:
    """An SDK tracer provider (never set globally) keeping its spans in memory, and that
    memory; (None, None) without the SDK. gz's tracing middleware joins a server's chain only
    when a provider is set: given this one while the gz server starts, every default
    middleware is in the chain."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    except ImportError:
        return None, None
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider, spans


class Servers:
    """A raw grpc.aio server and a gz Service hosting ScenarioServicer, and a client channel to
    each, all on an event loop of their own in a background thread (hypothesis runs examples
    synchronously; each is submitted to that loop with :meth:`run`)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="differential-servers", daemon=True
        )
        self._thread.start()
        self.raw: Server
        self.gz: Server
        self.spans: Any = None  # the gz server's finished spans (an InMemorySpanExporter)
        try:
            self.run(self._start(), timeout=30)
        except BaseException:
            self.close()
            raise

    def run(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _start(self) -> None:
        executor = ThreadPoolExecutor(thread_name_prefix="raw-scenarios")
        raw = grpc.aio.server(migration_thread_pool=executor)
        raw_servicer = ScenarioServicer()
        pb_grpc.add_ScenariosServicer_to_server(raw_servicer, raw)
        port = raw.add_insecure_port("127.0.0.1:0")
        await raw.start()

        async def stop_raw() -> None:
            await raw.stop(None)
            executor.shutdown(wait=False, cancel_futures=True)

        self.raw = Server("raw", raw_servicer, f"127.0.0.1:{port}", stop=stop_raw)
        self.raw.channel = grpc.aio.insecure_channel(self.raw.address)

        service = GzScenarios(
            gz.ServerSettings(listen="127.0.0.1:0", shutdown_drain=0, shutdown_grace=1)
        )
        provider, self.spans = _private_tracing()
        from gz.middleware import tracing

        patch = (
            mock.patch.object(tracing, "tracer_provider", lambda: provider)
            if provider is not None and hasattr(tracing, "tracer_provider")
            else contextlib.nullcontext()
        )
        with patch:
            await service.server.start()
        self.gz = Server("gz", service, service.address, stop=service.server.stop)
        self.gz.channel = grpc.aio.insecure_channel(self.gz.address)
        for server in (self.raw, self.gz):
            await asyncio.wait_for(server.channel.channel_ready(), 10)

    async def _stop(self) -> None:
        for server in (getattr(self, "raw", None), getattr(self, "gz", None)):
            if server is None:
                continue
            if server.channel is not None:
                await server.channel.close()
            if server.stop is not None:
                await server.stop()

    async def _cancel_leftovers(self) -> None:
        """Cancel what is still pending on the loop. grpc.aio feeds a sync generator's items to
        the call through a one-slot queue from a worker thread; when the client cancelled the
        call, that thread stays blocked putting an item nobody takes (until cancelled here),
        and the process could not exit."""

        def ignore_cancelled(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if not isinstance(context.get("exception"), asyncio.CancelledError):
                loop.default_exception_handler(context)

        asyncio.get_running_loop().set_exception_handler(ignore_cancelled)
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.wait(leftovers, timeout=5) if leftovers else None

    def close(self) -> None:
        try:
            self.run(self._stop(), timeout=30)
            self.run(self._cancel_leftovers(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


# -- the client ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What the client saw of one call."""

    code: str
    details: str
    initial_metadata: tuple[tuple[str, Any], ...]
    trailing_metadata: tuple[tuple[str, Any], ...]
    messages: tuple[tuple[str, int], ...]
    # (event, seconds after the call started): "initial metadata", "message <n>", "status"
    timeline: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Call:
    """How the client makes a call."""

    requests: int = 3  # request messages sent on a request stream
    timeout: float | None = 5.0
    cancel_after_messages: int | None = None  # cancel once this many messages arrived
    cancel_after: float | None = None  # cancel this many seconds after starting


def _multicallable(channel: grpc.aio.Channel, style: Style) -> Any:
    factory = getattr(channel, style.kind)
    return factory(
        f"/{SERVICE}/{style.method}",
        request_serializer=Message.SerializeToString,
        response_deserializer=Message.FromString,
    )


def _pairs(metadata: Any) -> tuple[tuple[str, Any], ...]:
    return tuple((key, value) for key, value in (metadata or ()))


async def invoke(channel: grpc.aio.Channel, method: str, call_id: str, how: Call) -> Outcome:
    """Make the call; record what arrived and when."""
    style = STYLES[method]
    loop = asyncio.get_running_loop()
    started = loop.time()
    timeline: list[tuple[str, float]] = []

    def mark(event: str) -> None:
        timeline.append((event, round(loop.time() - started, 4)))

    requests_sent = REQUESTS_SENT[call_id] = RequestsSent()
    if style.request_streaming:  # written below, with call.write()
        call = _multicallable(channel, style)(metadata=((CALL_ID, call_id),), timeout=how.timeout)
    else:
        call = _multicallable(channel, style)(
            Message(text="r0", index=0), metadata=((CALL_ID, call_id),), timeout=how.timeout
        )

    async def initial_metadata() -> Any:
        metadata = await call.initial_metadata()
        mark("initial metadata")
        return metadata

    watch = asyncio.ensure_future(initial_metadata())
    canceller = None
    if how.cancel_after is not None:
        canceller = loop.call_later(how.cancel_after, call.cancel)
    messages: list[tuple[str, int]] = []
    try:
        if style.request_streaming:
            # All requests, then half-close; an unimplemented method may have answered already
            # (its answer is the status read below).
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                for index in range(how.requests if style.implemented else 0):
                    await call.write(Message(text=f"r{index}", index=index))
                await call.done_writing()
            requests_sent.set()
        if style.response_streaming:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    break
                messages.append((message.text, message.index))
                mark(f"message {len(messages) - 1}")
                if how.cancel_after_messages is not None and (
                    len(messages) >= how.cancel_after_messages
                ):
                    call.cancel()
                    break
        else:
            message = await call
            messages.append((message.text, message.index))
            mark("message 0")
    except grpc.aio.AioRpcError:
        pass
    except asyncio.CancelledError:
        if not call.cancelled():  # not the call's own cancellation: ours
            raise
    finally:
        requests_sent.set()
    code = await call.code()
    mark("status")
    if canceller is not None:
        canceller.cancel()
    details = await call.details()
    trailing = await call.trailing_metadata()
    initial = await asyncio.wait_for(watch, 5)
    timeline.sort(key=lambda event: event[1])
    return Outcome(
        code=code.name,
        details=details or "",
        initial_metadata=_pairs(initial),
        trailing_metadata=_pairs(trailing),
        messages=tuple(messages),
        timeline=tuple(timeline),
    )


async def _poll(condition: Callable[[], bool], seconds: float) -> None:
    """Until ``condition()`` holds, or ``seconds`` passed."""
    for _ in range(max(1, int(seconds / 0.01))):
        if condition():
            return
        await asyncio.sleep(0.01)


async def settle(server: Server, call_id: str, style: Style) -> Any:
    """What the handler of the call observed, once it ended and its done callbacks ran; None
    if no handler of ours ran (an unimplemented method)."""
    wait = 2.0 if style.implemented else 0.0
    journals = server.servicer.journal

    def ended() -> bool:
        journal = journals.get(call_id)
        return journal is not None and journal.ended

    await _poll(ended, wait)
    journal = journals.get(call_id)
    if journal is None:
        return None
    # A done callback runs once the call's task is done, shortly after the status went out.
    # grpc.aio runs a sync context's add_callback() callbacks before it sends the status (and
    # only those of unary sync handlers that returned): no wait for those.
    callbacks_wait = 0.0 if style.sync else 0.3
    await _poll(lambda: len(journal.callbacks) >= journal.callbacks_added, callbacks_wait)
    return journal.view()


async def call_both(
    servers: Servers, method: str, script: Script, how: Call | None = None
) -> dict[str, tuple[Outcome, Any]]:
    """The same call (same script, same call id) to the raw server, then to gz: for each,
    what the client saw and what the handler observed."""
    how = how or Call()
    call_id = new_call(script)
    results = {}
    try:
        for server in (servers.raw, servers.gz):
            assert server.channel is not None
            outcome = await asyncio.wait_for(invoke(server.channel, method, call_id, how), 20)
            results[server.label] = (outcome, await settle(server, call_id, STYLES[method]))
    finally:
        SCRIPTS.pop(call_id, None)
        REQUESTS_SENT.pop(call_id, None)
    return results
