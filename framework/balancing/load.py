"""What a client knows of one endpoint's load: calls in flight and a latency moving average.

Updated when a call starts and, from one done-callback on the grpc call, when it ends; read by
the p2c_ewma picker. The average decays with a 10 s time constant (go-zero's), so an endpoint
that was slow a minute ago is judged by what it does now. Until it has seen ten seconds' worth
of calls, it is the plain mean of its samples: otherwise the first call's latency (a connection
still warming up, a scheduling hiccup) would weigh on the endpoint for seconds and skew the
shares of equal endpoints. A subchannel's first unary call is not timed at all: it pays the
connection's one-off costs (1.2 to 5 times the next calls' latency on loopback), and as the only
sample of an endpoint that lost its draws since, it kept that endpoint starved. Only unary calls
feed the average: a stream's duration says nothing about the server's speed, but a stream still
counts in flight.
"""

from __future__ import annotations

import math
from typing import Any

import grpc

DECAY_SECONDS = 10.0


class Load:
    __slots__ = ("ewma_us", "inflight", "last_pick", "last_sample", "samples", "warm")

    def __init__(self, now: float) -> None:
        self.inflight = 0
        self.ewma_us = 0.0  # latency moving average in microseconds; 0: no sample yet
        self.samples = 0
        self.warm = False  # the first call, a warm-up, has ended
        self.last_sample = now
        self.last_pick = now  # so that a new endpoint is not "forced" at once

    def finished(self, started_at: float, now: float) -> None:
        """Fold one call's latency into the average (not the first call's: a warm-up)."""
        if not self.warm:
            self.warm = True
            return
        latency_us = (now - started_at) * 1e6
        self.samples += 1
        weight = max(1.0 - math.exp(-(now - self.last_sample) / DECAY_SECONDS), 1 / self.samples)
        self.ewma_us += (latency_us - self.ewma_us) * weight
        self.last_sample = now

    def score(self) -> float:
        """Lower is better: latency (damped by the square root) times the queue in front."""
        return math.sqrt(self.ewma_us + 1.0) * (self.inflight + 1)


def finished_code(call: Any) -> grpc.StatusCode | None:
    """The status of a call that has finished, read without suspending (for done-callbacks).

    ``call.code()`` is a coroutine, but once a call is done it returns without awaiting
    anything, so it can be run to its end right here; None if it would have to wait."""
    coroutine = call.code()
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    except Exception:  # a call that cannot tell its code tells nothing about the endpoint
        return None
    coroutine.close()
    return None
