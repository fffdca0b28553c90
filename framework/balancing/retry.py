"""When a failed call may be tried again, and how often a client may retry at all.

A call is retried when its status is UNAVAILABLE (it never reached a handler, or its connection
died), or when the method is idempotent and the status is one a retry can fix. Each retry goes
to another endpoint when there is one, waits a jittered exponential backoff, never outlives the
call's deadline, and takes a token from a budget that allows at most 20% extra calls over the
last 10 s (plus a few per second, so a quiet client can still retry), so a sick cluster is not
hammered by retries.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc

ALWAYS_RETRIED = frozenset({grpc.StatusCode.UNAVAILABLE})
RETRIED_WHEN_IDEMPOTENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,  # of one attempt with time left on the call
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNKNOWN,
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    """Per channel: ``connect(retry=RetryPolicy(...))``; GZ_RETRY_* give the defaults."""

    max_attempts: int = 3  # the first attempt included; 1 switches retries off
    first_backoff: float = 0.01  # seconds before the second retry; the first goes at once
    max_backoff: float = 0.5
    budget_ratio: float = 0.2  # extra calls allowed over the window, as a share of calls
    budget_min_per_second: float = 10.0
    budget_window: float = 10.0
    idempotent_methods: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_names(cls, idempotent: Iterable[str] = (), **values: object) -> RetryPolicy:
        return cls(idempotent_methods=frozenset(idempotent), **values)  # type: ignore[arg-type]

    def is_idempotent(self, full_method: str) -> bool:
        """``/pkg.Service/Method`` matches ``pkg.Service/Method`` or ``pkg.Service/*``."""
        name = full_method.lstrip("/")
        service = name.partition("/")[0]
        return name in self.idempotent_methods or f"{service}/*" in self.idempotent_methods

    def retryable(self, code: grpc.StatusCode, idempotent: bool) -> bool:
        return code in (RETRIED_WHEN_IDEMPOTENT if idempotent else ALWAYS_RETRIED)

    def backoff(self, retry_number: int) -> float:
        """Seconds before retry ``retry_number`` (1 for the first retry): the first goes at once
        to another endpoint; later ones back off with full jitter."""
        if retry_number <= 1:
            return 0.0
        ceiling = min(self.max_backoff, self.first_backoff * 2 ** (retry_number - 2))
        return random.uniform(0.0, ceiling)


class RetryBudget:
    """Counts calls and retries in one-second buckets over the policy's window."""

    __slots__ = ("_buckets", "_policy")

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._buckets: dict[int, list[int]] = {}  # second -> [calls, retries]

    def _bucket(self, now: float) -> list[int]:
        second = int(now)
        bucket = self._buckets.get(second)
        if bucket is None:
            oldest = second - int(self._policy.budget_window)
            for old in [s for s in self._buckets if s <= oldest]:
                del self._buckets[old]
            bucket = self._buckets[second] = [0, 0]
        return bucket

    def record_call(self, now: float | None = None) -> None:
        self._bucket(time.monotonic() if now is None else now)[0] += 1

    def try_spend(self, now: float | None = None) -> bool:
        """Take a retry token; False when the window's retries are used up."""
        now = time.monotonic() if now is None else now
        bucket = self._bucket(now)
        calls = sum(b[0] for b in self._buckets.values())
        retries = sum(b[1] for b in self._buckets.values())
        policy = self._policy
        allowed = policy.budget_ratio * calls + policy.budget_min_per_second * policy.budget_window
        if retries + 1 > allowed:
            return False
        bucket[1] += 1
        return True
