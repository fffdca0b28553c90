"""Retry: a failed call is tried again on another endpoint, within limits.

A call is retried when its status is UNAVAILABLE (it never reached a handler, or its connection
died), or when its method is idempotent and the status is one a new attempt can fix. Each retry
waits a jittered exponential backoff, goes to an endpoint not tried yet when there is one, never
starts once the call's deadline would pass, and spends a token from a budget: over the last
``budget_window`` seconds, at most ``budget_ratio`` retries per call, or a small reserve when that
is more (so a quiet client can still retry), so a sick cluster is not hammered.

Streaming responses are retried only before the first response arrived; calls that stream their
requests are never retried (the requests an iterator produced cannot be replayed).

A balanced channel puts a Retry first in every chain by itself (``connect(retry=...)``), so the
middleware after it runs once per attempt and can read ``ctx.state["attempt"]`` (1, 2, ...) to
label spans and metrics. Calls without other middleware get the same behaviour from a cheaper
wrapper in the channel that only does extra work when a call fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc.aio import AioRpcError

from ..backoff import Backoff
from ..window import SlidingCount
from .chain import CallContext, Method, Middleware, StreamHandler, UnaryHandler

ALWAYS_RETRIED = frozenset({grpc.StatusCode.UNAVAILABLE})
RETRIED_WHEN_IDEMPOTENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,  # from a server's own downstream, with time left here
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNKNOWN,
    }
)

# ctx.state keys shared with the channel: the attempt number (1, 2, ...), the peers already
# tried, and whether the call is idempotent (None: as the policy's method list says)
ATTEMPT = "attempt"
TRIED_PEERS = "tried_peers"
IDEMPOTENT = "idempotent"
_BACKOFF = "retry_backoff"

_idempotent: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "gz_idempotent", default=None
)


@contextlib.contextmanager
def idempotent(value: bool = True) -> Iterator[None]:
    """Mark the calls made inside the block as idempotent (or, with False, as not), whatever
    the method list says::

        with gz.idempotent():
            await stub.GetUser(request)
    """
    token = _idempotent.set(value)
    try:
        yield
    finally:
        _idempotent.reset(token)


def idempotent_override() -> bool | None:
    """The ``idempotent()`` block around the current call, if any (read when a call starts)."""
    return _idempotent.get()


@dataclass(frozen=True)
class RetryPolicy:
    """How a channel retries: ``connect(retry=RetryPolicy(...))``; GZ_RETRY_MAX_ATTEMPTS and
    GZ_IDEMPOTENT_METHODS give the defaults."""

    max_attempts: int = 3  # the first attempt included; 1 switches retries off
    first_backoff: float = 0.01  # seconds; each retry waits a jittered, doubling delay
    max_backoff: float = 0.5
    # The budget: over budget_window seconds, retries may be budget_ratio of the calls or the
    # reserve (budget_min_per_second * budget_window), whichever is more; never their sum, so
    # above reserve / ratio calls per window (50) retries add at most 20% to the load.
    budget_ratio: float = 0.2
    budget_min_per_second: float = 1.0  # a reserve of 10 per window: a quiet client can retry
    budget_window: float = 10.0
    # "pkg.Service/Method", or "pkg.Service/*" for every method of a service
    idempotent_methods: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(
                f"max_attempts must be 1 or more (1: no retries), not {self.max_attempts}"
            )
        object.__setattr__(self, "idempotent_methods", frozenset(self.idempotent_methods))

    def is_idempotent(self, method: Method) -> bool:
        return (
            method.full_name.lstrip("/") in self.idempotent_methods
            or f"{method.service}/*" in self.idempotent_methods
        )

    def retryable(self, code: grpc.StatusCode, idempotent: bool) -> bool:
        return code in (RETRIED_WHEN_IDEMPOTENT if idempotent else ALWAYS_RETRIED)


class RetryBudget:
    """Retries allowed over the policy's window: ``ratio`` of the calls, or the reserve when that
    is more. The reserve is not added to the share: it only lets a client making few calls (under
    reserve / ratio per window) retry a few failures, and adds nothing once traffic is above it."""

    __slots__ = ("_calls", "_lock", "_retries", "ratio", "reserve")

    def __init__(self, policy: RetryPolicy) -> None:
        self._calls = SlidingCount(policy.budget_window)
        self._retries = SlidingCount(policy.budget_window)
        self._lock = threading.Lock()  # a sync client's calls count from many threads
        self.ratio = policy.budget_ratio
        self.reserve = policy.budget_min_per_second * policy.budget_window

    def allowed(self, now: float) -> float:
        """How many retries the window ending at ``now`` allows in all."""
        return max(self.ratio * self._calls.value(now), self.reserve)

    def record_call(self, now: float) -> None:
        """Count one call, not its retries (``now``: time.monotonic())."""
        with self._lock:
            self._calls.add(now)

    def usage(self, now: float) -> tuple[int, int, float]:
        """(calls, retries, retries allowed) over the window ending at ``now``, for
        /debug/targets."""
        with self._lock:
            return self._calls.value(now), self._retries.value(now), self.allowed(now)

    def try_spend(self, now: float) -> bool:
        """Take a retry token; False when the window's retries are used up."""
        with self._lock:
            if self._retries.value(now) + 1 > self.allowed(now):
                return False
            self._retries.add(now)
            return True


class Retry(Middleware):
    """Client middleware that retries failed calls; see the module docstring."""

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        self.policy = policy or RetryPolicy()
        self.budget = RetryBudget(self.policy)

    def applies_to(self, method: Method) -> bool:
        return (
            method.side == "client"
            and not method.kind.request_streaming
            and self.policy.max_attempts > 1
        )

    def retryable(self, ctx: CallContext, error: BaseException) -> bool:
        """Whether an attempt that failed with ``error`` (grpc.aio's or grpc's error of a call)
        may be followed by another."""
        if not isinstance(error, grpc.RpcError) or not hasattr(error, "code"):
            return False
        idempotent = ctx.state.get(IDEMPOTENT)
        if idempotent is None:
            idempotent = ctx.state[IDEMPOTENT] = self.policy.is_idempotent(ctx.method)
        return self.policy.retryable(error.code(), idempotent)

    # -- unary responses ----------------------------------------------------------------------
    async def unary(self, ctx: CallContext, request: Any, call_next: UnaryHandler) -> Any:
        self.budget.record_call(time.monotonic())
        ctx.state.setdefault(IDEMPOTENT, idempotent_override())
        return await self._unary_attempts(ctx, request, call_next, 1, None)

    async def retry_unary(
        self, ctx: CallContext, request: Any, call_next: UnaryHandler, error: AioRpcError
    ) -> Any:
        """Attempts 2 and on, after the first failed with ``error`` (for the channel's hot path,
        which made the first attempt itself)."""
        return await self._unary_attempts(ctx, request, call_next, 2, error)

    async def _unary_attempts(
        self,
        ctx: CallContext,
        request: Any,
        call_next: UnaryHandler,
        number: int,
        error: AioRpcError | None,  # of attempt number - 1
    ) -> Any:
        while True:
            if error is not None and not await self._may_retry(ctx, error, number):
                raise error
            attempt = _attempt_context(ctx, number)
            try:
                return await call_next(attempt, request)
            except AioRpcError as failure:
                _remember_peer(ctx, attempt)
                error, number = failure, number + 1
            finally:
                _adopt(ctx, attempt)

    # -- streamed responses -------------------------------------------------------------------
    async def stream(
        self, ctx: CallContext, request: Any, call_next: StreamHandler
    ) -> AsyncIterator[Any]:
        """Retried only while no response has arrived: once one has, a failure ends the call."""
        self.budget.record_call(time.monotonic())
        ctx.state.setdefault(IDEMPOTENT, idempotent_override())
        number, error = 1, None
        while True:
            if error is not None and not await self._may_retry(ctx, error, number):
                raise error
            attempt = _attempt_context(ctx, number)
            received = False
            try:
                async for response in call_next(attempt, request):
                    received = True
                    yield response
                return
            except AioRpcError as failure:
                _remember_peer(ctx, attempt)
                if received:
                    raise
                error, number = failure, number + 1
            finally:
                _adopt(ctx, attempt)

    # -- shared -------------------------------------------------------------------------------
    async def _may_retry(self, ctx: CallContext, error: AioRpcError, number: int) -> bool:
        """Whether attempt ``number`` may follow a failure with ``error``: allowed by the
        policy, the deadline and the budget. Sleeps the backoff first when it is."""
        delay = self.next_delay(ctx, error, number)
        if delay is None:
            return False
        await asyncio.sleep(delay)
        return True

    def next_delay(self, ctx: CallContext, error: grpc.RpcError, number: int) -> float | None:
        """The backoff to wait before attempt ``number``, which follows a failure with
        ``error``, when the policy, the deadline and the budget allow it (a retry token is then
        spent); None when they do not."""
        if number > self.policy.max_attempts or not self.retryable(ctx, error):
            return None
        backoff = ctx.state.get(_BACKOFF)
        if backoff is None:
            backoff = ctx.state[_BACKOFF] = Backoff(
                self.policy.first_backoff, self.policy.max_backoff
            )
        delay = backoff.next_delay()
        now = time.monotonic()
        if ctx.deadline is not None and now + delay >= ctx.deadline:
            return None
        if not self.budget.try_spend(now):
            return None
        return delay


def _attempt_context(ctx: CallContext, number: int) -> CallContext:
    """A context per attempt: its own copy of the metadata, so that middleware after Retry may
    add to it on each attempt; the state dict is shared with the call's context."""
    ctx.state[ATTEMPT] = number
    attempt = CallContext(ctx.method, list(ctx.metadata), ctx.deadline, options=ctx.options)
    attempt.state = ctx.state
    return attempt


def _remember_peer(ctx: CallContext, attempt: CallContext) -> None:
    """Note the endpoint a failed attempt went to, so the next one goes elsewhere."""
    if attempt.peer is not None:
        ctx.state.setdefault(TRIED_PEERS, []).append(attempt.peer)


def _adopt(ctx: CallContext, attempt: CallContext) -> None:
    """Carry an attempt's peer, and a deadline that middleware after Retry gave it (a default
    timeout), over to the call: the deadline then holds for every later attempt too."""
    ctx.peer = attempt.peer or ctx.peer
    if ctx.deadline is None:
        ctx.deadline = attempt.deadline
