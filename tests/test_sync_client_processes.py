"""gz.connect_sync() against real server processes: calls from many threads spread over the
replicas, a killed replica and a draining one fail no call, etcd:/// and k8s:// targets follow
their changes, and a channel made before os.fork() works in the child and in the parent."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc

import gz
from examples.greeter import greeter_pb2, greeter_pb2_grpc

from .etcd_server import EtcdServer
from .kube_api import KubeApiServer, endpoint_slice
from .support import ROOT, ServerProcess, direct, wait_until

CALL_TIMEOUT = 10.0  # seconds: a call that hangs fails as DEADLINE_EXCEEDED instead
THREADS = 8
READY = grpc.ChannelConnectivity.READY


async def start_servers(server_process, count: int, **env: str) -> list[ServerProcess]:
    servers = [server_process(**env) for _ in range(count)]
    await asyncio.gather(*(server.wait_serving() for server in servers))
    return servers


def addresses(servers: list[ServerProcess]) -> set[str]:
    return {server.address for server in servers}


def say_hello(channel: grpc.Channel, name: str = "sync") -> greeter_pb2.HelloReply:
    stub = greeter_pb2_grpc.GreeterStub(channel)
    return stub.SayHello(greeter_pb2.HelloRequest(name=name), timeout=CALL_TIMEOUT)


def subchannel_of(channel: gz.SyncBalancedChannel, address: str):
    pool = channel._pool
    if pool is None:
        return None
    return next((s for s in pool.subchannels.values() if s.peer == address), None)


def picked_from(channel: gz.SyncBalancedChannel) -> set[str]:
    """The addresses the channel's current picker chooses among."""
    pool = channel._pool
    picker = pool.picker if pool is not None else None
    return {s.peer for s in picker.subchannels} if picker is not None else set()


async def all_ready(channel: gz.SyncBalancedChannel, count: int) -> None:
    """A first call (resolution starts with it), then until ``count`` subchannels are READY."""
    await asyncio.to_thread(say_hello, channel)

    def ready() -> bool:
        pool = channel._pool
        return (
            pool is not None and sum(s.state == READY for s in pool.subchannels.values()) == count
        )

    await wait_until(ready, 30, f"{count} subchannels READY")


class Callers:
    """``threads`` threads calling SayHello through one channel until stopped; each call is kept
    as (started, ended, served_by), each failure as (started, "CODE: details")."""

    def __init__(self, channel: grpc.Channel, threads: int = THREADS, pause: float = 0.002):
        self.stub = greeter_pb2_grpc.GreeterStub(channel)
        self.pause = pause
        self.calls: list[tuple[float, float, str]] = []
        self.failures: list[tuple[float, str]] = []
        self._stopped = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"caller-{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        request = greeter_pb2.HelloRequest(name="load")
        while not self._stopped.is_set():
            started = time.monotonic()
            try:
                reply = self.stub.SayHello(request, timeout=CALL_TIMEOUT)
            except grpc.RpcError as error:
                self.failures.append((started, f"{error.code().name}: {error.details()}"))
            except Exception as error:  # anything else is a failure too, not a dead thread
                self.failures.append((started, f"{type(error).__name__}: {error}"))
            else:
                self.calls.append((started, time.monotonic(), reply.served_by))
            self._stopped.wait(self.pause)

    def served(self, since: float = 0.0) -> Counter[str]:
        """Who served the calls that started at ``since`` or later."""
        return Counter(by for started, _, by in list(self.calls) if started >= since)

    async def wait_served(self, address: str, since: float = 0.0, timeout: float = 20.0) -> None:
        await wait_until(lambda: self.served(since)[address] > 0, timeout, f"a call to {address}")

    async def stop(self) -> Callers:
        self._stopped.set()
        for thread in self._threads:
            await asyncio.to_thread(thread.join, CALL_TIMEOUT * 3)
        hung = [thread.name for thread in self._threads if thread.is_alive()]
        assert not hung, f"calls still running in {hung}"
        return self


# -- direct:/// ------------------------------------------------------------------------------
async def test_calls_from_many_threads_spread_over_every_replica(server_process, clean_environment):
    servers = await start_servers(server_process, 3)
    with gz.connect_sync(direct(servers)) as channel:
        await all_ready(channel, 3)

        def calls(_: int) -> list[str]:
            return [say_hello(channel).served_by for _ in range(75)]

        with ThreadPoolExecutor(THREADS) as pool:
            served = Counter(by for batch in pool.map(calls, range(THREADS)) for by in batch)
    print(f"8 threads over 3 replicas: {dict(served)}")
    assert set(served) == addresses(servers)
    assert served.total() == THREADS * 75
    for server in servers:
        assert served[server.address] >= served.total() / 6, served


async def test_sigkill_under_load_fails_no_call(server_process, clean_environment):
    servers = await start_servers(server_process, 3)
    killed = servers[0]
    with gz.connect_sync(direct(servers)) as channel:
        await all_ready(channel, 3)
        load = Callers(channel)
        for server in servers:
            await load.wait_served(server.address)
        killed.signal(signal.SIGKILL)  # with calls in flight on it
        killed_at = time.monotonic()
        await killed.wait_exit()
        for server in servers[1:]:  # calls go on, to the others
            await load.wait_served(server.address, since=time.monotonic())
        await asyncio.sleep(0.5)
        await load.stop()
    print(f"{len(load.calls)} calls, {load.served(killed_at)} after the kill")
    assert load.failures == []
    assert load.served()[killed.address] > 0


async def test_a_draining_replica_gets_no_call_once_it_says_not_serving(
    server_process, clean_environment
):
    servers = await start_servers(server_process, 3, GZ_SHUTDOWN_DRAIN="2s")
    draining = servers[0]
    with gz.connect_sync(direct(servers)) as channel:
        await all_ready(channel, 3)
        load = Callers(channel)
        for server in servers:
            await load.wait_served(server.address)
        draining.signal(signal.SIGTERM)

        def out_of_picks() -> bool:
            subchannel = subchannel_of(channel, draining.address)
            return (
                subchannel is not None
                and not subchannel.serving
                and draining.address not in picked_from(channel)
            )

        await wait_until(out_of_picks, 10, "the draining replica out of the picker", poll=0.005)
        seen_at = time.monotonic()
        # it was seen draining, not gone: its health said NOT_SERVING while it still ran
        assert draining.process.poll() is None, "the replica exited before it was seen draining"
        assert await draining.wait_exit() == 0
        exited_at = time.monotonic()
        await load.wait_served(servers[1].address, since=exited_at)
        await asyncio.sleep(0.3)
        await load.stop()
    during_drain = Counter(by for started, _, by in load.calls if seen_at <= started < exited_at)
    print(f"during the drain: {dict(during_drain)}; all: {dict(load.served())}")
    assert load.failures == []
    assert during_drain.total() > 0  # calls were made while it drained...
    assert load.served(since=seen_at)[draining.address] == 0  # ...and none reached it
    assert "draining" in draining.stderr()


# -- etcd:/// ----------------------------------------------------------------------------------
def registered(server_process, etcd: EtcdServer, count: int) -> list[ServerProcess]:
    env = {"GZ_REGISTRY": "etcd", "GZ_ETCD_ENDPOINTS": etcd.endpoint, "GZ_ETCD_TTL": "3",
           "GZ_SHUTDOWN_DRAIN": "0.5s"}  # fmt: skip
    return [server_process(**env) for _ in range(count)]


async def test_an_etcd_target_follows_replicas_that_come_and_go(
    server_process, etcd, clean_environment
):
    clean_environment.setenv("GZ_ETCD_ENDPOINTS", etcd.endpoint)
    first = registered(server_process, etcd, 2)
    await asyncio.gather(*(server.wait_serving() for server in first))
    await etcd.wait_registered(addresses(first), timeout=10)
    with gz.connect_sync("etcd:///greeter") as channel:
        await all_ready(channel, 2)
        load = Callers(channel)
        for server in first:
            await load.wait_served(server.address)

        (new,) = registered(server_process, etcd, 1)  # a new replica registers: it gets calls
        await new.wait_serving()
        await etcd.wait_registered(addresses([*first, new]), timeout=10)
        await load.wait_served(new.address)

        leaving = first[0]  # SIGTERM: deregistered, drained, stopped
        leaving.signal(signal.SIGTERM)
        await etcd.wait_registered(addresses([first[1], new]), timeout=10)
        gone = gz.Endpoint.parse(leaving.address)
        await wait_until(lambda: gone not in channel.endpoints, 10, "it dropped")
        assert await leaving.wait_exit() == 0
        stopped_at = time.monotonic()
        for server in (first[1], new):
            await load.wait_served(server.address, since=stopped_at)
        await asyncio.sleep(0.3)
        await load.stop()
    print(f"etcd: {dict(load.served())}")
    assert load.failures == []
    assert set(load.served(since=stopped_at)) == addresses([first[1], new])


# -- k8s:// ------------------------------------------------------------------------------------
NS, SERVICE = "shop", "greeter"


def pod_slice(server: ServerProcess, ready: bool = True) -> dict:
    """The EndpointSlice of one replica (each listens on a port of its own on 127.0.0.1)."""
    host, port = server.address.rsplit(":", 1)
    conditions = {"ready": ready, "serving": ready, "terminating": False}
    return endpoint_slice(f"{SERVICE}-{port}", SERVICE, [(host, conditions)], port=int(port))


async def test_a_k8s_target_follows_its_endpoint_slices(
    server_process, kube: KubeApiServer, clean_environment
):
    servers = await start_servers(server_process, 3)
    a, b, c = servers
    for server in servers:
        kube.put_slice(NS, pod_slice(server, ready=server is not c))
    with gz.connect_sync(f"k8s://{NS}/{SERVICE}:grpc") as channel:
        await all_ready(channel, 2)
        assert {e.address for e in channel.endpoints} == addresses([a, b])
        load = Callers(channel)
        for server in (a, b):
            await load.wait_served(server.address)
        assert load.served()[c.address] == 0  # not ready: not resolved

        kube.put_slice(NS, pod_slice(c))  # ready now: it gets calls
        await load.wait_served(c.address)

        kube.put_slice(NS, pod_slice(a, ready=False))  # a leaves the service
        await wait_until(
            lambda: (
                gz.Endpoint.parse(a.address) not in channel.endpoints
                and a.address not in picked_from(channel)
            ),
            10,
            "a dropped",
            poll=0.005,
        )
        dropped_at = time.monotonic()
        for server in (b, c):
            await load.wait_served(server.address, since=dropped_at)
        await asyncio.sleep(0.3)
        await load.stop()
    print(f"k8s: {dict(load.served())}")
    assert load.failures == []
    assert set(load.served(since=dropped_at)) == addresses([b, c])


# -- fork ----------------------------------------------------------------------------------------
FORKS = 4
FORKING_CLIENT = """
import json, os, signal, sys, threading, time

import gz
from examples.greeter import greeter_pb2, greeter_pb2_grpc

channel = gz.connect_sync(sys.argv[1])
stub = greeter_pb2_grpc.GreeterStub(channel)


def calls(who, count=30):
    request = greeter_pb2.HelloRequest(name=who)
    return sorted({stub.SayHello(request, timeout=10).served_by for _ in range(count)})


def report(**values):
    values["pid"] = os.getpid()
    values["threads"] = sorted(t.name for t in threading.enumerate())
    # one write of one line: parent and children share the pipe, and a line written in two
    # pieces (print's text, then its newline) can interleave with another process's
    os.write(1, (json.dumps(values) + "\\n").encode())


def wait_child(pid, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)  # hung: stop it, and say so
    os.waitpid(pid, 0)
    return "hung"


report(who="parent", phase="before forks", served=calls("parent"))
for n in range(int(sys.argv[2])):
    pid = os.fork()
    if pid == 0:
        report(who="child", phase=f"child {n}", served=calls("child"))
        channel.close()
        sys.exit(0)  # a normal interpreter exit, finalizers and all
    report(who="parent", phase=f"beside child {n}", served=calls("parent"))
    report(who="parent", phase=f"after child {n}", child=wait_child(pid))
report(who="parent", phase="after forks", served=calls("parent"))
channel.close()
"""


async def test_a_channel_made_before_a_fork_works_in_children_and_parent(
    server_process, clean_environment
):
    """One channel, used, then os.fork() FORKS times: each child calls through the same channel
    object (it starts afresh there) and exits normally; the parent calls beside each child and
    after them all."""
    servers = await start_servers(server_process, 3)
    # GRPC_VERBOSITY: grpc's own note that it skipped its fork handlers is logged at INFO
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRPC_VERBOSITY": "INFO"}
    command = [sys.executable, "-c", FORKING_CLIENT, direct(servers), str(FORKS)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, text=True, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        stdout, stderr = await asyncio.to_thread(process.communicate, timeout=120)
    finally:
        if process.poll() is None:  # hung: the script and any child it forked (its group)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    reports = {report["phase"]: report for report in map(json.loads, stdout.splitlines())}
    print("\n".join(f"{phase}: {r.get('served', r.get('child'))}" for phase, r in reports.items()))
    assert "before forks" in reports, stderr
    parent = reports["before forks"]["pid"]
    for n in range(FORKS):
        assert reports[f"after child {n}"].get("child") == 0, f"child {n}: {stderr}"
        child = reports[f"child {n}"]
        assert child["pid"] != parent
        # the child made its own background thread (the parent's does not survive a fork)
        assert "gz-sync-client" in child["threads"]
        assert reports[f"beside child {n}"]["pid"] == parent
    assert process.returncode == 0, stderr
    for report in reports.values():  # every call succeeded (else no report), each to a replica
        assert set(report.get("served", ())) <= addresses(servers), report
        assert report.get("served", True), report
    assert "Traceback" not in stderr, stderr
    # Nothing of gz's may be inside gRPC when the process forks: else grpc skips its fork
    # handlers and the child inherits gRPC's state mid-operation (locks held, the parent's
    # connections), and crashes or hangs in it on some forks.
    assert "skipping fork() handlers" not in stderr, stderr
