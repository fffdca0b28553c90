"""How a call ended, as the tracing, metrics and call-log middleware report it.

One place decides the status code of a call from what its chain raised (or did not), so the
three of them always agree.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from .chain import CallContext, Ending

OK = grpc.StatusCode.OK

# go-grpc-prometheus writes codes as Go spells them; dashboards filter on these strings.
GO_CODE_NAMES = {
    code: "Canceled" if code is grpc.StatusCode.CANCELLED else code.name.title().replace("_", "")
    for code in grpc.StatusCode
}
GO_CODE_NAMES[OK] = "OK"


def call_code(ctx: CallContext, error: BaseException | None) -> grpc.StatusCode:
    """The status code the call ended with; ``error`` is what its chain raised, if anything.
    For a call that raised nothing it is decided once, for every observer of its end (the
    common case); an error is not kept in ``ctx``: its traceback would keep the call's frames,
    and a handler's generator in them, alive until a garbage collection."""
    if error is None:
        if ctx.status is None:
            ctx.status = _decide(ctx, None)
        return ctx.status
    return _decide(ctx, error)


def _decide(ctx: CallContext, error: BaseException | None) -> grpc.StatusCode:
    if ctx.servicer_context is not None:  # server side
        if error is None or isinstance(error, Exception):
            code = ctx.servicer_context.code()  # what the handler set, or None
            if not isinstance(code, grpc.StatusCode):
                return OK if error is None else _UNK
            # grpc sends a code set before a raise, except OK: then the raise means UNKNOWN
            chosen = error is None or code is not OK or isinstance(error, grpc.aio.AbortError)
            return code if chosen else _UNK
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


class CallEnded(grpc.RpcError):
    """The error observers are given for a call watched from outside a chain (its status)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code.name)
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def end_observers(end: Ending, ctx: CallContext, tokens: list[Any], code: grpc.StatusCode) -> None:
    """End the observers of a call watched from outside a chain, given its status (``end``:
    chain.ending() of the observers)."""
    end(ctx, tokens, None if code is OK else CallEnded(code))
