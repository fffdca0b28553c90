"""Which subchannels the picker gets, kept one subchannel at a time.

The picker balances over the first of these tiers that has any subchannel:

0. READY, serving and not ejected;
1. still coming up (IDLE or CONNECTING), serving and not ejected: the call waits for the
   connection, as on a plain grpc channel;
2. READY and ejected: ejection is advice, and if only ejected endpoints are left they get the
   calls;
3. READY and NOT_SERVING: every one of them draining (or one ClusterIP whose pod drains) still
   answers until its drain ends, which beats failing the call here.

TRANSIENT_FAILURE is never picked. With a client zone, each tier is split into the endpoints
meant for the zone and the others (zones.py decides which part the picker gets).

Each tier is a list with an index, so moving one subchannel costs O(1): at 10,000 endpoints a
state change no longer walks every subchannel (the picker still copies its tier's list, a C
loop of pointers).
"""

from __future__ import annotations

from collections.abc import Callable

from .subchannel import State, Subchannel

_COMING_UP = (State.IDLE, State.CONNECTING)
TIERS = 4


def tier(subchannel: Subchannel) -> int | None:
    """The subchannel's tier (see above); None: not to be picked."""
    ejected = subchannel.outcomes.is_ejected()
    if subchannel.state is State.READY:
        if not subchannel.serving:
            return 3
        return 2 if ejected else 0
    if subchannel.state in _COMING_UP and subchannel.serving and not ejected:
        return 1
    return None


class _Members:
    """A list of subchannels with each one's position: add and remove in O(1) (a removed one's
    place is taken by the last)."""

    __slots__ = ("_position", "items")

    def __init__(self) -> None:
        self.items: list[Subchannel] = []
        self._position: dict[Subchannel, int] = {}

    def add(self, subchannel: Subchannel) -> None:
        self._position[subchannel] = len(self.items)
        self.items.append(subchannel)

    def remove(self, subchannel: Subchannel) -> None:
        position = self._position.pop(subchannel)
        last = self.items.pop()
        if last is not subchannel:
            self.items[position] = last
            self._position[last] = position


class Usable:
    """The subchannels by tier, and by whether they are meant for the client's zone."""

    def __init__(self) -> None:
        # _tiers[tier][local]: local is False for every subchannel without a client zone
        self._tiers = [(_Members(), _Members()) for _ in range(TIERS)]
        self._where: dict[Subchannel, tuple[int, bool]] = {}

    def place(self, subchannel: Subchannel, local: bool = False) -> None:
        """Put ``subchannel`` where its state says (out of every tier if it is not to be
        picked); call after any change to its state, serving status, ejection or locality."""
        now = tier(subchannel)
        where = None if now is None else (now, local)
        was = self._where.get(subchannel)
        if where == was:
            return
        if was is not None:
            self._tiers[was[0]][was[1]].remove(subchannel)
            del self._where[subchannel]
        if where is not None:
            self._tiers[where[0]][where[1]].add(subchannel)
            self._where[subchannel] = where

    def drop(self, subchannel: Subchannel) -> None:
        """``subchannel`` is gone (retired)."""
        was = self._where.pop(subchannel, None)
        if was is not None:
            self._tiers[was[0]][was[1]].remove(subchannel)

    def choice(self, prefers_local: Callable[[int, int], bool] | None = None) -> list[Subchannel]:
        """What the picker balances over: the first tier with any subchannel; only its local
        part if ``prefers_local(local, all)`` says so. Empty: nothing can be picked. The list
        may be one kept here: a picker copies it (the one copy a change costs, a C loop)."""
        for others, local in self._tiers:
            mine, rest = local.items, others.items
            if not (mine and rest):
                if mine or rest:
                    return mine or rest
                continue
            if prefers_local is not None and prefers_local(len(mine), len(mine) + len(rest)):
                return mine
            return mine + rest
        return []
