"""BalancedChannel: a grpc.aio.Channel that spreads calls over the endpoints of a target.

The hot path (a picker exists; a unary method whose middleware are all call observers, or any
method with no middleware and no retries) is: run the observers' begin, pick a subchannel, look
up its cached multicallable, call it, count the call in the subchannel's load (one done-callback,
which also runs the observers' end). A unary call with retries on is returned inside an
UnaryAttempts, which awaits the grpc call straight through and only does more when it fails;
other calls are returned as grpc made them. Everything else (other middleware, response streams
with retries, waiting for a first resolution) goes through the composed chain and a ChainedCall.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from ..discovery import Endpoint, Resolver
from ..middleware import CallContext, Kind, Method, Middleware
from ..middleware.chain import beginning, bind, compose_bound, ending, observers_only
from ..middleware.outcome import end_observers
from ..middleware.retry import TRIED_PEERS, Retry, idempotent_override
from ..tls import open_channel
from .attempts import UnaryAttempts
from .calls import (
    READ_GATE,
    ChainedCall,
    ChainedStreamStreamCall,
    ChainedStreamUnaryCall,
    ChainedUnaryStreamCall,
    ChainedUnaryUnaryCall,
    announce_call,
    rpc_error,
)
from .multicallables import MultiCallables
from .picker import Picker
from .pool import SubchannelPool
from .snapshot import channel_view, register, unregister
from .subchannel import State, Subchannel
from .subset import Subsetter

log = logging.getLogger("gz.balancing")

# How long a removed endpoint's in-flight calls may run on before they are cancelled.
REMOVED_ENDPOINT_GRACE = 30.0

# Keepalive set explicitly (go-zero #3139): pings only while calls are active, and no more often
# than every 5 minutes, the least interval grpc-go and grpc-core servers accept by default, so
# no server answers them with a too_many_pings GOAWAY (gz servers accept one every 10 s).
# Options passed to connect() win.
KEEPALIVE_OPTIONS = (
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
)


def channel_options(options: Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """gz's defaults followed by the caller's options, a caller's key replacing gz's."""
    given = {key for key, _ in options}
    return tuple(o for o in KEEPALIVE_OPTIONS if o[0] not in given) + tuple(options)


class BalancedChannel(MultiCallables, grpc.aio.Channel):
    """Made by ``gz.connect()``; use it wherever a grpc.aio channel is expected."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        picker: type[Picker],
        middleware: Sequence[Middleware] = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        options: Sequence[tuple[str, Any]] = (),
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = None,
        health_check: bool = True,
        retry: Retry | None = None,
        subsetter: Subsetter | None = None,
        zone: str | None = None,
        calls_channel: Callable[[Endpoint], Any] | None = None,
    ) -> None:
        self.target = resolver.target
        self.balancer = picker.name
        self.timeout = timeout
        self._resolver = resolver
        self._picker_class = picker
        self._middleware = tuple(middleware)
        # A Retry the caller placed in the middleware keeps its place; else the channel's goes
        # first, so that the rest of the chain runs once per attempt.
        placed = any(isinstance(m, Retry) for m in self._middleware)
        self.retry = None if placed else retry
        self._interceptors = list(interceptors) or None
        self._options = channel_options(options)
        self._credentials = credentials
        self._health_check = health_check
        self._subsetter = subsetter  # None: every endpoint gets a subchannel
        self._zone = zone  # None: no zone preferred
        self._calls_channel = calls_channel  # a sync client's grpc.Channel per endpoint
        self._pool: SubchannelPool | None = None
        self._resolving: asyncio.Task[None] | None = None
        self._closed = False
        # One multi-callable per method and (de)serializers: every stub made on this channel
        # shares it, so per-method work (binding middleware, grpc callables per subchannel) is
        # done once however many stubs are made, and the caches stay bounded.
        self._callables: dict[tuple[Any, ...], _MultiCallable] = {}
        register(self)  # listed on /debug/targets until closed

    # -- resolution ---------------------------------------------------------------------------
    def _start(self) -> SubchannelPool:
        """Begin resolving on first use, inside the event loop that will make the calls."""
        if self._closed:
            raise grpc.aio.UsageError(f"the channel to {self.target} is closed")
        if self._pool is None:
            self._pool = SubchannelPool(
                self.target,
                self._make_channel,
                self._picker_class,
                self._resolver.resolve_now,
                REMOVED_ENDPOINT_GRACE,
                self._health_check,
                self._make_health_channel,
                self._subsetter,
                self._zone,
                self._calls_channel,
            )
            self._resolving = asyncio.get_running_loop().create_task(self._resolve(self._pool))
        return self._pool

    async def _resolve(self, pool: SubchannelPool) -> None:
        try:
            await self._resolver.watch(pool)
        except asyncio.CancelledError:
            if not self._closed:  # cancelled by something inside it, not by close()
                log.error("%s: the resolver was cancelled from inside", self.target)
                pool.error(f"{self.target}: the resolver stopped (cancelled)")
            raise
        except Exception as error:  # a broken resolver must not take the channel down
            log.exception("%s: the resolver stopped", self.target)
            pool.error(f"{self.target}: the resolver stopped: {error}")

    def _make_channel(self, endpoint: Endpoint, with_interceptors: bool = True) -> grpc.aio.Channel:
        interceptors = self._interceptors if with_interceptors else None
        return open_channel(endpoint.address, self._credentials, self._options, interceptors)

    def _make_health_channel(self, endpoint: Endpoint) -> grpc.aio.Channel | None:
        """A channel without the user's interceptors for gz's own health watch (None: the call
        channel has none). Same address and options, so grpc shares the one connection."""
        if self._interceptors is None:
            return None
        return self._make_channel(endpoint, with_interceptors=False)

    async def pick_when_ready(
        self, deadline: float | None, wait_for_ready: bool, tried: Sequence[str] | None = None
    ) -> Subchannel:
        """A subchannel (one whose address is not in ``tried`` when there is one), waiting for
        one if the target is not resolved yet or the call asked for wait_for_ready; otherwise
        fail fast with UNAVAILABLE naming the target."""
        pool = self._start()
        while True:
            if pool.picker is not None:
                return pool.picker.pick_other(tried) if tried else pool.picker.pick()
            if self._closed:
                raise rpc_error(grpc.StatusCode.CANCELLED, f"the channel to {self.target} closed")
            if not wait_for_ready and (pool.resolved or pool.last_error):
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, pool.why_unavailable())
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise rpc_error(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"deadline passed while waiting for an endpoint: {pool.why_unavailable()}",
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pool.wait_for_change(), remaining)

    def snapshot(self) -> dict[str, Any]:
        """What the channel sees now, as plain data (what /debug/targets shows): its resolver,
        retry budget and, per endpoint, connectivity, health, load and outlier state. Call it
        in the event loop the channel is used in."""
        return channel_view(self, self._pool)

    @property
    def endpoints(self) -> list[Endpoint]:
        """The endpoints currently resolved (empty before first use)."""
        return sorted(self._pool.endpoints.values()) if self._pool is not None else []

    # -- grpc.aio.Channel ---------------------------------------------------------------------
    async def __aenter__(self) -> BalancedChannel:
        self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        unregister(self)
        if self._resolving is not None:
            self._resolving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resolving
        if self._pool is not None:
            await self._pool.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        if self._closed:
            return State.SHUTDOWN
        if self._pool is None:
            if not try_to_connect:
                return State.IDLE
            self._start()
        assert self._pool is not None
        return self._pool.state()

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        pool = self._start()
        while pool.state() == last_observed_state and not self._closed:
            await pool.wait_for_change()

    async def channel_ready(self) -> None:
        pool = self._start()
        while pool.state() != State.READY:
            if self._closed:
                raise grpc.aio.UsageError(
                    f"the channel to {self.target} closed before it was ready"
                )
            await pool.wait_for_change()

    def __repr__(self) -> str:
        return f"<BalancedChannel {self.target} {len(self.endpoints)} endpoints>"


class _MultiCallable:
    """Shared by the four call kinds; only the name of the first argument differs."""

    __slots__ = (
        "_channel",
        "_deserializer",
        "_direct",
        "_factory",
        "_handler",
        "_observers",
        "_registered",
        "_serializer",
        "_unary",
        "attempt_handler",
        "idempotent",
        "method",
        "retry",
    )  # fmt: skip

    def __init__(self, channel: BalancedChannel, method: str | bytes, kind: Kind,
                 serializer: Any, deserializer: Any, registered: bool) -> None:  # fmt: skip
        name = method.decode() if isinstance(method, bytes) else method
        self._channel = channel
        self.method = Method(name, kind, "client", channel.target)
        self._factory = kind.name.lower()  # the grpc.aio.Channel method making this kind
        self._serializer = serializer
        self._deserializer = deserializer
        self._registered = registered
        self._unary = kind is Kind.UNARY_UNARY  # only these feed the latency average
        endpoint = self._stream_endpoint if kind.response_streaming else self.unary_endpoint
        retry = channel.retry if channel.retry and channel.retry.applies_to(self.method) else None
        bound = bind(channel._middleware, self.method)  # once: the chain and the hot path share it
        self._handler = compose_bound(bound if retry is None else [retry, *bound], self.method,
                                      endpoint)  # fmt: skip
        # The hot path: unary calls whose middleware only observes (begin/end around the grpc
        # call, retries by UnaryAttempts), and other calls with no middleware and no retries.
        observers = observers_only(bound, self.method) if self._unary else None
        self._direct = observers is not None if self._unary else not bound and retry is None
        self._observers = observers or ()
        self._begin, self._end = beginning(self._observers), ending(self._observers)
        # What attempts after the first run through: the observers, then the endpoint.
        self.attempt_handler = compose_bound(self._observers, self.method, self.unary_endpoint)
        self.retry = retry if self._direct else None
        self.idempotent = retry is not None and retry.policy.is_idempotent(self.method)

    def _bind(self, subchannel: Subchannel) -> Any:
        callable_ = getattr(subchannel.channel, self._factory)(
            self.method.full_name, self._serializer, self._deserializer,
            _registered_method=self._registered,
        )  # fmt: skip
        subchannel.callables[self] = callable_
        return callable_

    def __call__(self, request: Any = None, *, timeout: float | None = None,
                 metadata: Any = None, credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:  # fmt: skip
        if timeout is None:
            timeout = self._channel.timeout
        pool = self._channel._pool
        if not (self._direct and pool is not None and pool.picker is not None):
            return self._chained(request, timeout, metadata, credentials, wait_for_ready,
                                 compression)  # fmt: skip
        subchannel = pool.picker.pick()
        callable_ = subchannel.callables.get(self) or self._bind(subchannel)
        on_end = None
        sent_metadata, deadline = metadata, None
        if self._observers:
            deadline = None if timeout is None else time.monotonic() + timeout
            ctx = CallContext(self.method, list(metadata or ()), deadline, subchannel.peer)
            tokens = self._begin(ctx)
            sent_metadata, deadline = ctx.metadata or None, ctx.deadline
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())
            on_end = functools.partial(end_observers, self._end, ctx, tokens)
        call = callable_(request, timeout=timeout, metadata=sent_metadata, credentials=credentials,
                         wait_for_ready=wait_for_ready, compression=compression)  # fmt: skip
        now = subchannel.track(call, self._unary, on_end)
        if self.retry is None:
            return call
        self.retry.budget.record_call(now)
        if deadline is None and timeout is not None:
            deadline = now + timeout
        return UnaryAttempts(
            self, call, subchannel.peer, request, deadline,
            (metadata, credentials, wait_for_ready, compression), idempotent_override(),
        )  # fmt: skip

    def _chained(self, request: Any, timeout: float | None, metadata: Any,
                 credentials: Any, wait_for_ready: Any,
                 compression: Any) -> ChainedCall:  # fmt: skip
        self._channel._start()
        deadline = None if timeout is None else time.monotonic() + timeout
        options = {"credentials": credentials, "wait_for_ready": wait_for_ready,
                   "compression": compression}  # fmt: skip
        ctx = CallContext(self.method, list(metadata or ()), deadline, options=options)
        handler = self._handler
        kind = self.method.kind
        if kind is Kind.UNARY_UNARY:
            return ChainedUnaryUnaryCall(ctx, lambda: handler(ctx, request))
        if kind is Kind.UNARY_STREAM:
            return ChainedUnaryStreamCall(ctx, handler(ctx, request))
        run = functools.partial(handler, ctx)
        if kind is Kind.STREAM_UNARY:
            return ChainedStreamUnaryCall(ctx, run, request)
        return ChainedStreamStreamCall(ctx, run, request)

    async def _start_call(self, ctx: CallContext, request: Any) -> Any:
        try:
            subchannel = await self._channel.pick_when_ready(
                ctx.deadline, bool(ctx.options.get("wait_for_ready")), ctx.state.get(TRIED_PEERS)
            )
        except BaseException:
            announce_call(ctx, None)
            raise
        callable_ = subchannel.callables.get(self) or self._bind(subchannel)
        ctx.peer = subchannel.peer
        timeout = None if ctx.deadline is None else ctx.deadline - time.monotonic()
        if timeout is not None and timeout <= 0:  # as grpc: a call past its deadline is not sent
            announce_call(ctx, None)
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        call = callable_(request, timeout=timeout, metadata=ctx.metadata or None, **ctx.options)
        subchannel.track(call, self._unary)
        announce_call(ctx, call)
        return call

    async def unary_endpoint(self, ctx: CallContext, request: Any) -> Any:
        return await (await self._start_call(ctx, request))

    async def _stream_endpoint(self, ctx: CallContext, request: Any) -> AsyncIterator[Any]:
        call = await self._start_call(ctx, request)
        gate = ctx.state.get(READ_GATE)
        while True:
            if gate is not None:
                await gate.wait()  # read from grpc when the caller asks, as grpc's call does
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            yield response


class _UnaryUnary(_MultiCallable, grpc.aio.UnaryUnaryMultiCallable):
    __slots__ = ()


class _UnaryStream(_MultiCallable, grpc.aio.UnaryStreamMultiCallable):
    __slots__ = ()


class _StreamUnary(_MultiCallable, grpc.aio.StreamUnaryMultiCallable):
    __slots__ = ()


class _StreamStream(_MultiCallable, grpc.aio.StreamStreamMultiCallable):
    __slots__ = ()


_KINDS: dict[Kind, type[_MultiCallable]] = {
    Kind.UNARY_UNARY: _UnaryUnary,
    Kind.UNARY_STREAM: _UnaryStream,
    Kind.STREAM_UNARY: _StreamUnary,
    Kind.STREAM_STREAM: _StreamStream,
}
BalancedChannel._KINDS = _KINDS
