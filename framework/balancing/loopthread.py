"""The one background event loop of a process's synchronous channels (``gz.connect_sync``).

It runs what connect()'s machinery runs in the caller's loop (resolvers, connection and health
watchers, pool changes) for every sync channel of the process, however many endpoints they have,
while calls go straight from the calling threads to grpc. It starts with the first channel,
stops when the last one closes, and is a daemon thread, so it never keeps the interpreter alive.
A forked child starts its own: threads do not survive a fork.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

THREAD_NAME = "gz-sync-client"
STOP_TIMEOUT = 1.0  # seconds close() waits for the thread to end
DRAIN_SECONDS = 0.1  # seconds the stopped loop still runs for grpc's last completions


class LoopThread:
    """An asyncio loop running in a daemon thread, shared by ``users`` channels."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.users = 0
        self.pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                # grpc.aio still delivers the completions of the calls the closed channels
                # cancelled; a closed loop would make grpc log "Event loop is closed" for them
                self.loop.run_until_complete(asyncio.sleep(DRAIN_SECONDS))
            self.loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` in the loop and wait for its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def is_current(self) -> bool:
        """Whether the caller runs in this loop's thread."""
        return self._thread is threading.current_thread()

    def stop(self) -> None:
        if self.is_current():
            self.loop.stop()
            return
        with contextlib.suppress(RuntimeError):  # already closed
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(STOP_TIMEOUT)


_lock = threading.Lock()
_current: LoopThread | None = None


def acquire() -> LoopThread:
    """The process's loop thread, started if need be, with one more user."""
    global _current
    with _lock:
        if _current is None:
            _current = LoopThread()
        _current.users += 1
        return _current


def release(thread: LoopThread) -> None:
    """One user fewer; the last one stops the thread."""
    global _current
    with _lock:
        thread.users -= 1
        if thread.users > 0:
            return
        if _current is thread:
            _current = None
    thread.stop()


def _forget_in_child() -> None:
    """After a fork the thread is gone; the child starts its own when it needs one."""
    global _current, _lock
    _current, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
