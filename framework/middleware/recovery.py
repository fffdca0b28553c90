"""Recovery: an unexpected exception escaping a handler becomes INTERNAL with an error id.

The client gets ``internal error (error id 3f2a...)`` and nothing of the exception; the log gets
the stack trace under the same id, so a user's bug report can be matched to it.

An exception is expected when the handler chose the call's status before raising it: an abort,
or a code set with ``context.set_code()`` (as the generated servicer base does for a method the
class does not implement: UNIMPLEMENTED). Those go on to grpc unchanged, which sends that code.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, NoReturn

import grpc

from .chain import CallContext, Method, Middleware, StreamHandler, UnaryHandler
from .tracing import call_span_current

log = logging.getLogger("gz.recovery")


class Recovery(Middleware):
    """Server only; put it inside tracing, metrics and the call log so they see INTERNAL."""

    def applies_to(self, method: Method) -> bool:
        return method.side == "server"

    async def unary(self, ctx: CallContext, request: Any, call_next: UnaryHandler) -> Any:
        try:
            return await call_next(ctx, request)
        except Exception as error:
            await recover(ctx, error)

    async def stream(self, ctx: CallContext, request: Any, call_next: StreamHandler) -> Any:
        try:
            async for response in call_next(ctx, request):
                yield response
        except Exception as error:
            await recover(ctx, error)


async def recover(ctx: CallContext, error: Exception) -> NoReturn:
    """Raise what ``error`` becomes: itself when the handler chose the call's status, else
    grpc's abort with INTERNAL and an error id (called in the except block that caught it;
    server handlers run it inline, with no layer of Recovery's own, see handlers.py)."""
    if status_chosen(ctx, error):
        raise error
    await _abort(ctx, error)
    raise AssertionError("unreachable: grpc's abort() raises")  # pragma: no cover


def status_chosen(ctx: CallContext, error: Exception) -> bool:
    """Whether the handler chose the status of the call that raised ``error``."""
    if isinstance(error, grpc.aio.AbortError):
        return True
    assert ctx.servicer_context is not None
    code = ctx.servicer_context.code()
    return code is not None and code is not grpc.StatusCode.OK


async def _abort(ctx: CallContext, error: Exception) -> None:
    error_id = uuid.uuid4().hex[:16]
    ctx.state["error"], ctx.state["error_id"] = error, error_id
    with call_span_current(ctx):  # a tracing middleware inside recovery has ended its span
        log.error(
            "%s raised %s (error id %s)", ctx.method.full_name, type(error).__name__, error_id,
            exc_info=error, extra={"method": ctx.method.full_name, "error_id": error_id},
        )  # fmt: skip
    assert ctx.servicer_context is not None
    await ctx.servicer_context.abort(
        grpc.StatusCode.INTERNAL, f"internal error (error id {error_id})"
    )
