"""p2c_ewma: the power of two choices over a latency moving average and calls in flight.

Two distinct usable subchannels are drawn at random and the one with the lower load score
(``sqrt(ewma_latency_us + 1) * (inflight + 1)``, see load.py) wins. If the loser has not been
picked for over a second it wins instead, once, so that its estimate stays fresh and a recovered
endpoint is noticed. O(1) per pick whatever the number of endpoints (go-zero's algorithm).

Two draws with as many calls in flight and latency averages within the noise of each other
(within 3x when neither has a call in flight, or an average of fewer than KNOWN_AFTER calls) are
a tie, and the first draw, a random one, wins it.
Without that, equal replicas at low load (no call in flight anywhere) were ranked by noise alone:
the one whose average was a little higher lost every draw and got only the forced picks (1 of
300 calls from one sequential caller over three replicas). A replica slower by more than the
noise still loses, as before.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from .picker import Picker
from .subchannel import Subchannel

FORCE_PICK_AFTER = 1.0  # seconds
# Latency averages are within noise of each other when they differ by at most 20% of the larger
# (equal replica processes on one loaded host: 10-25%), or by at most 1 ms: under a millisecond
# the client's own event loop jitters by that much (equal replicas at 0.55-0.8 ms, one caller).
TIE_RATIO = 0.2
TIE_FLOOR_US = 1000.0
# With no call in flight on either, the draw costs no queueing, only the latency difference, and
# equal replicas sharing a few cores differ by up to 2-3x (whichever shares a core with the
# caller): then averages within 3x of each other are a tie too. A replica slowed from 5 to 25 ms
# still loses.
IDLE_TIE_FACTOR = 3.0
# An endpoint with fewer timed calls than this is not compared by latency yet: a few samples are
# mostly noise, and an endpoint that lost on noise would not be sampled again.
KNOWN_AFTER = 10


class P2cEwmaPicker(Picker):
    name = "p2c_ewma"

    def __init__(self, subchannels: Sequence[Subchannel]) -> None:
        super().__init__(subchannels)
        self._count = len(self.subchannels)

    def pick(self) -> Subchannel:
        count = self._count
        if count == 1:
            return self.subchannels[0]
        first = int(random.random() * count)
        second = int(random.random() * (count - 1))
        if second >= first:
            second += 1
        better, worse = self.subchannels[first], self.subchannels[second]
        a, b = better.load, worse.load
        if a.inflight == b.inflight:
            if a.samples < KNOWN_AFTER or b.samples < KNOWN_AFTER:
                return better  # an estimate of too few calls says nothing yet: a random draw
            gap = a.ewma_us - b.ewma_us if a.ewma_us > b.ewma_us else b.ewma_us - a.ewma_us
            larger = a.ewma_us if a.ewma_us > b.ewma_us else b.ewma_us
            if gap <= TIE_FLOOR_US or gap <= TIE_RATIO * larger:
                return better  # a tie: the first draw, at random, so equal replicas share
            if a.inflight == 0 and larger <= IDLE_TIE_FACTOR * (larger - gap):
                return better  # idle, and within 3x: a tie as well
        if b.score() < a.score():
            better, worse = worse, better
        now = time.monotonic()
        if now - worse.load.last_pick > FORCE_PICK_AFTER:
            worse.load.last_pick = now  # forced once, not by every pick until used
            return worse
        return better
