"""Prometheus metrics with go-grpc-prometheus names, so existing Grafana dashboards work.

Server: grpc_server_started_total, grpc_server_handled_total, grpc_server_handling_seconds,
grpc_server_msg_received_total, grpc_server_msg_sent_total; the client has the grpc_client_* set.
gz adds gz_client_retries_total (attempts after the first), gz_resolver_endpoints{target},
gz_resolver_updates_total{target}, gz_resolver_errors_total{target} and
gz_balancer_picks_total{endpoint}. All of them are in prometheus_client's default registry, so a
service's own metrics appear on the same /metrics page.

Calls are counted in plain integers per method, under one small lock per method (a sync client
counts from many threads), and turned into metric families only when /metrics is scraped: a call
costs a few additions instead of prometheus_client's per-metric locked updates. The latency
buckets are GZ_METRICS_BUCKETS (100 µs to 10 s by default). With tracing on, each bucket also
keeps the trace id of its latest sampled call, shown as an exemplar in the OpenMetrics
exposition (the classic text format has none).
"""

from __future__ import annotations

import bisect
import functools
import threading
import time
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from typing import Any

import grpc
from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from ..discovery import Endpoint, Resolver
from ..discovery.resolver import Listener
from ..settings import LATENCY_BUCKETS
from .chain import CallContext, CallObserver, Kind, Method, Middleware
from .outcome import GO_CODE_NAMES, call_code
from .retry import ATTEMPT
from .tracing import SPAN, tracer_provider

GRPC_TYPES = {
    Kind.UNARY_UNARY: "unary",
    Kind.UNARY_STREAM: "server_stream",
    Kind.STREAM_UNARY: "client_stream",
    Kind.STREAM_STREAM: "bidi_stream",
}


_CODES = {id(code): code for code in grpc.StatusCode}


class MethodStats:
    """The counts of one method on one side."""

    __slots__ = (
        "bounds", "buckets", "exemplar_at", "exemplar_seconds", "exemplar_trace", "handled_by_id",
        "labels", "lock", "picks", "received", "retries", "sent", "started", "sum",
    )  # fmt: skip

    def __init__(self, method: Method, bounds: tuple[float, ...]) -> None:
        self.labels = (GRPC_TYPES[method.kind], method.service, method.name)
        self.lock = threading.Lock()  # held for the few additions of one call's begin or end
        self.started = self.received = self.sent = self.retries = 0
        # Calls ended, by id() of their status code: a StatusCode's own hash is Python code,
        # three times the cost of the whole dict update.
        self.handled_by_id: dict[int, int] = {}
        self.picks: dict[str, int] = {}  # client: calls per endpoint
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        # Per bucket, its latest sampled traced call: trace id (0: none yet), duration and
        # perf_counter() at its end; three lists of plain numbers, so a call allocates nothing.
        self.exemplar_trace = [0] * len(self.buckets)
        self.exemplar_seconds = [0.0] * len(self.buckets)
        self.exemplar_at = [0.0] * len(self.buckets)

    @property
    def handled(self) -> dict[grpc.StatusCode, int]:
        """Calls ended, by status code (a copy: the copy of a dict is atomic, no lock needed)."""
        return {_CODES[key]: count for key, count in dict(self.handled_by_id).items()}

    def observe(self, seconds: float, code: grpc.StatusCode) -> int:
        """Count a call that ended with ``code`` (the caller holds ``lock``); its bucket's
        index."""
        bucket = bisect.bisect_left(self.bounds, seconds)
        self.buckets[bucket] += 1
        self.sum += seconds
        handled, key = self.handled_by_id, id(code)
        handled[key] = handled.get(key, 0) + 1
        return bucket

    def exemplar(self, bucket: int, span: Any, seconds: float, at: float) -> None:
        """Link ``bucket`` to the trace of ``span`` if it is sampled (exported: worth a link)."""
        context = span.get_span_context()
        if context.trace_flags.sampled:
            self.exemplar_trace[bucket] = context.trace_id
            self.exemplar_seconds[bucket] = seconds
            self.exemplar_at[bucket] = at

    def histogram(self, wall_offset: float) -> list[tuple[Any, ...]]:
        """The cumulative buckets for HistogramMetricFamily, with their exemplars;
        ``wall_offset`` turns perf_counter() into Unix time."""
        cumulative: list[tuple[Any, ...]] = []
        total = 0
        for bucket, le in enumerate(_le_labels(self.bounds)):
            total += self.buckets[bucket]
            trace = self.exemplar_trace[bucket]
            if trace:
                labels = {"trace_id": format(trace, "032x")}
                at = wall_offset + self.exemplar_at[bucket]
                cumulative.append((le, total, Exemplar(labels, self.exemplar_seconds[bucket], at)))
            else:
                cumulative.append((le, total))
        return cumulative


@functools.cache
def _le_labels(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """The ``le`` label values, as prometheus_client writes them, and +Inf."""
    return (*map(floatToGoString, bounds), "+Inf")


class GrpcCollector:
    """Builds the grpc_* families from every MethodStats at scrape time."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], MethodStats] = {}
        self._lock = threading.Lock()  # methods are added by the loop while a scrape iterates

    def stats(self, method: Method, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> MethodStats:
        """One MethodStats per method and side, shared by every channel and server: the first
        to count a method chooses its buckets (all read GZ_METRICS_BUCKETS)."""
        key = (method.side, method.full_name)
        with self._lock:
            return self._stats.setdefault(key, MethodStats(method, bounds))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            stats = list(self._stats.items())
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        wall_offset = time.time() - time.perf_counter()
        for side in ("server", "client"):
            where = "on the server" if side == "server" else "on the client"
            started = CounterMetricFamily(
                f"grpc_{side}_started", f"Total number of RPCs started {where}.", labels=labels
            )
            handled = CounterMetricFamily(
                f"grpc_{side}_handled",
                f"Total number of RPCs completed {where}, regardless of success or failure.",
                labels=[*labels, "grpc_code"],
            )
            handling = HistogramMetricFamily(
                f"grpc_{side}_handling_seconds",
                f"Histogram of response latency (seconds) of gRPC {where}.",
                labels=labels,
            )
            received = CounterMetricFamily(
                f"grpc_{side}_msg_received",
                f"Total number of RPC stream messages received {where}.",
                labels=labels,
            )
            sent = CounterMetricFamily(
                f"grpc_{side}_msg_sent",
                f"Total number of gRPC stream messages sent {where}.",
                labels=labels,
            )
            for (stats_side, _), stat in stats:
                if stats_side != side:
                    continue
                started.add_metric(stat.labels, stat.started)
                for code, count in stat.handled.items():
                    handled.add_metric([*stat.labels, GO_CODE_NAMES[code]], count)
                handling.add_metric(stat.labels, stat.histogram(wall_offset), stat.sum)
                received.add_metric(stat.labels, stat.received)
                sent.add_metric(stat.labels, stat.sent)
            yield from (started, handled, handling, received, sent)
        retries = CounterMetricFamily(
            "gz_client_retries",
            "Attempts after the first that gz clients made (each also counts as a started RPC).",
            labels=labels,
        )
        for (stats_side, _), stat in stats:
            if stats_side == "client":
                retries.add_metric(stat.labels, stat.retries)
        yield retries
        picks = CounterMetricFamily(
            "gz_balancer_picks", "Calls sent to each endpoint by gz clients.", labels=["endpoint"]
        )
        by_endpoint: dict[str, int] = {}
        for (stats_side, _), stat in stats:
            if stats_side == "client":
                with stat.lock:
                    for endpoint, count in stat.picks.items():
                        by_endpoint[endpoint] = by_endpoint.get(endpoint, 0) + count
        for endpoint, count in by_endpoint.items():
            picks.add_metric([endpoint], count)
        yield picks


@functools.cache
def collector() -> GrpcCollector:
    """The process's collector, registered in the default registry on first use."""
    grpc_collector = GrpcCollector()
    REGISTRY.register(grpc_collector)
    return grpc_collector


class Metrics(Middleware):
    """Counts and times every call of the methods it is composed into.

    ``buckets``: the latency histograms' upper bounds in seconds, increasing
    (GZ_METRICS_BUCKETS). ``exemplars``: keep the trace id of each bucket's latest sampled call,
    from the span a Tracing middleware outside this one keeps in the call's state. None (the
    default) does so when a global tracer provider is set, as ``Tracing()`` takes part only
    then; True for a chain whose Tracing has a provider of its own; False never.
    """

    def __init__(
        self, buckets: Sequence[float] = LATENCY_BUCKETS, *, exemplars: bool | None = None
    ) -> None:
        self._buckets = tuple(buckets)
        self._exemplars = exemplars

    def for_method(self, method: Method) -> Middleware:
        exemplars = tracer_provider() is not None if self._exemplars is None else self._exemplars
        if method.kind is not Kind.UNARY_UNARY:
            observer: type[_UnaryMetrics] = _StreamingMetrics
        else:
            observer = _ServerUnaryMetrics if method.side == "server" else _UnaryMetrics
        return observer(method, collector().stats(method, self._buckets), exemplars)


class _UnaryMetrics(CallObserver):
    """One request, one response: begin and end are all there is, so a client's unary calls
    keep the channel's fast path."""

    def __init__(self, method: Method, stats: MethodStats, exemplars: bool) -> None:
        self.stats = stats
        self._exemplars = exemplars  # tracing is on: look for the call's span
        self._client = method.side == "client"  # counts its picks per endpoint
        self._server = method.side == "server"
        self._one_request = not method.kind.request_streaming  # counted as the call begins
        self._one_response = not method.kind.response_streaming  # counted as it ends well

    # Every call pays for these: the lock is taken with acquire() and a try, which costs less
    # than ``with`` (no __exit__ call).
    def begin(self, ctx: CallContext) -> None:
        stats = self.stats
        retry = self._client and ctx.state.get(ATTEMPT, 1) > 1
        lock = stats.lock
        lock.acquire()
        try:
            stats.started += 1
            if self._one_request:
                self._count_request()
            if retry:
                stats.retries += 1
        finally:
            lock.release()

    def end(self, ctx: CallContext, token: None, error: BaseException | None) -> None:
        stats = self.stats
        seconds = ctx.elapsed()
        code = call_code(ctx, error)
        peer = ctx.peer if self._client else None
        lock = stats.lock
        lock.acquire()
        try:
            bucket = stats.observe(seconds, code)
            if peer is not None:
                stats.picks[peer] = stats.picks.get(peer, 0) + 1
            if error is None and self._one_response:
                self._count_response()
        finally:
            lock.release()
        if self._exemplars and (span := ctx.state.get(SPAN)) is not None:
            stats.exemplar(bucket, span, seconds, ctx.started + seconds)

    # The message counts; the caller holds stats.lock.
    def _count_response(self) -> None:
        if self._server:
            self.stats.sent += 1
        else:
            self.stats.received += 1

    def _count_request(self) -> None:
        if self._server:
            self.stats.received += 1
        else:
            self.stats.sent += 1

    def _response(self) -> None:
        with self.stats.lock:
            self._count_response()

    def _request_message(self) -> None:
        with self.stats.lock:
            self._count_request()


class _ServerUnaryMetrics(_UnaryMetrics):
    """A server's unary-unary method: _UnaryMetrics's begin and end with their choices made
    once, as every server call pays for them."""

    def begin(self, ctx: CallContext) -> None:
        stats = self.stats
        lock = stats.lock
        lock.acquire()
        try:
            stats.started += 1
            stats.received += 1
        finally:
            lock.release()

    def end(self, ctx: CallContext, token: None, error: BaseException | None) -> None:
        stats = self.stats
        seconds = ctx.elapsed()
        code = call_code(ctx, error)
        lock = stats.lock
        lock.acquire()
        try:
            bucket = stats.observe(seconds, code)
            if error is None:
                stats.sent += 1
        finally:
            lock.release()
        if self._exemplars and (span := ctx.state.get(SPAN)) is not None:
            stats.exemplar(bucket, span, seconds, ctx.started + seconds)


class _StreamingMetrics(_UnaryMetrics):
    """Streams also count each message as it goes."""

    def message(self, ctx: CallContext, is_request: bool) -> None:
        if is_request:
            self._request_message()
        else:
            self._response()

    async def _counted_requests(self, requests: Any) -> AsyncIterator[Any]:
        """Counts messages as they go; a client may stream its requests from a sync iterator."""
        if hasattr(requests, "__aiter__"):
            async for request in requests:
                self._request_message()
                yield request
        else:
            for request in requests:
                self._request_message()
                yield request

    async def unary(self, ctx: CallContext, request: Any, call_next: Any) -> Any:
        return await super().unary(ctx, self._counted_requests(request), call_next)

    async def stream(self, ctx: CallContext, request: Any, call_next: Any) -> AsyncIterator[Any]:
        if not self._one_request:
            request = self._counted_requests(request)
        self.begin(ctx)
        try:
            async for response in call_next(ctx, request):
                self._response()
                yield response
        except BaseException as error:  # GeneratorExit too: the consumer stopped early
            self.end(ctx, None, error)
            raise
        self.end(ctx, None, None)


@functools.cache
def _resolver_gauges() -> tuple[Gauge, Counter, Counter]:
    return (
        Gauge("gz_resolver_endpoints", "Endpoints the resolver of a target reports.", ["target"]),
        Counter("gz_resolver_updates", "Endpoint set updates pushed by resolvers.", ["target"]),
        Counter("gz_resolver_errors", "Resolution errors reported by resolvers.", ["target"]),
    )


def count_resolution(resolver: Resolver) -> Resolver:
    """``resolver`` reporting gz_resolver_endpoints, gz_resolver_updates_total and
    gz_resolver_errors_total as it goes."""
    return _CountingResolver(resolver)


class _CountingResolver(Resolver):
    def __init__(self, inner: Resolver) -> None:
        self.target = inner.target
        self._inner = inner

    async def watch(self, listener: Listener) -> None:
        await self._inner.watch(_CountingListener(listener, self.target))

    def resolve_now(self) -> None:
        self._inner.resolve_now()


class _CountingListener:
    def __init__(self, listener: Listener, target: str) -> None:
        endpoints, updates, errors = _resolver_gauges()
        self._listener = listener
        self._endpoints, self._updates = endpoints.labels(target), updates.labels(target)
        self._errors = errors.labels(target)  # 0 until the first error, so rate() works
        self._members: set[Endpoint] = set()  # to count the endpoints after a change

    def update(self, endpoints: frozenset[Endpoint]) -> None:
        self._members = set(endpoints)
        self._endpoints.set(len(endpoints))
        self._updates.inc()
        self._listener.update(endpoints)

    def change(self, added: Collection[Endpoint], removed: Collection[Endpoint]) -> None:
        self._members.difference_update(removed)
        self._members.update(added)
        self._endpoints.set(len(self._members))
        self._updates.inc()
        self._listener.change(added, removed)

    def error(self, message: str) -> None:
        self._errors.inc()
        self._listener.error(message)
