"""5. Discovery convergence: how soon a client uses a new replica, and stops failing on a dead one.

For etcd (a real etcd), k8s (tests/kube_api.py, the test API server, through the official client)
and dns (refresh 1 s, answers from a stand-in lookup): two gz greeter replicas run, the client
keeps a steady load on the target, the benchmark registers the second replica and times its first
served call; then SIGKILLs it and times the last failed call. The registry still lists the dead
replica (a lease not yet expired, a pod not yet removed): what is timed is the client's own
reaction to the dead connection.

    python -m benchmarks.convergence [--quick] [--json]
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

import gz
from examples.greeter import greeter_pb2_grpc
from gz.discovery.dns import DnsResolver
from tests.etcd_server import EtcdServer
from tests.kube_api import KubeApiServer, endpoint_slice

from .features import client_settings
from .harness import REQUEST, Children, port_free_on, serving
from .report import Result, Row, scenario_main

CALL_TIMEOUT = 1.0
Register = Callable[[list[str]], Awaitable[None]]  # publish this complete list of replicas


class SteadyLoad:
    """A few workers calling SayHello until stopped; every outcome with its time."""

    def __init__(self, channel: grpc.aio.Channel, workers: int = 4) -> None:
        self._say_hello = greeter_pb2_grpc.GreeterStub(channel).SayHello
        self.outcomes: list[tuple[float, str | None]] = []  # (monotonic time, served_by or None)
        self._tasks = [asyncio.ensure_future(self._worker()) for _ in range(workers)]

    async def _worker(self) -> None:
        while True:
            try:
                reply = await self._say_hello(REQUEST, timeout=CALL_TIMEOUT)
                self.outcomes.append((time.monotonic(), reply.served_by))
            except grpc.aio.AioRpcError:
                self.outcomes.append((time.monotonic(), None))
            await asyncio.sleep(0.001)

    async def first_served_by(self, address: str, since: float, within: float) -> float | None:
        """Seconds from ``since`` to the first call ``address`` served, None if none within."""
        checked = 0
        while time.monotonic() - since < within:
            for at, served_by in self.outcomes[checked:]:
                if at >= since and served_by == address:
                    return at - since
            checked = len(self.outcomes)
            await asyncio.sleep(0.005)
        return None

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def after_kill(load: SteadyLoad, killed_at: float, suffix: str) -> Row:
    """Failures after the kill and how long they went on; failures before it, which should
    not happen, are counted apart."""
    failed = [at - killed_at for at, served_by in load.outcomes if served_by is None]
    after = [delay for delay in failed if delay >= 0]
    return {
        f"failed_calls{suffix}": len(after),
        f"kill_to_last_failure{suffix}_ms": max(after, default=0.0) * 1000,
        f"failed_before_kill{suffix}": len(failed) - len(after),
    }


async def measure(
    backend: str, target: Callable[[], str | gz.Resolver], register: Register,
    replicas: list[str], kill: Callable[[], None], window: float,
) -> Row:  # fmt: skip
    """Convergence with connect()'s defaults; after the kill, also a client with retries off
    (when the framework has the setting), whose failures show what retries hide."""
    first, second = replicas
    await register([first])
    clients = {"": None, "_no_retry": client_settings(retry_max_attempts=1)}
    async with contextlib.AsyncExitStack() as stack:
        loads = {
            suffix: SteadyLoad(await stack.enter_async_context(
                gz.connect(target(), settings=settings)))
            for suffix, settings in clients.items() if settings is not None or not suffix
        }  # fmt: skip
        load = loads[""]
        try:
            await load.first_served_by(first, time.monotonic(), within=20)
            registered_at = time.monotonic()
            await register([first, second])
            converged = await load.first_served_by(second, registered_at, within=20)
            await asyncio.sleep(0.3)
            killed_at = time.monotonic()
            kill()
            await asyncio.sleep(window)
        finally:
            for each in loads.values():
                await each.stop()
    row: Row = {
        "backend": backend,
        "register_to_first_call_ms": None if converged is None else converged * 1000,
    }
    for suffix, each in loads.items():
        row.update(after_kill(each, killed_at, suffix))
    return row


async def with_etcd(children: Children, window: float) -> Row:
    etcd = EtcdServer().start()
    children.add(etcd.close)
    servers = [children.server("gz"), children.server("gz")]
    replicas = await serving(*servers)

    async def register(addresses: list[str]) -> None:
        for index, address in enumerate(addresses, 1):  # KEY/<lease id>, as gz servers do
            await asyncio.to_thread(etcd_put, etcd.endpoint, f"greeter/{index}", address)

    target = f"etcd://{etcd.endpoint}/greeter"
    return await measure("etcd", lambda: target, register, replicas, servers[1].kill, window)


def etcd_put(endpoint: str, key: str, value: str) -> None:
    """A put through etcd's JSON gateway: returns once etcd has it, with no process start."""
    body = {"key": base64.b64encode(key.encode()).decode(),
            "value": base64.b64encode(value.encode()).decode()}  # fmt: skip
    request = urllib.request.Request(f"http://{endpoint}/v3/kv/put", json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=5) as reply:
        reply.read()


async def same_port_replicas(children: Children) -> tuple[int, list[str], Callable[[], None]]:
    """Two gz replicas on 127.0.0.1 and 127.0.0.2 with one port, as behind one name."""
    hosts = ["127.0.0.1", "127.0.0.2"]
    port = port_free_on(hosts)
    servers = [children.server("gz", f"{host}:{port}") for host in hosts]
    replicas = await serving(*servers)
    return port, replicas, servers[1].kill


async def with_kubernetes(children: Children, window: float) -> Row:
    api = KubeApiServer().start()
    children.add(api.stop)
    directory = Path(tempfile.mkdtemp(prefix="gz-bench-kube-"))
    children.add(lambda: shutil.rmtree(directory, ignore_errors=True))
    os.environ["KUBECONFIG"] = str(api.write_kubeconfig(directory / "kubeconfig"))
    port, replicas, kill = await same_port_replicas(children)

    async def register(addresses: list[str]) -> None:
        ips = [address.rpartition(":")[0] for address in addresses]
        api.put_slice("bench", endpoint_slice("greeter-abcde", "greeter", ips, port=port))

    target = "k8s://bench/greeter:grpc"
    return await measure("k8s", lambda: target, register, replicas, kill, window)


async def with_dns(children: Children, window: float) -> Row:
    port, replicas, kill = await same_port_replicas(children)
    answer: list[str] = []

    async def lookup(host: str, port: int) -> list[str]:
        return list(answer)

    async def register(addresses: list[str]) -> None:
        answer[:] = [address.rpartition(":")[0] for address in addresses]

    def resolver() -> DnsResolver:  # one per client, both asking the same stand-in
        return DnsResolver("greeter.bench", port, refresh=1.0, lookup=lookup)

    return await measure("dns (refresh 1 s)", resolver, register, replicas, kill, window)


async def run(quick: bool) -> Result:
    result = Result("convergence", "5. discovery convergence")
    window = 1.0 if quick else 3.0
    table = result.table(f"steady load of 4 callers per client; failures counted for "
                         f"{window:.0f} s after SIGKILL")  # fmt: skip
    for backend in (with_etcd, with_kubernetes, with_dns):
        with Children() as children:
            try:
                table.rows.append(await backend(children, window))
            except Exception as error:  # one backend failing must not hide the others
                result.notes.append(f"{backend.__name__}: failed: {error!r}")
    result.notes.append(
        "register: etcd put of KEY/<id> = host:port; k8s: EndpointSlice updated; dns: the "
        "answer changed (found at the next refresh)"
    )
    return result


if __name__ == "__main__":
    scenario_main(run, __doc__.splitlines()[0])
