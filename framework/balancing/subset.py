"""Subsetting: each client connects to K of a target's endpoints instead of all of them.

Rendezvous (highest-random-weight) hashing: every endpoint gets the weight
hash(client id, endpoint address) and a client ranks the endpoints by it, best first. Its subset
is the first K of that ranking that are usable. So:

- load spreads evenly without coordination: an endpoint is in a client's subset with
  probability K/N, independently per client (a binomial spread, the least any scheme without
  shared client ordinals can give; docs/balancing.md has the figures);
- churn is minimal: the ranking of the other endpoints never depends on an endpoint, so removing
  one changes only the subsets that held it, by one member (the next in rank), and adding one
  changes a subset only where it ranks within the first K, by one member;
- health: an endpoint of the subset that is unusable (failing to connect, NOT_SERVING, ejected)
  is passed over, so the next-ranked one replaces it while it is out, and it takes its place
  back when it recovers.

Nothing outside this module knows the ranking; the pool asks a Subsetter which endpoints to
keep subchannels for. A Subsetter keeps its ranking sorted as endpoints come and go: one
endpoint changed costs one hash and a binary search, not a new ranking.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import secrets
from collections.abc import Collection, Iterable, Mapping

from ..discovery import Endpoint

# GZ_SUBSET_SIZE unset: subsets of AUTO_SIZE, once a target has more than AUTO_ABOVE endpoints.
# Up to 64 a full mesh is cheap (64 connections and health streams per client); above it a
# client holds at most 32, go-zero's figure, and a subset is never more than half the target.
AUTO_SIZE = 32
AUTO_ABOVE = 2 * AUTO_SIZE

_RANDOM_ID = secrets.token_hex(8)  # one per process: all of its channels rank alike


def client_id(configured: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """GZ_CLIENT_ID, else HOSTNAME (the pod name in Kubernetes), else a random id per process."""
    environ = os.environ if environ is None else environ
    return configured or environ.get("HOSTNAME", "").strip() or _RANDOM_ID


def subset_size(setting: int | None, endpoints: int) -> int | None:
    """How many endpoints a client keeps (None: all of them). ``setting`` is GZ_SUBSET_SIZE:
    None for the default, 0 for off."""
    if setting is None:
        return AUTO_SIZE if endpoints > AUTO_ABOVE else None
    return setting if 0 < setting < endpoints else None


def weight(client: str, endpoint: Endpoint) -> int:
    """The endpoint's rendezvous weight for this client: 64 bits of a keyed-looking hash (blake2b
    mixes well, so the weights of one client are independent of another's)."""
    key = f"{client}\0{endpoint.address}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


Rank = tuple[int, Endpoint]  # (-weight, endpoint): sorts best first, ties (never seen) by endpoint


def rank(client: str, endpoint: Endpoint) -> Rank:
    return -weight(client, endpoint), endpoint


def ranked(client: str, endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """The endpoints best first for this client."""
    return [endpoint for _, endpoint in sorted(rank(client, e) for e in endpoints)]


def kept(ranking: Iterable[Endpoint], size: int, unusable: Collection[Endpoint]) -> list[Endpoint]:
    """The prefix of ``ranking`` that holds ``size`` usable endpoints: the subset with its
    unusable members still in it, so that they are watched and come back once they recover."""
    prefix: list[Endpoint] = []
    usable = 0
    for endpoint in ranking:
        if usable == size:
            break
        prefix.append(endpoint)
        usable += endpoint not in unusable
    return prefix


def subset(
    client: str,
    endpoints: Iterable[Endpoint],
    size: int,
    unusable: Collection[Endpoint] = frozenset(),
) -> list[Endpoint]:
    """The ``size`` best-ranked usable endpoints for this client, best first (all usable ones
    when there are fewer)."""
    return [e for e in kept(ranked(client, endpoints), size, unusable) if e not in unusable]


class Subsetter:
    """One channel's subsetting: the ranking of its resolved endpoints, made on a whole set,
    kept sorted through changes, walked on every state change (no hashing then)."""

    def __init__(self, client: str, setting: int | None) -> None:
        self.client = client
        self.setting = setting
        self.size: int | None = None  # None: no subsetting for the current endpoints
        self._ranking: list[Rank] = []  # sorted
        self._ranks: dict[Endpoint, Rank] = {}

    def resolved(self, endpoints: Collection[Endpoint]) -> None:
        """A whole new set: O(N log N), hashing only the endpoints it did not rank before."""
        self.size = subset_size(self.setting, len(endpoints))
        if self.size is None:
            self._ranks, self._ranking = {}, []
            return
        known = self._ranks
        self._ranks = {e: known.get(e) or rank(self.client, e) for e in endpoints}
        self._ranking = sorted(self._ranks.values())

    def changed(
        self,
        added: Iterable[Endpoint],
        removed: Iterable[Endpoint],
        endpoints: Collection[Endpoint],
    ) -> bool:
        """Endpoints ``added`` and ``removed``, making ``endpoints``. True when that turned
        subsetting on or off (the ranking was then made again from ``endpoints``)."""
        size = subset_size(self.setting, len(endpoints))
        if (size is None) != (self.size is None):
            self.resolved(endpoints)
            return True
        self.size = size
        if size is None:
            return False
        for endpoint in removed:
            old = self._ranks.pop(endpoint, None)
            if old is not None:
                del self._ranking[bisect.bisect_left(self._ranking, old)]
        for endpoint in added:
            if endpoint not in self._ranks:  # else only its zone or hints changed
                new = self._ranks[endpoint] = rank(self.client, endpoint)
                bisect.insort(self._ranking, new)
        return False

    def keep(self, unusable: Collection[Endpoint]) -> frozenset[Endpoint] | None:
        """The endpoints to keep subchannels for: the subset, with each unusable member's
        replacement (the next-ranked usable endpoint); None without subsetting: all of them."""
        if self.size is None:
            return None
        return frozenset(kept((e for _, e in self._ranking), self.size, unusable))

    def members(self) -> frozenset[Endpoint] | None:
        """The subset when every endpoint is usable (None: no subsetting), for /debug/targets."""
        return None if self.size is None else frozenset(e for _, e in self._ranking[: self.size])
