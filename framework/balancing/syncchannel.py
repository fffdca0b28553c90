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

A fork stops every sync channel's background work first (grpc's fork handlers run only when no
thread is inside grpc), and the channel starts it again with its next call, in the parent and
in the child alike: its own loop thread, connections and resolution.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from ..discovery import Endpoint, Resolver
from ..middleware import Kind, Method, Middleware
from ..middleware.retry import Retry
from ..tls import open_sync_channel
from . import loopthread
from .channel import BalancedChannel, channel_options
from .multicallables import MultiCallables
from .picker import Picker
from .pool import SubchannelPool
from .subchannel import Subchannel
from .subset import Subsetter
from .synccalls import CLOSED, KINDS, SyncMultiCallable, sync_observers
from .syncpending import failed

log = logging.getLogger("gz.balancing")

CLOSE_TIMEOUT = 1.0  # seconds close() waits for the background work to stop

# Objects of channels made before a fork, kept in the child so that nothing of the parent's
# (its loop, its grpc.aio channels) is finalized there.
_left_by_parent: list[Any] = []
_live: weakref.WeakSet[SyncBalancedChannel] = weakref.WeakSet()


class SyncBalancedChannel(MultiCallables, grpc.Channel):
    """Made by ``gz.connect_sync()``; use it wherever a grpc.Channel is expected. One channel
    may be shared by any number of threads."""

    _KINDS = KINDS

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
        self._callables: dict[tuple[Any, ...], SyncMultiCallable] = {}
        self._subscribers: list[Callable[[grpc.ChannelConnectivity], None]] = []
        self._closed = False
        self._opening = threading.Lock()
        self._reset()
        for kind in Kind:  # refuse middleware that cannot run here now, not at the first stub
            sync_observers(self._middleware, Method("/gz.Check/Middleware", kind, "client"))
        _live.add(self)

    def _reset(self) -> None:
        """No background work yet: it starts with the next call (again after a fork)."""
        self._pool: SubchannelPool | None = None  # read without a lock by every call
        self._inner: BalancedChannel | None = None
        self._thread: loopthread.LoopThread | None = None
        self._finalizer: weakref.finalize | None = None
        self._watching = False

    # -- background work ----------------------------------------------------------------------
    def open(self) -> tuple[BalancedChannel, loopthread.LoopThread]:
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
        inner, thread = self.open()
        try:
            return thread.run(inner.pick_when_ready(deadline, bool(wait_for_ready), tried))
        except grpc.aio.AioRpcError as error:
            raise failed(error).error from None

    def pick_now(self, tried: Sequence[str] | None) -> Subchannel | None:
        """A subchannel (not in ``tried`` if there is another) without waiting; None when there
        is no picker: not resolved yet, no usable endpoint, or closed."""
        pool = self._pool
        picker = pool.picker if pool is not None else None
        if picker is None:
            return None
        return picker.pick_other(tried) if tried else picker.pick()

    @property
    def closed(self) -> bool:
        return self._closed

    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The background loop, once started (None before, or after close)."""
        thread = self._thread
        return None if thread is None or self._closed else thread.loop

    @property
    def endpoints(self) -> list[Endpoint]:
        """The endpoints currently resolved (empty before first use)."""
        pool = self._pool
        return sorted(pool.endpoints.values()) if pool is not None else []

    def snapshot(self) -> dict[str, Any]:
        """What the channel sees now, as /debug/targets shows it (built in its loop)."""
        inner, thread = self.open()
        return thread.run(_snapshot(inner), CLOSE_TIMEOUT)

    # -- grpc.Channel -------------------------------------------------------------------------
    def subscribe(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False
    ) -> None:
        """Call ``callback`` with the channel's connectivity now and at every change (in the
        background thread), as grpc does; resolution starts here if it has not."""
        inner, thread = self.open()
        self._subscribers.append(callback)
        thread.loop.call_soon_threadsafe(self._deliver, callback, inner)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(callback)

    def _deliver(self, callback: Callable[[grpc.ChannelConnectivity], None],
                 inner: BalancedChannel) -> None:  # fmt: skip
        """In the loop: the current state to a new subscriber; the first starts the watch,
        from that state: a change before the watch task runs is then told too (READY reached
        in between would otherwise never reach grpc.channel_ready_future)."""
        state = inner.get_state()
        _notify(callback, state)
        if not self._watching:
            self._watching = True
            watch = self._watch_connectivity(inner, state)
            inner._pool.loop.create_task(watch)  # type: ignore[union-attr]

    async def _watch_connectivity(
        self, inner: BalancedChannel, state: grpc.ChannelConnectivity
    ) -> None:
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

    def _quiesce(self) -> None:
        """Before a fork: stop the background work, to start again with the next call. grpc
        runs its fork handlers only when no thread is inside grpc, and this channel's loop
        always is (health and connectivity watches); a child forked meanwhile would inherit
        grpc's state mid-operation (and crash on it)."""
        with self._opening:
            finalizer = self._finalizer
            self._reset()
        if finalizer is not None:
            finalizer()

    def _forked(self) -> None:
        """In a forked child: leave anything of the parent's alone and start afresh when used
        (normally nothing is left: _quiesce() stopped it before the fork)."""
        if self._finalizer is not None:
            self._finalizer.detach()
        _left_by_parent.append((self._inner, self._pool))
        self._opening = threading.Lock()  # another thread of the parent may have held it
        self._reset()

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


def _before_fork() -> None:
    for channel in list(_live):
        channel._quiesce()


def _after_fork_in_child() -> None:
    for channel in list(_live):
        channel._forked()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


__all__ = ["SyncBalancedChannel"]
