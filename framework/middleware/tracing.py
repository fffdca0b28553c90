"""OpenTelemetry tracing: a span per call, W3C traceparent/baggage through gRPC metadata.

Spans are named ``package.Service/Method`` with kind SERVER or CLIENT, the rpc.* attributes and
the gRPC status code. The middleware takes part only when a real tracer provider is set (by the
application, or by ``configure_tracing()`` from OTEL_TRACES_EXPORTER) when a method's chain is
composed; otherwise it is left out of every chain and costs nothing. opentelemetry is imported
only then, so ``import gz`` stays fast.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any

import grpc

from ..settings import SettingsError
from .chain import CallContext, CallObserver, Method, Middleware
from .outcome import OK, call_code
from .retry import ATTEMPT

# Where a call's span is kept in ctx.state, for the call log: a client span is never current.
SPAN = "span"


@contextmanager
def call_span_current(ctx: CallContext) -> Iterator[None]:
    """Makes the call's span current while a line about the call is logged, so the line carries
    its ids (gz.logs.TraceIds): a client span is never current, and a server span is no longer
    once a tracing middleware inside the writer has ended it. Without one, the current span
    stays."""
    span = ctx.state.get(SPAN)
    if span is None:
        yield
        return
    from opentelemetry import context, trace

    token = context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        context.detach(token)


# The codes that make a *server* span an error (OpenTelemetry's gRPC conventions); on the client
# every code but OK does.
SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
CLIENT_ERROR_CODES = frozenset(grpc.StatusCode) - {OK}


def tracer_provider() -> Any | None:
    """The global tracer provider if one that records was set, else None."""
    if "opentelemetry.trace" not in sys.modules:  # nobody can have set one
        return None
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider


def configure_tracing(service_name: str | None = None) -> Any | None:
    """Set up the OpenTelemetry SDK from the standard OTEL_* variables, once per process.

    Nothing happens unless OTEL_TRACES_EXPORTER names exporters (``console``, ``otlp``, or any
    installed ``opentelemetry_traces_exporter`` entry point) and no provider is set already.
    OTEL_SERVICE_NAME (else ``service_name``) names the resource. Returns the provider in use.
    """
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true"
    provider = tracer_provider()
    if disabled or not names or names == ["none"] or provider is not None:
        return provider
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create({k: v for k, v in attributes.items() if v}))
    for exporter in _exporters(names):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    atexit.register(provider.force_flush)
    return provider


def _exporters(names: Iterable[str]) -> list[Any]:
    available = entry_points(group="opentelemetry_traces_exporter")
    exporters = []
    for name in names:
        found = [point for point in available if point.name == name]
        if not found:
            hint = " (pip install 'gz[otlp]')" if name.startswith("otlp") else ""
            known = ", ".join(sorted({point.name for point in available})) or "none"
            raise SettingsError(
                f"bad OTEL_TRACES_EXPORTER={name!r}: no such exporter is installed{hint}; "
                f"installed: {known}"
            )
        exporters.append(found[0].load()())
    return exporters


@contextmanager
def untraced() -> Iterator[None]:
    """Client calls made inside make no spans (OpenTelemetry's suppress-instrumentation flag,
    which gz's client spans honour): for a tool's own look-ups, such as gz call's reflection."""
    if "opentelemetry.context" not in sys.modules:  # no spans to suppress
        yield
        return
    from opentelemetry import context

    token = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        yield
    finally:
        context.detach(token)


class Tracing(Middleware):
    """Spans for calls on either side. ``tracer_provider`` defaults to the global one."""

    def __init__(self, tracer_provider: Any | None = None) -> None:
        self._provider = tracer_provider

    def for_method(self, method: Method) -> Middleware | None:
        provider = self._provider or tracer_provider()
        if provider is None:
            return None
        tracer = provider.get_tracer("gz")
        if method.side == "server":
            if method.kind.response_streaming:
                return _ServerStreamSpans(tracer, method)
            return _ServerSpans(tracer, method)
        return _ClientSpans(tracer, method)


class _Spans(CallObserver):
    _errors = CLIENT_ERROR_CODES

    def __init__(self, tracer: Any, method: Method) -> None:
        from opentelemetry import context, propagate, trace

        from . import spanattributes

        self._tracer, self._trace = tracer, trace
        self._context, self._propagate = context, propagate
        self._name = method.full_name.lstrip("/")
        # Worked out now, so that a call only looks its attributes up (spanattributes.py).
        self._attributes = spanattributes.method_attributes(method)
        self._ended = spanattributes.status_attributes(self._errors)
        if method.side == "server":
            self._peer = spanattributes.grpc_peer  # ipv4:10.0.0.9:51234, from context.peer()
        else:  # the endpoint, 10.0.0.7:8080; also the server when the target names none
            as_server = spanattributes.SERVER_ADDRESS not in self._attributes
            self._peer = functools.partial(spanattributes.endpoint_peer, as_server=as_server)

    def _finish(self, span: Any, ctx: CallContext, error: BaseException | None) -> None:
        code = call_code(ctx, error)
        span.set_attributes(self._ended[code])
        if peer := ctx.peer:
            span.set_attributes(self._peer(peer))
        error_id = ctx.state.get("error_id")
        if error_id is not None:
            span.set_attribute("gz.error_id", error_id)
            span.record_exception(ctx.state["error"])
        if code in self._errors:
            span.set_status(self._trace.StatusCode.ERROR, code.name)
        span.end()


class _ServerSpans(_Spans):
    _errors = SERVER_ERROR_CODES

    def _start(self, ctx: CallContext) -> tuple[Any, Any]:
        """The call's span, and the OpenTelemetry context with it current."""
        parent = self._propagate.extract(ctx.metadata, getter=_GETTER)
        span = self._tracer.start_span(
            self._name, parent, self._trace.SpanKind.SERVER, self._attributes
        )
        ctx.state[SPAN] = span
        return span, self._trace.set_span_in_context(span, parent)

    def begin(self, ctx: CallContext) -> tuple[Any, object]:
        span, current = self._start(ctx)
        # Current while the handler runs, so its own client calls become children.
        return span, self._context.attach(current)

    def end(self, ctx: CallContext, token: tuple[Any, object], error: BaseException | None) -> None:
        span, attached = token
        self._context.detach(attached)
        self._finish(span, ctx, error)


class _ServerStreamSpans(_ServerSpans):
    def begin(self, ctx: CallContext) -> Any:
        span, current = self._start(ctx)
        # Attached and never detached, as the deadline middleware does: grpc runs each call in
        # a task of its own, and a stream the client cancelled is closed later from another
        # task, where detaching fails ("Failed to detach context"). (The peer of a server
        # stream is read when the call starts, for the same reason: middleware/handlers.py.)
        self._context.attach(current)
        return span

    def end(self, ctx: CallContext, span: Any, error: BaseException | None) -> None:
        self._finish(span, ctx, error)


class _ClientSpans(_Spans):
    def __init__(self, tracer: Any, method: Method) -> None:
        super().__init__(tracer, method)
        from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY

        self._suppressed = _SUPPRESS_INSTRUMENTATION_KEY

    def begin(self, ctx: CallContext) -> Any:
        if self._context.get_value(self._suppressed):
            return None  # inside untraced(), or OpenTelemetry's own exporting
        attributes = {**self._attributes, "gz.attempt": ctx.state.get(ATTEMPT, 1)}
        span = self._tracer.start_span(
            self._name, kind=self._trace.SpanKind.CLIENT, attributes=attributes
        )
        # Not made current: the span context goes out in the metadata only, and the call log
        # finds the span in ctx.state.
        self._propagate.inject(ctx.metadata, self._trace.set_span_in_context(span), setter=_SETTER)
        ctx.state[SPAN] = span
        return span

    def end(self, ctx: CallContext, span: Any, error: BaseException | None) -> None:
        if span is not None:
            self._finish(span, ctx, error)


class _MetadataGetter:
    """Reads a propagation header from gRPC metadata (a sequence of key, value pairs)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        values = [value for k, value in carrier if k == key and isinstance(value, str)]
        return values or None

    def keys(self, carrier: Any) -> list[str]:
        return [key for key, _ in carrier]


class _MetadataSetter:
    def set(self, carrier: list[tuple[str, str | bytes]], key: str, value: str) -> None:
        carrier.append((key, value))


_GETTER, _SETTER = _MetadataGetter(), _MetadataSetter()
