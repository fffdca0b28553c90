"""Pickers choose a subchannel for each call. A picker is immutable: the pool builds a new one
whenever the set of usable subchannels changes, so pick() needs no locks and no state checks."""

from __future__ import annotations

import itertools
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence

from .subchannel import Subchannel


class Picker(ABC):
    name: str  # what connect(balancer=...) and GZ_BALANCER call it

    @abstractmethod
    def pick(self) -> Subchannel:
        """A subchannel for the next call; the pool only builds pickers over non-empty lists."""


class RoundRobinPicker(Picker):
    """Each usable subchannel in turn, from a random start so that clients do not all begin on
    the same endpoint."""

    __slots__ = ("_next",)
    name = "round_robin"

    def __init__(self, subchannels: Sequence[Subchannel]) -> None:
        start = random.randrange(len(subchannels))
        ordered = list(subchannels[start:]) + list(subchannels[:start])
        self._next = itertools.cycle(ordered).__next__

    def pick(self) -> Subchannel:
        return self._next()


PICKERS: dict[str, type[Picker]] = {p.name: p for p in (RoundRobinPicker,)}


def picker_class(name: str) -> type[Picker]:
    try:
        return PICKERS[name]
    except KeyError:
        raise ValueError(
            f"unknown balancer {name!r}; expected one of {', '.join(sorted(PICKERS))}"
        ) from None
