"""FutureAttempts: what a sync channel's unary ``future()`` returns when retries are on.

It behaves as grpc's future of the attempt that decides the call. When an attempt fails with a
status the retry policy allows (and the deadline and budget allow another), the next attempt
starts on another endpoint after the backoff, from the channel's background loop (a timer, not a
thread); until then the future is not done. Blocking calls retry in the caller's thread instead
(syncchannel.py), with the same policy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from ..middleware import CallContext
from ..middleware.retry import ATTEMPT, IDEMPOTENT, TRIED_PEERS

if TYPE_CHECKING:
    from .syncchannel import _SyncMultiCallable

LOCALLY_CANCELLED = "Locally cancelled by application!"  # grpc's words for a cancelled call


class FutureAttempts(grpc.Call, grpc.Future):
    def __init__(
        self,
        owner: _SyncMultiCallable,
        request: Any,
        deadline: float | None,
        extras: tuple[Any, Any, Any, Any],  # metadata, credentials, wait_for_ready, compression
        idempotent: bool | None,
    ) -> None:
        self._owner = owner
        self._request = request
        self._deadline = deadline
        self._extras = extras
        if idempotent is None:
            idempotent = owner._retry.policy.is_idempotent(owner.method)  # type: ignore[union-attr]
        self._state: dict[str, Any] = {ATTEMPT: 1, TRIED_PEERS: [], IDEMPOTENT: idempotent}
        self._condition = threading.Condition()
        self._decided = False
        self._cancelled = False
        self._callbacks: list[Callable[[], None]] = []
        owner._retry.budget.record_call(time.monotonic())  # type: ignore[union-attr]
        subchannel = owner._channel.pick(deadline, extras[2], None)
        self._call = self._start(subchannel)

    # -- attempts -----------------------------------------------------------------------------
    def _start(self, subchannel: Any) -> Any:
        self._peer = subchannel.peer
        call = self._owner.start_attempt(
            subchannel, self._request, self._deadline, self._extras, "future", self._state
        )
        call.add_done_callback(self._attempt_ended)
        return call

    def _attempt_ended(self, call: Any) -> None:
        """In grpc's thread: decide the call, or start the next attempt after the backoff."""
        if self._cancelled or call.code() is grpc.StatusCode.OK:
            self._decide()
            return
        retry = self._owner._retry
        self._state[TRIED_PEERS].append(self._peer)
        ctx = CallContext(self._owner.method, None, self._deadline)
        ctx.state = self._state
        delay = retry.next_delay(ctx, call, self._state[ATTEMPT] + 1)  # type: ignore[union-attr]
        loop = self._owner._channel.loop()
        if delay is None or loop is None:
            self._decide()
            return
        loop.call_soon_threadsafe(loop.call_later, delay, self._next_attempt)

    def _next_attempt(self) -> None:
        """In the channel's loop: the next attempt, on an endpoint not tried yet if any."""
        if self._cancelled:
            return  # cancel() decided it
        subchannel = self._owner._channel.pick_now(self._state[TRIED_PEERS])
        if subchannel is None:  # no endpoint left: the last attempt's outcome stands
            self._decide()
            return
        self._state[ATTEMPT] += 1
        try:
            self._call = self._start(subchannel)
        except Exception:
            self._decide()

    def _decide(self) -> None:
        with self._condition:
            if self._decided:
                return
            self._decided = True
            callbacks, self._callbacks = self._callbacks, []
            self._condition.notify_all()
        for callback in callbacks:
            callback()

    def _wait(self, timeout: float | None) -> Any:
        """The decisive attempt's call, once decided; grpc.FutureTimeoutError after timeout."""
        with self._condition:
            if not self._condition.wait_for(lambda: self._decided, timeout):
                raise grpc.FutureTimeoutError()
        if self._cancelled:
            raise grpc.FutureCancelledError()
        return self._call

    # -- grpc.Future --------------------------------------------------------------------------
    def cancel(self) -> bool:
        with self._condition:
            if self._decided:
                return False
            self._cancelled = True
            call = self._call
        call.cancel()
        self._decide()  # at once, as grpc's future, also between two attempts
        return True

    def cancelled(self) -> bool:
        return self._cancelled

    def running(self) -> bool:
        return not self._decided

    def done(self) -> bool:
        return self._decided

    def result(self, timeout: float | None = None) -> Any:
        return self._wait(timeout).result()

    def exception(self, timeout: float | None = None) -> Exception | None:
        return self._wait(timeout).exception()

    def traceback(self, timeout: float | None = None) -> Any:
        return self._wait(timeout).traceback()

    def add_done_callback(self, fn: Callable[[grpc.Future], None]) -> None:
        if not self.add_callback(lambda: fn(self)):
            fn(self)

    # -- grpc.Call ----------------------------------------------------------------------------
    def is_active(self) -> bool:
        return not self._decided

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._condition:
            if self._decided:
                return False
            self._callbacks.append(callback)
            return True

    def _decisive(self) -> Any:
        with self._condition:
            self._condition.wait_for(lambda: self._decided)
        return self._call

    def initial_metadata(self) -> Any:
        return self._decisive().initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._decisive().trailing_metadata()

    def code(self) -> grpc.StatusCode:
        call = self._decisive()
        return grpc.StatusCode.CANCELLED if self._cancelled else call.code()

    def details(self) -> str:
        call = self._decisive()
        return LOCALLY_CANCELLED if self._cancelled else call.details()

    def debug_error_string(self) -> str:
        return self._decisive().debug_error_string()

    def __repr__(self) -> str:
        return f"<FutureAttempts {self._call!r}>"
