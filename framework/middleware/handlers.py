"""Server side of the chain: wrap a servicer's method handlers once, at registration.

A method whose chain is empty keeps grpc's own handler untouched (sync handlers then run in the
server's thread pool as grpc runs them). Otherwise the handler becomes the composed chain ending
in the servicer method, which may be ``async def``, an async generator, or plain sync code. Sync
code gets grpc.aio's own synchronous servicer context, as it would without gz: its ``abort()``
raises, its ``send_initial_metadata()`` blocks until sent, and its ``add_callback()`` callbacks
run once the handler returned.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Any, NoReturn

import grpc
from grpc._cython import cygrpc

from .chain import (
    CallContext,
    CallObserver,
    Kind,
    Method,
    Middleware,
    StreamHandler,
    UnaryHandler,
    beginning,
    bind,
    compose_bound,
    ending,
    observers_only,
)
from .recovery import Recovery, recover

_BEHAVIOR_FIELDS = {
    Kind.UNARY_UNARY: "unary_unary",
    Kind.UNARY_STREAM: "unary_stream",
    Kind.STREAM_UNARY: "stream_unary",
    Kind.STREAM_STREAM: "stream_stream",
}


def wrap_method_handler(
    full_name: str,
    handler: grpc.RpcMethodHandler,
    middleware: Sequence[Middleware],
    executor: Executor,
) -> grpc.RpcMethodHandler:
    """The handler with ``middleware`` around it, or the handler itself when none applies."""
    kind = Kind((handler.request_streaming, handler.response_streaming))
    field = _BEHAVIOR_FIELDS[kind]
    method = Method(full_name, kind, "server")
    bound = bind(middleware, method)
    if not bound:  # compose() would return the endpoint itself: nothing to wrap
        return handler
    endpoint = _endpoint(getattr(handler, field), kind, executor)
    if kind.response_streaming:
        behavior = _stream_behavior(method, compose_bound(bound, method, endpoint))
    else:
        # The leading observers (the defaults: tracing, metrics, call log, deadline) and a
        # Recovery right after them run in the behavior's own coroutine, as compose() would
        # run them in layers of their own.
        observers = _leading_observers(bound, method)
        rest = bound[len(observers) :]
        recovers = bool(rest) and type(rest[0]) is Recovery
        inner = compose_bound(rest[recovers:], method, endpoint)
        behavior = _unary_behavior(method, observers, inner, recover if recovers else _reraise)
    return handler._replace(**{field: behavior})  # grpc's RpcMethodHandler is a namedtuple


def _leading_observers(bound: Sequence[Middleware], method: Method) -> tuple[CallObserver, ...]:
    """The plain CallObservers at the start of ``bound`` (from bind()), up to the first other
    middleware."""
    count = 0
    while count < len(bound) and observers_only(bound[count : count + 1], method):
        count += 1
    return observers_only(bound[:count], method) or ()


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


async def _reraise(ctx: CallContext, error: Exception) -> NoReturn:
    raise error


def _unary_behavior(
    method: Method,
    observers: tuple[CallObserver, ...],
    chain: UnaryHandler,
    recover: Callable[[CallContext, Exception], Awaitable[NoReturn]],
) -> Callable[..., Any]:
    """grpc's handler for a method with one response: ``observers`` begin and end around
    ``chain`` and ``recover`` (what _Observers.unary and Recovery.unary do, without a coroutine
    of their own per call)."""
    if not observers:

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            ctx = CallContext(method, None, _deadline(context), servicer_context=context)
            try:
                return await chain(ctx, request)
            except Exception as error:
                await recover(ctx, error)

        return behavior

    begin, end = beginning(observers), ending(observers)

    async def observed_behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
        ctx = CallContext(method, None, _deadline(context), servicer_context=context)
        tokens = begin(ctx)
        try:
            try:
                response = await chain(ctx, request)
            except Exception as error:
                await recover(ctx, error)
        except BaseException as error:
            end(ctx, tokens, error)
            raise
        end(ctx, tokens, None)
        return response

    return observed_behavior


def _stream_behavior(method: Method, chain: StreamHandler) -> Callable[..., Any]:
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        # A response stream the client cancelled is closed later, outside its call, when grpc
        # has freed the call: context.peer() then crashes the process. Read it while the call
        # is alive.
        ctx = CallContext(method, None, _deadline(context), context.peer(), context)
        async for response in chain(ctx, request):
            yield response

    return behavior


def _endpoint(behavior: Callable[..., Any], kind: Kind, executor: Executor) -> Any:
    """The last handler of the chain: calls the servicer method however it is written, and
    takes its responses as grpc.aio would (decided by the kind of function, as grpc decides)."""
    invoke = _invoker(behavior, kind, executor)
    if not kind.response_streaming:
        return invoke
    if inspect.iscoroutinefunction(behavior):

        async def writer_endpoint(ctx: CallContext, request: Any) -> AsyncIterator[Any]:
            await invoke(ctx, request)  # it wrote with context.write(); what it returns is ignored
            return
            yield  # an async generator that yields nothing

        return writer_endpoint
    if inspect.isasyncgenfunction(behavior):

        async def async_generator_endpoint(ctx: CallContext, request: Any) -> AsyncIterator[Any]:
            async for response in await invoke(ctx, request):
                yield response

        return async_generator_endpoint

    async def sync_endpoint(ctx: CallContext, request: Any) -> AsyncIterator[Any]:
        # Any iterable, as grpc takes (None raises TypeError). Advanced off the loop one item at
        # a time, so a call the client cancelled closes the generator (GeneratorExit at its
        # yield) instead of leaving a worker thread blocked on it.
        responses = iter(await invoke(ctx, request))
        while (item := await _in_thread(executor, next, responses, _DONE)) is not _DONE:
            yield item

    return sync_endpoint


_DONE = object()


def _invoker(behavior: Callable[..., Any], kind: Kind, executor: Executor) -> UnaryHandler:
    """Calls the servicer method as it is written, decided once per method, not per call."""
    if inspect.iscoroutinefunction(behavior):

        def invoke_coroutine(ctx: CallContext, request: Any) -> Any:
            # The servicer method's own coroutine is what the chain awaits: no layer of ours.
            return behavior(request, ctx.servicer_context)

        return invoke_coroutine
    if inspect.isasyncgenfunction(behavior):

        async def invoke_async_generator(ctx: CallContext, request: Any) -> Any:
            return behavior(request, ctx.servicer_context)

        return invoke_async_generator

    async def invoke_in_thread(ctx: CallContext, request: Any) -> Any:
        if kind.request_streaming:
            request = _blocking_iterator(request, asyncio.get_running_loop())
        context = _SyncContext(ctx.servicer_context)
        result = await _in_thread(executor, behavior, request, context)
        if not kind.response_streaming:  # grpc.aio runs them after a unary handler returned
            for callback in context.callbacks:
                callback()
        return result

    return invoke_in_thread


class _SyncContext:
    """grpc.aio's own context for sync handlers (what a handler calls is grpc's, and so is the
    error for a method it lacks); grpc keeps the callbacks of its ``add_callback()`` where only
    grpc can run them, so they are kept here instead."""

    __slots__ = ("_context", "callbacks")

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = cygrpc._SyncServicerContext(context)
        self.callbacks: list[Callable[[], None]] = []

    def add_callback(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def _in_thread(executor: Executor, function: Callable[..., Any], *args: Any) -> Any:
    # In a copy of the call's context, so the handler sees the inherited deadline and span.
    run = functools.partial(contextvars.copy_context().run, function, *args)
    return await asyncio.get_running_loop().run_in_executor(executor, run)


def _blocking_iterator(
    requests: AsyncIterator[Any], loop: asyncio.AbstractEventLoop
) -> Iterator[Any]:
    """Lets a sync handler in a worker thread iterate the async request stream."""
    iterator = requests.__aiter__()
    while True:
        try:
            yield asyncio.run_coroutine_threadsafe(iterator.__anext__(), loop).result()
        except StopAsyncIteration:
            return
