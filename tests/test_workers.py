"""GZ_WORKERS: one instance as several real processes, registered in a real etcd.

The instance is the greeter example; SayHello answers with the address that served it, which
for a worker is its own port, so a test sees which worker took each call.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal

import pytest
from grpc_health.v1 import health_pb2

import gz
from gz.workers.count import cpu_limit

from .support import free_port, health_status, http_get, say_hello, wait_until
from .test_etcd import TTL, SteadyLoad

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def instance(server_process, etcd, workers: int = 2, **env: str):
    """A greeter instance of ``workers`` processes with its HTTP side, registering in etcd."""
    process = server_process(
        GZ_WORKERS=str(workers),
        GZ_WORKER_PORT="0",  # each worker's own port: any free one
        GZ_METRICS_PORT=str(free_port()),
        GZ_METRICS_HOST="127.0.0.1",
        GZ_REGISTRY="etcd",
        GZ_ETCD_ENDPOINTS=etcd.endpoint,
        GZ_ETCD_TTL=str(TTL),
        **env,
    )
    process.http = f"http://127.0.0.1:{process.env['GZ_METRICS_PORT']}"
    return process


def workers_view(process) -> dict:
    status, body = http_get(f"{process.http}/debug/workers")
    assert status == 200, body
    return json.loads(body)


async def wait_workers_registered(etcd, process, count: int, *others) -> set[str]:
    """The own addresses of the instance's workers once all are registered (with ``others``,
    plain server processes)."""
    await process.wait_serving()
    view = workers_view(process)
    addresses = {worker["address"] for worker in view["workers"]}
    assert len(addresses) == count and view["serving"], view
    for other in others:
        await other.wait_serving()
    await etcd.wait_registered(addresses | {other.address for other in others}, timeout=10)
    return addresses


def loaded_libraries(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as maps:
        return maps.read()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_gz_client_spreads_calls_over_the_workers_of_one_instance(server_process, etcd):
    process = instance(server_process, etcd)
    addresses = await wait_workers_registered(etcd, process, 2)
    async with gz.connect(f"etcd://{etcd.endpoint}/greeter") as channel:
        served = [(await say_hello(channel)).served_by for _ in range(400)]
    counts = {address: served.count(address) for address in addresses}
    assert all(160 <= count <= 240 for count in counts.values()), counts  # within ±20 %
    # one view of the instance: health on the shared port, /readyz, summed /metrics
    assert await health_status(process.address) == SERVING
    assert http_get(f"{process.http}/readyz")[0] == 200
    metrics = http_get(f"{process.http}/metrics")[1]
    handled = [line for line in metrics.splitlines() if line.startswith("grpc_server_handled_total")
               and 'grpc_method="SayHello"' in line]  # fmt: skip
    assert len(handled) == 1 and float(handled[0].split()[-1]) == 400, handled
    assert metrics.count('process_resident_memory_bytes{worker="') == 2
    assert json.loads(http_get(f"{process.http}/debug/targets")[1]) == {"channels": []}
    process.signal(signal.SIGTERM)
    assert await process.wait_exit() == 0


async def test_sigkill_of_a_worker_under_load_loses_no_call_and_the_worker_comes_back(
    server_process, etcd
):
    process = instance(server_process, etcd)
    await wait_workers_registered(etcd, process, 2)
    before = workers_view(process)["workers"]
    channel = gz.connect(f"etcd://{etcd.endpoint}/greeter")
    async with channel, SteadyLoad(channel) as load:
        await asyncio.sleep(0.3)
        os.kill(before[0]["pid"], signal.SIGKILL)

        def restarted() -> bool:
            view = workers_view(process)
            return view["serving"] and view["workers"][0]["restarts"] == 1

        await wait_until(restarted, 10, "worker 0 restarted and the instance serving")
        after = workers_view(process)["workers"]
        await etcd.wait_registered(
            {after[0]["address"], after[1]["address"], before[0]["address"]}, timeout=5
        )  # the new worker 0 registered (the old key lives until its lease ends)

        def restarted_worker_called() -> bool:
            return after[0]["address"] in load.served

        await wait_until(restarted_worker_called, 10, "a call to the restarted worker")
    assert load.failures == [], f"{len(load.failures)} of {load.calls} calls failed"
    assert after[0]["pid"] != before[0]["pid"] and after[1]["pid"] == before[1]["pid"]
    assert "was killed by SIGKILL; restarting it" in process.stderr()
    process.signal(signal.SIGTERM)
    assert await process.wait_exit() == 0


async def test_sigterm_under_load_drains_every_worker_and_exits_0(server_process, etcd):
    other = server_process(
        GZ_REGISTRY="etcd", GZ_ETCD_ENDPOINTS=etcd.endpoint, GZ_ETCD_TTL=str(TTL)
    )  # a second instance that takes the calls once the first one has deregistered
    process = instance(server_process, etcd, GZ_SHUTDOWN_DRAIN="1s")
    workers = await wait_workers_registered(etcd, process, 2, other)
    pids = [worker["pid"] for worker in workers_view(process)["workers"]]
    channel = gz.connect(f"etcd://{etcd.endpoint}/greeter")
    async with channel, SteadyLoad(channel) as load:
        await asyncio.sleep(0.3)
        assert set(load.served) >= workers
        process.signal(signal.SIGTERM)

        async def not_serving() -> bool:
            return await health_status(process.address) == NOT_SERVING

        await wait_until(not_serving, 5, "the instance reports NOT_SERVING")
        assert http_get(f"{process.http}/readyz")[0] == 503
        await etcd.wait_registered({other.address}, timeout=5)  # every worker deregistered
        assert await process.wait_exit() == 0
        seen = load.calls
        await asyncio.sleep(0.3)
    assert load.failures == [], f"{len(load.failures)} of {load.calls} calls failed"
    assert load.calls > seen
    assert not any(alive(pid) for pid in pids), "a worker outlived its instance"
    stderr = process.stderr()
    assert stderr.count("draining") == 2 and "every worker has stopped" in stderr
    other.signal(signal.SIGTERM)
    assert await other.wait_exit() == 0


CRASHING = """
import os
import re
if os.environ.get("_GZ_WORKER") and '"index": 1' in os.environ["_GZ_WORKER"]:
    raise RuntimeError("worker 1 cannot start: no database")
from examples.greeter.server import Greeter
Greeter.main()
"""


async def test_a_worker_that_crashes_at_start_stops_the_instance_with_its_error(server_process):
    process = server_process("-c", CRASHING, GZ_WORKERS="2", GZ_WORKER_PORT="0")
    assert await process.wait_exit() == 1
    stderr = process.stderr()
    assert "RuntimeError: worker 1 cannot start: no database" in stderr
    assert "worker 1 exited with code 1 before it listened: stopping the instance" in stderr
    assert "every worker has stopped" in stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "a number of processes (1 or more)"), ("many", "a number of processes")],
)
def test_a_bad_gz_workers_value_stops_start_up(value, message):
    with pytest.raises(gz.SettingsError, match=rf"GZ_WORKERS={value!r}.*{re.escape(message)}"):
        gz.ServerSettings.from_env(workers=value)


@pytest.mark.parametrize(
    ("files", "cores"),
    [
        ({"cpu.max": "max 100000\n"}, 2),  # v2, no limit: the cores it may run on
        ({"cpu.max": "150000 100000\n"}, 2),  # v2, 1.5 CPUs: rounded up
        ({"cpu.max": "100000 100000\n"}, 1),
        ({"cpu.max": "800000 100000\n"}, 2),  # more than the cores there are
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2),  # v1, none
        ({"cpu.max": "garbage\n"}, 2),
        ({}, 2),  # no cgroup files at all
    ],
)
def test_auto_counts_the_cgroup_cpu_limit(tmp_path, monkeypatch, files, cores):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_limit(tmp_path) == cores


def test_auto_is_read_when_settings_are():
    assert gz.ServerSettings.from_env(workers="auto").workers == cpu_limit()
    assert gz.ServerSettings.from_env(workers="3").workers == 3


def test_worker_ports_follow_the_listen_port_unless_set():
    settings = gz.ServerSettings.from_env(listen="0.0.0.0:9000", workers="3")
    assert settings.worker_ports() == [9001, 9002, 9003]
    assert gz.ServerSettings.from_env(workers="2", worker_port="7000").worker_ports() == [
        7000,
        7001,
    ]
    assert gz.ServerSettings.from_env(listen="127.0.0.1:0", workers="2").worker_ports() == [0, 0]
    with pytest.raises(gz.SettingsError, match=r"GZ_WORKER_PORT.*ports 65535 to 65536"):
        gz.ServerSettings.from_env(workers="2", worker_port="65535")


async def test_workers_outlive_no_killed_supervisor(server_process):
    process = server_process(
        GZ_WORKERS="2", GZ_WORKER_PORT="0", GZ_METRICS_PORT=str(free_port()),
        GZ_METRICS_HOST="127.0.0.1",
    )  # fmt: skip
    process.http = f"http://127.0.0.1:{process.env['GZ_METRICS_PORT']}"
    await process.wait_serving()
    pids = [worker["pid"] for worker in workers_view(process)["workers"]]
    # the supervisor is the started process itself (exec), without grpc's library loaded
    assert "cygrpc" not in loaded_libraries(process.process.pid)
    assert "cygrpc" in loaded_libraries(pids[0])
    process.signal(signal.SIGKILL)

    def workers_gone() -> bool:
        return not any(alive(pid) for pid in pids)

    await wait_until(workers_gone, 10, "every worker gone after its supervisor was killed")
    assert process.stderr().count("the supervisor is gone; shutting down") == 2


FAILING_AFTER_A_WHILE = """
import os, pathlib, sys
if os.environ.get("_GZ_WORKER") and pathlib.Path(sys.argv[1]).exists():
    raise RuntimeError("cannot start any more")
from examples.greeter.server import Greeter
Greeter.main()
"""


async def test_a_worker_that_keeps_failing_to_restart_stops_the_instance(server_process, tmp_path):
    marker = tmp_path / "broken"
    process = server_process(
        "-c", FAILING_AFTER_A_WHILE, str(marker), GZ_WORKERS="2", GZ_WORKER_PORT="0",
        GZ_METRICS_PORT=str(free_port()), GZ_METRICS_HOST="127.0.0.1",
    )  # fmt: skip
    process.http = f"http://127.0.0.1:{process.env['GZ_METRICS_PORT']}"
    await process.wait_serving()
    pids = [worker["pid"] for worker in workers_view(process)["workers"]]
    marker.touch()
    os.kill(pids[1], signal.SIGKILL)
    assert await process.wait_exit() == 1
    stderr = process.stderr()
    assert stderr.count("RuntimeError: cannot start any more") == 5
    assert "worker 1 exited with code 1 5 times in a row before it listened" in stderr
    assert not any(alive(pid) for pid in pids)
