"""Zone-aware routing: with GZ_ZONE set, calls stay in the client's zone while it can carry them.

The endpoints meant for the client's zone are, as kube-proxy decides: those whose EndpointSlice
hints (``hints.forZones``) name it, when every endpoint carries hints and some name it; else
those in the zone.
The pool balances over the usable ones among them while they are enough for the zone's share
of the calls:

    local usable >= SHARE_NEEDED x (its share) x (all usable)

Its share is the fraction the hints gave it (hinted-for-zone endpoints / all endpoints: the
EndpointSlice controller allocates hints by each zone's capacity, and reallocates them as
endpoints come and go); without hints, an equal part per zone that has endpoints (1/zones), as
clients spread over the zones as servers do. So a zone that lost more of its endpoints (not
serving, failing or ejected) than the others spills to every usable endpoint, and a zone with
none spills at once; calls never fail because the local zone is empty.

A ZoneIndex counts the resolved endpoints' zones and hints as they come and go, so each of these
questions costs O(1) whatever the number of endpoints; nothing here runs per call.
"""

from __future__ import annotations

from collections import Counter

from ..discovery import Endpoint

# Below three quarters of its share a zone's endpoints would run a third hotter than the
# others: better to spread the calls over every zone.
SHARE_NEEDED = 0.75


class ZoneIndex:
    """The zones and hints of a target's resolved endpoints, for one client zone."""

    def __init__(self, zone: str) -> None:
        self.zone = zone
        self._zones: Counter[str | None] = Counter()  # endpoints per zone (None: unknown)
        self._unhinted = 0  # endpoints without hints: one is enough to ignore every hint
        self._hinted_here = 0  # endpoints whose hints name this zone
        self._total = 0

    def add(self, endpoint: Endpoint) -> None:
        self._count(endpoint, 1)

    def remove(self, endpoint: Endpoint) -> None:
        """``endpoint`` as it was added (with the zone and hints it had then)."""
        self._count(endpoint, -1)

    def _count(self, endpoint: Endpoint, step: int) -> None:
        self._total += step
        self._zones[endpoint.zone] += step
        if not self._zones[endpoint.zone]:
            del self._zones[endpoint.zone]
        self._unhinted += step * (not endpoint.for_zones)
        self._hinted_here += step * (self.zone in endpoint.for_zones)

    def by_hints(self) -> bool:
        """Whether hints, rather than zones, say which endpoints are meant for this zone."""
        return not self._unhinted and self._hinted_here > 0

    def is_local(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` is meant for this zone (as the set stands now)."""
        if self.by_hints():
            return self.zone in endpoint.for_zones
        return endpoint.zone == self.zone

    def share(self) -> float:
        """The share of the calls this zone's endpoints are meant to carry (0 to 1)."""
        if self.by_hints():
            return self._hinted_here / self._total
        return 1 / len(self._zones) if self._zones[self.zone] else 0.0

    def prefers_local(self, local: int, usable: int) -> bool:
        """Whether ``local`` usable endpoints of this zone, of ``usable`` in all, are enough
        to keep the calls in the zone."""
        return local > 0 and local >= SHARE_NEEDED * self.share() * usable
