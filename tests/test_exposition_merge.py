"""gz.workers.exposition.merge: the /metrics of worker processes, rendered by real
prometheus_client registries (and by gz's own GrpcCollector), merged into one and parsed back
with prometheus_client's text parser."""

from __future__ import annotations

import types

import grpc
import prometheus_client.metrics
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gz.middleware.chain import Kind, Method
from gz.middleware.metrics import GrpcCollector
from gz.workers.exposition import merge

SeriesKey = tuple[str, frozenset[tuple[str, str]]]


def samples(text: str) -> dict[SeriesKey, float]:
    """{(sample name, labels): value} of an exposition; no series twice."""
    found: dict[SeriesKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, key
            found[key] = sample.value
    return found


def types_of(text: str) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def worker(
    monkeypatch: pytest.MonkeyPatch,
    created: float,
    calls: dict[str, int],
    latencies: list[float],
    memory: float,
    sizes: list[float],
    extra: bool = False,
) -> str:
    """The exposition of one worker's registry, its metrics created at ``created``."""
    clock = types.SimpleNamespace(time=lambda: created)
    monkeypatch.setattr(prometheus_client.metrics, "time", clock)
    registry = CollectorRegistry()
    counter = Counter("app_calls", "Calls.", ["method"], registry=registry)
    for method, count in calls.items():
        counter.labels(method).inc(count)
    histogram = Histogram("app_latency_seconds", "Latency.", registry=registry, buckets=(0.1, 1))
    for seconds in latencies:
        histogram.observe(seconds)
    Gauge("app_memory_bytes", "Memory.", registry=registry).set(memory)
    summary = Summary("app_size_bytes", "Sizes.", registry=registry)
    for size in sizes:
        summary.observe(size)
    if extra:  # families only this worker has
        Counter("app_retries", "Retries.", registry=registry).inc(3)
        Gauge("app_pool", "Pool size.", ["worker"], registry=registry).labels("x").set(4)
    return generate_latest(registry).decode()


@pytest.fixture
def merged(monkeypatch: pytest.MonkeyPatch) -> str:
    # Worker 1's metrics are the older ones: the merged _created is not just the first worker's.
    first = worker(monkeypatch, 2000.0, {"get": 1, "put": 2}, [0.05, 0.5], 100, [10])
    second = worker(monkeypatch, 1000.0, {"get": 10}, [0.05, 5.0], 200, [20, 30], extra=True)
    return merge([first, second])


def test_counters_add_up_per_label_set(merged: str) -> None:
    found = samples(merged)
    assert found["app_calls_total", frozenset({("method", "get")})] == 11
    assert found["app_calls_total", frozenset({("method", "put")})] == 2
    assert types_of(merged)["app_calls"] == "counter"
    assert merged.count("# TYPE app_calls_total counter\n") == 1
    assert merged.count("# HELP app_calls_total Calls.\n") == 1
    assert "_total_total" not in merged


def test_histogram_buckets_count_and_sum_add_up(merged: str) -> None:
    found = samples(merged)
    buckets = {"0.1": 2, "1.0": 3, "+Inf": 4}
    for le, count in buckets.items():
        assert found["app_latency_seconds_bucket", frozenset({("le", le)})] == count
    assert found["app_latency_seconds_count", frozenset()] == 4
    assert found["app_latency_seconds_sum", frozenset()] == pytest.approx(5.6)
    assert types_of(merged)["app_latency_seconds"] == "histogram"


def test_summary_count_and_sum_add_up(merged: str) -> None:
    found = samples(merged)
    assert found["app_size_bytes_count", frozenset()] == 3
    assert found["app_size_bytes_sum", frozenset()] == 60


def test_gauges_are_kept_per_worker(merged: str) -> None:
    found = samples(merged)
    series = {key: value for key, value in found.items() if key[0] == "app_memory_bytes"}
    assert series == {
        ("app_memory_bytes", frozenset({("worker", "0")})): 100,
        ("app_memory_bytes", frozenset({("worker", "1")})): 200,
    }
    assert merged.count("# TYPE app_memory_bytes gauge\n") == 1


def test_created_is_the_earliest(merged: str) -> None:
    found = samples(merged)
    assert found["app_calls_created", frozenset({("method", "get")})] == 1000.0
    assert found["app_calls_created", frozenset({("method", "put")})] == 2000.0  # worker 0 only
    assert found["app_latency_seconds_created", frozenset()] == 1000.0
    assert found["app_size_bytes_created", frozenset()] == 1000.0
    created = [dict(labels) for name, labels in found if name.endswith("_created")]
    assert len(created) == 5 and not any("worker" in labels for labels in created)


def test_a_family_of_one_worker_is_there(merged: str) -> None:
    found = samples(merged)
    assert found["app_retries_total", frozenset()] == 3
    assert found["app_retries_created", frozenset()] == 1000.0
    # A sample with a worker label of its own keeps it, and gets no other.
    assert found["app_pool", frozenset({("worker", "x")})] == 4


def test_merging_one_worker_of_counts_gives_it_back() -> None:
    registry = CollectorRegistry()
    Counter("app_calls", "Calls.", ["method"], registry=registry).labels("get").inc(2)
    Histogram("app_latency_seconds", "Latency.", registry=registry).observe(0.3)
    Summary("app_size_bytes", "Sizes.", registry=registry).observe(7)
    text = generate_latest(registry).decode()
    assert merge([text]) == text


def test_summary_quantiles_are_kept_per_worker() -> None:
    text = (
        "# HELP rpc_seconds RPC latency.\n"
        "# TYPE rpc_seconds summary\n"
        'rpc_seconds{quantile="0.5"} 0.2\n'
        "rpc_seconds_count 3\n"
        "rpc_seconds_sum 0.9\n"
    )
    found = samples(merge([text, text]))
    assert found["rpc_seconds", frozenset({("quantile", "0.5"), ("worker", "0")})] == 0.2
    assert found["rpc_seconds", frozenset({("quantile", "0.5"), ("worker", "1")})] == 0.2
    assert found["rpc_seconds_count", frozenset()] == 6


def test_garbage_names_its_worker(merged: str) -> None:
    with pytest.raises(ValueError, match="worker 1"):
        merge([merged, "this is { not metrics\n"])


def test_nothing_to_merge() -> None:
    assert merge([]) == ""


UNARY = {"grpc_type": "unary", "grpc_service": "greeter.v1.Greeter", "grpc_method": "SayHello"}


def grpc_worker(calls: int, seconds: float) -> str:
    """The exposition of gz's GrpcCollector after ``calls`` unary server calls of ``seconds``."""
    collector = GrpcCollector()
    method = Method("/greeter.v1.Greeter/SayHello", Kind.UNARY_UNARY, "server")
    stats = collector.stats(method, (0.1, 1.0))
    with stats.lock:
        for _ in range(calls):
            stats.started += 1
            stats.received += 1
            stats.observe(seconds, grpc.StatusCode.OK)
            stats.sent += 1
    return generate_latest(collector).decode()


def test_grpc_collectors_of_two_workers() -> None:
    merged = merge([grpc_worker(2, 0.05), grpc_worker(3, 0.5)])
    found = samples(merged)
    labels = frozenset(UNARY.items())
    assert found["grpc_server_started_total", labels] == 5
    assert found["grpc_server_handled_total", labels | {("grpc_code", "OK")}] == 5
    assert found["grpc_server_msg_received_total", labels] == 5
    assert found["grpc_server_msg_sent_total", labels] == 5
    for le, count in {"0.1": 2, "1.0": 5, "+Inf": 5}.items():
        assert found["grpc_server_handling_seconds_bucket", labels | {("le", le)}] == count
    assert found["grpc_server_handling_seconds_count", labels] == 5
    assert found["grpc_server_handling_seconds_sum", labels] == pytest.approx(1.6)
    # Families without samples (no client calls here) keep their HELP and TYPE.
    assert types_of(merged)["grpc_client_started"] == "counter"
    assert merged.count("# TYPE grpc_client_started_total counter\n") == 1


def test_a_family_of_two_types_names_the_worker() -> None:
    gauge = "# HELP jobs Jobs.\n# TYPE jobs gauge\njobs 1\n"
    counter = "# HELP jobs_total Jobs.\n# TYPE jobs_total counter\njobs_total 1\n"
    with pytest.raises(ValueError, match="worker 1: jobs is a counter"):
        merge([gauge, counter])
