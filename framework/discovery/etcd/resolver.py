"""``etcd:///KEY``: the endpoints registered under ``KEY/``, kept current by a watch.

Read the prefix, then watch from the next revision; on a compaction read again at once, on any
other error (even one etcd is not expected to give) read again after a jittered backoff and tell
the listener once per kind of error. While etcd is unreachable the last set stays in use.
Values that are not ``host:port`` are skipped with one warning per key and value.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ...backoff import Backoff
from ..endpoint import Endpoint
from ..resolver import Listener, Resolver
from .connection import (
    ETCD_ERRORS,
    Compacted,
    EtcdConfig,
    acquire,
    describe,
    failure_kind,
    release,
)

log = logging.getLogger("gz.discovery.etcd")

# A wiped etcd comes back empty and the servers re-register within their keepalive interval;
# keep calling the last set for this long rather than fail every call meanwhile.
REREGISTRATION_WINDOW = 15.0


class PrefixCache:
    """The endpoints under one prefix as etcd last told us, and at which revision."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.revision = 0
        self.cluster_id: int | None = None
        self._by_key: dict[bytes, Endpoint] = {}
        self._warned: dict[bytes, bytes] = {}

    def load(self, snapshot: Any) -> bool:
        """Replace everything with a fresh read; True when etcd itself was replaced (a new
        cluster, or a revision older than one already seen: the data dir was wiped)."""
        header = snapshot.header
        replaced = self.cluster_id is not None and (
            header.cluster_id != self.cluster_id or header.revision < self.revision
        )
        self.cluster_id, self.revision = header.cluster_id, header.revision
        self._by_key.clear()
        for kv in snapshot.kvs:
            self._put(kv.key, kv.value)
        return replaced

    def apply(self, response: Any) -> None:
        """Apply one watch response's PUT and DELETE events."""
        for event in response.events:
            if event.type == event.DELETE:
                self._by_key.pop(event.kv.key, None)
                self._warned.pop(event.kv.key, None)
            else:
                self._put(event.kv.key, event.kv.value)
        self.revision = max(self.revision, response.header.revision)

    def _put(self, key: bytes, value: bytes) -> None:
        try:
            self._by_key[key] = Endpoint.parse(value.decode())
        except (ValueError, UnicodeDecodeError):
            self._by_key.pop(key, None)
            if self._warned.get(key) != value:
                self._warned[key] = value
                log.warning(
                    "%s: skipping key %r: its value %r is not host:port",
                    self.target, key.decode(errors="replace"), value[:100],
                )  # fmt: skip

    def endpoints(self) -> frozenset[Endpoint]:
        return frozenset(self._by_key.values())


class EtcdResolver(Resolver):
    def __init__(self, config: EtcdConfig, key: str, *, target: str = "") -> None:
        self.config = config
        self.key = key
        self.target = target or f"etcd:///{key}"
        self._prefix = (key.rstrip("/") + "/").encode()

    async def watch(self, listener: Listener) -> None:
        etcd = acquire(self.config)
        try:
            await _Follower(self, listener).follow(etcd)
        finally:
            await release(etcd)


class _Follower:
    """One watch() of an EtcdResolver: the read-watch loop and what the listener is told."""

    def __init__(self, resolver: EtcdResolver, listener: Listener) -> None:
        self.resolver = resolver
        self.listener = listener
        self.cache = PrefixCache(resolver.target)
        self.published: frozenset[Endpoint] | None = None
        self.hold_until = 0.0
        self.release_hold: asyncio.TimerHandle | None = None
        self.backoff = Backoff(first=0.1, cap=2.0)
        self.failing: str | None = None  # the kind of error already reported

    async def follow(self, etcd: Any) -> None:
        try:
            await self._read_and_watch(etcd)
        finally:
            if self.release_hold is not None:
                self.release_hold.cancel()

    async def _read_and_watch(self, etcd: Any) -> None:
        prefix = self.resolver._prefix
        while True:
            try:
                if self.cache.load(await etcd.get_prefix(prefix)):
                    self._etcd_was_replaced(etcd.endpoint)
                self.publish()
                async for response in etcd.watch(prefix, self.cache.revision + 1):
                    self.backoff.reset()
                    self.failing = None
                    self.cache.apply(response)
                    self.publish()
            except Compacted as error:
                log.info("%s: %s; reading again", self.resolver.target, error)
            except Exception as error:  # any failure is transient: only a cancel ends the loop
                self._report(error)
                await self.backoff.sleep()

    def _report(self, error: Exception) -> None:
        """Tell the listener once per kind of trouble, not once per retry. Errors that are not
        etcd's (a bug) are logged with their traceback, once."""
        kind = failure_kind(error)
        if kind == self.failing:
            return
        self.failing = kind
        if not isinstance(error, ETCD_ERRORS):
            log.warning("%s: retrying after an unexpected error", self.resolver.target,
                        exc_info=error)  # fmt: skip
        self.listener.error(f"{self.resolver.target}: {describe(error)}")

    def _etcd_was_replaced(self, endpoint: str) -> None:
        if self.published and not self.cache.endpoints():
            log.warning(
                "%s: etcd at %s came back without our keys (a wiped data dir?); keeping the "
                "last %d endpoints for up to %gs while servers register again",
                self.resolver.target, endpoint, len(self.published), REREGISTRATION_WINDOW,
            )  # fmt: skip
            self.hold_until = time.monotonic() + REREGISTRATION_WINDOW
            self.release_hold = asyncio.get_running_loop().call_later(
                REREGISTRATION_WINDOW, self.publish
            )

    def publish(self) -> None:
        endpoints = self.cache.endpoints()
        if not endpoints and self.published and time.monotonic() < self.hold_until:
            return
        self.hold_until = 0.0
        if endpoints != self.published:
            self.published = endpoints
            self.listener.update(endpoints)
