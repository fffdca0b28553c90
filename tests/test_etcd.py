"""The etcd registry against a real etcd: registration with a lease, resolution through a watch,
and what happens when replicas or etcd itself die."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections import Counter

import grpc
import pytest

import gz
from gz.discovery.etcd import EtcdResolver, connection
from gz.discovery.etcd.connection import EtcdConfig, EtcdConnection, acquire, release
from gz.discovery.etcd.registration import FIRST_REGISTRATION_WAIT, EtcdRegistration
from gz.discovery.etcd.resolver import PrefixCache, _Follower

from .etcd_server import EtcdServer
from .support import (
    ROOT,
    Recorder,
    ServerProcess,
    all_ready,
    count_replicas,
    free_port,
    gz_command,
    say_hello,
    wait_until,
)

TTL = 3  # seconds; short so that expiry tests are quick, above etcd's minimum


def registered_replicas(server_process, etcd: EtcdServer, count: int, **env: str):
    env = {"GZ_REGISTRY": "etcd", "GZ_ETCD_ENDPOINTS": etcd.endpoint, "GZ_ETCD_TTL": str(TTL),
           **env}  # fmt: skip
    return [server_process(**env) for _ in range(count)]


async def wait_serving_and_registered(etcd: EtcdServer, *replicas: ServerProcess) -> None:
    """A server reports SERVING before it registers, so wait for both."""
    for replica in replicas:
        await replica.wait_serving()
    await etcd.wait_registered({r.address for r in replicas}, timeout=10)


class SteadyLoad:
    """SayHello from a few workers for as long as the block runs; counts who served each call
    and which calls failed."""

    def __init__(self, channel: grpc.aio.Channel, workers: int = 4) -> None:
        self.channel, self.workers = channel, workers
        self.served: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._running: asyncio.Future[list[None]] | None = None

    @property
    def calls(self) -> int:
        return sum(self.served.values())

    async def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                self.served[(await say_hello(self.channel)).served_by] += 1
            except grpc.aio.AioRpcError as error:
                self.failures.append(f"{error.code().name}: {error.details()}")
            await asyncio.sleep(0.005)

    async def __aenter__(self) -> SteadyLoad:
        self._running = asyncio.gather(*(self._worker() for _ in range(self.workers)))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        assert self._running is not None
        await self._running


# -- registration and resolution ---------------------------------------------------------------
async def test_replicas_register_in_go_zero_format_and_calls_spread(server_process, etcd):
    replicas = registered_replicas(server_process, etcd, 3)
    await wait_serving_and_registered(etcd, *replicas)
    keys = etcd.keys("greeter/")
    assert set(keys.values()) == {r.address for r in replicas}
    for key in keys:  # KEY/<lease id in decimal>, attached to that lease
        lease_id = key.removeprefix("greeter/")
        assert lease_id.isdigit() and etcd.lease_of(key) == int(lease_id)
        assert 0 < etcd.lease_ttl(int(lease_id)) <= TTL
    async with gz.connect(f"etcd://{etcd.endpoint}/greeter", balancer="round_robin") as channel:
        await all_ready(channel, 3)
        served = await count_replicas(channel, 150)
    assert set(served) == {r.address for r in replicas}
    assert min(served.values()) >= 30


async def test_sigterm_removes_the_key_before_calls_are_refused(server_process, etcd):
    (replica,) = registered_replicas(server_process, etcd, 1, GZ_SHUTDOWN_DRAIN="1.5s")
    await wait_serving_and_registered(etcd, replica)
    replica.signal(signal.SIGTERM)
    await etcd.wait_registered(set(), timeout=1.0)
    async with grpc.aio.insecure_channel(replica.address) as raw:  # still draining: still answers
        assert (await say_hello(raw)).served_by == replica.address
    assert await replica.wait_exit() == 0
    assert "deregistered greeter/" in replica.stderr()


async def test_sigkill_key_expires_after_ttl_and_calls_go_on(server_process, etcd):
    replicas = registered_replicas(server_process, etcd, 3)
    await wait_serving_and_registered(etcd, *replicas)
    async with gz.connect(f"etcd://{etcd.endpoint}/greeter") as channel:
        await channel.channel_ready()
        async with SteadyLoad(channel) as load:
            await asyncio.sleep(0.3)
            replicas[0].signal(signal.SIGKILL)
            killed_at = time.monotonic()
            await etcd.wait_registered({r.address for r in replicas[1:]}, timeout=TTL + 2)
            expired_after = time.monotonic() - killed_at
            before = load.calls
            await asyncio.sleep(0.3)
        assert {e.address for e in channel.endpoints} == {r.address for r in replicas[1:]}
    assert expired_after > TTL - 1  # the key lived on until its lease ran out
    assert load.calls > before
    # A call caught on the dead connection fails UNAVAILABLE, which is always retried on another
    # replica (framework/middleware/retry.py): no call fails.
    assert load.failures == [], f"{len(load.failures)} of {load.calls} calls failed"


async def test_a_new_replica_gets_calls_within_half_a_second_of_registering(server_process, etcd):
    (first,) = registered_replicas(server_process, etcd, 1)
    await wait_serving_and_registered(etcd, first)
    watcher = Recorder()
    watching = asyncio.ensure_future(
        EtcdResolver(EtcdConfig((etcd.endpoint,)), "greeter").watch(watcher)
    )
    try:
        async with gz.connect(f"etcd://{etcd.endpoint}/greeter") as channel:
            assert (await say_hello(channel)).served_by == first.address
            (second,) = registered_replicas(server_process, etcd, 1)
            registered_at = await watcher.wait_for_set({first.address, second.address}, timeout=20)
            for _ in range(1000):
                if (await say_hello(channel)).served_by == second.address:
                    break
            else:
                pytest.fail(f"1000 calls after it registered, none went to {second.address}")
            delay = time.monotonic() - registered_at
    finally:
        watching.cancel()
    print(f"registration to first served call: {delay * 1000:.0f} ms")
    assert delay < 0.5


async def test_etcd_outage_loses_no_call_and_servers_register_again(server_process, etcd):
    replicas = registered_replicas(server_process, etcd, 3)
    await wait_serving_and_registered(etcd, *replicas)
    addresses = {r.address for r in replicas}
    async with gz.connect(f"etcd://{etcd.endpoint}/greeter") as channel:
        await channel.channel_ready()
        async with SteadyLoad(channel) as load:
            # 15 s down, far past the lease TTL; restarted with its data
            etcd.stop()
            await asyncio.sleep(15)
            assert set(load.served) == addresses and not load.failures
            etcd.restart()
            same_dir = await etcd.wait_registered(addresses, timeout=TTL + 1)
            # The keys survived on their old leases, which etcd restores with a fresh TTL: only
            # the servers' keepalives can keep them past one more TTL.
            leases = {key: etcd.lease_of(key) for key in etcd.keys("greeter/")}
            await asyncio.sleep(TTL + 1)
            await etcd.wait_registered(addresses, timeout=0)
            assert {key: etcd.lease_of(key) for key in etcd.keys("greeter/")} == leases
            # down again, then back with a wiped data dir: every server registers anew
            etcd.stop()
            await asyncio.sleep(2)
            etcd.restart(wipe=True)
            wiped = await etcd.wait_registered(addresses, timeout=TTL + 1)
            calls_before = load.calls
            await asyncio.sleep(1)
        assert load.calls > calls_before
        assert {e.address for e in channel.endpoints} == addresses
    print(f"registered again after restart: same data {same_dir:.2f}s, wiped {wiped:.2f}s")
    assert load.failures == []


async def test_a_server_serves_while_etcd_is_down_and_registers_when_it_comes(server_process):
    etcd = EtcdServer()  # ports chosen, not started yet
    try:
        (replica,) = registered_replicas(server_process, etcd, 1)
        await replica.wait_serving()  # serving without etcd
        await asyncio.sleep(FIRST_REGISTRATION_WAIT + 0.5)  # start-up gave up waiting for etcd
        etcd.start()
        await etcd.wait_registered({replica.address}, timeout=5)
        replica.signal(signal.SIGTERM)
        assert await replica.wait_exit() == 0
        log = replica.stderr()
        assert "has not answered yet: serving" in log, log
        assert log.count("etcd did not answer") == 1, log  # one warning, not one per retry
    finally:
        etcd.close()


async def test_a_key_deleted_by_hand_is_put_again(server_process, etcd):
    (replica,) = registered_replicas(server_process, etcd, 1)
    await wait_serving_and_registered(etcd, replica)
    etcd.etcdctl("del", "--prefix", "greeter/")
    await etcd.wait_registered({replica.address}, timeout=TTL + 1)


# -- errors etcd is not expected to give ------------------------------------------------------
def fail_etcd_calls(monkeypatch, operation: str, code: grpc.StatusCode, times: int) -> list[str]:
    """Make the next ``times`` etcd calls whose operation starts with ``operation`` fail with
    ``code``, as if etcd had answered so; the list grows by one per injected failure."""
    failed: list[str] = []
    original = EtcdConnection.run

    async def run(self, name, call):
        if name.startswith(operation) and len(failed) < times:
            failed.append(name)

            async def answer():
                raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                           details=f"injected {code.name}")  # fmt: skip

            return await original(self, name, answer)
        return await original(self, name, call)

    monkeypatch.setattr(EtcdConnection, "run", run)
    return failed


def etcd_warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and text in r.getMessage()]  # fmt: skip


async def test_registration_outlives_errors_etcd_is_not_expected_to_give(etcd, monkeypatch, caplog):
    caplog.set_level(logging.INFO, "gz.discovery.etcd")
    grants = fail_etcd_calls(monkeypatch, "grant", grpc.StatusCode.RESOURCE_EXHAUSTED, times=3)
    registration = EtcdRegistration(EtcdConfig((etcd.endpoint,)), "greeter", ttl=TTL)
    await registration.register("127.0.0.1:1001")
    try:
        assert len(grants) == 3
        assert etcd.keys("greeter/") == {registration.full_key: "127.0.0.1:1001"}
        key = registration.full_key
        # one keepalive of every TTL/3 fails: the next one still comes before the TTL runs out
        keepalives = fail_etcd_calls(monkeypatch, "keep", grpc.StatusCode.INTERNAL, times=1)
        await asyncio.sleep(TTL + 1)
        assert len(keepalives) == 1
        await etcd.wait_registered({"127.0.0.1:1001"}, timeout=0)
        assert registration.full_key == key
    finally:
        await registration.deregister()
    assert etcd.keys("greeter/") == {}
    assert len(etcd_warnings(caplog, "RESOURCE_EXHAUSTED")) == 1  # once, not once per retry
    assert len(etcd_warnings(caplog, "INTERNAL")) == 1


async def test_a_lease_lost_before_the_put_is_granted_again(etcd, monkeypatch, caplog):
    caplog.set_level(logging.INFO, "gz.discovery.etcd")
    puts = fail_etcd_calls(monkeypatch, "put", grpc.StatusCode.NOT_FOUND, times=1)
    registration = EtcdRegistration(EtcdConfig((etcd.endpoint,)), "greeter", ttl=TTL)
    await registration.register("127.0.0.1:1001")
    try:  # register() returned once the key was really put, not after the failed put
        assert len(puts) == 1
        assert etcd.keys("greeter/") == {registration.full_key: "127.0.0.1:1001"}
    finally:
        await registration.deregister()
    logged = [r.getMessage() for r in caplog.records]
    assert not [line for line in logged if "greeter/None" in line], logged
    assert len([line for line in logged if line.startswith("registered greeter/")]) == 1, logged
    assert len(etcd_warnings(caplog, "before greeter/")) == 1, logged


async def test_deregister_revokes_the_lease_whatever_the_loop_ended_with(etcd, caplog):
    registration = EtcdRegistration(EtcdConfig((etcd.endpoint,)), "greeter", ttl=TTL)
    await registration.register("127.0.0.1:1001")
    lease = registration.lease
    assert lease is not None and etcd.lease_ttl(lease) > 0
    running = registration._task
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running

    async def broken() -> None:
        raise RuntimeError("a bug in the loop")

    registration._task = asyncio.ensure_future(broken())
    await asyncio.sleep(0)
    await registration.deregister()  # does not raise the loop's error
    assert etcd.lease_ttl(lease) == -1 and etcd.keys("greeter/") == {}
    assert etcd_warnings(caplog, "a bug in the loop")


async def test_deregister_of_a_lease_etcd_already_dropped_does_not_raise(etcd, caplog):
    caplog.set_level(logging.INFO, "gz.discovery.etcd")
    registration = EtcdRegistration(EtcdConfig((etcd.endpoint,)), "greeter", ttl=TTL)
    await registration.register("127.0.0.1:1001")
    etcd.etcdctl("lease", "revoke", format(registration.lease, "x"))
    await registration.deregister()
    assert any("already dropped" in r.getMessage() for r in caplog.records)


async def test_the_resolver_outlives_errors_etcd_is_not_expected_to_give(etcd, monkeypatch):
    etcd.etcdctl("put", "greeter/1", "127.0.0.1:1001")
    reads = fail_etcd_calls(monkeypatch, "read", grpc.StatusCode.RESOURCE_EXHAUSTED, times=3)
    listener = Recorder()
    resolver = EtcdResolver(EtcdConfig((etcd.endpoint,)), "greeter")
    watching = asyncio.ensure_future(resolver.watch(listener))
    try:
        await listener.wait_for_set({"127.0.0.1:1001"})
        etcd.etcdctl("put", "greeter/2", "127.0.0.1:1002")  # and it follows changes
        await listener.wait_for_set({"127.0.0.1:1001", "127.0.0.1:1002"})
    finally:
        watching.cancel()
    assert len(reads) == 3
    assert len(listener.errors) == 1 and "RESOURCE_EXHAUSTED" in listener.errors[0]


async def test_the_resolver_pushes_what_each_event_changed(etcd):
    for n in (1, 2, 3):
        etcd.etcdctl("put", f"greeter/{n}", f"127.0.0.1:100{n}")
    listener = Recorder()
    watching = asyncio.ensure_future(
        EtcdResolver(EtcdConfig((etcd.endpoint,)), "greeter").watch(listener)
    )
    try:
        await listener.wait_for_set({"127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003"})
        etcd.etcdctl("put", "greeter/4", "127.0.0.1:1004")
        await listener.wait_for(lambda: len(listener.changes) == 1)
        etcd.etcdctl("put", "greeter/5", "127.0.0.1:1001")  # a second key naming one address
        etcd.etcdctl("del", "greeter/1")  # so the address stays: nothing to tell
        etcd.etcdctl("del", "greeter/2")
        await listener.wait_for(lambda: len(listener.changes) == 2)
        etcd.etcdctl("del", "greeter/5")
        await listener.wait_for(lambda: len(listener.changes) == 3)
    finally:
        watching.cancel()
    assert len(listener.updates) == 1 + len(listener.changes)  # one whole set, from the read
    assert [({e.address for e in added}, {e.address for e in removed})
            for added, removed in listener.changes] == [
        ({"127.0.0.1:1004"}, set()),
        (set(), {"127.0.0.1:1002"}),
        (set(), {"127.0.0.1:1001"}),
    ]  # fmt: skip
    assert listener.current == {"127.0.0.1:1003", "127.0.0.1:1004"}


# -- keys written by others --------------------------------------------------------------------
async def test_go_zero_keys_resolve_and_garbage_is_skipped_once(
    etcd, caplog, monkeypatch, serve_greeter
):
    greeter = await serve_greeter()
    monkeypatch.setenv("GZ_ETCD_ENDPOINTS", etcd.endpoint)
    caplog.set_level(logging.WARNING, "gz.discovery.etcd")
    etcd.etcdctl("put", "greet.rpc/123", greeter.address)  # as a go-zero server writes it
    etcd.etcdctl("put", "greet.rpc/456", "not an address")
    etcd.etcdctl("put", "greet.rpc.v2/1", "127.0.0.1:1")  # another service sharing the stem
    async with gz.connect("etcd:///greet.rpc") as channel:
        assert (await say_hello(channel)).served_by == greeter.address
        etcd.etcdctl("put", "greet.rpc/456", "not an address")  # again: no second warning
        etcd.etcdctl("put", "greet.rpc/789", "[::1:99")
        await asyncio.sleep(0.3)
        assert channel.endpoints == [gz.Endpoint.parse(greeter.address)]
        assert (await say_hello(channel)).served_by == greeter.address
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("greet.rpc/456" in w for w in warnings) == 1, warnings
    assert any("greet.rpc/789" in w and "not host:port" in w for w in warnings)


async def test_a_compacted_watch_revision_reads_again(etcd):
    """The watch start comes from a read made before a compaction: etcd refuses it and the
    resolver reads afresh instead of missing changes."""
    etcd.etcdctl("put", "greeter/1", "127.0.0.1:1001")
    config = EtcdConfig((etcd.endpoint,))
    etcd_conn = acquire(config)
    stale = await etcd_conn.get_prefix(b"greeter/")
    etcd.etcdctl("put", "greeter/2", "127.0.0.1:1002")
    etcd.etcdctl("del", "greeter/1")
    revision = json.loads(etcd.etcdctl("get", "greeter/2", "-w", "json"))["header"]["revision"]
    etcd.etcdctl("compaction", str(revision))

    class StaleOnce(EtcdConnection):
        reads = 0

        async def get_prefix(self, prefix: bytes):
            StaleOnce.reads += 1
            return stale if StaleOnce.reads == 1 else await super().get_prefix(prefix)

    resolver = EtcdResolver(config, "greeter")
    listener = Recorder()
    connection = StaleOnce(config)
    following = asyncio.ensure_future(_Follower(resolver, listener).follow(connection))
    try:
        await listener.wait_for_set({"127.0.0.1:1002"})
    finally:
        following.cancel()
        await connection.close()
        await release(etcd_conn)
    assert StaleOnce.reads == 2


def test_prefix_cache_notices_a_replaced_etcd():
    class Header:
        def __init__(self, cluster_id: int, revision: int) -> None:
            self.cluster_id, self.revision = cluster_id, revision

    class Snapshot:
        def __init__(self, cluster_id: int, revision: int) -> None:
            self.header, self.kvs, self.too_large = Header(cluster_id, revision), [], []

    cache = PrefixCache("etcd:///x")
    assert not cache.load(Snapshot(7, 100))
    assert not cache.load(Snapshot(7, 120))
    assert cache.load(Snapshot(7, 3))  # revision went back: wiped data dir
    assert cache.load(Snapshot(8, 50))  # another cluster


# -- connections, endpoints, credentials -------------------------------------------------------
async def test_clients_share_one_connection_and_fail_over_between_endpoints(etcd, serve_greeter):
    greeter = await serve_greeter()
    etcd.etcdctl("put", "greeter/1", greeter.address)
    dead = f"127.0.0.1:{free_port()}"
    target = f"etcd://{dead},{etcd.endpoint}/greeter"
    async with gz.connect(target) as first, gz.connect(target) as second:
        assert (await say_hello(first)).served_by == greeter.address
        assert (await say_hello(second)).served_by == greeter.address
        shared = [c for c in connection._shared.values() if etcd.endpoint in c.config.endpoints]
        assert len(shared) == 1 and shared[0].users == 2
    assert not [c for c in connection._shared.values() if etcd.endpoint in c.config.endpoints]


async def test_etcd_with_a_user_and_password(server_process, etcd, monkeypatch):
    etcd.enable_auth("gz", "s3cret")
    (replica,) = registered_replicas(server_process, etcd, 1, GZ_ETCD_USERNAME="gz",
                                     GZ_ETCD_PASSWORD="s3cret")  # fmt: skip
    await wait_serving_and_registered(etcd, replica)
    monkeypatch.setenv("GZ_ETCD_ENDPOINTS", etcd.endpoint)
    monkeypatch.setenv("GZ_ETCD_USERNAME", "gz")
    monkeypatch.setenv("GZ_ETCD_PASSWORD", "s3cret")
    async with gz.connect("etcd:///greeter") as channel:
        assert (await say_hello(channel)).served_by == replica.address
    # etcd restarted: its simple tokens are gone, the server logs in again and stays registered
    etcd.restart()
    etcd.etcdctl("del", "--prefix", "greeter/")
    await etcd.wait_registered({replica.address}, timeout=TTL + 2)

    wrong = gz_resolve("etcd:///greeter", GZ_ETCD_ENDPOINTS=etcd.endpoint,
                       GZ_ETCD_USERNAME="gz", GZ_ETCD_PASSWORD="wrong")  # fmt: skip
    assert wrong.returncode == 1
    message = wrong.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "rejected user 'gz'" in message and "GZ_ETCD_PASSWORD" in message
    anonymous = gz_resolve("etcd:///greeter", GZ_ETCD_ENDPOINTS=etcd.endpoint)
    assert anonymous.returncode == 1
    assert "set GZ_ETCD_USERNAME and GZ_ETCD_PASSWORD" in anonymous.stderr


async def test_a_server_with_a_wrong_password_serves_and_says_why(server_process, etcd):
    etcd.enable_auth("gz", "s3cret")
    (replica,) = registered_replicas(server_process, etcd, 1, GZ_ETCD_USERNAME="gz",
                                     GZ_ETCD_PASSWORD="nope")  # fmt: skip
    await replica.wait_serving(timeout=20)
    await wait_until(lambda: "rejected user" in replica.stderr(), 10, "told why")
    replica.signal(signal.SIGTERM)
    assert await replica.wait_exit() == 0
    complaints = [line for line in replica.stderr().splitlines() if "rejected user" in line]
    assert len(complaints) == 1, complaints  # said once, not on every retry
    assert "GZ_ETCD_PASSWORD" in complaints[0]


async def test_etcd_with_mutual_tls(server_process):
    etcd = EtcdServer(tls=True).start()
    try:
        (replica,) = registered_replicas(server_process, etcd, 1, **etcd.tls_env())
        await wait_serving_and_registered(etcd, replica)
        done = gz_resolve("etcd:///greeter", "--json", **etcd.tls_env())
        assert json.loads(done.stdout)["endpoints"] == [replica.address], done.stderr
        # a client that does not trust etcd's CA says so instead of hanging
        other_ca = EtcdServer(tls=True)
        untrusted = {**etcd.tls_env(), "GZ_ETCD_CA": str(other_ca.tls.ca_file)}
        refused = gz_resolve("etcd:///greeter", **untrusted)
        other_ca.close()
        assert refused.returncode == 1
        assert "etcd did not answer" in refused.stderr and etcd.endpoint in refused.stderr
    finally:
        etcd.close()


# -- gz resolve ----------------------------------------------------------------------------------
def without_gz_variables(**env: str) -> dict[str, str]:
    """This process's environment but for its GZ_* variables, plus ``env``: a gz process then
    reads only the settings the test gives it."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("GZ_")}
    return {**kept, "PYTHONPATH": str(ROOT), **env}


def gz_resolve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gz_command("resolve", *args),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=without_gz_variables(**env),
    )


def test_gz_resolve_prints_the_registered_set(etcd):
    etcd.etcdctl("put", "greeter/1", "127.0.0.1:1001")
    etcd.etcdctl("put", "greeter/2", "[::1]:1002")
    done = gz_resolve(f"etcd://{etcd.endpoint}/greeter", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["endpoints"] == ["127.0.0.1:1001", "[::1]:1002"]
    down = gz_resolve(f"etcd://127.0.0.1:{free_port()}/greeter", "--timeout", "10")
    assert down.returncode == 1 and "etcd did not answer" in down.stderr


async def test_gz_resolve_watch_prints_a_new_replica(server_process, etcd):
    (first,) = registered_replicas(server_process, etcd, 1)
    await wait_serving_and_registered(etcd, first)
    target = f"etcd://{etcd.endpoint}/greeter"
    watching = subprocess.Popen(
        gz_command("resolve", target, "--watch"),
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=without_gz_variables(),
    )

    async def lines(count: int) -> list[str]:
        read = [asyncio.to_thread(watching.stdout.readline) for _ in range(count)]
        return [(await asyncio.wait_for(line, 20)).rstrip("\n") for line in read]

    try:
        assert await lines(2) == [f"{target}: 1 endpoint", f"  {first.address}"]
        (second,) = registered_replicas(server_process, etcd, 1)
        await wait_serving_and_registered(etcd, first, second)
        header, *listed = await lines(3)
        assert header == f"{target}: 2 endpoints"
        assert set(listed) == {f"  {first.address}", f"  {second.address}"}
    finally:
        watching.kill()
        watching.wait()
