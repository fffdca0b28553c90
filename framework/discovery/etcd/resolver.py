"""``etcd:///KEY``: the endpoints registered under ``KEY/``, kept current by a watch.

Read the prefix (in pages, at one revision), then watch from the next revision; on a
compaction or a watch answer too large to take read again at once, on any other error (even one
etcd is not expected to give) read again after a jittered backoff and tell the listener once per
kind of error, and log one line when etcd answers again. While etcd is unreachable the last set
stays in use. Values that are not ``host:port`` (or too large to read) are skipped: one warning
line per update sums them up, at most one a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from ...backoff import Backoff
from ...logs import count
from ..endpoint import Endpoint
from ..resolver import Listener, Resolver
from ..tally import Tally
from .connection import (
    ETCD_ERRORS,
    MESSAGE_LIMIT,
    Compacted,
    EtcdConfig,
    TooLarge,
    acquire,
    describe,
    failure_kind,
    release,
)

log = logging.getLogger("gz.discovery.etcd")

# A wiped etcd comes back empty and the servers re-register within their keepalive interval;
# keep calling the last set for this long rather than fail every call meanwhile.
REREGISTRATION_WINDOW = 15.0
# A prefix full of garbage must not flood every client's log: skipped keys are summed up in one
# line per update naming a few of them, and such lines come at most this often (seconds).
SKIPPED_LOG_INTERVAL = 60.0
SKIPPED_EXAMPLES = 3
_TOO_LARGE = -1  # stands for the value of a key skipped as too large to read


class SkippedKeys:
    """Keys skipped for their values, logged as one warning per update with the count and the
    first few keys. After a line, the next comes SKIPPED_LOG_INTERVAL later at the earliest:
    keys skipped meanwhile are counted and folded into it (or into a last line when the
    resolver stops)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.count = 0
        self.examples: list[str] = []
        self.quiet_until = 0.0
        self._later: asyncio.TimerHandle | None = None

    def add(self, key: bytes, value: bytes | None) -> None:
        self.count += 1
        if len(self.examples) < SKIPPED_EXAMPLES:
            shown = _show(value) if value is not None else f"<over {MESSAGE_LIMIT >> 20} MB>"
            self.examples.append(f"{_show(key)} = {shown}")

    def report(self) -> None:
        """The end of an update: log what it skipped now, or later if a line was just logged."""
        if not self.count or self._later is not None:
            return
        wait = self.quiet_until - time.monotonic()
        if wait > 0:
            self._later = asyncio.get_running_loop().call_later(wait, self.flush)
        else:
            self.flush()

    def flush(self) -> None:
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if not self.count:
            return
        hidden = self.count - len(self.examples)
        more = f" and {hidden} more" if hidden else ""
        log.warning(
            "%s: skipped %s not host:port: %s%s", self.target,
            "1 key whose value is" if self.count == 1 else f"{self.count} keys whose values are",
            ", ".join(self.examples), more,
        )  # fmt: skip
        self.count, self.examples = 0, []
        self.quiet_until = time.monotonic() + SKIPPED_LOG_INTERVAL


def _show(data: bytes, size: int = 60) -> str:
    text = data[:size].decode(errors="replace")
    return repr(text + "..." if len(data) > size else text)


class PrefixCache:
    """The endpoints under one prefix as etcd last told us, and at which revision."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.revision = 0
        self.cluster_id: int | None = None
        self.skipped = SkippedKeys(target)
        self._by_key: dict[bytes, Endpoint] = {}
        self.tally = Tally()  # the endpoints of _by_key's values, and what the listener heard
        # key -> hash of the bad value already counted, so that a value is skipped in silence
        # once reported, until it changes (a hash: the values themselves may be large)
        self._warned: dict[bytes, int] = {}

    def load(self, snapshot: Any) -> bool:
        """Replace everything with a fresh read; True when etcd itself was replaced (a new
        cluster, or a revision older than one already seen: the data dir was wiped)."""
        header = snapshot.header
        replaced = self.cluster_id is not None and (
            header.cluster_id != self.cluster_id or header.revision < self.revision
        )
        self.cluster_id, self.revision = header.cluster_id, header.revision
        self._by_key.clear()
        self.tally.clear()
        for kv in snapshot.kvs:
            self._put(kv.key, kv.value)
        for key in snapshot.too_large:
            self._skip(key, None)
        gone = self._warned.keys() - {kv.key for kv in snapshot.kvs} - set(snapshot.too_large)
        for key in gone:  # deleted while no watch ran: reported again if it comes back bad
            del self._warned[key]
        return replaced

    def apply(self, response: Any) -> None:
        """Apply one watch response's PUT and DELETE events."""
        for event in response.events:
            if event.type == event.DELETE:
                self._forget(event.kv.key)
                self._warned.pop(event.kv.key, None)
            else:
                self._put(event.kv.key, event.kv.value)
        self.revision = max(self.revision, response.header.revision)

    def _put(self, key: bytes, value: bytes) -> None:
        try:
            endpoint = Endpoint.parse(value.decode())
        except (ValueError, UnicodeDecodeError):
            self._skip(key, value)
            return
        self._forget(key)
        self._by_key[key] = endpoint
        self.tally.add(endpoint)
        self._warned.pop(key, None)

    def _forget(self, key: bytes) -> None:
        endpoint = self._by_key.pop(key, None)
        if endpoint is not None:
            self.tally.remove(endpoint)

    def _skip(self, key: bytes, value: bytes | None) -> None:
        """``value`` None: too large to read."""
        self._forget(key)
        mark = _TOO_LARGE if value is None else hash(value)
        if self._warned.get(key) != mark:
            self._warned[key] = mark
            self.skipped.add(key, value)


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
            self.cache.skipped.flush()

    async def _read_and_watch(self, etcd: Any) -> None:
        prefix = self.resolver._prefix
        while True:
            try:
                if self.cache.load(await etcd.get_prefix(prefix)):
                    self._etcd_was_replaced(etcd.endpoint)
                self.cache.skipped.report()
                self.publish()
                # closed on the way out whatever happens, so that its stream ends with it
                watch = etcd.watch(prefix, self.cache.revision + 1)
                async with contextlib.aclosing(watch) as responses:
                    async for response in responses:
                        self.backoff.reset()
                        if self.failing is not None:
                            self._recovered(etcd.endpoint)
                        self.cache.apply(response)
                        self.cache.skipped.report()
                        self.publish_changes()
            except (Compacted, TooLarge) as error:
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

    def _recovered(self, endpoint: str) -> None:
        """The end of trouble told to the listener: one line, and the current set again (a
        listener keeps the last error until it is told a set)."""
        self.failing = None
        log.info("%s: etcd at %s answers again; following %s", self.resolver.target, endpoint,
                 count(len(self.cache.tally), "endpoint"))  # fmt: skip
        self.publish(again=True)

    def _etcd_was_replaced(self, endpoint: str) -> None:
        if self.cache.tally.told() and not self.cache.tally:
            log.warning(
                "%s: etcd at %s came back without our keys (a wiped data dir?); keeping the "
                "last %s for up to %gs while servers register again", self.resolver.target,
                endpoint, count(self.cache.tally.told(), "endpoint"), REREGISTRATION_WINDOW,
            )  # fmt: skip
            self.hold_until = time.monotonic() + REREGISTRATION_WINDOW
            self.release_hold = asyncio.get_running_loop().call_later(
                REREGISTRATION_WINDOW, self.publish
            )

    def publish(self, again: bool = False) -> None:
        """Tell the listener the whole set if it changed (``again``: in any case)."""
        tally = self.cache.tally
        if not tally and tally.told() and time.monotonic() < self.hold_until:
            return
        self.hold_until = 0.0
        endpoints = tally.take_all(again)
        if endpoints is not None:
            self.listener.update(endpoints)

    def publish_changes(self) -> None:
        """After a watch response: tell the listener what it changed, in work proportional to
        its events (the whole set only while a wiped etcd's hold lasts)."""
        if self.hold_until:
            self.publish()
            return
        added, removed = self.cache.tally.take_changes()
        if added or removed:
            self.listener.change(added, removed)
