"""k8s:// targets: EndpointSlices listed and watched through the official kubernetes client,
against tests/kube_api.py (an API server that speaks the real list/watch protocol)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import gz
from gz.backoff import Backoff
from gz.discovery import FORMS, Endpoint, TargetError, build_resolver, parse_target
from gz.discovery.kubernetes import STOP_WAIT, KubernetesResolver, parse_kube_target
from gz.discovery.kubernetes.api import explain
from gz.discovery.kubernetes.slices import read_slice
from gz.discovery.kubernetes.watcher import SliceWatcher

from .kube_api import KubeApiServer, endpoint_slice
from .support import (
    ROOT,
    Recorder,
    all_ready,
    count_replicas,
    greeters_on_one_port,
    gz_command,
    say_hello,
    wait_until,
)

NS = "shop"
SERVICE = "greeter"
TARGET = f"k8s://{NS}/{SERVICE}:grpc"


def ips(prefix: str, count: int) -> list[str]:
    """prefix.1 ... prefix.count"""
    assert count < 255
    return [f"{prefix}.{n}" for n in range(1, count + 1)]


def at(addresses: list[str], port: int = 8080) -> set[str]:
    return {Endpoint(address, port).address for address in addresses}


@contextlib.asynccontextmanager
async def resolving(target: str = TARGET) -> AsyncIterator[Recorder]:
    """Watch target (with quick retries) into a Recorder until the block ends."""
    resolver = KubernetesResolver(parse_kube_target(parse_target(target)), text=target,
                                  retry_delays=(0.05, 0.2))  # fmt: skip
    recorder = Recorder()
    task = asyncio.ensure_future(resolver.watch(recorder))
    try:
        yield recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def never_emptied(recorder: Recorder) -> bool:
    return all(recorder.updates)


# -- merging slices ---------------------------------------------------------------------------
async def test_every_slice_of_a_large_service_is_merged(kube: KubeApiServer):
    a, b, c = ips("10.1.0", 100), ips("10.2.0", 100), ips("10.3.0", 50)
    for name, addresses in (("greeter-a", a), ("greeter-b", b), ("greeter-c", c)):
        kube.put_slice(NS, endpoint_slice(name, SERVICE, addresses))
    kube.put_slice(NS, endpoint_slice("other-a", "other", ips("10.9.0", 5)))
    async with resolving() as seen:
        await seen.wait_for_set(at(a + b + c))
        assert len(seen.current) == 250
        assert kube.lists[0]["labelSelector"] == "kubernetes.io/service-name=greeter"


async def test_a_changed_or_deleted_slice_changes_only_its_own_endpoints(kube: KubeApiServer):
    a, b, c = ips("10.1.0", 100), ips("10.2.0", 100), ips("10.3.0", 50)
    for name, addresses in (("greeter-a", a), ("greeter-b", b), ("greeter-c", c)):
        kube.put_slice(NS, endpoint_slice(name, SERVICE, addresses))
    async with resolving() as seen:
        await seen.wait_for_set(at(a + b + c))
        b2 = b[10:] + ips("10.4.0", 5)
        kube.put_slice(NS, endpoint_slice("greeter-b", SERVICE, b2))
        await seen.wait_for_set(at(a + b2 + c))
        kube.delete_slice(NS, "greeter-c")
        await seen.wait_for_set(at(a + b2))
        assert len(seen.current) == 195
        assert never_emptied(seen) and len(kube.lists) == 1  # all of it came by the watch
    # after the list's whole set, each event was pushed as what it changed, nothing more
    assert len(seen.updates) == 1 + len(seen.changes)
    assert [({e.address for e in added}, {e.address for e in removed})
            for added, removed in seen.changes] == [
        (at(ips("10.4.0", 5)), at(b[:10])),
        (set(), at(c)),
    ]  # fmt: skip


async def test_only_serving_endpoints_are_kept(kube: KubeApiServer):
    conditions = {
        "10.0.0.1": {"ready": True, "serving": True, "terminating": False},
        "10.0.0.2": {"ready": False, "serving": False, "terminating": False},  # unready
        "10.0.0.3": {"ready": False, "serving": False, "terminating": True},  # terminating
        "10.0.0.4": {"ready": False, "serving": True, "terminating": True},  # draining
        "10.0.0.5": {"ready": False},  # no serving: ready decides
        "10.0.0.6": {"ready": True},
        "10.0.0.7": {},  # unknown state: ready, as the API asks
        "10.0.0.8": {"ready": True, "serving": None, "terminating": None},
    }
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, list(conditions.items())))
    async with resolving() as seen:
        await seen.wait_for_set(at(["10.0.0.1", "10.0.0.6", "10.0.0.7", "10.0.0.8"]))
        # A pod that stops serving leaves the set at once.
        conditions["10.0.0.1"] = {"ready": False, "serving": False, "terminating": False}
        kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, list(conditions.items())))
        await seen.wait_for_set(at(["10.0.0.6", "10.0.0.7", "10.0.0.8"]))


async def test_terminating_but_serving_pods_are_used_only_when_nothing_else_serves(kube):
    draining = ("10.0.0.4", {"ready": False, "serving": True, "terminating": True})
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.1", draining]))
    async with resolving() as seen:
        await seen.wait_for_set(at(["10.0.0.1"]))
        kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, [draining]))
        await seen.wait_for_set(at(["10.0.0.4"]))
        kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, [draining, "10.0.0.9"]))
        await seen.wait_for_set(at(["10.0.0.9"]))


async def test_a_service_without_serving_endpoints_really_is_empty(kube: KubeApiServer):
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.1"]))
    async with resolving() as seen:
        await seen.wait_for_set(at(["10.0.0.1"]))
        unready = ("10.0.0.1", {"ready": False, "serving": False})
        kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, [unready]))
        await seen.wait_for(lambda: seen.updates[-1] == frozenset())
        assert not seen.errors


async def test_a_port_name_is_resolved_in_each_slice(kube: KubeApiServer):
    metrics = {"name": "metrics", "protocol": "TCP", "port": 9100}
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.1"], ports=[
        {"name": "grpc", "protocol": "TCP", "port": 8080}, metrics]))  # fmt: skip
    kube.put_slice(NS, endpoint_slice("greeter-b", SERVICE, ["10.0.0.2"], ports=[
        metrics, {"name": "grpc", "protocol": "TCP", "port": 9090}]))  # fmt: skip
    async with resolving() as seen:
        await seen.wait_for_set({"10.0.0.1:8080", "10.0.0.2:9090"})
    async with resolving(f"k8s://{NS}/{SERVICE}:7000") as seen:  # a number is dialled as is
        await seen.wait_for_set({"10.0.0.1:7000", "10.0.0.2:7000"})


async def test_an_unknown_port_name_is_reported_with_the_names_there_are(kube: KubeApiServer):
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.1"], port_name="grpc"))
    async with resolving(f"k8s://{NS}/{SERVICE}:grcp") as seen:
        await seen.wait_for(lambda: bool(seen.errors))
        assert "no EndpointSlice of service 'greeter' has a port named 'grcp'" in seen.errors[0]
        assert "'grpc'" in seen.errors[0]


async def test_dual_stack_slices_give_both_address_families(kube: KubeApiServer):
    kube.put_slice(NS, endpoint_slice("greeter-v4", SERVICE, ["10.0.0.1"]))
    kube.put_slice(NS, endpoint_slice("greeter-v6", SERVICE, ["fd00::1"], address_type="IPv6"))
    async with resolving() as seen:
        await seen.wait_for_set({"10.0.0.1:8080", "[fd00::1]:8080"})


async def test_odd_slices_are_skipped_with_a_warning_naming_them(kube, caplog):
    caplog.set_level(logging.WARNING, logger="gz.discovery.k8s")
    kube.put_slice(NS, endpoint_slice("good", SERVICE, ["10.0.0.1"]))
    kube.put_slice(NS, endpoint_slice("no-ports", SERVICE, ["10.0.0.2"], ports=[]))
    kube.put_slice(NS, endpoint_slice("no-number", SERVICE, ["10.0.0.3"], port=None))
    no_addresses = endpoint_slice("no-addresses", SERVICE, ["10.0.0.4", "10.0.0.5"])
    no_addresses["endpoints"][0]["addresses"] = []
    kube.put_slice(NS, no_addresses)
    kube.put_slice(NS, endpoint_slice("bad-address", SERVICE, ["10.0.0.300", "10.0.0.6"]))
    kube.put_slice(NS, endpoint_slice("v6-in-v4", SERVICE, ["fd00::7"]))
    kube.put_slice(NS, endpoint_slice("odd-type", SERVICE, ["10.0.0.8"], address_type="Carrier"))
    mangled = endpoint_slice("mangled", SERVICE, ["10.0.0.9"])
    mangled["endpoints"] = ["not an endpoint", {"addresses": "10.0.0.9"}]
    kube.put_slice(NS, mangled)
    async with resolving() as seen:
        await seen.wait_for_set(at(["10.0.0.1", "10.0.0.5", "10.0.0.6"]))
        kube.put_slice(NS, endpoint_slice("late", SERVICE, ["10.0.0.10"]))  # still watching
        await seen.wait_for_set(at(["10.0.0.1", "10.0.0.5", "10.0.0.6", "10.0.0.10"]))
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    for name in ("no-ports", "no-number", "no-addresses", "bad-address", "v6-in-v4", "odd-type",
                 "mangled"):  # fmt: skip
        assert f"EndpointSlice '{name}'" in warnings
    assert "EndpointSlice 'good'" not in warnings


async def test_a_port_name_that_is_not_a_string_is_skipped_not_taken_for_an_outage(kube):
    ports = [{"name": 7, "protocol": "TCP", "port": 8080},
             {"name": "metrics", "protocol": "TCP", "port": 9100}]  # fmt: skip
    kube.put_slice(NS, endpoint_slice("odd-names", SERVICE, ["10.0.0.1"], ports=ports))
    async with resolving() as seen:
        await seen.wait_for(lambda: bool(seen.errors))
        await asyncio.sleep(0.3)  # no crash, so no retries and no second report
        assert len(seen.errors) == 1, seen.errors
        assert "has a port named 'grpc' (its ports: 'metrics')" in seen.errors[0]
        kube.put_slice(NS, endpoint_slice("good", SERVICE, ["10.0.0.2"]))
        await seen.wait_for_set(at(["10.0.0.2"]))
        assert len(kube.lists) == 1


async def test_malformed_events_and_list_items_are_skipped_with_a_warning_naming_them(kube, caplog):
    caplog.set_level(logging.WARNING, logger="gz.discovery.k8s")
    kube.put_slice(NS, endpoint_slice("good", SERVICE, ["10.0.0.1"]))
    kube.list_extras.extend(["not a slice", {"metadata": ["not", "metadata"]}])
    async with resolving() as seen:
        await seen.wait_for_set(at(["10.0.0.1"]))
        await wait_until(lambda: kube.open_watches() == 1, 10)
        for event in (
            {"type": "ADDED", "object": ["not", "a", "slice"]},
            {"type": "MODIFIED", "object": {"metadata": "not metadata"}},
            {"type": "ADDED", "object": {"metadata": {"name": "bare"}}},  # no fields at all
            {"type": "DELETED", "object": None},
            {"type": "ADDED"},
        ):
            kube.put_raw_event(NS, event)
        kube.put_slice(NS, endpoint_slice("late", SERVICE, ["10.0.0.2"]))
        await seen.wait_for_set(at(["10.0.0.1", "10.0.0.2"]))
        assert not seen.errors and len(kube.lists) == 1  # nothing failed, nothing relisted
    warnings = [r.getMessage() for r in caplog.records]
    assert any("EndpointSlice 'bare'" in w and "has no ports" in w for w in warnings), warnings
    for what in ("an item of the EndpointSlice list that is not an object",
                 "an ADDED event whose object is not an object",
                 "a MODIFIED event whose object has no metadata.name",
                 "a DELETED event without an object",
                 "an ADDED event without an object"):  # fmt: skip
        assert any(what in w and "'greeter'" in w for w in warnings), (what, warnings)


# -- worker ports: grpc-w0, grpc-w1, ... beside grpc (GZ_WORKERS) --------------------------------
def worker_ports(*indices: int, base: int = 8080) -> list[dict]:
    """A slice's ports: grpc on base and grpc-wI on base + 1 + I for each of ``indices``."""
    workers = [{"name": f"grpc-w{i}", "protocol": "TCP", "port": base + 1 + i} for i in indices]
    return [{"name": "grpc", "protocol": "TCP", "port": base}, *workers]


def places(recorder: Recorder) -> set[tuple[str, str | None, frozenset[str]]]:
    return {(e.address, e.zone, e.for_zones) for e in recorder.updates[-1]}


async def test_every_worker_port_of_a_named_port_is_an_endpoint(kube, monkeypatch):
    monkeypatch.setenv("POD_NAMESPACE", NS)
    addresses = ["10.0.0.1", "10.0.0.2"]
    draining = ("10.0.0.3", {"ready": False, "serving": True, "terminating": True})
    zones, hints = {"10.0.0.1": "zone-a", "10.0.0.2": "zone-b"}, {"10.0.0.1": ["zone-a"]}
    with_workers = endpoint_slice("greeter-a", SERVICE, [*addresses, draining],
                                  ports=worker_ports(0, 1), zones=zones, hints=hints)  # fmt: skip
    kube.put_slice(NS, with_workers)
    kube.put_slice(NS, endpoint_slice("greeter-b", SERVICE, ["10.0.0.4"]))  # no workers: as ever
    workers = at(addresses, 8081) | at(addresses, 8082)
    for target in (TARGET, f"k8s:///{SERVICE}:grpc"):
        async with resolving(target) as seen:
            await seen.wait_for_set(workers | at(["10.0.0.4"]))
            assert not seen.errors
            for port in (8081, 8082):  # each worker endpoint has its address's zone and hints
                assert {("10.0.0.1", "zone-a", frozenset({"zone-a"})),
                        ("10.0.0.2", "zone-b", frozenset())} == {
                    (a.rpartition(":")[0], zone, hinted) for a, zone, hinted in places(seen)
                    if a.endswith(f":{port}")
                }  # fmt: skip
    # the bare name resolves to the port named grpc, so it expands too
    monkeypatch.setenv("GZ_DISCOVERY", "k8s")
    recorder = Recorder()
    task = asyncio.ensure_future(build_resolver(SERVICE).watch(recorder))
    try:
        await recorder.wait_for_set(workers | at(["10.0.0.4"]))
        # when nothing else serves, the terminating address is used on every worker port too
        unready = [(a, {"ready": False, "serving": False}) for a in addresses]
        kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, [*unready, draining],
                                          ports=worker_ports(0, 1)))  # fmt: skip
        kube.delete_slice(NS, "greeter-b")
        await recorder.wait_for_set(at(["10.0.0.3"], 8081) | at(["10.0.0.3"], 8082))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_slice_that_drops_or_gains_worker_ports_pushes_only_that_change(kube):
    addresses = ["10.0.0.1", "10.0.0.2"]
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, addresses, ports=worker_ports(0, 1)))
    kube.put_slice(NS, endpoint_slice("greeter-b", SERVICE, ["10.0.0.9"]))
    async with resolving() as seen:
        await seen.wait_for_set(at(addresses, 8081) | at(addresses, 8082) | at(["10.0.0.9"]))
        kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, addresses, ports=worker_ports(0)))
        await seen.wait_for_set(at(addresses, 8081) | at(["10.0.0.9"]))
        kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, addresses, ports=worker_ports()))
        await seen.wait_for_set(at(addresses) | at(["10.0.0.9"]))
        kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, addresses, ports=worker_ports(0)))
        await seen.wait_for_set(at(addresses, 8081) | at(["10.0.0.9"]))
        assert never_emptied(seen) and len(kube.lists) == 1 and not seen.errors
    # after the list's whole set, each MODIFIED event was pushed as what it changed
    assert len(seen.updates) == 1 + len(seen.changes)
    assert [({e.address for e in added}, {e.address for e in removed})
            for added, removed in seen.changes] == [
        (set(), at(addresses, 8082)),
        (at(addresses), at(addresses, 8081)),
        (at(addresses, 8081), at(addresses)),
    ]  # fmt: skip


async def test_a_numbered_target_port_never_expands_to_worker_ports(kube: KubeApiServer):
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.1"], ports=worker_ports(0, 1)))
    async with resolving(f"k8s://{NS}/{SERVICE}:8080") as seen:
        await seen.wait_for_set(at(["10.0.0.1"], 8080))
    async with resolving(f"k8s://{NS}/{SERVICE}:8082") as seen:  # one worker, dialled as is
        await seen.wait_for_set(at(["10.0.0.1"], 8082))


async def test_worker_ports_count_from_w0_and_a_gap_ends_them(kube: KubeApiServer):
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.1"], ports=worker_ports(0, 2)))
    kube.put_slice(NS, endpoint_slice("greeter-b", SERVICE, ["10.0.0.2"], ports=worker_ports(1, 2)))
    async with resolving() as seen:  # w0, w2: only w0; w1, w2 without w0: the grpc port
        await seen.wait_for_set(at(["10.0.0.1"], 8081) | at(["10.0.0.2"], 8080))
        assert not seen.errors


def test_a_worker_port_without_a_number_ends_the_list_with_a_warning():
    ports = worker_ports(0, 1, 2)
    ports[2]["port"] = None  # grpc-w1
    found = read_slice(endpoint_slice("greeter-a", SERVICE, ["10.0.0.1"], ports=ports), "grpc")
    assert {e.address for e in found.serving} == at(["10.0.0.1"], 8081)
    assert found.problems == ("has port 'grpc-w1' without a usable number (None)",)


def test_an_unexpected_failure_is_not_blamed_on_the_network():
    target = parse_kube_target(parse_target(TARGET))
    message = explain(TypeError("'<' not supported"), target, "https://10.0.0.1:443")
    assert "cannot reach" not in message and "TypeError" in message
    assert "cannot reach" in explain(ConnectionRefusedError(111, "refused"), target, "https://h")


# -- stopping ------------------------------------------------------------------------------------
def worker_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """The k8s worker threads started since ``before`` that are still running."""
    return [t for t in threading.enumerate() if t.name.startswith("gz-k8s ") and t not in before]


@pytest.mark.parametrize("after_headers", [False, True], ids=["before-response", "mid-body"])
async def test_cancelling_during_a_hanging_list_ends_the_thread_at_once(kube, after_headers):
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.1"]))
    before = set(threading.enumerate())
    with kube.hanging_lists(after_headers):
        async with resolving() as seen:
            await wait_until(lambda: bool(kube.lists), 5.0)
            await asyncio.sleep(0.2)  # the worker is now blocked reading the answer
            assert len(worker_threads(before)) == 1 and not seen.updates
            cancelled = time.monotonic()
        # the watch waits up to STOP_WAIT for the thread; it must not need all of it
        assert time.monotonic() - cancelled < STOP_WAIT / 2
        await wait_until(lambda: not worker_threads(before), 10, "the thread ended")


class _Interruptible:
    def __init__(self) -> None:
        self.interrupted = 0

    def interrupt(self) -> None:
        self.interrupted += 1


def test_stop_reads_the_client_once_while_the_worker_drops_it():
    """The worker sets _api to None after a 401 while stop() may run in another thread: stop
    must not test _api and then call it through a second read that finds None."""
    client = _Interruptible()

    class Racing(SliceWatcher):
        reads = 0

        @property
        def _api(self):  # the first read sees the client, later ones see the worker's None
            self.reads += 1
            return client if self.reads == 1 else None

        @_api.setter
        def _api(self, value) -> None:
            pass

    target = parse_kube_target(parse_target(TARGET))
    watcher = Racing(target, TARGET, Recorder(), backoff=Backoff())
    watcher.stop()
    assert client.interrupted == 1


# -- resourceVersion, 410, reconnects ---------------------------------------------------------
async def test_the_watch_starts_from_the_list_and_asks_for_bookmarks(kube: KubeApiServer):
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.1"]))
    version = kube.resource_version
    async with resolving() as seen:
        await seen.wait_for_set(at(["10.0.0.1"]))
        await wait_until(lambda: bool(kube.watches), 10)
        watch = kube.watches[0]
        assert watch["resourceVersion"] == version
        assert watch["allowWatchBookmarks"] == "true"
        assert 0 < int(watch["timeoutSeconds"]) < 300


async def test_an_expired_watch_lists_again_without_flapping(kube: KubeApiServer):
    a, b = ips("10.1.0", 100), ips("10.2.0", 60)
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, a))
    kube.put_slice(NS, endpoint_slice("greeter-b", SERVICE, b))
    async with resolving() as seen:
        await seen.wait_for_set(at(a + b))
        await wait_until(lambda: kube.open_watches() == 1, 10)
        with kube.holding_watches():  # the client falls behind, then history is compacted
            kube.put_slice(NS, endpoint_slice("greeter-b", SERVICE, b[:30]))
            kube.delete_slice(NS, "greeter-a")
            kube.put_slice(NS, endpoint_slice("greeter-c", SERVICE, ["10.3.0.1"]))
            kube.compact()
        await seen.wait_for_set(at([*b[:30], "10.3.0.1"]))
        assert len(kube.lists) == 2  # the 410 made it list again
        kube.put_slice(NS, endpoint_slice("greeter-c", SERVICE, ["10.3.0.2"]))
        await seen.wait_for_set(at([*b[:30], "10.3.0.2"]))  # and it watches again after
        assert never_emptied(seen) and not seen.errors


@pytest.mark.parametrize("as_http_status", [False, True], ids=["error-event", "http-410"])
async def test_a_410_when_the_watch_starts_lists_again(kube: KubeApiServer, as_http_status):
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.1"]))
    async with resolving() as seen:
        await seen.wait_for_set(at(["10.0.0.1"]))
        await wait_until(lambda: kube.open_watches() == 1, 10)
        kube.gone_on_next_watch(as_http_status)
        kube.close_watches()
        await wait_until(lambda: len(kube.lists) == 2, 10)
        kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.2"]))
        await seen.wait_for_set(at(["10.0.0.2"]))
        assert never_emptied(seen) and not seen.errors


@pytest.mark.parametrize("abort", [False, True], ids=["closed", "cut"])
async def test_a_dropped_watch_resumes_and_misses_nothing(kube: KubeApiServer, abort: bool):
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.1"]))
    async with resolving() as seen:
        await seen.wait_for_set(at(["10.0.0.1"]))
        await wait_until(lambda: kube.open_watches() == 1, 10)
        kube.close_watches(abort=abort)
        # changed while the client is between watches: the next watch replays them
        kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.1", "10.0.0.2"]))
        kube.put_slice(NS, endpoint_slice("greeter-b", SERVICE, ["10.0.0.3"]))
        await seen.wait_for_set(at(["10.0.0.1", "10.0.0.2", "10.0.0.3"]))
        assert len(kube.lists) == 1 and len(kube.watches) >= 2
        assert never_emptied(seen) and not seen.errors  # resumed at once: nothing to report


async def test_bookmarks_carry_the_resource_version_past_other_services(kube: KubeApiServer):
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.1"]))
    async with resolving() as seen:
        await seen.wait_for_set(at(["10.0.0.1"]))
        await wait_until(lambda: kube.open_watches() == 1, 10)
        for n in range(5):  # changes this watch never sees
            kube.put_slice(NS, endpoint_slice("other-a", "other", [f"10.9.0.{n + 1}"]))
        latest = kube.resource_version
        kube.bookmark()
        await asyncio.sleep(0.2)
        kube.compact()  # only the bookmark's version is still watchable
        kube.close_watches()
        await wait_until(lambda: kube.open_watches() == 1 and len(kube.watches) == 2, 10)
        assert kube.watches[1]["resourceVersion"] == latest
        assert len(kube.lists) == 1  # no 410, no relist


async def test_an_unreachable_api_server_keeps_the_last_set(kube: KubeApiServer):
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.1", "10.0.0.2"]))
    async with resolving() as seen:
        await seen.wait_for_set(at(["10.0.0.1", "10.0.0.2"]))
        kube.stop()
        await seen.wait_for(lambda: bool(seen.errors))
        assert "cannot reach the Kubernetes API server at http://127.0.0.1:" in seen.errors[0]
        assert seen.errors[0].startswith(TARGET)
        kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.2", "10.0.0.3"]))
        await asyncio.sleep(0.5)  # retrying meanwhile
        assert seen.current == at(["10.0.0.1", "10.0.0.2"]) and len(seen.updates) == 1
        kube.start()
        await seen.wait_for_set(at(["10.0.0.2", "10.0.0.3"]))
        assert never_emptied(seen)


# -- permissions --------------------------------------------------------------------------------
async def test_a_forbidden_namespace_gives_one_clear_error(kube: KubeApiServer):
    kube.forbidden.add("locked")
    kube.put_slice("locked", endpoint_slice("greeter-a", SERVICE, ["10.0.0.1"]))
    async with resolving(f"k8s://locked/{SERVICE}:grpc") as seen:
        await seen.wait_for(lambda: bool(seen.errors))
        await asyncio.sleep(0.5)  # several retries later, still one message
        assert len(seen.errors) == 1 and not seen.updates
        message = seen.errors[0]
        for needed in ("k8s://locked/greeter:grpc", "403", "list and watch", "endpointslices",
                       "discovery.k8s.io", "'locked'", "gz kube endpoints"):  # fmt: skip
            assert needed in message
        kube.forbidden.clear()  # the Role gets applied: it recovers by itself
        await seen.wait_for_set(at(["10.0.0.1"]))


async def test_a_rejected_token_is_reported(kube: KubeApiServer, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path / "bad", "wrong")))
    async with resolving() as seen:
        await seen.wait_for(lambda: bool(seen.errors))
        assert "401 Unauthorized" in seen.errors[0] and not seen.updates


async def test_a_missing_kubeconfig_is_reported(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nothing-here"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    async with resolving() as seen:
        await seen.wait_for(lambda: bool(seen.errors))
        assert "no usable Kubernetes configuration" in seen.errors[0]
        assert "KUBECONFIG" in seen.errors[0]


# -- targets ------------------------------------------------------------------------------------
def test_a_full_target_names_namespace_service_and_port():
    target = parse_kube_target(parse_target("k8s://shop/greeter:grpc"), env={})
    assert (target.namespace, target.service, target.port) == ("shop", "greeter", "grpc")
    target = parse_kube_target(parse_target("k8s://shop/greeter:8080"), env={})
    assert target.port == 8080


def test_the_namespace_defaults_to_pod_namespace_then_the_file_then_default(tmp_path: Path):
    target = parse_target("k8s:///greeter:grpc")
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("team-a\n")
    env = {"POD_NAMESPACE": "prod"}
    assert parse_kube_target(target, env, namespace_file).namespace == "prod"
    assert parse_kube_target(target, {}, namespace_file).namespace == "team-a"
    assert parse_kube_target(target, {}, tmp_path / "missing").namespace == "default"


@pytest.mark.parametrize(
    "text",
    [
        "k8s://shop/greeter",
        "k8s://shop/greeter:",
        "k8s://shop/Greeter:grpc",
        "k8s://shop/greeter:0",
        "k8s://shop/greeter:70000",
        "k8s://shop/greeter:\u0668\u0660",  # 80 in Arabic-Indic digits
        "k8s://shop/greeter:grpc_port",
        "k8s://Shop_1/greeter:grpc",
        "k8s://shop/greeter:grpc?refresh=1s",
        "k8s://shop/",
    ],
)
def test_a_malformed_target_says_what_is_wrong_and_the_right_form(text: str):
    with pytest.raises(TargetError) as caught:
        build_resolver(text)
    assert repr(text) in str(caught.value) and FORMS["k8s"] in str(caught.value)


def test_a_bare_name_with_k8s_discovery_uses_the_grpc_port(monkeypatch):
    monkeypatch.setenv("GZ_DISCOVERY", "k8s")
    monkeypatch.setenv("POD_NAMESPACE", "shop")
    resolver = build_resolver("greeter")
    assert isinstance(resolver, KubernetesResolver)
    assert str(resolver.kube_target) == "k8s://shop/greeter:grpc"


def test_import_gz_does_not_load_kubernetes():
    code = (
        "import sys, gz\n"
        "gz.discovery.build_resolver('k8s://shop/greeter:grpc')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert result.stdout.strip() == "[]"


# -- end to end: real servers behind slices ------------------------------------------------------
def pod_slice(name: str, pods: list[gz.Service], serving: dict[str, bool]) -> dict:
    port = int(pods[0].address.rsplit(":", 1)[1])
    addresses = [(p.address.rsplit(":", 1)[0], {"ready": serving.get(p.address, True),
                  "serving": serving.get(p.address, True)}) for p in pods]  # fmt: skip
    return endpoint_slice(name, SERVICE, addresses, port=port)


async def test_calls_follow_the_serving_pods_of_a_service(kube: KubeApiServer):
    pods = await greeters_on_one_port(4, first_host=2)  # the pods of one Deployment
    old, new = pods[:3], pods[3]
    try:
        kube.put_slice(NS, pod_slice("greeter-a", old[:2], {}))
        kube.put_slice(NS, pod_slice("greeter-b", [old[2], new], {new.address: False}))
        async with gz.connect(f"k8s://{NS}/{SERVICE}:grpc", balancer="round_robin") as channel:
            await all_ready(channel, 3)
            served = await count_replicas(channel, 90)
            assert set(served) == {p.address for p in old}  # spread over all, not the unready

            kube.put_slice(NS, pod_slice("greeter-b", [old[2], new], {}))  # new pod is ready
            started = time.monotonic()
            while (await say_hello(channel)).served_by != new.address:
                assert time.monotonic() - started < 0.5, "the new pod got no call within 0.5 s"

            leaving = old[0]
            kube.put_slice(NS, pod_slice("greeter-a", old[:2], {leaving.address: False}))
            gone = Endpoint.parse(leaving.address)
            await wait_until(lambda: gone not in channel.endpoints, 0.5, "it dropped", poll=0.01)
            served = await count_replicas(channel, 120)
            assert leaving.address not in served
            assert set(served) == {old[1].address, old[2].address, new.address}
    finally:
        for pod in pods:
            await pod.server.stop()


# -- gz resolve (KUBECONFIG from the kube fixture) ---------------------------------------------
async def resolved_json(target: str) -> dict:
    """What ``gz resolve TARGET --json`` prints, as a separate process would see it."""
    result = await asyncio.to_thread(
        subprocess.run, gz_command("resolve", target, "--json"), cwd=ROOT,
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_gz_resolve_prints_the_set_as_json(kube: KubeApiServer):
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.2", "10.0.0.1"]))
    kube.put_slice(NS, endpoint_slice("greeter-b", SERVICE, ["fd00::1"], address_type="IPv6"))
    assert await resolved_json(TARGET) == {
        "target": TARGET,
        "endpoints": ["10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8080"],
    }


async def test_gz_resolve_watch_prints_each_change(kube: KubeApiServer):
    kube.put_slice(NS, endpoint_slice("greeter-a", SERVICE, ["10.0.0.1"]))
    process = subprocess.Popen(gz_command("resolve", TARGET, "--watch", "--json"), cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        first = await asyncio.to_thread(process.stdout.readline)
        assert json.loads(first)["endpoints"] == ["10.0.0.1:8080"]
        kube.put_slice(NS, endpoint_slice("greeter-b", SERVICE, ["10.0.0.2"]))
        second = await asyncio.to_thread(process.stdout.readline)
        assert json.loads(second)["endpoints"] == ["10.0.0.1:8080", "10.0.0.2:8080"]
    finally:
        process.kill()
        process.wait()


async def test_gz_resolve_explains_a_forbidden_namespace(kube: KubeApiServer):
    kube.forbidden.add("locked")
    result = await asyncio.to_thread(
        subprocess.run, gz_command("resolve", f"k8s://locked/{SERVICE}:grpc"), cwd=ROOT,
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert "endpointslices" in result.stderr and "gz kube endpoints" in result.stderr
