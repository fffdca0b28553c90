"""Outlier ejection: an endpoint whose calls keep failing is left out for a while.

Per endpoint, not per service (go-zero's breaker opens for a whole service after one bad
replica). Failures are the codes that say the endpoint, not the request, is the problem.
An endpoint is ejected after CONSECUTIVE failures in a row, or when more than FAILURE_RATIO of
at least MIN_CALLS calls in the last WINDOW seconds failed (a window sliding in one-second steps,
so a burst of failures is seen whole whenever it comes). It stays out BASE_EJECTION seconds
times the number of times it was ejected (up to MAX_EJECTION), then comes back on probation:
its first failure ejects it again at once, its first success clears the probation. The pool
never lets more than half of the endpoints be ejected at once.
"""

from __future__ import annotations

import grpc

from ..window import SlidingCount

FAILURE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}
)
_FAILURE_IDS = frozenset(map(id, FAILURE_CODES))  # a StatusCode's own hash is Python code
CONSECUTIVE = 5
FAILURE_RATIO = 0.5
MIN_CALLS = 20
WINDOW = 10.0  # seconds, counted in one-second buckets
BASE_EJECTION = 30.0
MAX_EJECTION = 300.0
FORGIVE_AFTER = 60.0  # a clean minute after returning resets the ejection count


class Outcomes:
    """Recent call outcomes of one endpoint and its ejection state."""

    __slots__ = ("_calls", "_failures", "consecutive", "ejected_until", "ejections",
                 "on_probation", "returned_at")  # fmt: skip

    def __init__(self) -> None:
        self.consecutive = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self.on_probation = False
        self.returned_at = 0.0
        self._calls = SlidingCount(WINDOW)
        self._failures = SlidingCount(WINDOW)

    def record(self, code: grpc.StatusCode, now: float) -> bool:
        """Count one finished call; True when the endpoint should now be ejected."""
        if code is grpc.StatusCode.CANCELLED:
            return False  # the caller gave up: nothing learnt about the endpoint
        self._calls.add(now)
        if id(code) not in _FAILURE_IDS:
            self.consecutive = 0
            if self.on_probation:
                self.on_probation = False
            elif self.ejections and now - self.returned_at > FORGIVE_AFTER:
                self.ejections = 0
            return False
        self._failures.add(now)
        self.consecutive += 1
        calls = self._calls.total  # both windows slid to ``now`` by the adds above
        return (
            self.on_probation
            or self.consecutive >= CONSECUTIVE
            or (calls >= MIN_CALLS and self._failures.total > FAILURE_RATIO * calls)
        )

    def eject(self, now: float) -> float:
        """Start an ejection; returns how long it lasts."""
        self.ejections += 1
        duration = min(MAX_EJECTION, BASE_EJECTION * self.ejections)
        self.ejected_until = now + duration
        self.consecutive = 0
        self._calls.clear()  # it returns with a clean record, judged on what it does then
        self._failures.clear()
        return duration

    def readmit(self, now: float) -> None:
        self.ejected_until = 0.0
        self.on_probation = True
        self.returned_at = now

    def is_ejected(self) -> bool:
        return self.ejected_until > 0.0

    def recent(self, now: float) -> tuple[int, int]:
        """(calls, failures) over the last WINDOW seconds, since the last ejection (for
        /debug/targets: read in the event loop, as it slides the windows)."""
        return self._calls.value(now), self._failures.value(now)
