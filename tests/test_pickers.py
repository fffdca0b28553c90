"""Pickers, load averages, the retry budget and policy, and outlier ejection, without servers."""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter

import grpc
import pytest

import gz
from gz.balancing import P2cEwmaPicker, RoundRobinPicker, outlier, picker_class
from gz.balancing.load import Load
from gz.balancing.outlier import Outcomes
from gz.balancing.p2c import KNOWN_AFTER
from gz.balancing.pool import SubchannelPool
from gz.middleware import Kind, Method
from gz.middleware.retry import RetryBudget, RetryPolicy
from gz.window import SlidingCount

from .support import free_port, wait_until

UNAVAILABLE, OK = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK


class FakeSubchannel:
    """What a picker reads of a subchannel: its endpoint, its address and its load."""

    def __init__(self, port: int, ewma_us: float = 1000.0, inflight: int = 0) -> None:
        self.endpoint = gz.Endpoint("127.0.0.1", port)
        self.peer = self.endpoint.address
        self.load = Load(now=0.0)
        self.load.ewma_us, self.load.inflight, self.load.last_pick = ewma_us, inflight, 1e18
        self.load.samples = 100 if ewma_us else 0  # a known estimate, compared by latency


def fakes(count: int, **load: float) -> list[FakeSubchannel]:
    return [FakeSubchannel(port, **load) for port in range(1, count + 1)]


def test_pickers_are_found_by_name_and_a_wrong_name_lists_the_right_ones():
    assert picker_class("p2c_ewma") is P2cEwmaPicker
    assert picker_class("round_robin") is RoundRobinPicker
    with pytest.raises(ValueError, match="expected one of p2c_ewma, round_robin"):
        picker_class("least_conn")


def test_p2c_ewma_is_the_default_balancer(monkeypatch):
    monkeypatch.delenv("GZ_BALANCER", raising=False)
    assert gz.ClientSettings.from_env().balancer == "p2c_ewma"
    monkeypatch.setenv("GZ_BALANCER", "round_robin")
    assert gz.ClientSettings.from_env().balancer == "round_robin"


def test_round_robin_takes_each_subchannel_in_turn():
    subchannels = fakes(3)
    picker = RoundRobinPicker(subchannels)
    picks = Counter(picker.pick().endpoint.port for _ in range(300))
    assert picks == {1: 100, 2: 100, 3: 100}


def test_p2c_ewma_prefers_the_lower_latency_and_the_shorter_queue():
    fast, slow = FakeSubchannel(1, ewma_us=1_000), FakeSubchannel(2, ewma_us=20_000)
    picker = P2cEwmaPicker([fast, slow])
    assert all(picker.pick() is fast for _ in range(100))
    fast.load.inflight = 10  # sqrt(1001) * 11 = 348 > sqrt(20001) * 1 = 141
    assert picker.pick() is slow


def test_p2c_ewma_draws_two_distinct_subchannels_and_spreads_equal_ones():
    picks = Counter(P2cEwmaPicker(fakes(4)).pick().endpoint.port for _ in range(4000))
    # equal scores: the first drawn wins; both draws are uniform, so each gets about 1/4
    assert set(picks) == {1, 2, 3, 4}
    assert all(800 < count < 1200 for count in picks.values()), picks
    worst, best = FakeSubchannel(1, ewma_us=1e9), FakeSubchannel(2)
    assert all(P2cEwmaPicker([worst, best]).pick() is best for _ in range(50))


def test_p2c_ewma_forces_a_subchannel_not_picked_for_a_second_once(monkeypatch):
    now = 1000.0
    monkeypatch.setattr("gz.balancing.p2c.time.monotonic", lambda: now)
    fast, slow = FakeSubchannel(1, ewma_us=1_000), FakeSubchannel(2, ewma_us=50_000)
    fast.load.last_pick = slow.load.last_pick = now
    picker = P2cEwmaPicker([fast, slow])
    assert picker.pick() is fast
    now += 1.5
    assert picker.pick() is slow  # stale estimate: forced once to refresh it
    assert picker.pick() is fast  # and not again until another second passes


def picked_by_a_sequential_caller(picker: P2cEwmaPicker, calls: int, clock: list[float]) -> Counter:
    """Which fake subchannel each of ``calls`` picks went to, one call at a time, 1 ms apart:
    a pick starts the call (as Subchannel.track does), which ends before the next pick."""
    picks: Counter[int] = Counter()
    for _ in range(calls):
        clock[0] += 0.001
        subchannel = picker.pick()
        subchannel.load.last_pick = clock[0]
        picks[subchannel.endpoint.port] += 1
    return picks


def test_p2c_ewma_shares_equal_replicas_evenly_with_one_sequential_caller(monkeypatch):
    """Nothing in flight anywhere, latency averages apart by noise (0.61, 0.62, 0.72 ms): the
    highest lost every draw and got only the forced picks (1 of 300 calls from one caller over
    three real replicas). Within noise it is a tie, and the first random draw wins it."""
    clock = [1000.0]
    monkeypatch.setattr("gz.balancing.p2c.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("gz.balancing.p2c.random", random.Random(7))

    def shares(*latencies_us: float) -> Counter:
        replicas = [FakeSubchannel(port, us) for port, us in enumerate(latencies_us, 1)]
        for replica in replicas:
            replica.load.last_pick = clock[0]
        return picked_by_a_sequential_caller(P2cEwmaPicker(replicas), 300, clock)

    picks = shares(610, 620, 720)  # each at least 1/6 of the calls
    assert all(picks[port] >= 50 for port in (1, 2, 3)), picks
    # with nothing in flight, averages within 3x share (equal replicas on shared cores differ by
    # that much); 4x apart, the faster ones take all but the forced picks (none in these 0.3 s)
    picks = shares(20_000, 20_000, 55_000)
    assert all(picks[port] >= 50 for port in (1, 2, 3)), picks
    assert shares(20_000, 20_000, 80_000)[3] == 0


def callers_on_a_fake_clock(monkeypatch, latencies_ms: list[float], callers: int) -> list[float]:
    """Each replica's share of 4,000 calls made by ``callers`` loops, each call taking its
    replica's latency (within +-20%, seeded); the loads are updated as Subchannel.track does."""
    clock = [1000.0]
    monkeypatch.setattr("gz.balancing.p2c.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("gz.balancing.p2c.random", random.Random(11))
    jitter = random.Random(12)
    replicas = [FakeSubchannel(port, ewma_us=0) for port in range(1, len(latencies_ms) + 1)]
    for replica in replicas:
        replica.load = Load(now=clock[0])
    picker, served, ends = P2cEwmaPicker(replicas), Counter(), []
    for call in range(4_000 + callers):
        if call >= callers:  # the earliest call ends; its caller makes the next one
            clock[0], _, started, replica = heapq.heappop(ends)
            replica.load.inflight -= 1
            replica.load.finished(started, clock[0])
        replica = picker.pick()
        replica.load.inflight += 1
        replica.load.last_pick = clock[0]
        latency = latencies_ms[replica.endpoint.port - 1] * jitter.uniform(0.8, 1.2) / 1000
        heapq.heappush(ends, (clock[0] + latency, call, clock[0], replica))
        served[replica.endpoint.port] += 1
    return [served[port] / served.total() for port in range(1, len(latencies_ms) + 1)]


def test_under_16_callers_a_slowed_replica_gets_5_percent_and_equal_ones_a_quarter(monkeypatch):
    """What p2c_ewma is for, kept by the tie rule: a replica slowed by 20 ms (25 ms against
    5 ms) gets 5% of the calls or less; four equal replicas each get 20-30%."""
    shares = callers_on_a_fake_clock(monkeypatch, [5, 5, 5, 25], callers=16)
    assert shares[3] <= 0.05, shares
    shares = callers_on_a_fake_clock(monkeypatch, [5, 5, 5, 5], callers=16)
    assert all(0.2 <= share <= 0.3 for share in shares), shares
    shares = callers_on_a_fake_clock(monkeypatch, [5, 5, 5, 5], callers=1)  # no tie rule: 0.6%
    assert all(0.2 <= share <= 0.3 for share in shares), shares


def test_a_tie_is_a_random_draw_not_a_forced_pick(monkeypatch):
    """Tied replicas, both idle for over a second: each wins about half of the draws (a forced
    pick of the tie's loser, or a rule by last pick, would send every fresh client, such as each
    gz call, to the same replica)."""
    monkeypatch.setattr("gz.balancing.p2c.time.monotonic", lambda: 1000.0)
    monkeypatch.setattr("gz.balancing.p2c.random", random.Random(3))
    older, newer = FakeSubchannel(1, ewma_us=1_000), FakeSubchannel(2, ewma_us=1_100)
    picks = Counter()
    for _ in range(1_000):
        older.load.last_pick, newer.load.last_pick = 991.0, 995.0
        picks[P2cEwmaPicker([older, newer]).pick().peer] += 1
    assert 400 <= picks[older.peer] <= 600, picks


def test_an_endpoint_of_few_calls_is_not_judged_by_them(monkeypatch):
    """A few slow first samples must not starve an endpoint: under KNOWN_AFTER calls, it draws."""
    monkeypatch.setattr("gz.balancing.p2c.time.monotonic", lambda: 0.0)
    monkeypatch.setattr("gz.balancing.p2c.random", random.Random(5))
    known, unlucky = FakeSubchannel(1, ewma_us=600), FakeSubchannel(2, ewma_us=4_000)
    unlucky.load.samples = 1
    picks = Counter(P2cEwmaPicker([known, unlucky]).pick().peer for _ in range(1_000))
    assert 400 <= picks[unlucky.peer] <= 600, picks
    unlucky.load.samples = KNOWN_AFTER  # known now, and slower by more than the noise
    assert P2cEwmaPicker([known, unlucky]).pick() is known


def test_pick_other_avoids_the_endpoints_a_call_tried():
    subchannels = fakes(5)
    for picker_type in (P2cEwmaPicker, RoundRobinPicker):
        picker = picker_type(subchannels)
        tried = {s.endpoint.address for s in subchannels[:4]}
        assert all(picker.pick_other(tried) is subchannels[4] for _ in range(20))
        everything = {s.endpoint.address for s in subchannels}
        assert picker.pick_other(everything) in subchannels  # none left: any will do


def test_the_latency_average_starts_at_the_second_call_and_decays_in_ten_seconds():
    load = Load(now=0.0)
    load.finished(started_at=0.0, now=0.030)  # the first call warms the connection up
    assert (load.ewma_us, load.samples) == (0, 0)
    load.finished(started_at=0.0, now=0.010)
    assert load.ewma_us == pytest.approx(10_000)
    load.finished(started_at=10.0, now=10.010 + 0.0)  # same latency: unchanged
    assert load.ewma_us == pytest.approx(10_000)
    load.finished(started_at=20.009, now=20.010)  # 1 ms, 10 s after the last sample
    weight = math.exp(-(20.010 - 10.010) / 10)
    assert load.ewma_us == pytest.approx(10_000 * weight + 1_000 * (1 - weight))
    assert load.score() == pytest.approx(math.sqrt(load.ewma_us + 1))


def test_the_latency_average_is_a_plain_mean_while_it_has_few_samples():
    load = Load(now=0.0)
    load.finished(started_at=0.0, now=0.005)  # the warm-up call, not counted
    for latency in (0.030, 0.001, 0.002):  # a slow call early on must not dominate
        load.finished(started_at=1.0 - latency, now=1.0)
    assert load.ewma_us == pytest.approx(11_000)


def test_the_retry_budget_allows_a_fifth_of_the_calls_or_the_reserve_not_both():
    budget = RetryBudget(RetryPolicy())  # the defaults: 20%, a reserve of 1/s over 10 s
    now = 5000.0
    for _ in range(100):
        budget.record_call(now)
    spent = sum(budget.try_spend(now) for _ in range(100))
    assert spent == 20  # 20% of 100 calls; the reserve of 10 is not added
    assert not budget.try_spend(now + 9.5)  # still inside the window
    assert budget.try_spend(now + 11)  # the window moved past them


def test_the_retry_budget_reserve_lets_a_quiet_client_retry_a_few_failures():
    budget = RetryBudget(RetryPolicy())
    now = 5000.0
    budget.record_call(now)
    assert budget.try_spend(now) and budget.try_spend(now)  # one call, both its retries
    for second in range(1, 5):  # a call a second: 20% would be under one retry
        budget.record_call(now + second)
    assert sum(budget.try_spend(now + 4) for _ in range(20)) == 8  # the reserve: 10 in all
    assert not budget.try_spend(now + 9.9)
    assert budget.try_spend(now + 10.0)  # the first second's two retries left the window


def test_the_retry_budget_keeps_retries_within_a_fifth_above_the_reserve():
    """Steady traffic over a minute: every window's retries stay within 20% of its calls once
    those are above reserve / ratio (50 per window)."""
    budget = RetryBudget(RetryPolicy())
    calls, retries = [], []
    for tick in range(6000):  # 100 calls a second, each wanting two retries
        now = 1000.0 + tick / 100
        budget.record_call(now)
        calls.append(now)
        retries += [now for _ in range(2) if budget.try_spend(now)]
    for end in range(1010, 1060):
        in_window = sum(end - 10 <= t < end for t in calls)
        retried = sum(end - 10 <= t < end for t in retries)
        assert retried <= 0.2 * in_window, (end, retried, in_window)
    assert len(retries) >= 0.19 * len(calls)  # and the budget is used, not starved


def test_a_sliding_count_forgets_a_second_at_a_time():
    count = SlidingCount(10)
    count.add(100.2)
    count.add(105.7, 3)
    assert count.value(109.9) == 4
    assert count.value(110.0) == 3  # second 100 left the window; 105 is still in it
    count.add(109.0)  # a time read a little earlier lands in the newest bucket, not lost
    assert count.value(115.5) == 1
    assert count.value(200.0) == 0
    count.add(200.0, 2)
    count.clear()
    assert count.value(200.0) == 0


def test_the_retry_policy_retries_unavailable_always_and_more_when_idempotent():
    policy = RetryPolicy(idempotent_methods=frozenset({"pkg.Users/Get", "pkg.Files/*"}))
    method = Method("/pkg.Users/Get", Kind.UNARY_UNARY, "client")
    assert policy.is_idempotent(method)
    assert policy.is_idempotent(Method("/pkg.Files/Put", Kind.UNARY_UNARY, "client"))
    assert not policy.is_idempotent(Method("/pkg.Users/Delete", Kind.UNARY_UNARY, "client"))
    assert policy.retryable(UNAVAILABLE, idempotent=False)
    assert not policy.retryable(grpc.StatusCode.INTERNAL, idempotent=False)
    assert policy.retryable(grpc.StatusCode.INTERNAL, idempotent=True)
    assert not policy.retryable(grpc.StatusCode.INVALID_ARGUMENT, idempotent=True)
    with pytest.raises(ValueError, match="max_attempts must be 1 or more"):
        RetryPolicy(max_attempts=0)


def test_five_failures_in_a_row_eject_and_probation_ejects_again_at_once():
    outcomes = Outcomes()
    assert not any(outcomes.record(UNAVAILABLE, 1.0) for _ in range(4))
    assert outcomes.record(grpc.StatusCode.CANCELLED, 1.0) is False  # the caller's doing
    assert outcomes.record(UNAVAILABLE, 1.0)
    assert outcomes.eject(1.0) == 30
    outcomes.readmit(31.0)
    assert not outcomes.is_ejected()
    assert outcomes.record(grpc.StatusCode.DEADLINE_EXCEEDED, 31.5)  # on probation
    assert outcomes.eject(31.5) == 60  # longer each time
    outcomes.readmit(91.5)
    assert not outcomes.record(OK, 92.0)  # a success ends the probation
    assert not outcomes.record(UNAVAILABLE, 92.1)


def test_more_than_half_failing_calls_eject():
    outcomes = Outcomes()
    results = [outcomes.record(code, 1.0) for code in [OK, UNAVAILABLE] * 10 + [UNAVAILABLE]]
    assert results[-1] and not any(results[:-1])  # 11 of 21 failed, never 5 in a row


def test_a_failure_burst_straddling_a_ten_second_boundary_still_ejects():
    """A window restarting 10 s after its first call split this burst in two, each under the
    rule: 10 + 13 calls with 11 failures (not over half) before the restart, 14 (under 20)
    after, and the endpoint was never ejected. The sliding window sees the burst whole."""
    outcomes = Outcomes()
    assert not any(outcomes.record(OK, 0.0) for _ in range(10))  # a quiet start
    burst = [UNAVAILABLE] * 4 + [OK]  # 80% failing, never 5 in a row
    ejected_at = None
    for i in range(27):
        now = 9.5 + i * 0.04  # from 9.5 s to 10.54 s
        if outcomes.record(burst[i % 5], now):
            ejected_at = now
            break
    assert ejected_at == pytest.approx(10.3)  # as soon as 20 calls of the burst were counted


def test_failures_older_than_the_window_do_not_count():
    outcomes = Outcomes()
    for i in range(10):  # 50% failing, not more: no ejection
        assert not outcomes.record(UNAVAILABLE, 1.0 + i * 0.1)
        assert not outcomes.record(OK, 1.0 + i * 0.1)
    # 11 s later those are gone: 11 calls, 6 failing, are under MIN_CALLS on their own
    results = [outcomes.record(code, 12.0) for code in [UNAVAILABLE, OK] * 5 + [UNAVAILABLE]]
    assert not any(results)


async def test_the_pool_never_ejects_more_than_half_and_readmits_later(monkeypatch):
    monkeypatch.setattr(outlier, "BASE_EJECTION", 1.0)  # long enough to count them on a busy box
    endpoints = frozenset(gz.Endpoint("127.0.0.1", free_port()) for _ in range(4))
    pool = SubchannelPool(
        "test", lambda e: grpc.aio.insecure_channel(e.address), P2cEwmaPicker, lambda: None,
        health_check=False,
    )  # fmt: skip
    pool.update(endpoints)
    subchannels = list(pool.subchannels.values())
    for subchannel in subchannels:
        while not subchannel.outcomes.record(UNAVAILABLE, 1.0):
            pass
        pool._eject(subchannel)
    assert sum(s.outcomes.is_ejected() for s in subchannels) == 2
    await wait_until(lambda: not any(s.outcomes.is_ejected() for s in subchannels), 5, "readmitted")
    assert all(s.outcomes.on_probation for s in subchannels[:2])
    await pool.close(0)
