"""A process that only calls, then serves too when told: the GZ_METRICS_PORT of a client.

Reads commands from stdin, one a line. ``call TARGET``: one SayHello through gz.connect(), then
prints ``called``. ``serve``: starts a greeter in this process (its settings from the same
environment), then prints ``serving`` and the port of its HTTP side. End of input: exits, leaving
the HTTP side to the process's exit.
"""

from __future__ import annotations

import asyncio
import sys

import gz
from examples.greeter.server import Greeter
from tests.support import say_hello


async def main() -> None:
    loop = asyncio.get_running_loop()
    channels: list[gz.BalancedChannel] = []
    services: list[Greeter] = []
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command, _, argument = line.strip().partition(" ")
        if command == "call":
            channels.append(gz.connect(argument))
            await say_hello(channels[-1])
            print("called", flush=True)
        elif command == "serve":
            settings = gz.ServerSettings.from_env(listen="127.0.0.1:0", shutdown_drain=0)
            services.append(Greeter(settings))
            await services[-1].server.start()
            probes = services[-1].server.probes
            print("serving", probes.port if probes else None, flush=True)
    for channel in channels:
        await channel.close()
    for service in services:
        await service.server.stop()


if __name__ == "__main__":
    asyncio.run(main())
