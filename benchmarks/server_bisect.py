"""9. Server bisect: a raw grpc.aio server plus one piece of a gz Service at a time.

Every variant runs as server processes of its own (benchmarks.raw_server with BENCH_PIECES, or
the gz greeter), REPLICAS of each; h2load (a C client, so that the client leaves the server its
core) sends unary calls to each variant in turn, the order rotated every round, each round to
the variant's next replica. Each row gives rps and the server CPU per call (from /proc, all of
the variant's replicas) as ratios against the raw server; ``raw A/A``, more raw servers, is the
noise of the run. Without h2load (nghttp2-client) a Python client makes the calls.

    python -m benchmarks.server_bisect [--quick] [--json]
"""

from __future__ import annotations

import tempfile
from typing import Any

import grpc

from examples.greeter import greeter_pb2_grpc

from .features import SERVER_MIDDLEWARE_OFF
from .harness import (
    H2LOAD,
    REQUEST,
    SHAPES,
    Children,
    H2Target,
    Samples,
    grpc_body,
    h2load_round,
    h2load_shape,
    matrix,
    serving,
)
from .report import Result, scenario_main

# name -> (kind, BENCH_PIECES or other environment of the server process)
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "raw": ("raw", {}),
    "raw A/A": ("raw", {}),
    "+options": ("raw", {"BENCH_PIECES": "options"}),
    "+pool": ("raw", {"BENCH_PIECES": "pool"}),
    "+reflection": ("raw", {"BENCH_PIECES": "reflection"}),
    "+wrap": ("raw", {"BENCH_PIECES": "wrap"}),
    "+tracing": ("raw", {"BENCH_PIECES": "tracing"}),
    "+metrics": ("raw", {"BENCH_PIECES": "metrics"}),
    "+call_log": ("raw", {"BENCH_PIECES": "call_log"}),
    "+deadline": ("raw", {"BENCH_PIECES": "deadline"}),
    "+recovery": ("raw", {"BENCH_PIECES": "recovery"}),
    "+logging": ("raw", {"BENCH_PIECES": "logging"}),
    "+imports": ("raw", {"BENCH_PIECES": "imports"}),
    "gz defaults": ("gz", {}),
    "gz defaults off": ("gz", SERVER_MIDDLEWARE_OFF),
}
SAY_HELLO = "/greeter.v1.Greeter/SayHello"
# Identical server processes differ by 2-3 % in CPU per call under the very same load (measured
# all at once on this 2-core VM): each variant is averaged over this many processes.
REPLICAS = 3
# A round during which the hypervisor took more than 2 % of the machine's CPU time runs again:
# on a shared VM, rounds with steal time ran up to 40 % slower than the same server's others.
STEAL_LIMIT = 0.02


async def run(quick: bool) -> Result:
    title = "9. server bisect: raw grpc.aio + one piece of gz at a time"
    result = Result("server_bisect", title)
    replicas = 1 if quick else REPLICAS
    with Children() as children, tempfile.TemporaryDirectory(prefix="bisect-") as scratch:
        servers = {
            name: [children.server(kind, **env) for _ in range(replicas)]
            for name, (kind, env) in VARIANTS.items()
        }
        await serving(*(s for group in servers.values() for s in group))
        pids = {name: tuple(s.process.pid for s in group) for name, group in servers.items()}
        if H2LOAD:
            body = grpc_body(REQUEST, scratch)
            targets: dict[str, Any] = {
                name: (H2Target(tuple(s.address for s in group), SAY_HELLO, body), pids[name])
                for name, group in servers.items()
            }
            for target, _ in targets.values():  # warm every replica, not only the first
                for _ in target.addresses:
                    await h2load_round(target, 300, 8, Samples())
            rows = await matrix(
                targets, "raw", quick, other="server", other_cpu=True, load=h2load_round,
                shapes={"unary": (lambda target: target, 1.0)}, concurrencies=(1, 128),
                rounds=12, calls=(600, 2000), steal_limit=STEAL_LIMIT,
            )  # fmt: skip
            for row in rows:
                row["conc"] = "x".join(map(str, h2load_shape(row["conc"])))
            client = "h2load (1 thread; conc: connections x streams)"
        else:  # a channel to the first replica of each
            channels = {
                name: grpc.aio.insecure_channel(g[0].address) for name, g in servers.items()
            }
            try:
                targets = {name: (ch, pids[name][0]) for name, ch in channels.items()}
                rows = await matrix(
                    targets, "raw", quick, other="server", other_cpu=True,
                    shapes={"unary": SHAPES["unary"]}, steal_limit=STEAL_LIMIT,
                )  # fmt: skip
            finally:
                for channel in channels.values():
                    await channel.close()
            client = "a grpc.aio client in this process (h2load is not installed)"
        result.notes.append(await replies_ok(servers))
    result.table(
        f"ratios against the raw server; client: {client}; {replicas} process(es) per variant; "
        "server_cpu: server CPU s per 1,000 calls"
    ).rows = rows
    result.notes.append(
        "+tracing takes part only with a tracer provider (OTEL_TRACES_EXPORTER), unset here"
    )
    return result


async def replies_ok(servers: dict[str, list[Any]]) -> str:
    """h2load sees HTTP statuses only: one call with a real client checks each server's reply."""
    wrong = []
    for name, group in servers.items():
        for server in group:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = greeter_pb2_grpc.GreeterStub(channel)
                reply = await stub.SayHello(REQUEST, timeout=5)
            if reply.message != f"Hello, {REQUEST.name}!":
                wrong.append(name)
    if wrong:
        raise RuntimeError(f"unexpected replies from {', '.join(wrong)}")
    count = sum(map(len, servers.values()))
    return f"every server process answered SayHello correctly ({count} processes)"


if __name__ == "__main__":
    scenario_main(run, __doc__.splitlines()[0])
