"""The etcd resolver stays bounded whatever is under its prefix and whatever etcd does: a prefix
over grpc's 4 MB message limit resolves (read in pages, a huge value skipped), garbage keys are
summed up instead of logged one by one, and an etcd outage logs one warning and one info line,
nothing else."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import Iterable

import grpc
import pytest
from etcd3aio.kv import KVService

import gz
from gz.discovery.etcd import EtcdConfig, EtcdRegistration, resolver

from .etcd_server import EtcdServer
from .support import say_hello, wait_until
from .test_etcd import gz_resolve

HUGE = 5 * 1024 * 1024  # one value over the 4 MB a client takes in one answer


@pytest.fixture
def roomy_etcd():
    """An etcd that takes a value of HUGE bytes (its default request limit is 1.5 MB)."""
    server = EtcdServer(max_request_bytes=HUGE + 1024 * 1024).start()
    yield server
    server.close()


async def put_all(etcd: EtcdServer, items: Iterable[tuple[str, bytes]]) -> None:
    """Put many keys quickly: transactions of 100 puts (etcd takes 128 at most), all at once."""
    ops = [KVService.txn_op_put(key, value) for key, value in items]
    async with grpc.aio.insecure_channel(etcd.endpoint) as channel:
        kv = KVService(channel)
        await asyncio.gather(*(kv.txn([], ops[i : i + 100]) for i in range(0, len(ops), 100)))


def skip_lines(caplog: pytest.LogCaptureFixture, key: str = "skipped") -> list[str]:
    """The warnings that mention ``key``."""
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and key in r.getMessage()]  # fmt: skip


async def test_a_prefix_over_the_message_limit_resolves_and_a_huge_value_is_skipped(
    roomy_etcd, serve_greeter, caplog
):
    etcd = roomy_etcd
    caplog.set_level(logging.INFO, "gz.discovery.etcd")
    first, last = await serve_greeter(), await serve_greeter()
    # 5,500 keys of about 1 KB: 5.6 MB of valid endpoints, more than one answer can hold
    padding = "x" * 1000
    keys = [(f"big/{i:05d}-{padding}", first.address.encode()) for i in range(5500)]
    keys.append(("big/zzzz", last.address.encode()))  # on the last page only
    assert sum(len(k) + len(v) for k, v in keys) > 5 * 1024 * 1024
    started = time.monotonic()
    await put_all(etcd, keys)
    await put_all(etcd, [("big/02500-huge", b"x" * HUGE)])  # in the middle of a page
    async with gz.connect(f"etcd://{etcd.endpoint}/big") as channel:
        assert (await say_hello(channel)).served_by in {first.address, last.address}
        assert {e.address for e in channel.endpoints} == {first.address, last.address}
        read_in = time.monotonic() - started
        # a huge value put while the client watches: it reads again and follows on
        await put_all(etcd, [("big/02501-huge", b"y" * HUGE)])
        etcd.etcdctl("del", "big/zzzz")
        await wait_until(
            lambda: {e.address for e in channel.endpoints} == {first.address}, 10, "followed"
        )
    lines = skip_lines(caplog)
    assert len([line for line in lines if "'big/02500-huge'" in line]) == 1, lines
    assert len([line for line in lines if "'big/02501-huge'" in line]) == 1, lines
    assert "skipped 1 key whose value is not host:port: 'big/02500-huge' = <over 4 MB>" in lines[0]
    assert any("reading again" in r.getMessage() for r in caplog.records)
    print(f"wrote and resolved {len(keys)} keys in {read_in:.2f}s")

    done = await asyncio.to_thread(gz_resolve, f"etcd://{etcd.endpoint}/big", "--json")
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)["endpoints"]) == {first.address}
    told = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(told) == 1 and "skipped 2 keys" in told[0], done.stderr
    assert "'big/02500-huge'" in told[0] and "'big/02501-huge'" in told[0], done.stderr


async def test_garbage_keys_are_summed_up_not_logged_one_by_one(etcd, serve_greeter, caplog):
    caplog.set_level(logging.WARNING, "gz.discovery.etcd")
    greeter = await serve_greeter()
    garbage = [(f"junk/{i:05d}", b"not an address") for i in range(10_000)]
    await put_all(etcd, [*garbage, ("junk/valid", greeter.address.encode())])
    async with gz.connect(f"etcd://{etcd.endpoint}/junk") as channel:
        assert (await say_hello(channel)).served_by == greeter.address
        told = skip_lines(caplog, "junk/")
        assert len(told) == 1, f"{len(told)} warnings about the garbage keys"
        line = told[0]
        assert "skipped 10000 keys" in line and "and 9997 more" in line, line
        assert "'junk/00000' = 'not an address'" in line, line
        # more garbage within the minute, one update each: folded into one later line (here
        # the last one, as the client closes), after a valid key behind them was followed
        for i in range(5):
            etcd.etcdctl("put", f"junk/more-{i}", "garbage")
        etcd.etcdctl("put", "junk/valid-2", "127.0.0.1:1")
        await wait_until(lambda: len(channel.endpoints) == 2, 10, "the valid key followed")
        assert len(skip_lines(caplog, "junk/")) == 1
    lines = skip_lines(caplog, "junk/")
    assert len(lines) == 2 and "skipped 5 keys" in lines[1], lines

    done = await asyncio.to_thread(gz_resolve, f"etcd://{etcd.endpoint}/junk")
    assert done.returncode == 0, done.stderr
    told = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(told) == 1 and "skipped 10005 keys" in told[0], done.stderr


async def test_skipped_keys_are_logged_at_most_once_per_interval(monkeypatch, caplog):
    monkeypatch.setattr(resolver, "SKIPPED_LOG_INTERVAL", 0.3)
    caplog.set_level(logging.WARNING, "gz.discovery.etcd")
    skipped = resolver.SkippedKeys("etcd:///x")
    skipped.add(b"x/1", b"bad")
    skipped.report()
    assert len(skip_lines(caplog)) == 1
    for key in (b"x/2", b"x/3"):  # two updates within the interval
        skipped.add(key, b"bad")
        skipped.report()
    assert len(skip_lines(caplog)) == 1
    await wait_until(lambda: len(skip_lines(caplog)) == 2, 5, "the folded line")
    assert "skipped 2 keys" in skip_lines(caplog)[1]
    assert "'x/2' = 'bad', 'x/3' = 'bad'" in skip_lines(caplog)[1]


async def test_an_etcd_outage_logs_one_warning_and_one_info_line(etcd, serve_greeter, caplog):
    """In a client, and in a registration sharing its etcd connection (as in a server that
    calls other services)."""
    caplog.set_level(logging.INFO)
    greeter = await serve_greeter()
    registration = EtcdRegistration(EtcdConfig((etcd.endpoint,)), "greeter", ttl=3)
    await registration.register(greeter.address)  # keeps the lease alive every second
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []  # what asyncio would log as an error
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unhandled.append(context))

    def lines(level: int, text: str = "") -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.levelno == level and text in r.getMessage()]  # fmt: skip

    def warned() -> int:
        return len(lines(logging.WARNING))

    def recovered() -> int:
        return len(lines(logging.INFO, "answers again"))

    try:
        async with gz.connect(f"etcd://{etcd.endpoint}/greeter") as channel:
            assert (await say_hello(channel)).served_by == greeter.address
            for outage in (1, 2):  # a second outage is told as well as the first
                caplog.clear()
                etcd.stop()
                await wait_until(lambda: warned() >= 2, 10, "both told the outage")
                await asyncio.sleep(0.5)  # both retry meanwhile
                etcd.start()
                await wait_until(lambda: recovered() >= 2, 10, "both told the end")
                assert (await say_hello(channel)).served_by == greeter.address
                gc.collect()  # a task or generator dropped while pending is reported now
                await asyncio.sleep(0.1)
                warnings = lines(logging.WARNING) + lines(logging.ERROR)
                assert len(warnings) == 2, (outage, warnings)
                assert len([w for w in warnings if "etcd registration of" in w]) == 1, warnings
                assert len([w for w in warnings if "/greeter: etcd at" in w]) == 1, warnings
                assert recovered() == 2, outage
    finally:
        await registration.deregister()
        loop.set_exception_handler(previous)
    assert unhandled == []
    logged = [r.getMessage() for r in caplog.records]
    assert not [m for m in logged if "Task was destroyed" in m or "aclose()" in m], logged
