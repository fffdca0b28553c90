"""A sync channel's streams, when call observers count their messages (the metrics middleware
does): the requests an iterator gives pass through a generator that reports each one, and a
response stream comes inside a ResponseStream that reports each message it yields and hands
every other method to grpc's own call object. Without such observers, streams are returned
exactly as grpc made them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import grpc

from ..middleware import CallContext, CallObserver


def counted_requests(
    requests: Iterable[Any], observers: Sequence[CallObserver], ctx: CallContext
) -> Iterator[Any]:
    """``requests``, each reported to ``observers`` as grpc takes it."""
    for request in requests:
        for observer in observers:
            observer.message(ctx, True)
        yield request


class ResponseStream(grpc.Call, grpc.Future):
    """grpc's response stream ``call``, each message reported to ``observers`` as it is read."""

    __slots__ = ("_call", "_ctx", "_observers")

    def __init__(self, call: Any, observers: Sequence[CallObserver], ctx: CallContext) -> None:
        self._call = call
        self._observers = observers
        self._ctx = ctx

    def __iter__(self) -> ResponseStream:
        return self

    def __next__(self) -> Any:
        message = next(self._call)  # grpc raises its call object when the call failed
        for observer in self._observers:
            observer.message(self._ctx, False)
        return message

    next = __next__  # grpc's call objects have it too

    # -- grpc.Call ----------------------------------------------------------------------------
    def initial_metadata(self) -> Any:
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._call.trailing_metadata()

    def code(self) -> grpc.StatusCode:
        return self._call.code()

    def details(self) -> str:
        return self._call.details()

    def debug_error_string(self) -> str:
        return self._call.debug_error_string()

    def is_active(self) -> bool:
        return self._call.is_active()

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()

    def cancel(self) -> bool:
        return self._call.cancel()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return self._call.add_callback(callback)

    # -- grpc.Future --------------------------------------------------------------------------
    def cancelled(self) -> bool:
        return self._call.cancelled()

    def running(self) -> bool:
        return self._call.running()

    def done(self) -> bool:
        return self._call.done()

    def result(self, timeout: float | None = None) -> Any:
        return self._call.result(timeout)

    def exception(self, timeout: float | None = None) -> Exception | None:
        return self._call.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        return self._call.traceback(timeout)

    def add_done_callback(self, fn: Callable[[grpc.Future], None]) -> None:
        self._call.add_done_callback(lambda _: fn(self))

    def __repr__(self) -> str:
        return repr(self._call)

    def __str__(self) -> str:
        return str(self._call)
