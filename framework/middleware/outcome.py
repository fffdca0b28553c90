"""How a call ended, as the tracing, metrics and call-log middleware report it.

One place decides the status code of a call from what its chain raised (or did not), so the
three of them always agree.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import grpc

from .chain import CallContext, Method, Middleware, StreamHandler, UnaryHandler

OK = grpc.StatusCode.OK

# go-grpc-prometheus writes codes as Go spells them; dashboards filter on these strings.
GO_CODE_NAMES = {
    code: "Canceled" if code is grpc.StatusCode.CANCELLED else code.name.title().replace("_", "")
    for code in grpc.StatusCode
}
GO_CODE_NAMES[OK] = "OK"


def call_code(ctx: CallContext, error: BaseException | None) -> grpc.StatusCode:
    """The status code the call ended with; ``error`` is what its chain raised, if anything."""
    if ctx.servicer_context is not None:  # server side
        if error is None or isinstance(error, grpc.aio.AbortError):
            code = ctx.servicer_context.code()
            return code if isinstance(code, grpc.StatusCode) else (OK if error is None else _UNK)
    elif error is None:
        return OK
    elif isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return error.code()
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        if ctx.deadline is not None and time.monotonic() >= ctx.deadline:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return _UNK


_UNK = grpc.StatusCode.UNKNOWN


class CallObserver(Middleware):
    """Base of middleware that need no await: ``begin`` when a call starts (it may still change
    ``ctx.metadata`` and ``ctx.deadline``), ``end`` when it ends, with whatever ``begin``
    returned and the error the rest of the chain raised.

    A client chain made only of these (not overriding ``unary``) stays on the channel's fast
    path for unary calls: begin and end are called around the grpc call itself, with no
    coroutine or task of the chain's."""

    def begin(self, ctx: CallContext) -> Any:
        return None

    def end(self, ctx: CallContext, token: Any, error: BaseException | None) -> None:
        return None

    async def unary(self, ctx: CallContext, request: Any, call_next: UnaryHandler) -> Any:
        token = self.begin(ctx)
        try:
            response = await call_next(ctx, request)
        except BaseException as error:
            self.end(ctx, token, error)
            raise
        self.end(ctx, token, None)
        return response

    async def stream(self, ctx: CallContext, request: Any, call_next: StreamHandler) -> Any:
        token = self.begin(ctx)
        try:
            async for response in call_next(ctx, request):
                yield response
        except BaseException as error:  # GeneratorExit too: the consumer stopped early
            self.end(ctx, token, error)
            raise
        self.end(ctx, token, None)


def call_observers(
    middleware: Sequence[Middleware], method: Method
) -> tuple[CallObserver, ...] | None:
    """The unary chain of ``method`` when every middleware in it is a plain CallObserver (run
    by begin/end around the call), else None: the full chain is needed."""
    observers = []
    for item in middleware:
        bound = item.for_method(method)
        if bound is None or type(bound).unary is Middleware.unary:
            continue  # compose() leaves it out too
        if not isinstance(bound, CallObserver) or type(bound).unary is not CallObserver.unary:
            return None
        observers.append(bound)
    return tuple(observers)


class CallEnded(grpc.RpcError):
    """The error observers are given for a call watched from outside a chain (its status)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code.name)
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def begin_observers(observers: Sequence[CallObserver], ctx: CallContext) -> list[Any]:
    return [observer.begin(ctx) for observer in observers]


def end_observers(
    observers: Sequence[CallObserver], ctx: CallContext, tokens: list[Any], code: grpc.StatusCode
) -> None:
    """End every observer, innermost first, as a chain unwinding would."""
    error = None if code is OK else CallEnded(code)
    for index in range(len(observers) - 1, -1, -1):
        observers[index].end(ctx, tokens[index], error)
