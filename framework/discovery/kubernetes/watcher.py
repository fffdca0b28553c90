"""The worker thread's loop: list, then watch from the list's resourceVersion, forever.

It keeps every slice of the service and reports what an event changed (after a list, the merged
set if it differs from the last one reported). Errors are reported and retried with jittered
backoff while the last set stays; only the API server's own answer (a list, or watch events)
ever changes the set, so an error never empties it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ...backoff import Backoff
from ..resolver import Listener
from .api import Expired, SliceApi, StreamCut, WatchEnded, connect, explain, status_message
from .slices import Json, ServiceSlices, resource_version
from .target import KubeTarget

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger("gz.discovery.k8s")

# A watch that ends this soon without an event counts as a failure, so that a server that
# closes every watch at once is not hammered.
SHORTEST_HEALTHY_WATCH = 1.0


class SliceWatcher:
    """Runs in one worker thread (``run``); ``stop`` may be called from any thread."""

    def __init__(
        self,
        target: KubeTarget,
        name: str,
        listener: Listener,
        *,
        backoff: Backoff,
        connect: Callable[[], ApiClient] = connect,
    ) -> None:
        self.target, self.name = target, name
        self._listener = listener
        self._backoff = backoff
        self._connect = connect
        self._slices = ServiceSlices(target.service, target.port)
        self._version: str | None = None  # where the next watch starts; None: list first
        self._watched_since_list = False
        self._missing_port: str | None = None
        self._last_error: str | None = None
        self._stopping = threading.Event()
        self._api: SliceApi | None = None

    # -- thread entry points ------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self._list_and_watch()
                except Exception as error:
                    if self._stopping.is_set():
                        break
                    self._fail(explain(error, self.target, self._host()))
                    self._forget_client_after(error)
                    self._pause()
        finally:
            if self._api is not None:
                self._api.close()

    def stop(self) -> None:
        self._stopping.set()
        # Read once: the worker thread may drop its client (after a 401) between two reads. If
        # it makes a new one after this read, it sees _stopping before using it.
        api = self._api
        if api is not None:
            api.interrupt()

    # -- list and watch -----------------------------------------------------------------------
    def _list_and_watch(self) -> None:
        if self._api is None:
            self._api = SliceApi(self._connect(), self.target)
        while not self._stopping.is_set():
            if self._version is None:
                self._relist(self._api)
            try:
                self._watch(self._api)
            except Expired as gone:
                log.info("%s: %s; listing again", self.name, gone)
                self._version = None
                if not self._watched_since_list:  # a server that expires every new watch
                    self._pause()
            except StreamCut as cut:
                # Not reported: watching again from the version we hold loses nothing, and
                # if that fails, that failure is reported.
                if not self._stopping.is_set():
                    log.info("%s: the watch broke off (%s); watching again", self.name, cut)
                    self._pause()

    def _relist(self, api: SliceApi) -> None:
        items, version = api.list()
        self._slices.replace(items)
        self._version = version
        self._watched_since_list = False
        self._last_error = None  # a new failure after this deserves a new report
        self._publish(whole=True)

    def _watch(self, api: SliceApi) -> None:
        started, events = time.monotonic(), 0
        assert self._version is not None
        for event in api.watch(self._version):
            if self._stopping.is_set():
                return
            events += 1
            if event.get("type") != "ERROR":
                self._healthy()
            self._apply(event)
            self._watched_since_list = True
        # The server ends every watch after timeoutSeconds: carry on from the version we hold.
        if events == 0 and time.monotonic() - started < SHORTEST_HEALTHY_WATCH:
            self._pause()
        else:
            self._healthy()

    def _apply(self, event: Json) -> None:
        """One watch event; a malformed one is skipped with a warning (in ServiceSlices)."""
        kind, obj = event.get("type"), event.get("object")
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, Mapping) else None
            if code == 410:
                raise Expired(status_message(obj))
            raise WatchEnded(f"{code} {status_message(obj)}")
        if kind in ("ADDED", "MODIFIED"):
            self._slices.put(obj, kind)
        elif kind == "DELETED":
            self._slices.remove(obj, kind)
        elif kind != "BOOKMARK":
            log.debug("%s: ignoring a watch event of type %r", self.name, kind)
        version = resource_version(obj)
        if version:
            self._version = version  # BOOKMARKs too: they move us past other services' changes
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._publish()

    # -- reporting ----------------------------------------------------------------------------
    def _publish(self, whole: bool = False) -> None:
        """Tell the listener what changed: after an event, in the work of its slice; after a
        list (``whole``), the whole set if it differs from the last one told."""
        changes = None if whole else self._slices.take_changes()
        if changes is None:
            endpoints = self._slices.take_all()
            if endpoints is not None:
                self._listener.update(endpoints)
        elif changes[0] or changes[1]:
            self._listener.change(*changes)
        missing = self._slices.missing_port()
        if missing != self._missing_port:  # a state, reported when it starts
            self._missing_port = missing
            if missing and not self._stopping.is_set():
                self._listener.error(f"{self.name}: {missing}")

    def _healthy(self) -> None:
        """The API server answers: the next failure is reported and retried quickly."""
        self._backoff.reset()
        self._last_error = None

    def _pause(self) -> None:
        """A jittered, growing delay; returns at once when stopped."""
        self._stopping.wait(self._backoff.next_delay())

    def _fail(self, problem: str) -> None:
        """Report a problem once (until something succeeds); the last set stays in use."""
        message = f"{self.name}: {problem}"
        if message != self._last_error and not self._stopping.is_set():
            self._last_error = message
            self._listener.error(message)

    def _forget_client_after(self, error: Exception) -> None:
        """After a credentials problem, load the configuration again: tokens get rotated."""
        if getattr(error, "status", None) == 401 and self._api is not None:
            self._api.close()
            self._api = None

    def _host(self) -> str:
        return self._api.host if self._api is not None else ""
