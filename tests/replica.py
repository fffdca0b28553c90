"""A greeter replica that misbehaves on request, for the balancing tests.

``python -m tests.replica`` with REPLICA_DELAY (seconds added to every SayHello) and REPLICA_FAIL
(a status code name every SayHello fails with, naming in its details how many SayHello calls
the replica has had: ``call N``).
"""

import asyncio
import os

import grpc

from examples.greeter.server import Greeter


class Replica(Greeter):
    calls = 0

    async def SayHello(self, request, context):
        self.calls += 1
        delay = float(os.environ.get("REPLICA_DELAY", "0"))
        if delay:
            await asyncio.sleep(delay)
        failure = os.environ.get("REPLICA_FAIL")
        if failure:
            await context.abort(
                grpc.StatusCode[failure], f"{self.address} fails on purpose (call {self.calls})"
            )
        return await super().SayHello(request, context)


if __name__ == "__main__":
    Replica.main()
