"""p2c_ewma: the power of two choices over a latency moving average and calls in flight.

Two distinct usable subchannels are drawn at random and the one with the lower load score
(``sqrt(ewma_latency_us + 1) * (inflight + 1)``, see load.py) wins. If the loser has not been
picked for over a second it wins instead, once, so that its estimate stays fresh and a recovered
endpoint is noticed. O(1) per pick whatever the number of endpoints (go-zero's algorithm).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from .picker import Picker
from .subchannel import Subchannel

FORCE_PICK_AFTER = 1.0  # seconds


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
        if worse.load.score() < better.load.score():
            better, worse = worse, better
        if time.monotonic() - worse.load.last_pick > FORCE_PICK_AFTER:
            worse.load.last_pick = time.monotonic()  # forced once, not by every pick until used
            return worse
        return better
