"""Load shedding: refuse work the server cannot finish in time, with RESOURCE_EXHAUSTED.

Two independent limits, each off unless set:

- ``max_concurrency`` (GZ_MAX_CONCURRENCY): a plain cap on calls in flight.
- ``cpu_threshold`` (GZ_SHED_CPU, percent of one core): go-zero's adaptive shedder. While the
  process is that busy (or was dropping calls less than a second ago), a call is refused when the
  calls in flight exceed what the server has recently shown it can complete: the best throughput
  of the last 5 s times the best latency (Little's law).

Rejected calls fail at once, so the latency of the accepted ones stays bounded and clients retry
elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from .chain import CallContext, Method, Middleware

BUCKETS = 50
BUCKET_SECONDS = 0.1  # 50 x 100 ms = the 5 s window
COOL_OFF = 1.0  # keep shedding this long after the last drop once CPU eases
CPU_SAMPLE_SECONDS = 0.25


class CpuMeter:
    """This process's CPU use in percent of one core, smoothed; sampled at most every 250 ms."""

    def __init__(self, decay: float = 0.8) -> None:
        self._decay = decay
        self._wall, self._cpu = time.monotonic(), time.process_time()
        self.percent = 0.0

    def __call__(self) -> float:
        wall = time.monotonic()
        if wall - self._wall >= CPU_SAMPLE_SECONDS:
            cpu = time.process_time()
            sample = (cpu - self._cpu) / (wall - self._wall) * 100
            self.percent = self._decay * self.percent + (1 - self._decay) * sample
            self._wall, self._cpu = wall, cpu
        return self.percent


class _Window:
    """Completed calls and their total latency per 100 ms bucket over the last 5 s."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._passed = [0] * BUCKETS
        self._latency = [0.0] * BUCKETS
        self._bucket = int(clock() / BUCKET_SECONDS)

    def _advance(self) -> int:
        bucket = int(self._clock() / BUCKET_SECONDS)
        for stale in range(self._bucket + 1, min(bucket, self._bucket + BUCKETS) + 1):
            self._passed[stale % BUCKETS], self._latency[stale % BUCKETS] = 0, 0.0
        self._bucket = max(bucket, self._bucket)
        return self._bucket % BUCKETS

    def add(self, latency: float) -> None:
        index = self._advance()
        self._passed[index] += 1
        self._latency[index] += latency

    def max_in_flight(self) -> float:
        """Best completions per second times best mean latency, over finished buckets."""
        current = self._advance()
        buckets = [i for i in range(BUCKETS) if i != current and self._passed[i]]
        if not buckets:
            return float("inf")  # no history yet: nothing to compare against
        best_rate = max(self._passed[i] for i in buckets) / BUCKET_SECONDS
        best_latency = min(self._latency[i] / self._passed[i] for i in buckets)
        return best_rate * best_latency


class Shedding(Middleware):
    """Server only. ``cpu_percent`` and ``clock`` are seams for tests."""

    def __init__(
        self,
        cpu_threshold: float | None = None,
        max_concurrency: int | None = None,
        *,
        cpu_percent: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cpu_threshold = cpu_threshold
        self.max_concurrency = max_concurrency
        self.in_flight = 0
        self._cpu = cpu_percent or CpuMeter()
        self._clock = clock
        self._window = _Window(clock)
        self._last_drop = -COOL_OFF

    def applies_to(self, method: Method) -> bool:
        return method.side == "server"

    def overloaded(self) -> str | None:
        """Why a new call should be refused now, or None to accept it."""
        if self.max_concurrency is not None and self.in_flight >= self.max_concurrency:
            return f"{self.in_flight} calls in flight, the limit is {self.max_concurrency}"
        if self.cpu_threshold is None:
            return None
        now = self._clock()
        hot = self._cpu() >= self.cpu_threshold or now - self._last_drop < COOL_OFF
        if hot and self.in_flight > max(1.0, self._window.max_in_flight()):
            self._last_drop = now
            return f"CPU above {self.cpu_threshold:g}% and {self.in_flight} calls in flight"
        return None

    async def _admit(self, ctx: CallContext) -> float | None:
        """Refuses the call or counts it in; returns when it started if its latency is needed."""
        reason = self.overloaded()
        if reason is not None:
            assert ctx.servicer_context is not None
            await ctx.servicer_context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"server overloaded ({reason}); retry later"
            )
        self.in_flight += 1
        # Latencies feed only the adaptive limit: a plain cap does not time its calls.
        return None if self.cpu_threshold is None else self._clock()

    def _done(self, started: float | None) -> None:
        self.in_flight -= 1
        if started is not None:
            self._window.add(self._clock() - started)

    async def unary(self, ctx: CallContext, request: Any, call_next: Any) -> Any:
        started = await self._admit(ctx)
        try:
            return await call_next(ctx, request)
        finally:
            self._done(started)

    async def stream(self, ctx: CallContext, request: Any, call_next: Any) -> Any:
        started = await self._admit(ctx)
        try:
            async for response in call_next(ctx, request):
                yield response
        finally:
            self._done(started)
