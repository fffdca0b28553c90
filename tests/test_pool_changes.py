"""The subchannel pool kept one change at a time: after any sequence of resolver changes,
subchannel state changes and ejections, the pool holds what a pool given the whole set at once
would, and its picker balances over what the tier rule says (computed here from scratch). And a
one-endpoint change at thousands of endpoints touches a few subchannels, not all of them."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Iterator

import grpc
import pytest

from gz.balancing import P2cEwmaPicker, Subchannel, usable
from gz.balancing import subset as subsetting
from gz.balancing.pool import SubchannelPool
from gz.balancing.subset import Subsetter
from gz.balancing.zones import ZoneIndex
from gz.discovery import Endpoint
from gz.discovery.tally import Tally

State = grpc.ChannelConnectivity
ZONES = ("a", "b", "c")


class Channel:
    """Stands in for a grpc.aio channel: READY at once, and no state change unless a test
    makes one (through the subchannel's own listener)."""

    def get_state(self, try_to_connect: bool = False) -> State:
        return State.READY

    async def wait_for_state_change(self, last: State) -> None:
        await asyncio.Event().wait()

    async def close(self, grace: float | None = None) -> None:
        pass


def new_pool(zone: str | None = None, subset: int | None = 0) -> SubchannelPool:
    return SubchannelPool(
        "test", lambda e: Channel(), P2cEwmaPicker, lambda: None, health_check=False,
        subsetter=Subsetter("client-1", subset), zone=zone,
    )  # fmt: skip


def endpoint(n: int, rng: random.Random) -> Endpoint:
    return placed(Endpoint(f"10.0.{n // 250}.{n % 250}", 8080), rng)


def placed(endpoint: Endpoint, rng: random.Random) -> Endpoint:
    """``endpoint`` in a random zone, hinted for one (nine times in ten: hints in use or not)."""
    hinted = frozenset({rng.choice(ZONES)}) if rng.random() < 0.9 else frozenset()
    return Endpoint(endpoint.host, endpoint.port, rng.choice(ZONES), hinted)


def expected_usable(pool: SubchannelPool) -> set[Endpoint]:
    """The tier rule from scratch: the first tier with any subchannel, only its part meant for
    the client's zone when that part carries the zone's share."""
    zones = None
    if pool.zone is not None:
        zones = ZoneIndex(pool.zone)
        for e in pool.endpoints.values():
            zones.add(e)
    for level in range(usable.TIERS):
        chosen = [s for s in pool.subchannels.values() if usable.tier(s) == level]
        if chosen:
            if zones is not None:
                mine = [s for s in chosen if zones.is_local(pool.endpoints[s.endpoint])]
                if zones.prefers_local(len(mine), len(chosen)):
                    chosen = mine
            return {s.endpoint for s in chosen}
    return set()


def expected_subchannels(pool: SubchannelPool, unusable: Collection[Endpoint]) -> set[Endpoint]:
    size = subsetting.subset_size(pool.subsetter.setting, len(pool.endpoints))
    if size is None:
        return set(pool.endpoints)
    ranking = subsetting.ranked(pool.subsetter.client, pool.endpoints)
    return set(subsetting.kept(ranking, size, unusable))


def unusable(pool: SubchannelPool) -> set[Endpoint]:
    return {
        e for e, s in pool.subchannels.items()
        if s.state is State.TRANSIENT_FAILURE or not s.serving or s.outcomes.is_ejected()
    }  # fmt: skip


def set_state(pool: SubchannelPool, subchannel: Subchannel, rng: random.Random) -> None:
    """One change of connectivity, health or ejection, told to the pool as a subchannel would."""
    what = rng.random()
    if what < 0.4:
        old, subchannel.state = subchannel.state, rng.choice(list(State)[:4])
        pool._changed_state(subchannel, old is State.READY)
    elif what < 0.7:
        subchannel.serving = not subchannel.serving
        pool._changed_state(subchannel, not subchannel.serving)
    elif subchannel.outcomes.is_ejected():
        pool._readmissions.pop(subchannel.endpoint).cancel()
        pool._readmit(subchannel)
    else:
        pool._eject(subchannel)  # refused when half are out already


def steps(rng: random.Random, pool: SubchannelPool, first: int) -> Iterator[str]:
    """Random changes to ``pool``: endpoints leaving, joining, changing zone or hints (as
    resolvers push them), and subchannel state changes."""
    count = first
    for _ in range(300):
        what = rng.random()
        known = sorted(pool.endpoints)
        if what < 0.3 and known:
            removed = rng.sample(known, min(len(known), rng.randint(1, 3)))
            pool.change([], removed)
            yield f"removed {len(removed)}"
        elif what < 0.55:
            added = [endpoint(count + i, rng) for i in range(rng.randint(1, 3))]
            count += len(added)
            pool.change(added, [])
            yield f"added {len(added)}"
        elif what < 0.65 and known:
            moved = [placed(e, rng) for e in rng.sample(known, min(len(known), 2))]
            pool.change(moved, [])
            yield "new zones or hints"
        elif pool.subchannels:
            set_state(pool, rng.choice(sorted(pool.subchannels.values(), key=str)), rng)
            yield "state"


@pytest.mark.parametrize(
    ("zone", "subset", "first"),
    [(None, 0, 20), ("a", 0, 20), (None, 4, 20), ("b", 4, 20), (None, None, 64)],
    ids=["plain", "zone", "subset", "zone-and-subset", "auto-subset-crossing-64"],
)
@pytest.mark.parametrize("seed", range(3))
async def test_changes_one_at_a_time_give_what_the_whole_set_gives(zone, subset, first, seed):
    rng = random.Random(seed)
    pool = new_pool(zone, subset)
    pool.update(frozenset(endpoint(n, rng) for n in range(first)))
    for step, what in enumerate(steps(rng, pool, first)):
        where = f"step {step} ({what})"
        assert set(pool.subchannels) == expected_subchannels(pool, unusable(pool)), where
        picked = {s.endpoint for s in pool.picker.subchannels} if pool.picker else set()
        assert picked == expected_usable(pool), where
    # and the same endpoints given whole make the same subchannels
    whole = new_pool(zone, subset)
    whole.update(frozenset(pool.endpoints.values()))
    if pool.subsetter.size is None:
        assert set(whole.subchannels) == set(pool.subchannels)
    else:
        assert pool.subsetter.members() == whole.subsetter.members()
    await pool.close(0)
    await whole.close(0)


@pytest.mark.parametrize(("zone", "subset"), [(None, 0), ("a", 0), (None, 32), ("a", 32)])
async def test_one_endpoint_changed_at_5000_sorts_a_few_subchannels_and_hashes_one_endpoint(
    zone: str | None, subset: int, monkeypatch: pytest.MonkeyPatch
):
    rng = random.Random(1)
    pool = new_pool(zone, subset)
    endpoints = [endpoint(n, rng) for n in range(5000)]
    pool.update(frozenset(endpoints))
    sorted_out, weighed = [], []
    tier, weight = usable.tier, subsetting.weight
    monkeypatch.setattr(usable, "tier", lambda s: sorted_out.append(s) or tier(s))
    monkeypatch.setattr(subsetting, "weight", lambda c, e: weighed.append(e) or weight(c, e))
    newcomer = endpoint(9999, rng)
    pool.change([newcomer], [endpoints[17]])
    pool.change([], [newcomer])
    # a few subchannels at most (a subset's replacement), whatever the number of endpoints
    assert len(sorted_out) <= 4
    assert len(weighed) <= 1
    await pool.close(0)


# -- the tally resolvers feed ------------------------------------------------------------------
def test_a_tally_counts_sources_and_tells_only_what_changed():
    assert Tally().take_all() == frozenset()  # the first set is told even when empty
    tally = Tally()
    a, b = Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80)
    tally.add(a)
    tally.add(b)
    assert tally.take_all() == {a, b} and tally.take_all() is None  # as told
    tally.add(a)  # a second source names a
    tally.remove(a)
    assert tally.take_changes() == ([], [])
    tally.remove(a)  # the last one
    assert tally.take_changes() == ([], [a])
    zoned = Endpoint("10.0.0.2", 80, "z", frozenset({"z"}))
    tally.remove(b)
    tally.add(zoned)  # the same address, placed elsewhere: told as added, replacing it
    added, removed = tally.take_changes()
    assert added == [zoned] and added[0].zone == "z" and removed == []
    tally.add(a)
    tally.remove(a)  # came and went between two takes: nothing to tell
    assert tally.take_changes() == ([], []) and tally.told() == 1
    tally.clear()
    assert tally.take_all() == frozenset() and tally.told() == 0
