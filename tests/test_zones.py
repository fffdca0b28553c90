"""Zone-aware routing (GZ_ZONE): the rule in balancing/zones.py, EndpointSlice zones and hints
read from tests/kube_api.py, and real greeters in two zones behind one Service."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator

import pytest

import gz
from gz.balancing.zones import ZoneIndex
from gz.discovery import Endpoint
from gz.discovery.kubernetes.slices import read_slice

from .kube_api import KubeApiServer, endpoint_slice
from .support import (
    ROOT,
    all_ready,
    count_replicas,
    greeters_on_one_port,
    gz_command,
    run_gz,
    say_hello,
    wait_until,
)
from .test_kubernetes import resolved_json, resolving

NS = "shop"
SERVICE = "greeter"
TARGET = f"k8s://{NS}/{SERVICE}:grpc"


# -- the rule ---------------------------------------------------------------------------------
def spread(**zones: int) -> list[Endpoint]:
    """``spread(a=2, b=3)``: 10.0.<zone>.<n>:8080 endpoints in those zones."""
    return [
        Endpoint(f"10.0.{z}.{n}", 8080, zone)
        for z, (zone, count) in enumerate(zones.items())
        for n in range(1, count + 1)
    ]


def index(zone: str, known: list[Endpoint] | frozenset[Endpoint]) -> ZoneIndex:
    zones = ZoneIndex(zone)
    for endpoint in known:
        zones.add(endpoint)
    return zones


def pick(zone: str | None, usable: list[Endpoint], known: list[Endpoint]) -> set[str]:
    """What the pool balances over (as usable.Usable.choice asks ZoneIndex)."""
    if zone is None:
        return addresses(usable)
    zones = index(zone, known)
    mine = [e for e in usable if zones.is_local(e)]
    return addresses(mine if zones.prefers_local(len(mine), len(usable)) else usable)


def local_endpoints(zone: str, known: frozenset[Endpoint]) -> tuple[frozenset[Endpoint], float]:
    zones = index(zone, known)
    return frozenset(e for e in known if zones.is_local(e)), zones.share()


def addresses(endpoints: list[Endpoint]) -> set[str]:
    return {e.address for e in endpoints}


def test_a_zone_with_its_share_keeps_its_calls():
    known = spread(a=3, b=3)
    assert pick("a", known, known) == addresses(known[:3])
    assert pick("b", known, known) == addresses(known[3:])


def test_a_zone_that_lost_a_little_keeps_its_calls_and_one_that_lost_more_spills():
    known = spread(a=3, b=3)
    one_out = known[1:]  # 2 of 3 local: 2 >= 0.75 x 1/2 x 5
    assert pick("a", one_out, known) == addresses(known[1:3])
    two_out = known[2:]  # 1 of 3 local: below its share, so every usable endpoint
    assert pick("a", two_out, known) == addresses(two_out)


def test_a_zone_whose_endpoints_stopped_serving_spills():
    # not serving in the slice: they are gone from the set, yet the zone is still short
    known = spread(a=3, b=3)[2:]
    assert pick("a", known, known) == addresses(known)


def test_every_local_endpoint_out_or_none_at_all_means_every_usable_one():
    known = spread(a=2, b=2)
    assert pick("a", known[2:], known) == addresses(known[2:])  # both local ones ejected
    assert pick("c", known, known) == addresses(known)  # a zone without endpoints
    assert pick(None, known, known) == addresses(known)  # no GZ_ZONE
    plain = [Endpoint("10.0.0.1", 8080), Endpoint("10.0.0.2", 8080)]  # dns://, etcd://
    assert pick("a", plain, plain) == addresses(plain)
    assert pick("a", [], known) == set()


def test_one_endpoint_per_zone_is_its_share():
    known = spread(a=1, b=1, c=1)
    assert pick("b", known, known) == addresses(known[1:2])


def test_hints_choose_the_endpoints_when_every_endpoint_has_them():
    a1, a2, b1, b2 = (
        Endpoint("10.0.0.1", 8080, "a", frozenset({"a"})),
        Endpoint("10.0.0.2", 8080, "a", frozenset({"b"})),  # given to b, which is short
        Endpoint("10.0.1.1", 8080, "b", frozenset({"b"})),
        Endpoint("10.0.1.2", 8080, "b", frozenset({"a"})),
    )
    known = [a1, a2, b1, b2]
    assert local_endpoints("a", frozenset(known)) == (frozenset({a1, b2}), 0.5)
    assert pick("a", known, known) == addresses([a1, b2])
    unhinted = Endpoint("10.0.2.1", 8080, "a")  # one endpoint without hints: zones decide
    assert pick("a", [*known, unhinted], [*known, unhinted]) == addresses([a1, a2, unhinted])


def test_a_set_that_differs_only_in_hints_is_judged_again():
    before = frozenset(spread(a=2, b=2))
    after = frozenset(Endpoint(e.host, e.port, e.zone, frozenset("b")) for e in before)
    assert before == after  # equal as sets: the zones module must not take one for the other
    in_a = frozenset(e for e in before if e.zone == "a")
    assert local_endpoints("b", before) == (before - in_a, 0.5)  # by zone
    assert local_endpoints("b", after) == (after, 1.0)  # every hint names b
    assert local_endpoints("a", after) == (in_a, 0.5)  # none names a: by zone again


def test_zones_and_hints_do_not_change_which_endpoint_it_is():
    plain, placed = Endpoint("10.0.0.1", 8080), Endpoint("10.0.0.1", 8080, "a", frozenset("a"))
    assert plain == placed and hash(plain) == hash(placed) and not plain < placed
    assert frozenset({placed}) - {plain} == frozenset()


def test_gz_zone_is_a_zone_label_value_and_empty_means_none():
    assert gz.ClientSettings.from_env(zone="eu-west-1a").zone == "eu-west-1a"
    assert gz.ClientSettings.from_env(zone="").zone is None  # the downward API's missing label
    with pytest.raises(gz.SettingsError, match=r"GZ_ZONE.*topology\.kubernetes\.io/zone"):
        gz.ClientSettings.from_env(zone="eu west")


def test_gz_kube_gives_every_gz_container_its_zone():
    import yaml

    code, out, err = run_gz(
        "kube", "endpoints", "--name", "greeter", "--image", "greeter:1",
        "--client-image", "shop:1", "--namespace", "shop",
    )  # fmt: skip
    assert code == 0, err
    deployments = [o for o in yaml.safe_load_all(out) if o["kind"] == "Deployment"]
    assert len(deployments) == 2  # the service and its k8s:// client
    for deployment in deployments:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {item["name"]: item for item in container["env"]}
        path = env["GZ_ZONE"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert path == "metadata.labels['topology.kubernetes.io/zone']"


# -- EndpointSlices ---------------------------------------------------------------------------
def test_a_slice_gives_each_endpoint_its_zone_and_hints():
    obj = endpoint_slice(
        "greeter-a", SERVICE, ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        zones={"10.0.0.1": "a", "10.0.0.2": "b"}, hints={"10.0.0.1": ["a", "c"]},
    )  # fmt: skip
    obj["endpoints"][2]["hints"] = {"forZones": [{"name": 3}, "b", {}]}  # odd: ignored
    obj["endpoints"][2]["zone"] = 7
    found = {e.host: e for e in read_slice(obj, "grpc").serving}
    assert (found["10.0.0.1"].zone, found["10.0.0.1"].for_zones) == ("a", {"a", "c"})
    assert (found["10.0.0.2"].zone, found["10.0.0.2"].for_zones) == ("b", frozenset())
    assert (found["10.0.0.3"].zone, found["10.0.0.3"].for_zones) == (None, frozenset())


async def test_a_change_of_hints_alone_is_published(kube: KubeApiServer):
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.1"], zones={"10.0.0.1": "a"}))
    async with resolving(TARGET) as seen:
        await seen.wait_for_set({"10.0.0.1:8080"})
        hinted = {"10.0.0.1": ["b"]}
        kube.put_slice(
            NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.1"], zones={"10.0.0.1": "a"},
                               hints=hinted),
        )  # fmt: skip
        await wait_until(lambda: len(seen.updates) == 2, 5, "a second update")
        (endpoint,) = seen.updates[-1]
        assert (endpoint.zone, endpoint.for_zones) == ("a", {"b"})


# -- end to end: greeters in zones a and b -----------------------------------------------------
def zone_slice(name: str, pods: list[gz.Service], zone: str, serving: dict[str, bool] | None = None,
               hints: dict[str, list[str]] | None = None) -> dict:  # fmt: skip
    """A slice of pods in ``zone``; ``serving`` marks some not serving, ``hints`` by address."""
    port = int(pods[0].address.rsplit(":", 1)[1])
    serving = serving or {}
    addresses = [(host(p), {"ready": serving.get(p.address, True),
                  "serving": serving.get(p.address, True)}) for p in pods]  # fmt: skip
    hinted = {host(p): zones for p in pods if (zones := (hints or {}).get(p.address))}
    return endpoint_slice(name, SERVICE, addresses, port=port,
                          zones={host(p): zone for p in pods}, hints=hinted)  # fmt: skip


def host(pod: gz.Service) -> str:
    return pod.address.rsplit(":", 1)[0]


@contextlib.asynccontextmanager
async def greeters(count: int) -> AsyncIterator[list[gz.Service]]:
    pods = await greeters_on_one_port(count, first_host=2)
    try:
        yield pods
    finally:
        for pod in pods:
            await pod.server.stop()


@contextlib.asynccontextmanager
async def zone_a_client() -> AsyncIterator[gz.BalancedChannel]:
    settings = gz.ClientSettings.from_env(zone="a")
    async with gz.connect(TARGET, balancer="round_robin", settings=settings) as channel:
        yield channel


class Caller:
    """Calls without pause in the background; every failure is kept."""

    def __init__(self, channel: gz.BalancedChannel) -> None:
        self.channel, self.calls, self.failures = channel, 0, []
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await say_hello(self.channel)
            except Exception as error:  # counted: the test fails on any
                self.failures.append(error)
            self.calls += 1
            await asyncio.sleep(0.002)  # a steady stream, not a flood

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def in_two_zones(kube: KubeApiServer, pods: list) -> tuple[list, list]:
    """The first two pods in zone a, the other two in zone b, each zone a slice of its own."""
    zone_a, zone_b = pods[:2], pods[2:]
    kube.put_slice(NS, zone_slice("greeter-a", zone_a, "a"))
    kube.put_slice(NS, zone_slice("greeter-b", zone_b, "b"))
    return zone_a, zone_b


async def served_by(channel: gz.BalancedChannel, calls: int = 60) -> set[str]:
    return set(await count_replicas(channel, calls))


async def test_a_client_in_zone_a_calls_zone_a_and_spills_to_b_when_a_stops_serving(kube):
    async with greeters(4) as pods:
        zone_a, zone_b = in_two_zones(kube, pods)
        async with zone_a_client() as channel:
            await all_ready(channel, 4)
            assert await served_by(channel) == {p.address for p in zone_a}

            caller = Caller(channel)
            try:
                # one of two zone-a pods stops serving: too few left for zone a's share
                kube.put_slice(NS, zone_slice("greeter-a", zone_a, "a", {zone_a[0].address: False}))
                await wait_until(lambda: len(channel.endpoints) == 3, 5, "the pod dropped")
                spilled = {p.address for p in [zone_a[1], *zone_b]}
                assert await served_by(channel, 90) == spilled

                kube.delete_slice(NS, "greeter-a")  # zone a has no endpoints at all
                await wait_until(lambda: len(channel.endpoints) == 2, 5, "zone a dropped")
                assert await served_by(channel) == {p.address for p in zone_b}

                kube.put_slice(NS, zone_slice("greeter-a", zone_a, "a"))  # back
                await wait_until(lambda: len(channel.endpoints) == 4, 5, "zone a back")
                await all_ready(channel, 4)
                assert await served_by(channel) == {p.address for p in zone_a}
            finally:
                await caller.stop()
            assert caller.calls > 0 and caller.failures == []


async def test_calls_spill_when_every_zone_a_endpoint_is_ejected(kube: KubeApiServer):
    async with greeters(4) as pods:
        _, zone_b = in_two_zones(kube, pods)
        async with zone_a_client() as channel:
            await all_ready(channel, 4)
            pool = channel._pool
            for subchannel in [s for s in pool.subchannels.values() if s.endpoint.zone == "a"]:
                pool._eject(subchannel)  # what failing calls do, without waiting for them
            assert await served_by(channel) == {p.address for p in zone_b}


async def test_hints_choose_where_a_zone_a_client_calls(kube: KubeApiServer):
    async with greeters(4) as pods:
        a1, a2, b1, b2 = pods
        hints = {a1.address: ["a"], a2.address: ["b"], b1.address: ["a"], b2.address: ["b"]}
        kube.put_slice(NS, zone_slice("greeter-a", [a1, a2], "a", hints=hints))
        kube.put_slice(NS, zone_slice("greeter-b", [b1, b2], "b", hints=hints))
        async with zone_a_client() as channel:
            await all_ready(channel, 4)
            assert await served_by(channel) == {a1.address, b1.address}

            del hints[b2.address]  # hints are all or nothing: now the zones decide
            kube.put_slice(NS, zone_slice("greeter-b", [b1, b2], "b", hints=hints))
            started = time.monotonic()
            while await served_by(channel) != {a1.address, a2.address}:
                assert time.monotonic() - started < 5, "the hints were still honoured"


async def test_gz_resolve_shows_each_endpoints_zone_and_hints(kube: KubeApiServer):
    kube.put_slice(NS, endpoint_slice(
        "greeter-a", SERVICE, ["10.0.0.1", "10.0.0.2", "10.0.1.1"],
        zones={"10.0.0.1": "a", "10.0.0.2": "a", "10.0.1.1": "b"}, hints={"10.0.0.1": ["a"]},
    ))  # fmt: skip
    assert await resolved_json(TARGET) == {
        "target": TARGET,
        "endpoints": ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.1.1:8080"],
        "zones": {"10.0.0.1:8080": "a", "10.0.0.2:8080": "a", "10.0.1.1:8080": "b"},
        "hints": {"10.0.0.1:8080": ["a"]},
    }
    text = await asyncio.to_thread(
        subprocess.run, gz_command("resolve", TARGET), cwd=ROOT,
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "10.0.0.1:8080  zone a, hinted for a" in text.stdout
    assert "10.0.1.1:8080  zone b\n" in text.stdout


def test_the_index_follows_endpoints_coming_and_going():
    known = spread(a=2, b=2)
    zones = index("a", known)
    assert zones.share() == 0.5 and not zones.by_hints()
    for endpoint in known[:2]:  # zone a empties: no share, then it comes back hinted
        zones.remove(endpoint)
    assert zones.share() == 0.0 and not zones.prefers_local(0, 2)
    hinted = [Endpoint(e.host, e.port, e.zone, frozenset({"a"})) for e in known]
    for endpoint in known[2:]:
        zones.remove(endpoint)
    for endpoint in hinted:
        zones.add(endpoint)
    assert zones.by_hints() and zones.share() == 1.0 and zones.is_local(hinted[3])
    zones.add(Endpoint("10.0.9.9", 8080, "b"))  # one without hints: zones decide again
    assert not zones.by_hints() and zones.share() == 0.5
