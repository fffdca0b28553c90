"""Deadlines: a default timeout per client call, and deadline propagation through handlers.

On the server, the caller's deadline is kept in a context variable while the handler runs; a call
the handler makes through a ``connect()`` channel then gets the earlier of its own deadline and
that one, so a chain of services never works on past the moment the first caller gave up.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import ContextVar

from .chain import CallContext, CallObserver, Method, Middleware

_inherited: ContextVar[float | None] = ContextVar("gz_deadline", default=None)


def time_remaining() -> float | None:
    """Seconds left of the server call being handled here, or None if it has no deadline."""
    deadline = _inherited.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class Deadline(Middleware):
    """Server: makes the caller's deadline the inherited one for the handler's own calls.
    Client: applies ``timeout`` (or the ``method_timeouts`` entry for the method: by full name,
    ``Service/Method`` or bare method name) to calls made without one, then caps the deadline at
    the inherited one."""

    def __init__(
        self, timeout: float | None = None, method_timeouts: Mapping[str, float] | None = None
    ) -> None:
        self.timeout = timeout
        self.method_timeouts = dict(method_timeouts or {})

    def for_method(self, method: Method) -> Middleware | None:
        if method.side == "server":
            return _ServerDeadline()
        timeouts = self.method_timeouts
        keys = (method.full_name, method.full_name.lstrip("/"), method.name)
        timeout = next((timeouts[key] for key in keys if key in timeouts), self.timeout)
        return _ClientDeadline(timeout)


class _ServerDeadline(CallObserver):
    """Set and never reset: grpc.aio runs each server call in a task of its own, so the value
    cannot leak to other calls (and a response stream may be closed from another context, where
    a reset would fail). No end: the cheapest observer there is."""

    def begin(self, ctx: CallContext) -> None:
        if ctx.deadline is not None:
            _inherited.set(ctx.deadline)


class _ClientDeadline(CallObserver):
    """Sets the deadline as the call begins; as an observer it keeps unary calls on the
    channel's fast path."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout

    def begin(self, ctx: CallContext) -> None:
        if ctx.deadline is None and self.timeout is not None:
            ctx.deadline = time.monotonic() + self.timeout
        inherited = _inherited.get()
        if inherited is not None and (ctx.deadline is None or inherited < ctx.deadline):
            ctx.deadline = inherited
