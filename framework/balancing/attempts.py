"""UnaryAttempts: what a unary call on the hot path returns when retries are on.

It awaits the first attempt's grpc call straight through, so a call that succeeds costs one small
object more than a raw grpc call. Only when the attempt fails with a status the retry policy
allows does it build a CallContext and hand over to the Retry middleware for attempts 2 and on,
each through the channel's ordinary endpoint handler (another endpoint, backoff, deadline,
budget: all as in the middleware).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import grpc
from grpc.aio import AioRpcError, Metadata

from ..middleware import CallContext
from ..middleware.retry import ATTEMPT, IDEMPOTENT, TRIED_PEERS
from .calls import LATEST_CALL, code_of, details_of
from .load import finished_code

if TYPE_CHECKING:
    from .channel import _MultiCallable


class UnaryAttempts(grpc.aio.UnaryUnaryCall):
    """Behaves as the grpc call of the attempt that decided the outcome."""

    def __init__(
        self,
        owner: _MultiCallable,
        call: grpc.aio.UnaryUnaryCall,
        peer: str,
        request: Any,
        deadline: float | None,
        extras: tuple[Any, Any, Any, Any],  # metadata, credentials, wait_for_ready, compression
        idempotent: bool | None,
    ) -> None:
        self._owner = owner
        self._call = call
        self._peer = peer
        self._request = request
        self._deadline = deadline
        self._extras = extras
        self._idempotent = owner.idempotent if idempotent is None else idempotent
        self._retrying: asyncio.Task[Any] | None = None  # attempts 2 and on, once started
        self._ctx: CallContext | None = None
        self._settled: asyncio.Task[BaseException | None] | None = None
        self._cancelled = False  # cancel() during retries, before the retrying task saw it

    # -- the response -------------------------------------------------------------------------
    def __await__(self) -> Generator[Any, None, Any]:
        if self._retrying is None:
            try:
                return (yield from self._call.__await__())
            except AioRpcError as error:
                if self._retrying is None:
                    policy = self._owner.retry.policy
                    if not policy.retryable(error.code(), self._idempotent):
                        raise
                    self._retrying = asyncio.ensure_future(self._retry(error))
        return (yield from self._retrying.__await__())

    async def _retry(self, error: AioRpcError) -> Any:
        metadata, credentials, wait_for_ready, compression = self._extras
        options = {"credentials": credentials, "wait_for_ready": wait_for_ready,
                   "compression": compression}  # fmt: skip
        owner = self._owner
        ctx = self._ctx = CallContext(owner.method, list(metadata or ()), self._deadline,
                                      self._peer, options=options)  # fmt: skip
        ctx.state.update({ATTEMPT: 1, TRIED_PEERS: [self._peer], IDEMPOTENT: self._idempotent})
        return await owner.retry.retry_unary(ctx, self._request, owner.attempt_handler, error)

    def _latest_call(self) -> grpc.aio.Call:
        """The grpc call of the latest attempt."""
        if self._ctx is not None:
            return self._ctx.state.get(LATEST_CALL, self._call)
        return self._call

    async def _outcome(self) -> BaseException | None:
        """Run the call (and its retries) to its end; the error it ended with, None for OK."""
        return await asyncio.shield(self._settled_task())

    def _settled_task(self) -> asyncio.Task[BaseException | None]:
        """The one task that runs the call to its end, made when first needed."""
        if self._settled is None:
            self._settled = asyncio.ensure_future(self._settle())
        return self._settled

    async def _settle(self) -> BaseException | None:
        try:
            await self
        except (Exception, asyncio.CancelledError) as error:
            return error
        return None

    # -- status -------------------------------------------------------------------------------
    async def code(self) -> grpc.StatusCode:
        return code_of(await self._outcome())

    async def details(self) -> str:
        return details_of(await self._outcome())

    async def initial_metadata(self) -> Metadata:
        if self._retrying is None:
            metadata = await self._call.initial_metadata()
            if not self._call.done() or await self._call.code() is grpc.StatusCode.OK:
                return metadata  # as soon as grpc has it, unless a retry may decide the call
        await self._outcome()
        return await self._latest_call().initial_metadata()

    async def trailing_metadata(self) -> Metadata:
        error = await self._outcome()
        if isinstance(error, AioRpcError):
            return error.trailing_metadata()
        return await self._latest_call().trailing_metadata()

    async def wait_for_connection(self) -> None:
        await self._latest_call().wait_for_connection()

    def cancel(self) -> bool:
        if self._retrying is not None:
            if self._retrying.done() or self._cancelled:
                return False
            self._latest_call().cancel()
            self._cancelled = self._retrying.cancel()  # cancelled at once, as grpc's calls are
            return self._cancelled
        return self._call.cancel()

    def cancelled(self) -> bool:
        if self._retrying is not None:
            return self._cancelled or self._retrying.cancelled()
        return self._call.cancelled()

    def done(self) -> bool:
        if self._retrying is not None:
            return self._cancelled or self._retrying.done()
        return self._call.done()

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Called once the outcome is known, retries included (which this starts if need be);
        at once if it is known already, as grpc's calls do."""
        if self._settled_now():
            callback(self)
        else:
            self._settled_task().add_done_callback(lambda _: callback(self))

    def _settled_now(self) -> bool:
        """Whether the outcome is known: no attempt runs and none will follow."""
        if self._retrying is not None:
            return self._cancelled or self._retrying.done()
        code = finished_code(self._call) if self._call.done() else None
        if code is None:
            return False
        return code is grpc.StatusCode.OK or not self._owner.retry.policy.retryable(
            code, self._idempotent
        )

    def __repr__(self) -> str:
        return f"<UnaryAttempts {self._latest_call()!r}>"
