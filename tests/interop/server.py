"""Serve grpc.testing.TestService from a gz Service, for gRPC's own interop clients:

    python -m tests.interop.server --port 10000 [--sync]

listens on 127.0.0.1:PORT (plaintext) with gz's default middleware; ``--sync`` serves the plain
``def`` handlers instead of the ``async def`` ones. Other settings come from GZ_* variables as
for any gz service (GZ_AUTH_TOKENS=secret turns bearer auth on). SIGTERM or Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import os
import sys

import gz

from .service import GzAsyncTestService, GzSyncTestService


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.interop.server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, required=True, help="the port to listen on")
    parser.add_argument("--sync", action="store_true", help="serve the plain def handlers")
    args = parser.parse_args(argv)
    os.environ["GZ_LISTEN"] = f"127.0.0.1:{args.port}"
    os.environ.setdefault("GZ_NAME", "interop")
    os.environ.setdefault("GZ_SHUTDOWN_DRAIN", "0")
    return gz.run(GzSyncTestService if args.sync else GzAsyncTestService)


if __name__ == "__main__":
    sys.exit(main())
