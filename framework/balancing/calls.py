"""The call object a BalancedChannel returns when a call cannot go straight to a subchannel: it
runs through client middleware, or must wait for an endpoint. It behaves as grpc.aio's own call
objects do (await it, iterate it, write to it, ask its code), so stubs and callers cannot tell."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc.aio import AioRpcError, Metadata

from ..middleware import CallContext

_END = object()

# ctx.state key of the grpc call of a call's latest attempt (ChainedCall and UnaryAttempts read it)
LATEST_CALL = "call"


def rpc_error(code: grpc.StatusCode, details: str) -> AioRpcError:
    """An error that looks exactly like one a grpc channel raises."""
    return AioRpcError(code, Metadata(), Metadata(), details=details)


def code_of(error: BaseException | None) -> grpc.StatusCode:
    """The status a call that ended with ``error`` (None: success) reports."""
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, AioRpcError):
        return error.code()
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def details_of(error: BaseException | None) -> str:
    if isinstance(error, AioRpcError):
        return error.details() or ""
    return "" if error is None else f"{type(error).__name__}: {error}"


def announce_call(ctx: CallContext, call: grpc.aio.Call | None) -> None:
    """Record the grpc call of the latest attempt (None: there will be none) for ChainedCall."""
    if call is not None:
        ctx.state[LATEST_CALL] = call
    waiter = ctx.state.pop("call_waiter", None)
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class RequestQueue:
    """The request iterator behind ``call.write()`` / ``call.done_writing()``."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    async def write(self, request: Any) -> None:
        await self._queue.put(request)

    async def done_writing(self) -> None:
        await self._queue.put(_END)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        item = await self._queue.get()
        if item is _END:
            raise StopAsyncIteration
        return item


class ChainedCall(
    grpc.aio.UnaryUnaryCall,
    grpc.aio.UnaryStreamCall,
    grpc.aio.StreamUnaryCall,
    grpc.aio.StreamStreamCall,
):
    """A call whose result comes from a composed handler instead of one grpc call.

    ``ctx.state[LATEST_CALL]`` is the grpc call of the latest attempt, set by the channel's
    endpoint handler; metadata are read from it.
    """

    def __init__(
        self,
        ctx: CallContext,
        run: Callable[[], Awaitable[Any]] | None = None,
        responses: AsyncIterator[Any] | None = None,
        requests: RequestQueue | None = None,
    ) -> None:
        self._ctx = ctx
        self._requests = requests
        self._finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._callbacks: list[Callable[[Any], None]] = []
        self._responses: AsyncIterator[Any] | None = None
        self._task: asyncio.Task[Any] | None = None
        if run is not None:
            self._task = asyncio.ensure_future(run())
            self._task.add_done_callback(self._unary_done)
        else:
            assert responses is not None
            self._responses = self._track(responses)

    # -- outcome ------------------------------------------------------------------------------
    def _unary_done(self, task: asyncio.Task[Any]) -> None:
        self._finish(None if task.cancelled() else task.exception(), task.cancelled())

    def _finish(self, error: BaseException | None, cancelled: bool = False) -> None:
        if self._finished.done():
            return
        if cancelled:
            self._finished.cancel()
        elif error is not None:
            self._finished.set_exception(error)
            self._finished.exception()  # retrieved here: callers see it through code()/await
        else:
            self._finished.set_result(None)
        announce_call(self._ctx, None)  # release wait_for_connection() if no call was made
        for callback in self._callbacks:
            callback(self)

    async def _track(self, responses: AsyncIterator[Any]) -> AsyncIterator[Any]:
        try:
            async for response in responses:
                yield response
        except asyncio.CancelledError:
            self._finish(None, cancelled=True)
            raise
        except BaseException as error:
            self._finish(error)
            raise
        self._finish(None)

    async def _outcome(self) -> BaseException | None:
        """The error the call ended with (None for OK), once it has ended."""
        try:
            await asyncio.shield(self._finished)
        except asyncio.CancelledError:
            if self._finished.cancelled():
                return asyncio.CancelledError()
            raise  # the caller of code()/details() was cancelled, not this call
        except BaseException as error:
            return error
        return None

    # -- unary response -----------------------------------------------------------------------
    def __await__(self) -> Any:
        if self._task is None:
            raise grpc.aio.UsageError("this call streams its responses: iterate it instead")
        return self._task.__await__()

    # -- streamed responses -------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[Any]:
        if self._responses is None:
            raise grpc.aio.UsageError("this call has one response: await it instead")
        return self._responses

    async def read(self) -> Any:
        try:
            return await self.__aiter__().__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF

    # -- streamed requests --------------------------------------------------------------------
    async def write(self, request: Any) -> None:
        if self._requests is None:
            raise grpc.aio.UsageError("write() needs a call made without a request iterator")
        await self._requests.write(request)

    async def done_writing(self) -> None:
        if self._requests is None:
            raise grpc.aio.UsageError("done_writing() needs a call made without a request iterator")
        await self._requests.done_writing()

    # -- status -------------------------------------------------------------------------------
    def _grpc_call(self) -> grpc.aio.Call | None:
        return self._ctx.state.get(LATEST_CALL)

    async def code(self) -> grpc.StatusCode:
        return code_of(await self._outcome())

    async def details(self) -> str:
        return details_of(await self._outcome())

    async def initial_metadata(self) -> Metadata:
        # Not through wait_for_connection(): that raises for a failed call, and grpc's own
        # calls still return the initial metadata of a failed call.
        call = await self._announced_call()
        return await call.initial_metadata() if call is not None else Metadata()

    async def trailing_metadata(self) -> Metadata:
        error = await self._outcome()
        if isinstance(error, AioRpcError):
            return error.trailing_metadata()
        call = self._grpc_call()
        return await call.trailing_metadata() if call is not None else Metadata()

    async def _announced_call(self) -> grpc.aio.Call | None:
        """The grpc call of the latest attempt once it is made; None if the call ended first."""
        if self._grpc_call() is None and not self._finished.done():
            waiter = self._ctx.state.setdefault(
                "call_waiter", asyncio.get_running_loop().create_future()
            )
            await asyncio.shield(waiter)
        return self._grpc_call()

    async def wait_for_connection(self) -> None:
        call = await self._announced_call()
        if call is not None:
            await call.wait_for_connection()

    def cancel(self) -> bool:
        if self._finished.done():
            return False
        call = self._grpc_call()
        if call is not None:
            call.cancel()
        if self._task is not None:
            self._task.cancel()
        else:
            self._finish(None, cancelled=True)
        return True

    def cancelled(self) -> bool:
        return self._finished.cancelled()

    def done(self) -> bool:
        return self._finished.done()

    def time_remaining(self) -> float | None:
        if self._ctx.deadline is None:
            return None
        return max(0.0, self._ctx.deadline - time.monotonic())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._finished.done():
            callback(self)
        else:
            self._callbacks.append(callback)
