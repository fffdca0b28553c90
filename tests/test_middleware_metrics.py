"""Metrics: a real server process's /metrics parsed with prometheus_client's parser, its probes,
and the client-side families of this process."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import gz
from examples.greeter import greeter_pb2, greeter_pb2_grpc
from gz.discovery import Listener, Resolver
from gz.middleware.metrics import BUCKETS

from .support import free_port, http_get, say_hello, wait_until

UNARY = {"grpc_type": "unary", "grpc_service": "greeter.v1.Greeter", "grpc_method": "SayHello"}
STREAM = {**UNARY, "grpc_type": "server_stream", "grpc_method": "LotsOfReplies"}


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of an exposition."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_endpoint_counts_calls_per_code_with_go_buckets(server_process):
    port = free_port()
    server = server_process("-m", "tests.middleware_relay", GZ_METRICS_PORT=str(port),
                            GZ_SHUTDOWN_DRAIN="2")  # fmt: skip
    await server.wait_serving()
    base = f"http://127.0.0.1:{port}"
    async with grpc.aio.insecure_channel(server.address) as channel:
        for _ in range(3):
            await say_hello(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await say_hello(channel, "raise")
        replies = greeter_pb2_grpc.GreeterStub(channel).LotsOfReplies(
            greeter_pb2.HelloRequest(name="x", count=4)
        )
        assert len([reply async for reply in replies]) == 4

    status, text = await asyncio.to_thread(http_get, f"{base}/metrics")
    assert status == 200
    parsed = samples(text)
    assert value(parsed, "grpc_server_started_total", **UNARY) == 4
    assert value(parsed, "grpc_server_handled_total", **UNARY, grpc_code="OK") == 3
    assert value(parsed, "grpc_server_handled_total", **UNARY, grpc_code="Internal") == 1
    assert value(parsed, "grpc_server_msg_received_total", **UNARY) == 4
    assert value(parsed, "grpc_server_msg_sent_total", **UNARY) == 3  # not for the failed one
    assert value(parsed, "grpc_server_msg_sent_total", **STREAM) == 4
    assert value(parsed, "grpc_server_handled_total", **STREAM, grpc_code="OK") == 1
    bounds = sorted(
        float(dict(labels)["le"])
        for name, labels in parsed
        if name == "grpc_server_handling_seconds_bucket" and ("grpc_method", "SayHello") in labels
    )
    assert bounds == [*BUCKETS, float("inf")]  # go-grpc-prometheus's (prometheus.DefBuckets)
    assert value(parsed, "grpc_server_handling_seconds_bucket", **UNARY, le="+Inf") == 4
    assert value(parsed, "grpc_server_handling_seconds_count", **UNARY) == 4
    assert value(parsed, "grpc_server_handling_seconds_bucket", **UNARY, le="10.0") == 4

    assert await asyncio.to_thread(http_get, f"{base}/healthz") == (200, "ok\n")
    assert (await asyncio.to_thread(http_get, f"{base}/readyz"))[0] == 200
    server.signal()  # draining for GZ_SHUTDOWN_DRAIN: not ready any more, still alive

    async def not_ready() -> bool:
        return (await asyncio.to_thread(http_get, f"{base}/readyz"))[0] == 503

    await wait_until(not_ready, 5, "/readyz 503 while draining", poll=0.05)
    assert (await asyncio.to_thread(http_get, f"{base}/healthz"))[0] == 200
    assert await server.wait_exit() == 0


async def test_client_metrics_resolver_and_picks_in_this_process(server_process):
    server = server_process()
    await server.wait_serving()
    before = samples(generate_latest(REGISTRY).decode())
    target = f"direct:///{server.address}"
    async with gz.connect(target) as channel:
        for _ in range(5):
            await say_hello(channel)
    after = samples(generate_latest(REGISTRY).decode())

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("grpc_client_started_total", **UNARY) == 5
    assert grew("grpc_client_handled_total", **UNARY, grpc_code="OK") == 5
    assert grew("grpc_client_msg_sent_total", **UNARY) == 5
    assert grew("grpc_client_handling_seconds_count", **UNARY) == 5
    assert grew("gz_balancer_picks_total", endpoint=server.address) == 5
    assert value(after, "gz_resolver_endpoints", target=target) == 1
    assert grew("gz_resolver_updates_total", target=target) >= 1


class FailingResolver(Resolver):
    """Reports resolution errors and never an endpoint."""

    target = "test:///failing-resolver"

    def __init__(self, errors: int) -> None:
        self.errors = errors

    async def watch(self, listener: Listener) -> None:
        for _ in range(self.errors):
            listener.error(f"{self.target}: lookup failed")
        await asyncio.Event().wait()


async def test_resolver_errors_are_counted_per_target():
    def errors() -> float:
        parsed = samples(generate_latest(REGISTRY).decode())
        return value(parsed, "gz_resolver_errors_total", target=FailingResolver.target)

    before = errors()
    async with gz.connect(FailingResolver(errors=2)):  # resolving starts on entering
        await wait_until(lambda: errors() - before >= 2, 10, "two errors counted")
    assert errors() - before == 2


async def test_metrics_switched_off_counts_nothing(server_process):
    server = server_process()
    await server.wait_serving()
    before = samples(generate_latest(REGISTRY).decode())
    settings = gz.ClientSettings(metrics=False)
    async with gz.connect(f"direct:///{server.address}", settings=settings) as channel:
        await say_hello(channel)
    after = samples(generate_latest(REGISTRY).decode())
    assert value(after, "grpc_client_started_total", **UNARY) == value(
        before, "grpc_client_started_total", **UNARY
    )
