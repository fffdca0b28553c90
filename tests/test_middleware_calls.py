"""Recovery, the call log, deadlines and load shedding, on servers in this process."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time

import grpc
import pytest

import gz
from examples.greeter import greeter_pb2, greeter_pb2_grpc
from examples.greeter.server import Greeter
from gz.logs import JsonFormatter
from gz.middleware import CallContext, Kind, Method, compose
from gz.middleware.deadline import Deadline, _inherited, time_remaining
from gz.middleware.shedding import BUCKET_SECONDS, Shedding

from .middleware_relay import SECRET, Relay
from .support import ROOT, say_hello, wait_until


@pytest.fixture
async def relay(serve_greeter):
    return await serve_greeter(Relay)


async def test_a_handler_exception_is_internal_with_an_error_id_and_logged(relay, caplog):
    caplog.set_level(logging.INFO)
    async with grpc.aio.insecure_channel(relay.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await say_hello(channel, "raise")
    assert raised.value.code() is grpc.StatusCode.INTERNAL
    details = raised.value.details()
    assert SECRET not in details and "RuntimeError" not in details
    error_id = details.removeprefix("internal error (error id ").removesuffix(")")
    assert len(error_id) == 16

    (logged,) = [r for r in caplog.records if r.name == "gz.recovery"]
    assert logged.error_id == error_id and logged.levelno == logging.ERROR
    assert SECRET in caplog.text  # the stack trace, with the exception text, is in the log

    # Recovery aborts the call, which sends the status before the call log (outside recovery)
    # writes its line: the client may see the status first.
    def call_lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "gz.call"]

    await wait_until(call_lines, 10, "the call logged")
    (line,) = call_lines()
    assert (line.code, line.error_id, line.side) == ("INTERNAL", error_id, "server")


async def test_without_recovery_grpc_itself_puts_the_exception_text_in_the_status(serve_greeter):
    service = await serve_greeter(Relay, recovery=False)
    async with grpc.aio.insecure_channel(service.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await say_hello(channel, "raise")
    assert raised.value.code() is grpc.StatusCode.UNKNOWN
    assert SECRET in raised.value.details()  # why recovery is on by default


async def test_the_call_log_writes_one_json_line_for_a_slow_call_without_the_request(
    serve_greeter, caplog
):
    service = await serve_greeter(slow_call=0.05)
    caplog.set_level(logging.INFO, logger="gz.call")
    async with grpc.aio.insecure_channel(service.address) as channel:
        await say_hello(channel, "fast-and-private")
        await say_hello(channel, "slow-and-private", delay_seconds=0.1)
    await service.server.stop()  # its handlers are done, and so are their call log lines
    (record,) = [r for r in caplog.records if r.name == "gz.call"]
    line = json.loads(JsonFormatter().format(record))
    assert line["message"].startswith("slow call")
    assert line["method"] == "/greeter.v1.Greeter/SayHello"
    assert (line["code"], line["side"], line["level"]) == ("OK", "server", "warning")
    assert line["peer"].startswith("ipv4:127.0.0.1:")
    assert 100 <= line["duration_ms"] < 1000
    assert "private" not in json.dumps(line)


async def test_a_saturated_server_sheds_with_resource_exhausted_and_stays_fast(serve_greeter):
    service = await serve_greeter(max_concurrency=2)
    async with grpc.aio.insecure_channel(service.address) as channel:

        async def timed_call() -> tuple[grpc.StatusCode, float]:
            started = time.monotonic()
            try:
                await say_hello(channel, "busy", delay_seconds=0.3)
                return grpc.StatusCode.OK, time.monotonic() - started
            except grpc.aio.AioRpcError as error:
                return error.code(), time.monotonic() - started

        results = await asyncio.gather(*(timed_call() for _ in range(6)))
    accepted = [took for code, took in results if code is grpc.StatusCode.OK]
    shed = [took for code, took in results if code is grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert (len(accepted), len(shed)) == (2, 4)
    assert max(shed) < min(accepted)  # refused at once, not queued behind the accepted ones
    assert max(accepted) < 1.0  # which still take about their 300 ms


def test_adaptive_shedding_refuses_beyond_what_recent_latency_allows():
    now, cpu = [100.0], [95.0]
    shedding = Shedding(cpu_threshold=90, cpu_percent=lambda: cpu[0], clock=lambda: now[0])
    # History: 10 calls of 100 ms completed per 100 ms bucket -> 100/s x 0.1 s = 10 in flight.
    for _ in range(5):
        for _ in range(10):
            shedding._window.add(0.1)
        now[0] += BUCKET_SECONDS * 1.01  # into the next bucket, whatever the float rounding
    shedding.in_flight = 10
    assert shedding.overloaded() is None  # at the limit: still accepted
    shedding.in_flight = 11
    assert "CPU above 90%" in shedding.overloaded()
    cpu[0] = 10.0
    assert shedding.overloaded() is not None  # cooling off for a second after a drop
    now[0] += 1.1
    assert shedding.overloaded() is None  # CPU is low again: everything is accepted


async def test_client_deadlines_default_per_method_and_capped_by_the_inherited_one():
    seen: list[float | None] = []

    async def endpoint(ctx: CallContext, request: object) -> None:
        seen.append(None if ctx.deadline is None else ctx.deadline - time.monotonic())

    deadline = Deadline(timeout=5, method_timeouts={"SayHello": 0.5, "/pkg.S/Exact": 2})
    for name in ("/greeter.v1.Greeter/SayHello", "/pkg.S/Exact", "/pkg.S/Other"):
        handler = compose([deadline], Method(name, Kind.UNARY_UNARY, "client"), endpoint)
        await handler(CallContext(Method(name, Kind.UNARY_UNARY, "client"), []), None)
        token = _inherited.set(time.monotonic() + 0.1)  # as inside a server handler
        try:
            await handler(CallContext(Method(name, Kind.UNARY_UNARY, "client"), []), None)
        finally:
            _inherited.reset(token)
    assert [round(s, 1) for s in seen] == [0.5, 0.1, 2.0, 0.1, 5.0, 0.1]


@pytest.mark.parametrize(
    ("timeout", "method_timeouts", "expires"),
    [
        ("30s", "SayHello=200ms", "SayHello"),  # the method's own entry
        ("200ms", "greeter.v1.Greeter/SayHello=30s", "LotsOfReplies"),  # GZ_TIMEOUT for the rest
    ],
)
async def test_gz_timeout_and_gz_method_timeouts_from_the_environment_through_connect(
    serve_greeter, monkeypatch, timeout, method_timeouts, expires
):
    """A 200 ms default deadline against a 2 s handler expires; the other method's deadline
    (30 s) lets its 0.3 s handler finish: wide margins for a loaded machine."""
    monkeypatch.setenv("GZ_TIMEOUT", timeout)
    monkeypatch.setenv("GZ_METHOD_TIMEOUTS", method_timeouts)
    service = await serve_greeter()

    async def outcome(stub: greeter_pb2_grpc.GreeterStub, method: str) -> grpc.StatusCode:
        request = greeter_pb2.HelloRequest(count=1, delay_seconds=2.0 if method == expires else 0.3)
        try:
            if method == "SayHello":
                await stub.SayHello(request)
            else:
                [reply async for reply in stub.LotsOfReplies(request)]
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    async with gz.connect(f"direct:///{service.address}") as channel:  # settings: env
        stub = greeter_pb2_grpc.GreeterStub(channel)
        codes = {method: await outcome(stub, method) for method in ("SayHello", "LotsOfReplies")}
    expected = {method: grpc.StatusCode.OK for method in codes}
    assert codes == {**expected, expires: grpc.StatusCode.DEADLINE_EXCEEDED}


class AsyncProbe(Greeter):
    async def SayHello(self, request, context):
        return self.reply(repr(time_remaining()))


class SyncProbe(Greeter):
    def SayHello(self, request, context):  # runs in the server's thread pool
        return self.reply(repr(time_remaining()))


@pytest.mark.parametrize("probe", [AsyncProbe, SyncProbe])
async def test_the_server_deadline_is_inherited_only_while_the_handler_runs(serve_greeter, probe):
    service = await serve_greeter(probe)
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)
        with_deadline = await stub.SayHello(greeter_pb2.HelloRequest(), timeout=1)
        without = await stub.SayHello(greeter_pb2.HelloRequest())
    assert 0.5 < float(with_deadline.message) <= 1.01
    assert without.message == "None"
    assert time_remaining() is None


def test_the_call_log_is_silent_where_logging_is_not_set_up():
    """A command-line client prints its own one-line error, not the call log's too."""
    code = (
        "import asyncio, gz, grpc\n"
        "from tests.support import say_hello\n"
        "async def main():\n"
        "    async with gz.connect('direct:///127.0.0.1:1', retry=False) as channel:\n"
        "        try:\n"
        "            await say_hello(channel)\n"
        "        except grpc.aio.AioRpcError as error:\n"
        "            print(error.code().name)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=30)  # fmt: skip
    assert (done.stdout, done.stderr) == ("UNAVAILABLE\n", "")
