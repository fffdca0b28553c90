"""Endpoints named by several sources (etcd keys, EndpointSlices), and what changed about them.

A resolver that follows events feeds each source's endpoints in and out of a Tally as its
events arrive; the Tally says what the listener has to be told, in work proportional to what
the events touched, not to the size of the set.
"""

from __future__ import annotations

from .endpoint import Endpoint

Place = tuple[str | None, frozenset[str]]  # an endpoint's zone and hints: not part of equality


def _place(endpoint: Endpoint) -> Place:
    return endpoint.zone, endpoint.for_zones


class Tally:
    """A multiset of endpoints: the set is those named at least once (two etcd keys or two
    slices may name one address). ``take_changes()`` and ``take_all()`` say what to tell the
    listener and remember what it was told."""

    def __init__(self) -> None:
        self._times: dict[Endpoint, int] = {}  # how many sources name it
        self._latest: dict[Endpoint, Endpoint] = {}  # the object last named, for zone and hints
        self._told: dict[Endpoint, Place] = {}  # what the listener last heard, with places
        self._touched: set[Endpoint] = set()  # named or unnamed since then
        self._ever_told = False

    def __len__(self) -> int:
        return len(self._times)

    def add(self, endpoint: Endpoint) -> None:
        """One more source names ``endpoint`` (the latest one's zone and hints win)."""
        self._times[endpoint] = self._times.get(endpoint, 0) + 1
        self._latest[endpoint] = endpoint
        self._touched.add(endpoint)

    def remove(self, endpoint: Endpoint) -> None:
        """One source no longer names ``endpoint``."""
        times = self._times.get(endpoint)
        if times is None:
            return
        if times == 1:
            del self._times[endpoint], self._latest[endpoint]
        else:
            self._times[endpoint] = times - 1
        self._touched.add(endpoint)

    def clear(self) -> None:
        """Nothing is named any more (before a fresh read); the listener's view is kept."""
        self._touched.update(self._times)
        self._times.clear()
        self._latest.clear()

    def current(self) -> frozenset[Endpoint]:
        """The set now, each endpoint with its latest zone and hints."""
        return frozenset(self._latest.values())

    def take_changes(self) -> tuple[list[Endpoint], list[Endpoint]]:
        """(added, removed) since the listener was last told, as Listener.change takes them;
        both empty if the set is as told."""
        added: list[Endpoint] = []
        removed: list[Endpoint] = []
        for endpoint in self._touched:
            latest = self._latest.get(endpoint)
            told = self._told.get(endpoint)
            if latest is None:
                if told is not None:
                    removed.append(endpoint)
                    del self._told[endpoint]
                continue
            if told != _place(latest):
                added.append(latest)
                self._told[endpoint] = _place(latest)
        self._touched.clear()
        return added, removed

    def take_all(self, again: bool = False) -> frozenset[Endpoint] | None:
        """The whole set for Listener.update, or None if it is as told (``again``: even so).
        The first set is always told, empty or not: a listener tells "no endpoints yet" from
        "the target has none" by it."""
        current = self.current()
        told = {e: _place(e) for e in current}
        self._touched.clear()
        if told == self._told and self._ever_told and not again:
            return None
        self._told, self._ever_told = told, True
        return current

    def forget(self) -> None:
        """The listener was told something else (another tally's set): next time, tell all."""
        self._told.clear()
        self._touched.clear()

    def told(self) -> int:
        """How many endpoints the listener was last told of."""
        return len(self._told)
