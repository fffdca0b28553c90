"""3. Client-side balancing vs a proxy: gz over 2 replicas vs a raw client through Envoy.

The same 2 raw replicas behind a real Envoy (STRICT_DNS, round robin per request, one worker)
and behind connect("direct:///a,b") with its defaults. The proxy's CPU is charged to its calls.

    python -m benchmarks.proxy [--quick] [--json]
"""

from __future__ import annotations

import grpc

import gz

from .envoy import Envoy
from .harness import Children, matrix, serving
from .report import Result, scenario_main


async def run(quick: bool) -> Result:
    result = Result("proxy", "3. gz client-side balancing vs raw client through Envoy")
    with Children() as children:
        replicas = await serving(children.server("raw"), children.server("raw"))
        envoy = Envoy(replicas, mode="http")
        children.add(envoy.stop)
        envoy.start()
        through_envoy = grpc.aio.insecure_channel(envoy.address)
        balanced = gz.connect("direct:///" + ",".join(replicas))
        targets = {"envoy": (through_envoy, envoy.pid), "gz": (balanced, None)}
        try:
            rows = await matrix(targets, "envoy", quick, other="proxy")
        finally:
            await through_envoy.close()
            await balanced.close()
    result.table("ratios against the raw client through Envoy; proxy_cpu: Envoy CPU s per "
                 "1,000 calls").rows = rows  # fmt: skip
    result.notes.append(f"gz: connect() with its defaults, balancer {balanced.balancer}")
    return result


if __name__ == "__main__":
    scenario_main(run, __doc__.splitlines()[0])
