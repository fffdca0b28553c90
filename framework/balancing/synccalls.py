"""The multicallables of a SyncBalancedChannel: each call is made from the caller's thread.

A blocking call (a stub method called directly, or its ``with_call()``) begins the observers,
picks an endpoint from the current picker, calls grpc's own multicallable on that endpoint's
grpc.Channel and counts the call in the endpoint's load; when it fails with a status the retry
policy allows, the caller's thread sleeps the backoff and tries another endpoint. A call that
runs on (``future()``, streams) is returned as grpc made it, unless observers count its
messages (syncstream.py), its retries need a FutureAttempts (syncattempts.py), or there is no
endpoint to pick yet: then a PendingCall (syncpending.py) stands for it until the channel's loop
has one, as grpc's own call objects never make the caller wait.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from ..middleware import CallContext, CallObserver, Kind, Method, Middleware
from ..middleware.chain import beginning, bind, ending
from ..middleware.outcome import end_observers
from ..middleware.retry import ATTEMPT, IDEMPOTENT, TRIED_PEERS, idempotent_override
from .subchannel import Subchannel
from .syncattempts import FutureAttempts
from .syncpending import PendingCall
from .syncstream import ResponseStream, counted_requests

if TYPE_CHECKING:
    from .syncchannel import SyncBalancedChannel

OK = grpc.StatusCode.OK
# grpc's own words for a call on a closed channel: a blocking call, and one that runs on
CLOSED = "Cannot invoke RPC on closed channel!"
CLOSED_BEFORE_START = "Cannot invoke RPC: Channel closed!"

Begun = tuple[CallContext, list[Any]]  # a call's context and what its observers' begin returned
Extras = tuple[Any, Any, Any, Any]  # metadata, credentials, wait_for_ready, compression


def sync_observers(middleware: Sequence[Middleware], method: Method) -> tuple[CallObserver, ...]:
    """``middleware`` bound to ``method``, all of them call observers, or a TypeError naming the
    one that is not (its coroutines cannot run in a caller's thread). An observer that wraps
    the call itself (overrides ``unary`` or ``stream``) is refused too, unless it only does so
    to count a stream's messages, which it then does in ``message``."""
    hook = "stream" if method.kind.response_streaming else "unary"
    for item in bind(middleware, method):
        kind = type(item)
        wraps = getattr(kind, hook) is not getattr(CallObserver, hook)
        if not isinstance(item, CallObserver) or (wraps and kind.message is CallObserver.message):
            raise TypeError(
                f"connect_sync() runs middleware in the calling thread, so it takes call "
                f"observers (gz.CallObserver: begin/end) that do not override unary() or "
                f"stream(); {kind.__name__} does not fit. Use it with connect(), or write it as "
                f"a CallObserver; retries are set with connect_sync(retry=...)"
            )
    return tuple(bind(middleware, method))  # type: ignore[arg-type]


class SyncMultiCallable:
    """Shared by the four call kinds."""

    def __init__(self, channel: SyncBalancedChannel, method: str | bytes, kind: Kind,
                 serializer: Any, deserializer: Any, registered: bool) -> None:  # fmt: skip
        name = method.decode() if isinstance(method, bytes) else method
        self.channel = channel
        self.method = Method(name, kind, "client", channel.target)
        self._factory = kind.name.lower()  # the grpc.Channel method making this kind
        self._serializer = serializer
        self._deserializer = deserializer
        self._registered = registered
        self._unary = kind is Kind.UNARY_UNARY  # only these feed the latency average
        # Its key in subchannel.callables: not the multicallable itself, which holds the
        # channel, so that the loop's objects never keep an unclosed channel alive.
        self._key = object()
        self.observers = sync_observers(channel._middleware, self.method)
        self._begin, self._end = beginning(self.observers), ending(self.observers)
        # Observers that count a stream's messages (metrics): streams pass through syncstream.py
        streaming = kind is not Kind.UNARY_UNARY
        self._counters = tuple(
            o for o in self.observers if streaming and type(o).message is not CallObserver.message
        )
        retry = channel.retry
        self.retry = retry if retry is not None and retry.applies_to(self.method) else None

    def _bind(self, subchannel: Subchannel) -> Any:
        callable_ = getattr(subchannel.calls_channel, self._factory)(
            self.method.full_name, self._serializer, self._deserializer,
            _registered_method=self._registered,
        )  # fmt: skip
        subchannel.callables[self._key] = callable_
        return callable_

    # -- observers ----------------------------------------------------------------------------
    def begin(self, metadata: Any, deadline: float | None, state: dict[str, Any] | None,
              peer: str | None = None) -> Begun | None:  # fmt: skip
        """Begin the observers of an attempt (None without observers). ``peer``: the endpoint
        picked, or None when the attempt must wait for one (its deadline may come from the
        observers); it is set then once picked."""
        if not self.observers:
            return None
        ctx = CallContext(self.method, list(metadata or ()), deadline, peer)
        if state is not None:
            ctx.state = state
        return ctx, self._begin(ctx)

    def fail(self, begun: Begun | None, error: BaseException) -> None:
        """End the observers of an attempt that failed before grpc made a call."""
        if begun is not None:
            self._end(begun[0], begun[1], error)

    # -- calls that run on --------------------------------------------------------------------
    def start(self, request: Any, timeout: float | None, extras: Extras, how: str) -> Any:
        """A call that runs on: ``future()`` or a stream."""
        channel = self.channel
        if channel.closed:
            raise ValueError(CLOSED_BEFORE_START)
        if timeout is None:
            timeout = channel.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        if how == "future" and self.retry is not None:
            return FutureAttempts(self, request, deadline, extras, idempotent_override())
        subchannel = channel.pick_now(None)
        if subchannel is None:
            begun = self.begin(extras[0], deadline, None)
            return PendingCall(self, request, deadline, extras, how, begun)
        begun = self.begin(extras[0], deadline, None, subchannel.peer)
        return self.start_attempt(subchannel, request, deadline, extras, how, begun)

    def start_attempt(self, subchannel: Subchannel, request: Any, deadline: float | None,
                      extras: Extras, how: str, begun: Begun | None) -> Any:  # fmt: skip
        """Make one call on ``subchannel`` that runs on (any thread); the load and the
        observers learn its end from grpc's done-callback (run in grpc's thread)."""
        metadata, credentials, wait_for_ready, compression = extras
        callable_ = subchannel.callables.get(self._key) or self._bind(subchannel)
        ctx, tokens = begun if begun is not None else (None, None)
        if ctx is not None:
            ctx.peer = subchannel.peer
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
            self.fail(begun, error)
            raise
        end, unary = self._end, self._unary

        def ended(call: Any) -> None:
            code = call.code()
            subchannel.sync_call_ended(started, unary, code)
            if ctx is not None:
                end_observers(end, ctx, tokens, code)  # type: ignore[arg-type]

        call.add_done_callback(ended)
        if counters and self.method.kind.response_streaming:
            return ResponseStream(call, counters, ctx)  # type: ignore[arg-type]
        return call

    # -- blocking calls -----------------------------------------------------------------------
    def blocking(self, request: Any, timeout: float | None, extras: Extras,
                 with_call: bool) -> Any:  # fmt: skip
        """A call that blocks until it ends: retried on another endpoint when it fails with a
        status the retry policy allows, within the deadline and the budget."""
        channel = self.channel
        if channel.closed:
            raise ValueError(CLOSED)
        metadata, credentials, wait_for_ready, compression = extras
        if timeout is None:
            timeout = channel.timeout
        retry = self.retry
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        if retry is not None:
            retry.budget.record_call(now)
        state: dict[str, Any] | None = None  # the attempts' shared ctx.state, once retrying
        tried: list[str] | None = None
        how = "with_call" if with_call else "__call__"
        while True:
            sent_metadata, ctx, tokens = metadata, None, None
            subchannel = channel.pick_now(tried)
            begun = self.begin(metadata, deadline, state, subchannel and subchannel.peer)
            if begun is not None:
                ctx, tokens = begun
                sent_metadata, deadline = ctx.metadata or None, ctx.deadline
            if subchannel is None:  # none to pick yet: wait for one, as connect() does
                try:
                    subchannel = channel.pick(deadline, wait_for_ready, tried)
                except BaseException as error:
                    self.fail(begun, error)
                    raise
                if ctx is not None:
                    ctx.peer = subchannel.peer
            callable_ = getattr(subchannel.callables.get(self._key) or self._bind(subchannel), how)
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
                self.fail(begun, error)
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
                self.fail(begun, error)
                raise
            subchannel.sync_call_ended(started, self._unary, OK)
            if ctx is not None:
                self._end(ctx, tokens, None)  # type: ignore[arg-type]
            return result


class _UnaryResponse(SyncMultiCallable):
    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:  # fmt: skip
        extras = (metadata, credentials, wait_for_ready, compression)
        return self.blocking(request, timeout, extras, False)

    def with_call(self, request: Any, timeout: float | None = None, metadata: Any = None,
                  credentials: grpc.CallCredentials | None = None,
                  wait_for_ready: bool | None = None,
                  compression: grpc.Compression | None = None) -> Any:  # fmt: skip
        extras = (metadata, credentials, wait_for_ready, compression)
        return self.blocking(request, timeout, extras, True)

    def future(self, request: Any, timeout: float | None = None, metadata: Any = None,
               credentials: grpc.CallCredentials | None = None,
               wait_for_ready: bool | None = None,
               compression: grpc.Compression | None = None) -> Any:  # fmt: skip
        extras = (metadata, credentials, wait_for_ready, compression)
        return self.start(request, timeout, extras, "future")


class _StreamResponse(SyncMultiCallable):
    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:  # fmt: skip
        extras = (metadata, credentials, wait_for_ready, compression)
        return self.start(request, timeout, extras, "__call__")


class _UnaryUnary(_UnaryResponse, grpc.UnaryUnaryMultiCallable):
    pass


class _UnaryStream(_StreamResponse, grpc.UnaryStreamMultiCallable):
    pass


class _StreamUnary(_UnaryResponse, grpc.StreamUnaryMultiCallable):
    pass


class _StreamStream(_StreamResponse, grpc.StreamStreamMultiCallable):
    pass


KINDS: dict[Kind, type[SyncMultiCallable]] = {
    Kind.UNARY_UNARY: _UnaryUnary,
    Kind.UNARY_STREAM: _UnaryStream,
    Kind.STREAM_UNARY: _StreamUnary,
    Kind.STREAM_STREAM: _StreamStream,
}
