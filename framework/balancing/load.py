"""What a client knows of one endpoint's load: calls in flight and a latency moving average.

Updated when a call starts and when it ends; read by the p2c_ewma picker. The average decays
with a 10 s time constant, so an endpoint that was slow a minute ago is judged by what it does
now.
"""

from __future__ import annotations

import math
import time

DECAY_SECONDS = 10.0


class Load:
    __slots__ = ("ewma_us", "inflight", "last_pick", "last_sample")

    def __init__(self) -> None:
        self.inflight = 0
        self.ewma_us = 0.0  # latency moving average in microseconds; 0: no sample yet
        self.last_sample = 0.0
        self.last_pick = time.monotonic()  # so that a new endpoint is not "forced" at once

    def started(self, now: float) -> None:
        self.inflight += 1
        self.last_pick = now

    def finished(self, started_at: float, now: float) -> None:
        self.inflight -= 1
        latency_us = (now - started_at) * 1e6
        if self.ewma_us == 0.0:
            self.ewma_us = latency_us
        else:
            weight = math.exp(-(now - self.last_sample) / DECAY_SECONDS)
            self.ewma_us = self.ewma_us * weight + latency_us * (1.0 - weight)
        self.last_sample = now

    def score(self) -> float:
        """Lower is better: latency (damped by the square root) times the queue in front."""
        return math.sqrt(self.ewma_us + 1.0) * (self.inflight + 1)
