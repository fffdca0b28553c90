"""``k8s://namespace/service:port``: the serving endpoints of a Service, from its EndpointSlices.

The official ``kubernetes`` client is blocking, so each watching resolver runs it in a worker
thread (list, then watch from the list's resourceVersion) and hands every changed endpoint set
to the event loop with ``loop.call_soon_threadsafe``. All slices of the service are merged.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from ...backoff import Backoff
from ..endpoint import Endpoint
from ..resolver import Listener, Resolver
from ..target import Target
from .target import KubeTarget, default_namespace, parse_kube_target
from .watcher import SliceWatcher

if TYPE_CHECKING:
    from ...settings import ClientSettings

# Retries of a failing API server: from half a second, doubling, up to 30 s, jittered.
FIRST_RETRY_DELAY = 0.5
LONGEST_RETRY_DELAY = 30.0
# How long a cancelled watch waits for its worker thread to let go of the API server.
STOP_WAIT = 1.0


class KubernetesResolver(Resolver):
    """Pushes the serving endpoints of one Service; each ``watch`` runs its own worker thread.

    ``retry_delays`` is the (first, longest) delay between retries of a failing API server.
    """

    def __init__(
        self,
        target: KubeTarget,
        *,
        text: str = "",
        retry_delays: tuple[float, float] = (FIRST_RETRY_DELAY, LONGEST_RETRY_DELAY),
    ) -> None:
        self.kube_target = target
        self.target = text or str(target)
        self._retry_delays = retry_delays

    async def watch(self, listener: Listener) -> None:
        loop = asyncio.get_running_loop()
        handoff = _Handoff(loop, listener)
        finished: asyncio.Future[None] = loop.create_future()
        worker = SliceWatcher(
            self.kube_target,
            self.target,
            handoff,
            backoff=Backoff(*self._retry_delays),
        )
        thread = threading.Thread(
            target=_run_then_signal,
            args=(worker, loop, finished),
            name=f"gz-k8s {self.target}",
            daemon=True,
        )
        thread.start()
        try:
            await asyncio.shield(finished)
        finally:
            handoff.close()
            worker.stop()
            await _let_go(finished)


class _Handoff:
    """Carries the worker thread's reports onto the event loop; none arrive after close()."""

    def __init__(self, loop: asyncio.AbstractEventLoop, listener: Listener) -> None:
        self._loop, self._listener = loop, listener
        self._open = True

    def update(self, endpoints: frozenset[Endpoint]) -> None:
        self._post(self._listener.update, endpoints)

    def change(self, added: Collection[Endpoint], removed: Collection[Endpoint]) -> None:
        self._post(self._listener.change, added, removed)

    def error(self, message: str) -> None:
        self._post(self._listener.error, message)

    def close(self) -> None:
        self._open = False

    def _post(self, callback: Callable[..., None], *values: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self._loop.call_soon_threadsafe(self._deliver, callback, *values)

    def _deliver(self, callback: Callable[..., None], *values: object) -> None:
        if self._open:
            callback(*values)


async def _let_go(finished: asyncio.Future[None]) -> None:
    """Wait (briefly) for the worker thread to end, even through a second cancellation as
    asyncio.run gives: a daemon thread still running Python code when the interpreter
    finalizes can abort the process."""
    deadline = asyncio.get_running_loop().time() + STOP_WAIT
    while not finished.done():
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(finished), remaining)


def _run_then_signal(
    worker: SliceWatcher, loop: asyncio.AbstractEventLoop, finished: asyncio.Future[None]
) -> None:
    try:
        worker.run()
    finally:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_set_done, finished)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def build(target: Target, settings: ClientSettings | None = None) -> KubernetesResolver:
    """The resolver of a parsed ``k8s://`` target; TargetError if it is malformed."""
    return KubernetesResolver(parse_kube_target(target), text=target.text)


__all__ = ["KubeTarget", "KubernetesResolver", "build", "default_namespace", "parse_kube_target"]
