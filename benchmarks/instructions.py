"""10. Instructions: what gz's default middleware costs per unary call, counted, not timed.

On a shared VM timings of a few microseconds move by more than the change being measured. The
number of instructions a call executes does not: this scenario runs the server's wrapped handler
(a gz Service's chain around a servicer method that does nothing, against a stand-in for grpc's
servicer context whose call has a deadline) and the client's default chain, N calls and none, in
child processes under valgrind's callgrind, and reports instructions per call: the difference
divided by N. One row per default middleware alone (the others off), all defaults, and all off.
Without valgrind the scenario says so and reports nothing.

    python -m benchmarks.instructions [--quick] [--json]
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys

from .report import Result, scenario_main

SERVER_DEFAULTS = ("TRACING", "METRICS", "CALL_LOG", "DEADLINE", "RECOVERY")
CLIENT_DEFAULTS = ("TRACING", "METRICS", "CALL_LOG", "DEADLINE")
# row -> (side, the defaults left on)
ROWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "server: all defaults": ("server", SERVER_DEFAULTS),
    **{f"server: {name.lower()} alone": ("server", (name,)) for name in SERVER_DEFAULTS[1:]},
    "server: defaults off": ("server", ()),
    "client: all defaults": ("client", CLIENT_DEFAULTS),
    "client: defaults off": ("client", ()),
}
_COLLECTED = re.compile(r"Collected : (\d+)")


def instructions(side: str, on: tuple[str, ...], calls: int) -> int:
    """Instructions of a child process making ``calls`` calls (valgrind counts them)."""
    names = SERVER_DEFAULTS if side == "server" else CLIENT_DEFAULTS
    env = {**os.environ, **{f"GZ_{name}": str(name in on).lower() for name in names}}
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
               "-m", "benchmarks.instructions", "--child", side, str(calls)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    found = _COLLECTED.search(done.stderr)
    if done.returncode or found is None:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-500:]}")
    return int(found.group(1))


async def run(quick: bool) -> Result:
    result = Result("instructions", "10. instructions per unary call of the default middleware")
    if shutil.which("valgrind") is None:
        result.notes.append("not measured: valgrind is not installed (apt-get install valgrind)")
        return result
    calls = 1_000 if quick else 5_000
    rows = ROWS if not quick else {k: v for k, v in ROWS.items() if "all defaults" in k}
    table = []
    for label, (side, on) in rows.items():
        base, loaded = await asyncio.gather(
            asyncio.to_thread(instructions, side, on, 0),
            asyncio.to_thread(instructions, side, on, calls),
        )
        table.append({"chain": label, "instructions_per_call": round((loaded - base) / calls)})
    result.table(f"callgrind, {calls:,} calls against none; a no-op servicer method").rows = table
    return result


def child(side: str, calls: int) -> None:
    """Make ``calls`` calls through the chain of ``side`` as the GZ_* variables set it."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    import gz
    from gz.middleware import CallContext, Kind, Method, compose
    from gz.middleware.defaults import client_middleware, server_middleware
    from gz.middleware.handlers import wrap_method_handler

    from .middleware_overhead import FakeServicerContext, echo

    name = "/greeter.v1.Greeter/SayHello"
    if side == "server":
        handler = wrap_method_handler(
            name, grpc.unary_unary_rpc_method_handler(echo),
            server_middleware(gz.ServerSettings.from_env()), ThreadPoolExecutor(1),
        ).unary_unary  # fmt: skip
        context = FakeServicerContext(deadline=1.0)

        def call() -> object:
            return handler(1, context)
    else:
        method = Method(name, Kind.UNARY_UNARY, "client")

        async def endpoint(ctx: CallContext, request: object) -> object:
            return request

        chain = compose(client_middleware(gz.ClientSettings.from_env(), 1.0), method, endpoint)

        def call() -> object:
            return chain(CallContext(method, []), 1)

    async def calls_made() -> None:
        for _ in range(calls):
            await call()

    asyncio.run(calls_made())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
    else:
        scenario_main(run, __doc__.splitlines()[0])
