"""FutureAttempts: what a sync channel's unary ``future()`` returns when retries are on.

It behaves as grpc's future of the attempt that decides the call. When an attempt fails with a
status the retry policy allows (and the deadline and budget allow another), the next attempt
starts on another endpoint after the backoff, from the channel's background loop (a timer, not a
thread); until then the future is not done. Blocking calls retry in the caller's thread instead
(syncchannel.py), with the same policy.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from ..middleware import CallContext
from ..middleware.retry import ATTEMPT, IDEMPOTENT, TRIED_PEERS
from .calls import LOCALLY_CANCELLED
from .syncpending import failed, pick_in_loop

if TYPE_CHECKING:
    from concurrent.futures import Future

    from .synccalls import Extras, SyncMultiCallable


class FutureAttempts(grpc.Call, grpc.Future):
    def __init__(
        self,
        owner: SyncMultiCallable,
        request: Any,
        deadline: float | None,
        extras: Extras,
        idempotent: bool | None,
    ) -> None:
        self._owner = owner
        self._request = request
        self._deadline = deadline
        self._extras = extras
        retry = owner.retry
        assert retry is not None  # made only for calls with retries
        if idempotent is None:
            idempotent = retry.policy.is_idempotent(owner.method)
        self._state: dict[str, Any] = {ATTEMPT: 1, TRIED_PEERS: [], IDEMPOTENT: idempotent}
        self._condition = threading.Condition()
        self._decided = False
        self._cancelled = False
        self._callbacks: list[Callable[[], None]] = []
        self._call: Any = None  # the latest attempt's grpc call (or the failure of its pick)
        self._peer = ""
        retry.budget.record_call(time.monotonic())
        subchannel = owner.channel.pick_now(None)
        if subchannel is not None:
            self._call = self._start(subchannel)
        else:  # nothing to pick yet: wait in the loop, as a call that waits for an endpoint
            self._pick = pick_in_loop(owner, deadline, extras[2], None)
            self._pick.add_done_callback(self._first_picked)

    # -- attempts -----------------------------------------------------------------------------
    def _start(self, subchannel: Any) -> Any:
        owner = self._owner
        self._peer = subchannel.peer
        begun = owner.begin(self._extras[0], self._deadline, self._state)
        call = owner.start_attempt(
            subchannel, self._request, self._deadline, self._extras, "future", begun
        )
        call.add_done_callback(self._attempt_ended)
        return call

    def _first_picked(self, pick: Future[Any]) -> None:
        """In the loop: the first attempt, or the failure of the wait for an endpoint."""
        error = None if pick.cancelled() else pick.exception()
        if pick.cancelled() or error is not None:
            cause = error or asyncio.CancelledError()
            owner = self._owner
            owner.fail(owner.begin(self._extras[0], self._deadline, self._state), cause)
            self._call = failed(cause)
            self._decide()
            return
        try:
            self._call = self._start(pick.result())
        except Exception as error:  # start_attempt ended the observers
            self._call = failed(error)
            self._decide()

    def _attempt_ended(self, call: Any) -> None:
        """In grpc's thread: decide the call, or start the next attempt after the backoff."""
        if self._cancelled or call.code() is grpc.StatusCode.OK:
            self._decide()
            return
        retry = self._owner.retry
        assert retry is not None
        self._state[TRIED_PEERS].append(self._peer)
        ctx = CallContext(self._owner.method, None, self._deadline)
        ctx.state = self._state
        delay = retry.next_delay(ctx, call, self._state[ATTEMPT] + 1)
        loop = self._owner.channel.loop()
        if delay is None or loop is None:
            self._decide()
            return
        loop.call_soon_threadsafe(loop.call_later, delay, self._next_attempt)

    def _next_attempt(self) -> None:
        """In the channel's loop: the next attempt, on an endpoint not tried yet if any."""
        if self._cancelled:
            return  # cancel() decided it
        subchannel = self._owner.channel.pick_now(self._state[TRIED_PEERS])
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
        if call is None:  # still waiting for a first endpoint
            self._pick.cancel()
        else:
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
