"""One middleware mechanism for clients and servers.

A middleware wraps the handling of a call: ``unary`` for calls with one response, ``stream`` for
calls with a stream of responses. The chain for a method is composed once (when a stub is made on
the client, when a servicer is registered on the server) and a middleware that does not apply to
the method, or does not override the hook, is left out of it: an empty chain costs nothing.
"""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc


class Kind(enum.Enum):
    UNARY_UNARY = (False, False)
    UNARY_STREAM = (False, True)
    STREAM_UNARY = (True, False)
    STREAM_STREAM = (True, True)

    @property
    def request_streaming(self) -> bool:
        return self.value[0]

    @property
    def response_streaming(self) -> bool:
        return self.value[1]


@dataclass(frozen=True, slots=True)
class Method:
    """What a middleware knows about a method before any call is made."""

    full_name: str  # "/greeter.v1.Greeter/SayHello"
    kind: Kind
    side: Literal["client", "server"]
    target: str | None = None  # client: the channel's target, "dns:///greeter:8080"

    @property
    def service(self) -> str:
        return self.full_name.lstrip("/").partition("/")[0]

    @property
    def name(self) -> str:
        return self.full_name.rpartition("/")[2]


class CallContext:
    """One call as middleware sees it. On the client, ``metadata`` and ``deadline`` are what will
    be sent and may be changed; on the server they are what arrived, and ``servicer_context`` is
    grpc's own context.

    ``started`` is time.perf_counter() when the call began, and ``elapsed()`` the seconds since
    then as its end is told: one clock read per call for every observer that times it."""

    __slots__ = (
        "_ended", "_metadata", "_options", "_peer", "_state", "deadline", "method",
        "servicer_context", "started", "status",
    )  # fmt: skip

    def __init__(
        self,
        method: Method,
        metadata: list[tuple[str, str | bytes]] | None,
        deadline: float | None = None,
        peer: str | None = None,
        servicer_context: grpc.aio.ServicerContext | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.method = method
        self._metadata = metadata  # None on the server: read from grpc when first asked for
        self.deadline = deadline  # time.monotonic() when the call must be done, or None
        self._peer = peer
        self.servicer_context = servicer_context
        self._options = options
        self._state: dict[str, Any] | None = None  # made when first used: most calls never do
        self.started = time.perf_counter()
        self._ended: float | None = None
        # the status code of a call that raised nothing, once outcome.call_code decided it
        self.status: grpc.StatusCode | None = None

    @property
    def options(self) -> dict[str, Any]:
        """Client: the keyword arguments of the grpc call (wait_for_ready, compression...)."""
        if self._options is None:
            self._options = {}
        return self._options

    @property
    def state(self) -> dict[str, Any]:
        """Free for middleware to share values per call."""
        if self._state is None:
            self._state = {}
        return self._state

    @state.setter
    def state(self, state: dict[str, Any]) -> None:
        self._state = state

    def elapsed(self) -> float:
        """Seconds from ``started`` to the call's end: the clock is read by the first observer
        that asks as the call ends, and the others get the same figure."""
        if self._ended is None:
            self._ended = time.perf_counter()
        return self._ended - self.started

    @property
    def metadata(self) -> list[tuple[str, str | bytes]]:
        if self._metadata is None:
            context = self.servicer_context
            self._metadata = list(context.invocation_metadata() or ()) if context else []
        return self._metadata

    @metadata.setter
    def metadata(self, metadata: list[tuple[str, str | bytes]]) -> None:
        self._metadata = metadata

    @property
    def peer(self) -> str | None:
        """Server: the caller; client: the endpoint of the latest attempt."""
        if self._peer is None and self.servicer_context is not None:
            self._peer = self.servicer_context.peer()
        return self._peer

    @peer.setter
    def peer(self, peer: str | None) -> None:
        self._peer = peer


UnaryHandler = Callable[[CallContext, Any], Awaitable[Any]]
StreamHandler = Callable[[CallContext, Any], AsyncIterator[Any]]


class Middleware:
    """Override ``unary`` and/or ``stream``; both pass the call through unchanged by default.
    For client-streaming methods ``request`` is the async iterator of requests."""

    def applies_to(self, method: Method) -> bool:
        """False leaves this middleware out of the method's chain entirely."""
        return True

    def for_method(self, method: Method) -> Middleware | None:
        """The middleware to put in ``method``'s chain: ``self`` by default, None for none.
        Override to prepare per-method work once (metric label values, span names) instead of
        on every call."""
        return self if self.applies_to(method) else None

    async def unary(self, ctx: CallContext, request: Any, call_next: UnaryHandler) -> Any:
        return await call_next(ctx, request)

    def stream(
        self, ctx: CallContext, request: Any, call_next: StreamHandler
    ) -> AsyncIterator[Any]:
        return call_next(ctx, request)


class CallObserver(Middleware):
    """Base of middleware that need no await: ``begin`` when a call starts (it may still change
    ``ctx.metadata`` and ``ctx.deadline``), ``end`` when it ends, with whatever ``begin``
    returned and the error the rest of the chain raised (None when it raised nothing).

    Consecutive observers in a chain run as one layer, and a client chain made only of these
    (not overriding ``unary``) stays on the channel's fast path for unary calls: begin and end
    are called around the grpc call itself, with no coroutine or task of the chain's."""

    def begin(self, ctx: CallContext) -> Any:
        return None

    def end(self, ctx: CallContext, token: Any, error: BaseException | None) -> None:
        return None

    def message(self, ctx: CallContext, is_request: bool) -> None:
        """A message of a stream passed (a request, or a response); the one message of a unary
        side is not reported. Called by the sync client (``connect_sync``), which has no
        coroutines to wrap a stream in; async chains see streams through ``stream``."""
        return None

    # Used when an observer is called on its own; compose() runs observers as _Observers.
    async def unary(self, ctx: CallContext, request: Any, call_next: UnaryHandler) -> Any:
        return await _Observers((self,)).unary(ctx, request, call_next)

    def stream(self, ctx: CallContext, request: Any, call_next: StreamHandler) -> Any:
        return _Observers((self,)).stream(ctx, request, call_next)


def begin_all(observers: Sequence[CallObserver], ctx: CallContext) -> list[Any]:
    """Begin each observer in order; if one raises, those already begun are ended first."""
    tokens: list[Any] = []
    try:
        for observer in observers:
            tokens.append(observer.begin(ctx))
    except BaseException as error:
        end_all(observers, ctx, tokens, error)
        raise
    return tokens


def end_all(
    observers: Sequence[CallObserver], ctx: CallContext, tokens: list[Any],
    error: BaseException | None,
) -> None:  # fmt: skip
    """End the observers that began, innermost first, as nested layers would unwind."""
    for index in range(len(tokens) - 1, -1, -1):
        observers[index].end(ctx, tokens[index], error)


Beginning = Callable[[CallContext], list[Any]]
Ending = Callable[[CallContext, list[Any], "BaseException | None"], None]


def beginning(observers: Sequence[CallObserver]) -> Beginning:
    """begin_all() made once per chain: the begins bound beforehand, and the base class's
    no-op ``begin`` left out (its token is None)."""
    starters = [
        (index, observer.begin)
        for index, observer in enumerate(observers)
        if type(observer).begin is not CallObserver.begin
    ]
    count = len(observers)

    def begin(ctx: CallContext) -> list[Any]:
        tokens: list[Any] = [None] * count
        for index, begin_one in starters:
            try:
                tokens[index] = begin_one(ctx)
            except BaseException as error:
                end_all(observers, ctx, tokens[:index], error)
                raise
        return tokens

    return begin


def ending(observers: Sequence[CallObserver]) -> Ending:
    """end_all() for a call that ``observers`` all began, made once per chain: the ends bound
    beforehand, and the base class's no-op ``end`` left out."""
    enders = [
        (index, observer.end)
        for index, observer in enumerate(observers)
        if type(observer).end is not CallObserver.end
    ][::-1]

    def end(ctx: CallContext, tokens: list[Any], error: BaseException | None) -> None:
        for index, end_one in enders:
            end_one(ctx, tokens[index], error)

    return end


class _Observers(Middleware):
    """Consecutive plain observers of one chain as one layer: one coroutine for all of them."""

    def __init__(self, observers: Sequence[CallObserver]) -> None:
        self.observers = tuple(observers)
        self._begin, self._end = beginning(self.observers), ending(self.observers)

    async def unary(self, ctx: CallContext, request: Any, call_next: UnaryHandler) -> Any:
        tokens = self._begin(ctx)
        try:
            response = await call_next(ctx, request)
        except BaseException as error:
            self._end(ctx, tokens, error)
            raise
        self._end(ctx, tokens, None)
        return response

    async def stream(
        self, ctx: CallContext, request: Any, call_next: StreamHandler
    ) -> AsyncIterator[Any]:
        observers = self.observers
        tokens = begin_all(observers, ctx)
        try:
            async for response in call_next(ctx, request):
                yield response
        except BaseException as error:  # GeneratorExit too: the consumer stopped early
            end_all(observers, ctx, tokens, error)
            raise
        end_all(observers, ctx, tokens, None)


class _Starters(_Observers):
    """Consecutive plain observers none of which overrides ``end``: a response stream needs no
    generator of theirs around it, only their ``begin`` as the call starts."""

    def stream(self, ctx: CallContext, request: Any, call_next: StreamHandler) -> Any:
        begin_all(self.observers, ctx)
        return call_next(ctx, request)


def bind(middleware: Sequence[Middleware], method: Method) -> list[Middleware]:
    """The middleware that take part in ``method``'s chain, each as ``for_method`` gives it:
    those that say no, or do not override the hook the method needs, are left out."""
    hook = _hook(method)
    base = getattr(Middleware, hook)
    bound = (item.for_method(method) for item in middleware)
    return [b for b in bound if b is not None and getattr(type(b), hook) is not base]


def observers_only(bound: Sequence[Middleware], method: Method) -> tuple[CallObserver, ...] | None:
    """``bound`` (from bind()) when every one is a plain CallObserver for this method, else
    None: then the chain needs its coroutines."""
    hook = _hook(method)
    return tuple(bound) if all(_is_plain_observer(b, hook) for b in bound) else None


def compose(
    middleware: Sequence[Middleware], method: Method, endpoint: UnaryHandler | StreamHandler
) -> UnaryHandler | StreamHandler:
    """The handler that runs ``middleware`` in order around ``endpoint`` for ``method``;
    consecutive plain CallObservers share one layer."""
    return compose_bound(bind(middleware, method), method, endpoint)


def compose_bound(
    bound: Sequence[Middleware], method: Method, endpoint: UnaryHandler | StreamHandler
) -> UnaryHandler | StreamHandler:
    """compose() for middleware already bound to ``method`` by bind()."""
    hook = _hook(method)
    layers: list[Middleware | list[CallObserver]] = []
    for bound_item in bound:
        if not _is_plain_observer(bound_item, hook):
            layers.append(bound_item)
        elif layers and isinstance(layers[-1], list):
            layers[-1].append(bound_item)
        else:
            layers.append([bound_item])
    handler = endpoint
    for layer in reversed(layers):
        if isinstance(layer, list):
            begin_only = all(type(item).end is CallObserver.end for item in layer)
            layer = _Starters(layer) if begin_only else _Observers(layer)
        handler = functools.partial(getattr(layer, hook), call_next=handler)
    return handler


def _hook(method: Method) -> str:
    return "stream" if method.kind.response_streaming else "unary"


def _is_plain_observer(bound: Middleware, hook: str) -> bool:
    """A CallObserver that keeps the base class's ``hook``: all it does is begin and end."""
    plain = getattr(CallObserver, hook)
    return isinstance(bound, CallObserver) and getattr(type(bound), hook) is plain
