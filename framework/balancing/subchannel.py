"""A subchannel is one grpc.aio channel to one endpoint, with its connectivity and serving state
tracked by watcher tasks (never polled on the call path).

A synchronous client (``gz.connect_sync``) makes its calls over a grpc.Channel of its own
(``calls_channel``) from any thread, while the watchers run in its background event loop; its
calls update the load and outcomes under ``lock``, and the loop takes the same lock to eject,
readmit or read them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..discovery import Endpoint
from .load import Load, finished_code
from .outlier import Outcomes

log = logging.getLogger("gz.balancing")

State = grpc.ChannelConnectivity
ChangeListener = Callable[["Subchannel", bool], None]
"""Called with (subchannel, failed) after any change; failed: the connection was lost, could not
be made, or the server stopped serving."""
CallEndListener = Callable[[grpc.StatusCode], None]
"""Told the status of a tracked call once it ended (the hot path's call observers)."""
OutlierListener = Callable[["Subchannel"], None]
"""Called when a subchannel's recent calls say it should be ejected."""

_SERVING = health_pb2.HealthCheckResponse.SERVING
_HEALTH_RETRY = 1.0  # seconds between health calls after a Watch ends, and while NOT_SERVING
_CALLS_ENDED_POLL = 0.05  # seconds: how often a retired sync subchannel looks for its last call


class Subchannel:
    """Owns one grpc.aio channel. Multicallables are cached per balanced multicallable, so a call
    costs one dict lookup here.

    With health checking, a grpc.health.v1 Watch stream runs beside the connection; a server that
    says NOT_SERVING (a gz server does so first thing when it drains) gets no new calls. A server
    without the health service is taken as serving.
    """

    __slots__ = (
        "_health_channel", "_loop", "_on_change", "_on_outlier", "_tasks", "callables",
        "calls_channel", "channel", "endpoint", "health_known", "load", "lock", "outcomes",
        "peer", "serving", "state",
    )  # fmt: skip

    def __init__(
        self,
        endpoint: Endpoint,
        channel: grpc.aio.Channel,
        on_change: ChangeListener,
        on_outlier: OutlierListener = lambda _: None,
        calls_channel: Any = None,
    ) -> None:
        self.endpoint = endpoint
        self.peer = endpoint.address  # host:port, as calls report it; made once, not per call
        self.channel = channel
        # What calls go through: the watched channel itself, or a sync client's grpc.Channel
        self.calls_channel = channel if calls_channel is None else calls_channel
        self.lock = threading.Lock()  # taken by sync calls and by the loop when it reads them
        self._loop: asyncio.AbstractEventLoop | None = None
        self.state = State.IDLE
        self.serving = True  # until the health service says otherwise
        self.health_known = False  # the health service has answered (for /debug/targets)
        self.callables: dict[object, object] = {}
        self.load = Load(time.monotonic())
        self.outcomes = Outcomes()
        self._on_change = on_change
        self._on_outlier = on_outlier
        self._tasks: list[asyncio.Task[None]] = []
        self._health_channel: grpc.aio.Channel | None = None

    def track(self, call: Any, unary: bool, on_end: CallEndListener | None = None) -> float:
        """Count ``call`` in flight until it ends, then learn from its latency (``unary``
        calls only) and status, and pass the status to ``on_end``. Returns the time it started
        (time.monotonic())."""
        now = time.monotonic()
        load = self.load
        load.inflight += 1
        load.last_pick = now
        call.add_done_callback(functools.partial(self._finished, now, unary, on_end))
        return now

    def _finished(
        self, started_at: float, unary: bool, on_end: CallEndListener | None, call: Any
    ) -> None:
        code = finished_code(call)
        if self._count_end(started_at, time.monotonic(), unary, code):
            self._on_outlier(self)
        if on_end is not None:
            on_end(code or grpc.StatusCode.UNKNOWN)

    def _count_end(
        self, started_at: float, now: float, unary: bool, code: grpc.StatusCode | None
    ) -> bool:
        """Take an ended call out of the load and learn from it; True: eject the endpoint."""
        self.load.inflight -= 1
        if unary and code is not grpc.StatusCode.CANCELLED:
            self.load.finished(started_at, now)
        return code is not None and self.outcomes.record(code, now)

    # -- calls from other threads (the sync client) -------------------------------------------
    def sync_call_started(self, now: float) -> float:
        """Count a call made from any thread, starting ``now``, in flight; returns ``now``."""
        with self.lock:
            self.load.inflight += 1
            self.load.last_pick = now
        return now

    def sync_call_ended(self, started_at: float, unary: bool, code: grpc.StatusCode) -> None:
        """The call counted by sync_call_started() ended with ``code`` (from any thread)."""
        with self.lock:
            eject = self._count_end(started_at, time.monotonic(), unary, code)
        loop = self._loop
        if eject and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_outlier, self)  # the pool changes in its loop

    def start(self, health_check: bool, health_channel: grpc.aio.Channel | None = None) -> None:
        """Watch the connection, and with health_check the server's health: over health_channel
        if given (one without the user's interceptors, which must not see gz's own calls)."""
        self.state = self.channel.get_state(try_to_connect=True)
        self._health_channel = health_channel
        loop = self._loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._watch_state()))
        if health_check:
            self._tasks.append(loop.create_task(self._watch_health()))

    async def _watch_state(self) -> None:
        while True:
            await self.channel.wait_for_state_change(self.state)
            old, self.state = self.state, self.channel.get_state()
            if self.state == State.IDLE:
                # A GOAWAY or an idle timeout leaves the channel IDLE; reconnect now so the
                # picker sees READY again (or a failure) instead of a stale connection.
                self.state = self.channel.get_state(try_to_connect=True)
            if old != self.state:
                lost = old == State.READY or self.state in (State.TRANSIENT_FAILURE, State.SHUTDOWN)
                self._on_change(self, lost)

    async def _watch_health(self) -> None:
        stub = health_pb2_grpc.HealthStub(self._health_channel or self.channel)
        request = health_pb2.HealthCheckRequest(service="")
        while True:
            try:
                if self.serving:
                    await self._watch_until_not_serving(stub, request)
                else:
                    # A draining server waits for open streams before it exits, so while it
                    # says NOT_SERVING it is asked with short Check calls instead of a Watch.
                    reply = await stub.Check(request, timeout=_HEALTH_RETRY, wait_for_ready=True)
                    self._set_serving(reply.status == _SERVING)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    log.info("%s has no health service; taking it as serving", self.endpoint)
                    self._set_serving(True)
                    return
            # The stream ended with its connection, or the server is not serving. Keep the
            # last status: a draining server must not look serving again before it says so.
            await asyncio.sleep(_HEALTH_RETRY)

    async def _watch_until_not_serving(
        self, stub: health_pb2_grpc.HealthStub, request: health_pb2.HealthCheckRequest
    ) -> None:
        call = stub.Watch(request, wait_for_ready=True)
        try:
            async for reply in call:
                self._set_serving(reply.status == _SERVING)
                if not self.serving:
                    return
        finally:
            call.cancel()

    def _set_serving(self, serving: bool) -> None:
        self.health_known = True
        if serving != self.serving:
            self.serving = serving
            self._on_change(self, not serving)

    async def close(self, grace: float | None) -> None:
        """Stop watching; in-flight calls get up to grace seconds, then are cancelled."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.state = State.SHUTDOWN
        self.callables.clear()
        if self._health_channel is not None:
            await self._health_channel.close(0)
        if self.calls_channel is not self.channel:
            await self._close_calls_channel(grace)
        await self.channel.close(grace)

    async def _close_calls_channel(self, grace: float | None) -> None:
        """A sync client's channel: grpc.Channel.close() cancels what is in flight at once, so
        wait for its calls to end first, up to ``grace``."""
        if grace:
            until = time.monotonic() + grace
            # the calls end in other threads: there is no event of theirs to await
            while self.load.inflight > 0 and time.monotonic() < until:  # noqa: ASYNC110
                await asyncio.sleep(_CALLS_ENDED_POLL)
        self.calls_channel.close()

    def __repr__(self) -> str:
        serving = "" if self.serving else " NOT_SERVING"
        ejected = " EJECTED" if self.outcomes.is_ejected() else ""
        return f"<Subchannel {self.endpoint} {self.state.name}{serving}{ejected}>"
