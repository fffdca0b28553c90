"""The greeter client in synchronous code: the same calls as client.py, on a channel from
``gz.connect_sync()`` instead of ``gz.connect()``, with no event loop in sight.

Usage::

    python -m examples.greeter.sync_client direct:///127.0.0.1:8080,127.0.0.1:8081 --calls 100
    python -m examples.greeter.sync_client greeter --calls 100

A bare name such as ``greeter`` is a logical service: GZ_TARGET_GREETER or GZ_DISCOVERY decides
where it points.
"""

import argparse
from collections import Counter

import gz

from . import greeter_pb2, greeter_pb2_grpc


def main(target: str, calls: int = 10, name: str = "world") -> Counter[str]:
    """Make ``calls`` SayHello calls to ``target``; print and return a Counter of ``served_by``."""
    served: Counter[str] = Counter()
    with gz.connect_sync(target) as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)
        for _ in range(calls):
            reply = stub.SayHello(greeter_pb2.HelloRequest(name=name))
            served[reply.served_by] += 1
    print(served)
    return served


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.greeter.sync_client",
        description="Call Greeter.SayHello N times from synchronous code.",
    )
    parser.add_argument("target", help="a gz target, e.g. direct:///127.0.0.1:8080 or greeter")
    parser.add_argument("--calls", type=int, default=10, help="number of calls (default 10)")
    parser.add_argument("--name", default="world", help="the name to greet")
    args = parser.parse_args(argv)
    try:
        main(args.target, args.calls, args.name)
    except ValueError as error:  # a malformed target: one clear line, exit 2
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    cli()
