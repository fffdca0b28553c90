"""A count of events over a sliding window of whole seconds."""

from __future__ import annotations


class SlidingCount:
    """How many events happened over the last ``window`` seconds, kept in one-second buckets.

    It slides a second at a time: a window that restarts every ``window`` seconds would let a
    burst straddling the restart be seen as two halves, each too small to count.
    Shared by the retry budget (middleware/retry.py) and outlier ejection (balancing/outlier.py)."""

    __slots__ = ("_buckets", "_second", "total")

    def __init__(self, window: float) -> None:
        self._buckets = [0] * max(1, round(window))
        self._second = 0  # the second of the newest bucket (int of time.monotonic())
        self.total = 0  # the sum of the buckets, kept so that reading it costs nothing

    def add(self, now: float, count: int = 1) -> None:
        """Count ``count`` events at ``now`` (time.monotonic())."""
        second = int(now)
        if second > self._second:
            self._slide(second)
        # a ``now`` a little in the past (read before another event's) lands in the newest bucket
        self._buckets[self._second % len(self._buckets)] += count
        self.total += count

    def value(self, now: float) -> int:
        """The events of the window that ends at ``now``."""
        second = int(now)
        if second > self._second:
            self._slide(second)
        return self.total

    def clear(self) -> None:
        self._buckets = [0] * len(self._buckets)
        self.total = 0

    def _slide(self, second: int) -> None:
        """Empty the buckets of the seconds between the newest one and ``second``."""
        size = len(self._buckets)
        if second - self._second >= size:
            self.clear()
        else:
            for passed in range(self._second + 1, second + 1):
                self.total -= self._buckets[passed % size]
                self._buckets[passed % size] = 0
        self._second = second
