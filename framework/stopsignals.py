"""SIGTERM and SIGINT as a queue, for a server and a GZ_WORKERS supervisor alike: the first
asks for a graceful stop, a second for an immediate one."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_signals() -> Iterator[asyncio.Queue[int]]:
    """While the block runs, each SIGTERM or SIGINT is put in the queue yielded, not acted on."""
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[int] = asyncio.Queue()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, signals.put_nowait, signum)
    try:
        yield signals
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
