"""SyncBalancedChannel: a grpc.Channel that spreads calls over the endpoints of a target, for
synchronous code (``gz.connect_sync``).

It shares everything but the calls with the async channel: an inner BalancedChannel, run by the
process's one background loop (loopthread.py), resolves the target, keeps a subchannel per
endpoint (watching its connection and health over a grpc.aio channel) and publishes pickers. A
call is made in the caller's thread: pick from the current picker (an immutable object, so no
lock), call grpc's own multicallable on the endpoint's grpc.Channel, count the call in the
endpoint's load (under the subchannel's small lock, never across the call). Only the first calls,
before any picker exists, hop to the loop to wait for one.

Blocking unary calls are retried in the caller's thread, as the async channel's Retry does
(another endpoint, backoff, deadline, budget), and unary ``future()`` calls from the loop
(syncattempts.py); streams are not retried, and are returned as grpc made them unless call
observers count their messages (syncstream.py). Middleware must be call observers (begin and
end run in the calling thread, or in grpc's thread for a call that ends there).

After a fork, a channel made before it starts afresh in the child on its next call: its own loop
thread, connections and resolution (threads and their state do not survive a fork).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from ..discovery import Endpoint, Resolver
from ..middleware import CallContext, CallObserver, Kind, Method, Middleware
from ..middleware.chain import begin_all, bind, end_all
from ..middleware.outcome import end_observers
from ..middleware.retry import ATTEMPT, IDEMPOTENT, TRIED_PEERS, Retry, idempotent_override
from ..tls import open_sync_channel
from . import loopthread
from .channel import BalancedChannel, channel_options
from .picker import Picker
from .pool import SubchannelPool
from .subchannel import Subchannel
from .subset import Subsetter
from .syncattempts import FutureAttempts
from .syncstream import ResponseStream, counted_requests

log = logging.getLogger("gz.balancing")

OK = grpc.StatusCode.OK
CLOSED = "Cannot invoke RPC on closed channel!"  # grpc's own words
CLOSE_TIMEOUT = 1.0  # seconds close() waits for the background work to stop

# Objects of channels made before a fork, kept in the child so that nothing of the parent's
# (its loop, its grpc.aio channels) is finalized there.
_left_by_parent: list[Any] = []
_live: weakref.WeakSet[SyncBalancedChannel] = weakref.WeakSet()


def sync_rpc_error(code: grpc.StatusCode, details: str) -> grpc.RpcError:
    """The error a grpc.Channel raises for a call that ended with ``code`` (grpc's own class,
    so it is also the grpc.Call and grpc.Future that callers may treat it as)."""
    from grpc._channel import _InactiveRpcError, _RPCState

    return _InactiveRpcError(_RPCState((), (), (), code, details))


class SyncBalancedChannel(grpc.Channel):
    """Made by ``gz.connect_sync()``; use it wherever a grpc.Channel is expected. One channel
    may be shared by any number of threads."""

    def __init__(
        self,
        make_resolver: Callable[[], Resolver],
        *,
        target: str,
        picker: type[Picker],
        middleware: Sequence[Middleware] = (),
        interceptors: Sequence[Any] = (),
        options: Sequence[tuple[str, Any]] = (),
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = None,
        health_check: bool = True,
        retry: Retry | None = None,
        make_subsetter: Callable[[], Subsetter | None] = lambda: None,
        zone: str | None = None,
    ) -> None:
        self.target = target
        self.balancer = picker.name
        self.timeout = timeout
        self.retry = retry
        self._make_resolver = make_resolver
        self._picker_class = picker
        self._middleware = tuple(middleware)
        self._interceptors = tuple(interceptors)
        self._options = channel_options(options)
        self._credentials = credentials
        self._health_check = health_check
        self._make_subsetter = make_subsetter
        self._zone = zone
        self._callables: dict[tuple[Any, ...], _SyncMultiCallable] = {}
        self._subscribers: list[Callable[[grpc.ChannelConnectivity], None]] = []
        self._closed = False
        self._reset()
        for kind in Kind:  # refuse middleware that cannot run here now, not at the first stub
            sync_observers(self._middleware, Method("/gz.Check/Middleware", kind, "client"))
        _live.add(self)

    def _reset(self) -> None:
        """No background work yet: it starts with the first call (again after a fork)."""
        self._pool: SubchannelPool | None = None  # read without a lock by every call
        self._inner: BalancedChannel | None = None
        self._thread: loopthread.LoopThread | None = None
        self._finalizer: weakref.finalize | None = None
        self._opening = threading.Lock()
        self._watching = False

    # -- background work ----------------------------------------------------------------------
    def _open(self) -> tuple[BalancedChannel, loopthread.LoopThread]:
        """The inner channel and its loop, started on first use."""
        with self._opening:
            if self._closed:
                raise ValueError(CLOSED)
            if self._inner is None or self._thread is None:
                thread = loopthread.acquire()
                inner = BalancedChannel(
                    self._make_resolver(),
                    picker=self._picker_class,
                    options=self._options,
                    credentials=self._credentials,
                    health_check=self._health_check,
                    retry=self.retry,  # its budget shows on /debug/targets
                    subsetter=self._make_subsetter(),
                    zone=self._zone,
                    # not a bound method: the loop's objects must not keep this channel alive,
                    # so that an unclosed channel is collected (and its work stopped)
                    calls_channel=functools.partial(
                        _calls_channel, self._credentials, self._options, self._interceptors
                    ),
                )
                try:
                    self._pool = thread.run(_start(inner))
                except BaseException:
                    loopthread.release(thread)
                    raise
                self._inner, self._thread = inner, thread
                self._finalizer = weakref.finalize(self, _shut, inner, thread)
            return self._inner, self._thread

    def pick(
        self, deadline: float | None, wait_for_ready: bool | None, tried: Sequence[str] | None
    ) -> Subchannel:
        """A subchannel for a call (not one of ``tried`` when there is another): from the
        current picker, or, before there is one, waiting in the loop as connect() does."""
        pool = self._pool
        picker = pool.picker if pool is not None else None
        if picker is not None:
            return picker.pick_other(tried) if tried else picker.pick()
        inner, thread = self._open()
        try:
            return thread.run(inner.pick_when_ready(deadline, bool(wait_for_ready), tried))
        except grpc.aio.AioRpcError as error:
            raise sync_rpc_error(error.code(), error.details() or "") from None

    def pick_now(self, tried: Sequence[str]) -> Subchannel | None:
        """A subchannel not in ``tried`` if there is another, without waiting (None: no picker:
        the channel closed or has no usable endpoint). For the loop, which must not wait."""
        pool = self._pool
        picker = pool.picker if pool is not None else None
        return None if picker is None else picker.pick_other(tried)

    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The background loop, once started (None before, or after close)."""
        thread = self._thread
        return None if thread is None or self._closed else thread.loop

    @property
    def endpoints(self) -> list[Endpoint]:
        """The endpoints currently resolved (empty before first use)."""
        pool = self._pool
        return sorted(pool.endpoints) if pool is not None else []

    def snapshot(self) -> dict[str, Any]:
        """What the channel sees now, as /debug/targets shows it (built in its loop)."""
        inner, thread = self._open()
        return thread.run(_snapshot(inner), CLOSE_TIMEOUT)

    # -- grpc.Channel -------------------------------------------------------------------------
    def subscribe(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False
    ) -> None:
        """Call ``callback`` with the channel's connectivity now and at every change (in the
        background thread), as grpc does; resolution starts here if it has not."""
        inner, thread = self._open()
        self._subscribers.append(callback)
        thread.loop.call_soon_threadsafe(self._deliver, callback, inner)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(callback)

    def _deliver(self, callback: Callable[[grpc.ChannelConnectivity], None],
                 inner: BalancedChannel) -> None:  # fmt: skip
        """In the loop: the current state to a new subscriber; the first starts the watch."""
        _notify(callback, inner.get_state())
        if not self._watching:
            self._watching = True
            inner._pool.loop.create_task(self._watch_connectivity(inner))  # type: ignore[union-attr]

    async def _watch_connectivity(self, inner: BalancedChannel) -> None:
        state = inner.get_state()
        while not self._closed and inner is self._inner:
            await inner.wait_for_state_change(state)
            state = inner.get_state()
            for callback in list(self._subscribers):
                _notify(callback, state)

    def close(self) -> None:
        """Cancel the calls in flight, as grpc.Channel.close() does, and stop the background
        work (its thread too, if this was the process's last sync channel) within a second."""
        with self._opening:
            if self._closed:
                return
            self._closed = True
            self._pool = None
            finalizer = self._finalizer
        self._subscribers.clear()
        if finalizer is not None:
            finalizer()

    def __enter__(self) -> SyncBalancedChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _forked(self) -> None:
        """In a forked child: leave the parent's objects alone and start afresh when used."""
        if self._finalizer is not None:
            self._finalizer.detach()
        _left_by_parent.append((self._inner, self._pool))
        self._reset()

    # -- multicallables -----------------------------------------------------------------------
    def unary_unary(self, method, request_serializer=None, response_deserializer=None,
                    _registered_method=False):  # fmt: skip
        return self._multi_callable(Kind.UNARY_UNARY, method, request_serializer,
                                    response_deserializer, _registered_method)  # fmt: skip

    def unary_stream(self, method, request_serializer=None, response_deserializer=None,
                     _registered_method=False):  # fmt: skip
        return self._multi_callable(Kind.UNARY_STREAM, method, request_serializer,
                                    response_deserializer, _registered_method)  # fmt: skip

    def stream_unary(self, method, request_serializer=None, response_deserializer=None,
                     _registered_method=False):  # fmt: skip
        return self._multi_callable(Kind.STREAM_UNARY, method, request_serializer,
                                    response_deserializer, _registered_method)  # fmt: skip

    def stream_stream(self, method, request_serializer=None, response_deserializer=None,
                      _registered_method=False):  # fmt: skip
        return self._multi_callable(Kind.STREAM_STREAM, method, request_serializer,
                                    response_deserializer, _registered_method)  # fmt: skip

    def _multi_callable(self, kind: Kind, method: str | bytes, serializer: Any,
                        deserializer: Any, registered: bool) -> _SyncMultiCallable:  # fmt: skip
        key = (kind, method, serializer, deserializer, registered)
        try:
            return self._callables[key]
        except KeyError:
            made = _KINDS[kind](self, method, kind, serializer, deserializer, registered)
            return self._callables.setdefault(key, made)  # another thread may have made one
        except TypeError:  # an unhashable (de)serializer: not cached, still works
            return _KINDS[kind](self, method, kind, serializer, deserializer, registered)

    def __repr__(self) -> str:
        return f"<SyncBalancedChannel {self.target} {len(self.endpoints)} endpoints>"


def _calls_channel(
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]],
    interceptors: Sequence[Any],
    endpoint: Endpoint,
) -> grpc.Channel:
    """The grpc.Channel one endpoint's calls go through."""
    channel = open_sync_channel(endpoint.address, credentials, options)
    _connect_now(channel)
    if interceptors:
        channel = grpc.intercept_channel(channel, *interceptors)
    return channel


def _connect_now(channel: grpc.Channel) -> None:
    """Have grpc connect now, as the watched channel does, so that the first call does not wait
    for the handshake. grpc.Channel offers no public way that does not start a thread."""
    check = getattr(getattr(channel, "_channel", None), "check_connectivity_state", None)
    if check is not None:
        check(True)


async def _start(inner: BalancedChannel) -> SubchannelPool:
    return inner._start()


async def _snapshot(inner: BalancedChannel) -> dict[str, Any]:
    return inner.snapshot()


def _shut(inner: BalancedChannel, thread: loopthread.LoopThread) -> None:
    """Close the inner channel in its loop and let the loop thread go (close(), collection of
    an unclosed channel, or interpreter exit)."""
    try:
        if thread.pid != os.getpid() or not thread.loop.is_running():
            return
        if thread.is_current():  # collected in the loop itself: it cannot wait for itself
            thread.loop.create_task(inner.close(None))
        else:
            thread.run(inner.close(None), CLOSE_TIMEOUT)
    except Exception:  # a loop that does not answer must not keep the caller
        log.warning("%s: the background work did not stop within %ss", inner.target,
                    CLOSE_TIMEOUT, exc_info=True)  # fmt: skip
    finally:
        loopthread.release(thread)


def _notify(callback: Callable[[grpc.ChannelConnectivity], None],
            state: grpc.ChannelConnectivity) -> None:  # fmt: skip
    try:
        callback(state)
    except Exception:
        log.exception("a connectivity callback raised")


def _after_fork_in_child() -> None:
    for channel in list(_live):
        channel._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def sync_observers(middleware: Sequence[Middleware], method: Method) -> tuple[CallObserver, ...]:
    """``middleware`` bound to ``method``, all of them call observers, or a TypeError naming the
    one that is not (its coroutines cannot run in a caller's thread)."""
    bound = bind(middleware, method)
    for item in bound:
        if not isinstance(item, CallObserver):
            raise TypeError(
                f"connect_sync() runs middleware in the calling thread, so it takes call "
                f"observers (gz.CallObserver: begin/end) only; {type(item).__name__} is not one. "
                f"Use it with connect(), or write it as a CallObserver; retries are set with "
                f"connect_sync(retry=...)"
            )
    return tuple(bound)  # type: ignore[arg-type]


class _SyncMultiCallable:
    """Shared by the four call kinds."""

    def __init__(self, channel: SyncBalancedChannel, method: str | bytes, kind: Kind,
                 serializer: Any, deserializer: Any, registered: bool) -> None:  # fmt: skip
        name = method.decode() if isinstance(method, bytes) else method
        self._channel = channel
        self.method = Method(name, kind, "client", channel.target)
        self._factory = kind.name.lower()  # the grpc.Channel method making this kind
        self._serializer = serializer
        self._deserializer = deserializer
        self._registered = registered
        self._unary = kind is Kind.UNARY_UNARY  # only these feed the latency average
        # Its key in subchannel.callables: not the multicallable itself, which holds the
        # channel, so that the loop's objects never keep an unclosed channel alive.
        self._key = object()
        self._observers = sync_observers(channel._middleware, self.method)
        # Observers that count a stream's messages (metrics): streams pass through syncstream.py
        streaming = kind is not Kind.UNARY_UNARY
        self._counters = tuple(
            o for o in self._observers if streaming and type(o).message is not CallObserver.message
        )
        retry = channel.retry
        self._retry = retry if retry is not None and retry.applies_to(self.method) else None

    def _bind(self, subchannel: Subchannel) -> Any:
        callable_ = getattr(subchannel.calls_channel, self._factory)(
            self.method.full_name, self._serializer, self._deserializer,
            _registered_method=self._registered,
        )  # fmt: skip
        subchannel.callables[self._key] = callable_
        return callable_

    def _begin(self, subchannel: Subchannel, metadata: Any, deadline: float | None,
               state: dict[str, Any] | None) -> tuple[CallContext, list[Any]]:  # fmt: skip
        ctx = CallContext(self.method, list(metadata or ()), deadline, subchannel.peer)
        if state is not None:
            ctx.state = state
        return ctx, begin_all(self._observers, ctx)

    def _started(self, request: Any, timeout: float | None, metadata: Any, credentials: Any,
                 wait_for_ready: Any, compression: Any, how: str) -> Any:  # fmt: skip
        """A call that runs on (``future()``, streams), returned as grpc made it; a unary
        ``future()`` with retries on comes inside a FutureAttempts."""
        if timeout is None:
            timeout = self._channel.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        extras = (metadata, credentials, wait_for_ready, compression)
        if how == "future" and self._retry is not None:
            return FutureAttempts(self, request, deadline, extras, idempotent_override())
        subchannel = self._channel.pick(deadline, wait_for_ready, None)
        return self.start_attempt(subchannel, request, deadline, extras, how, None)

    def start_attempt(self, subchannel: Subchannel, request: Any, deadline: float | None,
                      extras: tuple[Any, Any, Any, Any], how: str,
                      state: dict[str, Any] | None) -> Any:  # fmt: skip
        """Make one call on ``subchannel`` that runs on; the load and the observers learn its
        end from grpc's done-callback (run in grpc's thread)."""
        metadata, credentials, wait_for_ready, compression = extras
        callable_ = subchannel.callables.get(self._key) or self._bind(subchannel)
        ctx, tokens = None, None
        if self._observers:
            ctx, tokens = self._begin(subchannel, metadata, deadline, state)
            metadata, deadline = ctx.metadata or None, ctx.deadline
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        counters = self._counters
        if counters and self.method.kind.request_streaming:
            request = counted_requests(request, counters, ctx)  # type: ignore[arg-type]
        started = subchannel.sync_call_started(time.monotonic())
        try:
            call = getattr(callable_, how)(request, timeout=timeout, metadata=metadata,
                                           credentials=credentials, wait_for_ready=wait_for_ready,
                                           compression=compression)  # fmt: skip
        except BaseException as error:
            subchannel.sync_call_ended(started, False, grpc.StatusCode.UNKNOWN)
            if ctx is not None:
                end_all(self._observers, ctx, tokens, error)  # type: ignore[arg-type]
            raise
        observers, unary = self._observers, self._unary

        def ended(call: Any) -> None:
            code = call.code()
            subchannel.sync_call_ended(started, unary, code)
            if ctx is not None:
                end_observers(observers, ctx, tokens, code)  # type: ignore[arg-type]

        call.add_done_callback(ended)
        if counters and self.method.kind.response_streaming:
            return ResponseStream(call, counters, ctx)  # type: ignore[arg-type]
        return call

    def _blocking(self, request: Any, timeout: float | None, metadata: Any, credentials: Any,
                  wait_for_ready: Any, compression: Any, with_call: bool) -> Any:  # fmt: skip
        """A call that blocks until it ends: retried on another endpoint when it fails with a
        status the retry policy allows, within the deadline and the budget."""
        channel = self._channel
        if timeout is None:
            timeout = channel.timeout
        retry = self._retry
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        if retry is not None:
            retry.budget.record_call(now)
        state: dict[str, Any] | None = None  # the attempts' shared ctx.state, once retrying
        tried: list[str] | None = None
        observers = self._observers
        how = "with_call" if with_call else "__call__"
        while True:
            subchannel = channel.pick(deadline, wait_for_ready, tried)
            callable_ = getattr(subchannel.callables.get(self._key) or self._bind(subchannel), how)
            sent_metadata, ctx, tokens = metadata, None, None
            if observers:
                ctx, tokens = self._begin(subchannel, metadata, deadline, state)
                sent_metadata, deadline = ctx.metadata or None, ctx.deadline
            if deadline is not None and (ctx is not None or state is not None):
                timeout = max(0.0, deadline - time.monotonic())
            if self._counters:  # a request stream (never retried: one attempt)
                request = counted_requests(request, self._counters, ctx)  # type: ignore[arg-type]
            # the first attempt of a call without observers started when it was made
            fresh = ctx is None and state is None
            started = subchannel.sync_call_started(now if fresh else time.monotonic())
            try:
                result = callable_(request, timeout=timeout, metadata=sent_metadata,
                                   credentials=credentials, wait_for_ready=wait_for_ready,
                                   compression=compression)  # fmt: skip
            except grpc.RpcError as error:
                code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
                subchannel.sync_call_ended(started, self._unary, code)
                if ctx is not None:
                    end_all(observers, ctx, tokens, error)  # type: ignore[arg-type]
                if retry is None:
                    raise
                if state is None:
                    state = {ATTEMPT: 1, TRIED_PEERS: [], IDEMPOTENT: idempotent_override()}
                    if state[IDEMPOTENT] is None:
                        state[IDEMPOTENT] = retry.policy.is_idempotent(self.method)
                state[TRIED_PEERS].append(subchannel.peer)
                decision = ctx or CallContext(self.method, None, deadline)
                decision.state = state
                delay = retry.next_delay(decision, error, state[ATTEMPT] + 1)
                if delay is None:
                    raise
                time.sleep(delay)
                state[ATTEMPT] += 1
                tried = state[TRIED_PEERS]
                continue
            except BaseException as error:  # interrupted (KeyboardInterrupt) while it ran
                subchannel.sync_call_ended(started, self._unary, grpc.StatusCode.CANCELLED)
                if ctx is not None:
                    end_all(observers, ctx, tokens, error)  # type: ignore[arg-type]
                raise
            subchannel.sync_call_ended(started, self._unary, OK)
            if ctx is not None:
                end_all(observers, ctx, tokens, None)  # type: ignore[arg-type]
            return result


class _UnaryResponse(_SyncMultiCallable):
    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:  # fmt: skip
        return self._blocking(request, timeout, metadata, credentials, wait_for_ready,
                              compression, False)  # fmt: skip

    def with_call(self, request: Any, timeout: float | None = None, metadata: Any = None,
                  credentials: grpc.CallCredentials | None = None,
                  wait_for_ready: bool | None = None,
                  compression: grpc.Compression | None = None) -> Any:  # fmt: skip
        return self._blocking(request, timeout, metadata, credentials, wait_for_ready,
                              compression, True)  # fmt: skip

    def future(self, request: Any, timeout: float | None = None, metadata: Any = None,
               credentials: grpc.CallCredentials | None = None,
               wait_for_ready: bool | None = None,
               compression: grpc.Compression | None = None) -> Any:  # fmt: skip
        return self._started(request, timeout, metadata, credentials, wait_for_ready,
                             compression, "future")  # fmt: skip


class _StreamResponse(_SyncMultiCallable):
    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:  # fmt: skip
        return self._started(request, timeout, metadata, credentials, wait_for_ready,
                             compression, "__call__")  # fmt: skip


class _UnaryUnary(_UnaryResponse, grpc.UnaryUnaryMultiCallable):
    pass


class _UnaryStream(_StreamResponse, grpc.UnaryStreamMultiCallable):
    pass


class _StreamUnary(_UnaryResponse, grpc.StreamUnaryMultiCallable):
    pass


class _StreamStream(_StreamResponse, grpc.StreamStreamMultiCallable):
    pass


_KINDS: dict[Kind, type[_SyncMultiCallable]] = {
    Kind.UNARY_UNARY: _UnaryUnary,
    Kind.UNARY_STREAM: _UnaryStream,
    Kind.STREAM_UNARY: _StreamUnary,
    Kind.STREAM_STREAM: _StreamStream,
}

__all__ = ["SyncBalancedChannel", "sync_observers", "sync_rpc_error"]
