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
none spills at once; calls never fail because the local zone is empty. Everything here runs
when the pool rebuilds its picker, never per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from ..discovery import Endpoint

# Below three quarters of its share a zone's endpoints would run a third hotter than the
# others: better to spread the calls over every zone.
SHARE_NEEDED = 0.75


class HasEndpoint(Protocol):
    @property
    def endpoint(self) -> Endpoint: ...


S = TypeVar("S", bound=HasEndpoint)
Local = tuple[frozenset[Endpoint], float]

# The last sets seen, by identity: a set changes far less often than its endpoints' states.
# Not by equality: sets that differ only in zones or hints are equal.
_CACHED = 64
_cache: dict[tuple[str, int], tuple[frozenset[Endpoint], Local]] = {}


def local_endpoints(zone: str, endpoints: frozenset[Endpoint]) -> Local:
    """The endpoints meant for ``zone`` and the share of calls they are meant to carry (0 to 1);
    (empty, 0) when none is."""
    cached = _cache.get((zone, id(endpoints)))
    if cached is not None and cached[0] is endpoints:  # it holds the set: the id is its own
        return cached[1]
    found = _local_endpoints(zone, endpoints)
    if len(_cache) >= _CACHED:
        del _cache[next(iter(_cache))]  # the oldest
    _cache[zone, id(endpoints)] = endpoints, found
    return found


def _local_endpoints(zone: str, endpoints: frozenset[Endpoint]) -> Local:
    if not endpoints:
        return frozenset(), 0.0
    if all(e.for_zones for e in endpoints):  # one endpoint without hints: hints are not in use
        hinted = frozenset(e for e in endpoints if zone in e.for_zones)
        if hinted:
            return hinted, len(hinted) / len(endpoints)
    local = frozenset(e for e in endpoints if e.zone == zone)
    zones = {e.zone for e in endpoints} | {zone}
    return local, (1 / len(zones) if local else 0.0)


def prefer_zone(
    zone: str | None, usable: Sequence[S], endpoints: frozenset[Endpoint]
) -> Sequence[S]:
    """What to balance over: the usable ones (subchannels) meant for ``zone`` if they are
    enough for its share, else all of ``usable``. ``endpoints`` is the whole resolved set, with
    zones and hints; without a zone, or a zone no endpoint knows of, ``usable`` as is."""
    if zone is None or not usable:
        return usable
    local, share = local_endpoints(zone, endpoints)
    if not local:
        return usable
    mine = [s for s in usable if s.endpoint in local]  # endpoints compare by address
    if mine and len(mine) >= SHARE_NEEDED * share * len(usable):
        return mine
    return usable
