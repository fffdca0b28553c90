"""The call objects a BalancedChannel returns when a call cannot go straight to a subchannel: it
runs through client middleware, or must wait for an endpoint. They behave as grpc.aio's own call
objects do, kind for kind (await it, iterate it, write to it, ask its code), so stubs and callers
cannot tell.

The chain of a call runs in a task of its own from the moment the call is made, as a grpc call
starts at once: initial metadata, status and cancellation never wait for the caller to read. A
response stream still reads from grpc only when the caller asks for a message (``ReadGate``), so
flow control and the moment the status becomes known stay grpc's: a grpc call holds its status
back until every message before it was read.
"""

from __future__ import annotations

import asyncio
import collections
import time
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

import grpc
from grpc.aio import EOF, AioRpcError, Metadata

from ..middleware import CallContext

# ctx.state keys: the grpc call of a call's latest attempt (read by the call objects here and by
# UnaryAttempts), and the ReadGate of a response stream (read by the channel's stream endpoint)
LATEST_CALL = "call"
READ_GATE = "read_gate"
_CALL_WAITER = "call_waiter"

# grpc.aio's own words, so that errors read the same through gz
LOCALLY_CANCELLED = "Locally cancelled by application!"
_API_STYLE_ERROR = "The iterator and read/write APIs may not be mixed on a single RPC."
_RPC_ALREADY_FINISHED = "RPC already finished."
_RPC_HALF_CLOSED = 'RPC is half closed after calling "done_writing".'


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
    if isinstance(error, asyncio.CancelledError):
        return LOCALLY_CANCELLED
    return "" if error is None else f"{type(error).__name__}: {error}"


def announce_call(ctx: CallContext, call: grpc.aio.Call | None) -> None:
    """Record the grpc call of the latest attempt (None: there will be none) for the call
    object, and let a response stream's gate watch it."""
    if call is not None:
        ctx.state[LATEST_CALL] = call
        gate = ctx.state.get(READ_GATE)
        if gate is not None:
            gate.watch(call)
    _resolve(ctx.state.pop(_CALL_WAITER, None))


class ReadGate:
    """Lets a response stream's endpoint read a message from grpc only when the caller asked
    for one, or once the grpc call has ended (then only the end is left to read)."""

    __slots__ = ("_call", "_ended", "_waiter", "_wanted")

    def __init__(self) -> None:
        self._wanted = False
        self._ended = False
        self._call: grpc.aio.Call | None = None
        self._waiter: asyncio.Future[None] | None = None

    def want(self) -> None:
        """The caller waits for a message."""
        self._wanted = True
        self._wake()

    def received(self) -> None:
        """A message reached the caller: the next read waits for the next ask. (Not cleared
        per read: an attempt that failed, or a message middleware dropped, still owes one.)"""
        self._wanted = False

    def watch(self, call: grpc.aio.Call) -> None:
        """Open for good once ``call`` (the latest attempt's) has ended."""
        self._call, self._ended = call, False
        call.add_done_callback(self._call_ended)

    def _call_ended(self, call: grpc.aio.Call) -> None:
        if call is self._call:
            self._ended = True
            self._wake()

    def _wake(self) -> None:
        _resolve(self._waiter)

    async def wait(self) -> None:
        """Until the endpoint may read a message."""
        while not (self._wanted or self._ended):
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter


class RequestQueue:
    """The request iterator behind ``call.write()`` / ``call.done_writing()``: a write returns
    once grpc has sent the request, as grpc's own write does. grpc's call sends each request it
    takes from its iterator before it asks for the next one, so a request counts as sent when
    the next is asked for."""

    def __init__(self, call: ChainedCall) -> None:
        self._call = call
        self._queue: collections.deque[tuple[Any, asyncio.Future[None]]] = collections.deque()
        self._arrived: asyncio.Future[None] | None = None
        self._sending: asyncio.Future[None] | None = None  # of the request grpc took last
        self.done_writing = False

    async def put(self, request: Any) -> None:
        taken = asyncio.get_running_loop().create_future()
        self._queue.append((request, taken))
        _resolve(self._arrived)
        try:
            await asyncio.wait((taken, self._call._finished), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._call.cancel()  # as grpc's write: a writer cancelled while sending ends the call
            raise
        if not taken.done():  # the call ended first: grpc will not send it
            taken.cancel()
            await self._call._raise_for_status()
            raise asyncio.InvalidStateError(_RPC_ALREADY_FINISHED)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        _resolve(self._sending)  # grpc asks for the next request: it sent the one before
        while not self._queue:
            if self.done_writing:
                raise StopAsyncIteration
            self._arrived = asyncio.get_running_loop().create_future()
            await self._arrived
        request, self._sending = self._queue.popleft()
        if request is _END:
            self.done_writing = True
            _resolve(self._sending)
            raise StopAsyncIteration
        return request


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


_END = object()


class ChainedCall(grpc.aio.Call):
    """A call whose result comes from a composed handler instead of one grpc call: the status,
    methods and errors of the chain, metadata of the grpc call of the latest attempt
    (``ctx.state[LATEST_CALL]``, set by the channel's endpoint handler). One subclass per
    call kind, each with exactly the methods of grpc's call object of that kind."""

    def __init__(self, ctx: CallContext, run: Callable[[], Awaitable[Any]]) -> None:
        self._ctx = ctx
        self._finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._callbacks: list[Callable[[Any], None]] = []
        self._task = asyncio.ensure_future(run())
        self._task.add_done_callback(self._task_done)

    # -- outcome ------------------------------------------------------------------------------
    def _task_done(self, task: asyncio.Task[Any]) -> None:
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
        self._ended()
        for callback in self._callbacks:
            callback(self)

    def _ended(self) -> None:
        """Hook for the response stream: wake a reader waiting for a message."""

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

    async def _raise_for_status(self) -> None:
        """Raise what the call ended with, if not OK (after it ended)."""
        error = await self._outcome()
        if error is not None:
            raise error

    # -- status -------------------------------------------------------------------------------
    def _grpc_call(self) -> grpc.aio.Call | None:
        return self._ctx.state.get(LATEST_CALL)

    async def code(self) -> grpc.StatusCode:
        error = await self._outcome()
        call = self._grpc_call()
        if error is None and call is not None:
            return await call.code()
        return code_of(error)

    async def details(self) -> str:
        error = await self._outcome()
        call = self._grpc_call()
        if error is None and call is not None:  # an OK status may carry details too
            return await call.details()
        return details_of(error)

    async def debug_error_string(self) -> str:
        error = await self._outcome()
        if isinstance(error, AioRpcError):
            return error.debug_error_string()
        call = self._grpc_call()
        return await call.debug_error_string() if call is not None else ""

    async def initial_metadata(self) -> Metadata:
        # Not through wait_for_connection(): that raises for a failed call, and grpc's own
        # calls still return the initial metadata of a failed call.
        while True:
            call = await self._announced_call()
            if call is None:
                return Metadata()
            metadata = await call.initial_metadata()
            if not (call.done() and await call.code() is not grpc.StatusCode.OK):
                return metadata
            await self._outcome()  # a failed attempt: the attempt that decides may follow
            if self._grpc_call() is call:
                return metadata

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
                _CALL_WAITER, asyncio.get_running_loop().create_future()
            )
            await asyncio.shield(waiter)
        return self._grpc_call()

    async def wait_for_connection(self) -> None:
        call = await self._announced_call()
        if call is not None and not self._finished.done():
            # A grpc call cancelled before it sent its headers never connects: stop at the end.
            connected = asyncio.ensure_future(call.wait_for_connection())
            try:
                await asyncio.wait((connected, self._finished), return_when=FIRST_COMPLETED)
            finally:
                connected.cancel()
            if call.done() or (connected.done() and not connected.cancelled()
                               and connected.exception()):  # fmt: skip
                await self._outcome()  # that attempt ended: the call's outcome decides
        if self._finished.done():
            await self._raise_for_status()

    def cancel(self) -> bool:
        if self._finished.done():
            return False
        call = self._grpc_call()
        if call is not None:
            call.cancel()
        self._task.cancel()
        self._finish(None, cancelled=True)  # cancelled at once, as grpc's calls are
        return True

    def cancelled(self) -> bool:
        return self._finished.cancelled()

    def done(self) -> bool:
        return self._finished.done()

    def time_remaining(self) -> float | None:
        call = self._grpc_call()
        if call is not None:
            return call.time_remaining()
        if self._ctx.deadline is None:
            return None
        return max(0.0, self._ctx.deadline - time.monotonic())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._finished.done():
            callback(self)
        else:
            self._callbacks.append(callback)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._ctx.method.full_name}>"


class _UnaryResponse(ChainedCall):
    def __await__(self) -> Generator[Any, None, Any]:
        return self._task.__await__()


class _StreamResponse(ChainedCall):
    """The chain's task puts each message here as the endpoint reads it from grpc."""

    def __init__(self, ctx: CallContext, responses: AsyncIterator[Any]) -> None:
        self._received: collections.deque[Any] = collections.deque()
        self._arrived: asyncio.Future[None] | None = None
        self._gate = ctx.state[READ_GATE] = ReadGate()
        self._style: str | None = None
        self._messages: AsyncIterator[Any] | None = None
        super().__init__(ctx, lambda: self._receive(responses))

    async def _receive(self, responses: AsyncIterator[Any]) -> None:
        async for response in responses:
            self._received.append(response)
            self._gate.received()
            self._ended()

    def _ended(self) -> None:
        _resolve(self._arrived)

    async def _next(self) -> Any:
        """The next message, or EOF after the last; raises as the call ended if not OK."""
        while not self._received or self._finished.cancelled():
            if self._finished.done():
                await self._raise_for_status()
                return EOF
            self._gate.want()
            self._arrived = asyncio.get_running_loop().create_future()
            try:
                await self._arrived
            except asyncio.CancelledError:
                self.cancel()  # as grpc's read: a reader cancelled while waiting ends the call
                raise
        return self._received.popleft()

    def _use(self, style: str) -> None:
        if self._style is None:
            self._style = style
        elif self._style != style:
            raise grpc.aio.UsageError(_API_STYLE_ERROR)

    def __aiter__(self) -> AsyncIterator[Any]:
        self._use("iterator")
        if self._messages is None:
            self._messages = self._iterate()
        return self._messages

    async def _iterate(self) -> AsyncIterator[Any]:
        while (message := await self._next()) is not EOF:
            yield message

    async def read(self) -> Any:
        if self._finished.done() and not self._received:
            await self._raise_for_status()
            return EOF
        self._use("read")
        return await self._next()


class _StreamRequest(ChainedCall):
    """``write()`` and ``done_writing()`` for a call made without a request iterator."""

    _requests: RequestQueue | None

    async def write(self, request: Any) -> None:
        requests = self._requests
        if requests is None:
            raise grpc.aio.UsageError(_API_STYLE_ERROR)
        if self._finished.done():
            raise asyncio.InvalidStateError(_RPC_ALREADY_FINISHED)
        if requests.done_writing:
            raise asyncio.InvalidStateError(_RPC_HALF_CLOSED)
        await requests.put(request)

    async def done_writing(self) -> None:
        requests = self._requests
        if requests is None:
            raise grpc.aio.UsageError(_API_STYLE_ERROR)
        if self._finished.done() or requests.done_writing:
            return
        await requests.put(_END)


class ChainedUnaryUnaryCall(_UnaryResponse, grpc.aio.UnaryUnaryCall):
    pass


class ChainedUnaryStreamCall(_StreamResponse, grpc.aio.UnaryStreamCall):
    pass


class ChainedStreamUnaryCall(_StreamRequest, _UnaryResponse, grpc.aio.StreamUnaryCall):
    def __init__(self, ctx: CallContext, run: Callable[[Any], Awaitable[Any]],
                 requests: Any) -> None:  # fmt: skip
        self._requests = RequestQueue(self) if requests is None else None
        super().__init__(ctx, lambda: run(self._requests if requests is None else requests))


class ChainedStreamStreamCall(_StreamRequest, _StreamResponse, grpc.aio.StreamStreamCall):
    def __init__(self, ctx: CallContext, run: Callable[[Any], AsyncIterator[Any]],
                 requests: Any) -> None:  # fmt: skip
        self._requests = RequestQueue(self) if requests is None else None
        super().__init__(ctx, run(self._requests if requests is None else requests))
