"""PendingCall: a sync channel's ``future()`` or stream started while no endpoint can be picked
(the target is not resolved yet, or every endpoint is down or draining).

grpc's own call objects never make the caller wait, so neither does this: it waits in the
channel's loop for an endpoint as connect() does (``pick_when_ready``: at once UNAVAILABLE
without ``wait_for_ready``, else until the deadline), makes the grpc call from there, and
behaves as that call; or, when the wait fails, as a call that failed with its status.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import grpc

from .calls import LOCALLY_CANCELLED

if TYPE_CHECKING:
    from .synccalls import Begun, Extras, SyncMultiCallable


def sync_rpc_error(code: grpc.StatusCode, details: str) -> Any:
    """The error a grpc.Channel raises for a call that ended with ``code``: grpc's own class,
    so it is also the ended grpc.Call and grpc.Future that callers may treat it as."""
    from grpc._channel import _InactiveRpcError, _RPCState

    return _InactiveRpcError(_RPCState((), (), (), code, details))


class FailedCall:
    """A call that ended with ``error`` before it started, as grpc's ended calls behave: every
    method is the error's, and reading the stream raises it."""

    def __init__(self, error: Any) -> None:
        self.error = error

    def __iter__(self) -> FailedCall:
        return self

    def __next__(self) -> Any:
        raise self.error

    def __getattr__(self, name: str) -> Any:
        return getattr(self.error, name)


def failed(error: BaseException) -> FailedCall:
    """``error`` (from waiting for an endpoint) as an ended call."""
    if isinstance(error, grpc.aio.AioRpcError):
        return FailedCall(sync_rpc_error(error.code(), error.details() or ""))
    if isinstance(error, asyncio.CancelledError):
        return FailedCall(sync_rpc_error(grpc.StatusCode.CANCELLED, LOCALLY_CANCELLED))
    return FailedCall(sync_rpc_error(grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}"))


def pick_in_loop(owner: SyncMultiCallable, deadline: float | None, wait_for_ready: Any,
                 tried: list[str] | None) -> Future[Any]:  # fmt: skip
    """A future of a subchannel for a call, waited for in the channel's loop."""
    inner, thread = owner.channel.open()
    waiting = inner.pick_when_ready(deadline, bool(wait_for_ready), tried)
    return asyncio.run_coroutine_threadsafe(waiting, thread.loop)


class PendingCall(grpc.Call, grpc.Future):
    def __init__(self, owner: SyncMultiCallable, request: Any, deadline: float | None,
                 extras: Extras, how: str, begun: Begun | None) -> None:  # fmt: skip
        self._deadline = deadline
        self._condition = threading.Condition()
        self._call: Any = None  # the grpc call, or a FailedCall, once there is one
        self._cancelled = False
        self._waiting: list[Callable[[Any], None]] = []  # done-callbacks to give the call

        def picked(pick: Future[Any]) -> None:  # in the loop
            error = None if pick.cancelled() else pick.exception()
            if pick.cancelled() or error is not None:
                cause = error or asyncio.CancelledError()
                owner.fail(begun, cause)
                self._become(failed(cause))
                return
            try:
                self._become(
                    owner.start_attempt(pick.result(), request, deadline, extras, how, begun)
                )
            except Exception as error:  # start_attempt ended the observers
                self._become(failed(error))

        try:
            self._pick = pick_in_loop(owner, deadline, extras[2], None)
        except BaseException as error:
            owner.fail(begun, error)
            raise
        self._pick.add_done_callback(picked)

    def _become(self, call: Any) -> None:
        with self._condition:
            self._call = call
            waiting, self._waiting = self._waiting, []
            self._condition.notify_all()
        for callback in waiting:
            call.add_done_callback(callback)

    def _made(self) -> Any:
        """The call, once made (or failed)."""
        with self._condition:
            self._condition.wait_for(lambda: self._call is not None)
        return self._call

    # -- the stream ---------------------------------------------------------------------------
    def __iter__(self) -> PendingCall:
        return self

    def __next__(self) -> Any:
        return next(self._made())

    next = __next__

    # -- grpc.Future --------------------------------------------------------------------------
    def cancel(self) -> bool:
        with self._condition:
            call = self._call
            if call is None:
                self._cancelled = True
        if call is not None:
            return call.cancel()
        self._pick.cancel()  # picked() then ends it as CANCELLED
        self._made()
        return True

    def cancelled(self) -> bool:
        call = self._call
        return self._cancelled or (call is not None and call.cancelled())

    def running(self) -> bool:
        return not self.done()

    def done(self) -> bool:
        call = self._call
        return call is not None and call.done()

    def result(self, timeout: float | None = None) -> Any:
        call, left = self._made_within(timeout)
        return call.result(left)

    def exception(self, timeout: float | None = None) -> Any:
        call, left = self._made_within(timeout)
        return call.exception(left)

    def traceback(self, timeout: float | None = None) -> Any:
        call, left = self._made_within(timeout)
        return call.traceback(left)

    def _made_within(self, timeout: float | None) -> tuple[Any, float | None]:
        """The call once made, and what is left of ``timeout``; grpc's errors for a timeout
        or a cancelled call."""
        until = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            if not self._condition.wait_for(lambda: self._call is not None, timeout):
                raise grpc.FutureTimeoutError()
        if self._cancelled:
            raise grpc.FutureCancelledError()
        return self._call, None if until is None else max(0.0, until - time.monotonic())

    def add_done_callback(self, fn: Callable[[grpc.Future], None]) -> None:
        def callback(_: Any) -> None:
            fn(self)

        with self._condition:
            call = self._call
            if call is None:
                self._waiting.append(callback)
                return
        call.add_done_callback(callback)

    # -- grpc.Call ----------------------------------------------------------------------------
    def is_active(self) -> bool:
        call = self._call
        return call is None or call.is_active()

    def time_remaining(self) -> float | None:
        call = self._call
        if call is not None:
            return call.time_remaining()
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._condition:
            if self._call is None:
                self._waiting.append(lambda _: callback())
                return True
        return self._call.add_callback(callback)

    def initial_metadata(self) -> Any:
        return self._made().initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._made().trailing_metadata()

    def code(self) -> grpc.StatusCode:
        return self._made().code()

    def details(self) -> str:
        return self._made().details()

    def debug_error_string(self) -> str:
        return self._made().debug_error_string()

    def __repr__(self) -> str:
        return f"<PendingCall {self._call!r}>"
