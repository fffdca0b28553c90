"""4. Balance: each replica's share of the calls over 4 replicas.

round_robin and p2c_ewma (when it exists), alternating, over 4 equal replicas and over 3 equal
plus one slowed by 20 ms per call; then the plain Kubernetes Service case for contrast: the client
dials one address, an L4 proxy (Envoy tcp_proxy, as kube-proxy) picks a replica per connection,
and servers without max_connection_age keep that one connection for ever.

    python -m benchmarks.balance [--quick] [--json]
"""

from __future__ import annotations

from collections import Counter

import grpc

import gz
from examples.greeter import greeter_pb2_grpc

from .envoy import Envoy
from .features import balancer_missing
from .harness import REQUEST, Children, Samples, load_round, serving
from .report import Result, Row, scenario_main

SLOW_MS = 20
CONCURRENCY = 16


async def shares_round(
    channel: grpc.aio.Channel, calls: int, served: Counter[str], samples: Samples
) -> None:
    say_hello = greeter_pb2_grpc.GreeterStub(channel).SayHello

    async def call() -> None:
        served[(await say_hello(REQUEST)).served_by] += 1

    await load_round(call, calls, CONCURRENCY, samples)


def share_row(label: Row, replicas: list[str], served: Counter[str], samples: Samples) -> Row:
    total = sum(served.values())
    row = {**label, "calls": total}
    for index, address in enumerate(replicas, 1):
        row[f"share_{index}_%"] = 100 * served[address] / total
    figures = samples.summary()
    return {**row, "p50_ms": figures["p50_ms"], "p99_ms": figures["p99_ms"]}


async def compare_balancers(
    cases: dict[str, list[str]], balancers: list[str], calls: int, rounds: int
) -> list[Row]:
    """Every (case, balancer) pair, rounds alternating between the balancers."""
    runs = {}
    for case, replicas in cases.items():
        for balancer in balancers:
            channel = gz.connect("direct:///" + ",".join(replicas), balancer=balancer)
            await shares_round(channel, 200, Counter(), Samples())  # connect every replica
            runs[case, balancer] = (channel, Counter[str](), Samples())
    for index in range(rounds):
        order = list(runs)
        for key in order[index % len(order) :] + order[: index % len(order)]:
            channel, served, samples = runs[key]
            await shares_round(channel, calls // rounds, served, samples)
    rows = []
    for (case, balancer), (channel, served, samples) in runs.items():
        await channel.close()
        rows.append(share_row({"case": case, "balancer": balancer}, cases[case], served, samples))
    return rows


async def plain_service(replicas: list[str], children: Children, calls: int) -> Row:
    """One client through an L4 proxy: one connection, one replica."""
    envoy = Envoy(replicas, mode="tcp")
    children.add(envoy.stop)
    envoy.start()
    served, samples = Counter[str](), Samples()
    async with gz.connect(f"direct:///{envoy.address}") as channel:
        await shares_round(channel, calls, served, samples)
    label = {"case": "L4 Service, 1 connection", "balancer": "(one address)"}
    return share_row(label, replicas, served, samples)


async def run(quick: bool) -> Result:
    result = Result("balance", "4. per-replica shares over 4 replicas")
    balancers = ["round_robin"]
    missing = balancer_missing("p2c_ewma")
    if missing:
        result.notes.append(missing)
    else:
        balancers.append("p2c_ewma")
    calls, rounds = (400, 2) if quick else (4000, 4)
    with Children() as children:
        equal = [children.server("raw") for _ in range(4)]
        slow = children.server("raw", BENCH_DELAY_MS=str(SLOW_MS))
        replicas = await serving(*equal, slow)
        cases = {"equal": replicas[:4], f"4th slowed {SLOW_MS} ms": replicas[:3] + replicas[4:]}
        rows = await compare_balancers(cases, balancers, calls, rounds)
        rows.append(await plain_service(replicas[:4], children, calls // 2))
    result.table(f"share of calls per replica, {CONCURRENCY} concurrent callers").rows = rows
    result.notes.append("share_4 is the slowed replica in the slowed case")
    return result


if __name__ == "__main__":
    scenario_main(run, __doc__.splitlines()[0])
