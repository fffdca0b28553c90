"""Pickers choose a subchannel for each call. A picker is immutable: the pool builds a new one
whenever the set of usable subchannels changes, so pick() needs no locks and no state checks."""

from __future__ import annotations

import itertools
import random
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence

from .subchannel import Subchannel


class Picker(ABC):
    name: str  # what connect(balancer=...) and GZ_BALANCER call it

    def __init__(self, subchannels: Sequence[Subchannel]) -> None:
        self.subchannels = tuple(subchannels)

    @abstractmethod
    def pick(self) -> Subchannel:
        """A subchannel for the next call; the pool only builds pickers over non-empty lists."""

    def pick_other(self, peers: Collection[str]) -> Subchannel:
        """A subchannel whose address is not in ``peers`` (those a call already tried), chosen
        by this picker's own rule; any subchannel if every one was tried. Used for retries."""
        for _ in range(2):  # cheap first: the usual pick is often another endpoint already
            subchannel = self.pick()
            if subchannel.peer not in peers:
                return subchannel
        others = [s for s in self.subchannels if s.peer not in peers]
        return type(self)(others).pick() if others else self.pick()


class RoundRobinPicker(Picker):
    """Each usable subchannel in turn, from a random start so that clients do not all begin on
    the same endpoint."""

    name = "round_robin"

    def __init__(self, subchannels: Sequence[Subchannel]) -> None:
        super().__init__(subchannels)
        start = random.randrange(len(self.subchannels))
        ordered = self.subchannels[start:] + self.subchannels[:start]
        self._next = itertools.cycle(ordered).__next__

    def pick(self) -> Subchannel:
        return self._next()
