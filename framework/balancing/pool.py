"""The subchannel pool: one subchannel per resolved endpoint (or per member of the client's
subset, see subset.py), changed only by difference, and outlier ejection: an endpoint whose
calls keep failing is left out of the picker for a while (see outlier.py), never more than half
of them at once.

Everything the pool keeps is updated one endpoint or subchannel at a time: a resolver's change
(Listener.change) or a subchannel's state change costs the same at 10 and at 10,000 endpoints.
Only a whole new set (Listener.update) is compared with the last one whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

import grpc

from ..discovery import Endpoint
from ..logs import count
from .picker import Picker
from .subchannel import State, Subchannel
from .subset import Subsetter
from .usable import Usable
from .zones import ZoneIndex

log = logging.getLogger("gz.balancing")

_OUT = (State.TRANSIENT_FAILURE, State.SHUTDOWN)  # a subset replaces these (and more)


class SubchannelPool:
    """Receives endpoint sets from a resolver (it is the resolver's Listener), keeps a subchannel
    per endpoint and publishes a picker over the usable ones."""

    def __init__(
        self,
        target: str,
        make_channel: Callable[[Endpoint], grpc.aio.Channel],
        picker_class: type[Picker],
        on_failure: Callable[[], None],
        close_grace: float = 30.0,
        health_check: bool = True,
        make_health_channel: Callable[[Endpoint], grpc.aio.Channel | None] = lambda _: None,
        subsetter: Subsetter | None = None,
        zone: str | None = None,
        make_calls_channel: Callable[[Endpoint], Any] | None = None,
    ) -> None:
        self.target = target
        self.picker: Picker | None = None
        # as resolved: each endpoint (by address) to its latest object, with its zone and hints
        self.endpoints: dict[Endpoint, Endpoint] = {}
        self.subchannels: dict[Endpoint, Subchannel] = {}  # all of them, or a subset's
        self.subsetter = subsetter or Subsetter("", 0)
        self.zone = zone  # GZ_ZONE: prefer endpoints of this zone (zones.py)
        self._zones = ZoneIndex(zone) if zone is not None else None
        self._usable = Usable()  # the subchannels the picker may get, by tier (usable.py)
        self.resolved = False
        self.last_error: str | None = None
        self.updated_at: float | None = None  # time.monotonic() of the resolver's last set
        self.loop = asyncio.get_running_loop()  # the one thread that changes this state
        self._make_channel = make_channel
        self._picker_class = picker_class
        self._on_failure = on_failure
        self._close_grace = close_grace
        self._health_check = health_check
        self._make_health_channel = make_health_channel
        self._make_calls_channel = make_calls_channel  # a sync client's: calls go through it
        self._changed = asyncio.get_running_loop().create_future()
        self._closing: set[asyncio.Task[None]] = set()
        self._readmissions: dict[Endpoint, asyncio.TimerHandle] = {}

    # -- Listener -----------------------------------------------------------------------------
    def update(self, endpoints: frozenset[Endpoint]) -> None:
        known = self.endpoints.keys()
        added, removed = len(endpoints - known), len(known - endpoints)
        self.endpoints = dict(zip(endpoints, endpoints, strict=True))
        if self.zone is not None:
            self._zones = ZoneIndex(self.zone)
            for endpoint in endpoints:
                self._zones.add(endpoint)
        self.subsetter.resolved(endpoints)
        self._connect()
        if self._zones is not None:  # zones or hints may have changed
            for subchannel in self.subchannels.values():
                self._place(subchannel)
        self._resolved(added, removed)

    def change(self, added: Collection[Endpoint], removed: Collection[Endpoint]) -> None:
        endpoints, zones = self.endpoints, self._zones
        by_hints = zones is not None and zones.by_hints()
        gone = [endpoints.pop(e) for e in removed if e in endpoints]
        joined = [e for e in added if e not in endpoints]
        for endpoint in added:
            old = endpoints.get(endpoint)
            endpoints[endpoint] = endpoint
            if zones is not None:
                if old is not None:
                    zones.remove(old)
                zones.add(endpoint)
        if zones is not None:
            for endpoint in gone:
                zones.remove(endpoint)
        if self.subsetter.changed(added, gone, endpoints.keys()) or self.subsetter.size is not None:
            self._connect()
        else:
            self._connect_change(joined, gone)
        if zones is not None and zones.by_hints() != by_hints:
            places: Iterable[Subchannel] = self.subchannels.values()  # hints now decide, or not
        else:
            places = filter(None, map(self.subchannels.get, added))
        for subchannel in places:
            self._place(subchannel)
        self._resolved(len(joined), len(gone))

    def _resolved(self, added: int, removed: int) -> None:
        if added or removed or not self.resolved:
            log.info(
                "%s: %s (+%d -%d)",
                self.target, count(len(self.endpoints), "endpoint"), added, removed,
            )  # fmt: skip
        self.resolved, self.last_error = True, None
        self.updated_at = time.monotonic()
        self._publish()

    def error(self, message: str) -> None:
        if message != self.last_error:
            kept = count(len(self.endpoints), "endpoint")
            log.warning("%s (keeping the last %s)", message, kept)
        self.last_error = message
        self._notify()

    # -- subchannels ---------------------------------------------------------------------------
    def _connect(self) -> None:
        """Subchannels for the endpoints the subsetter keeps (all of them without subsetting),
        changed by difference."""
        wanted = self.subsetter.keep(self._unusable())
        if wanted is None:
            wanted = frozenset(self.endpoints)
        # Set against set reuses the hashes both store: no Python __hash__ per endpoint.
        current = frozenset(self.subchannels)
        self._connect_change(sorted(wanted - current), current - wanted)

    def _connect_change(self, added: Iterable[Endpoint], removed: Iterable[Endpoint]) -> None:
        for endpoint in removed:
            subchannel = self.subchannels.pop(endpoint, None)
            if subchannel is not None:
                self._retire(subchannel)
        for endpoint in added:
            if endpoint in self.subchannels:
                continue
            channel = self._make_channel(endpoint)
            calls = self._make_calls_channel(endpoint) if self._make_calls_channel else None
            subchannel = Subchannel(endpoint, channel, self._changed_state, self._eject, calls)
            self.subchannels[endpoint] = subchannel
            health_channel = self._make_health_channel(endpoint) if self._health_check else None
            subchannel.start(self._health_check, health_channel)
            self._place(subchannel)

    def _unusable(self) -> set[Endpoint]:
        """Endpoints a subset replaces while they are out: failing to connect, NOT_SERVING
        (draining) or ejected. Only asked with subsetting on."""
        if self.subsetter.size is None:
            return set()
        return {
            endpoint
            for endpoint, s in self.subchannels.items()
            if s.state in _OUT or not s.serving or s.outcomes.is_ejected()
        }

    # -- state --------------------------------------------------------------------------------
    def _changed_state(self, subchannel: Subchannel, failed: bool) -> None:
        if failed:
            self._on_failure()
        if self.subchannels.get(subchannel.endpoint) is subchannel:  # not one being retired
            self._place(subchannel)
        self._resubset()
        self._publish()

    def _resubset(self) -> None:
        """With subsetting, replace members that went out and let recovered ones back in."""
        if self.subsetter.size is not None:
            self._connect()

    def _place(self, subchannel: Subchannel) -> None:
        """Sort the subchannel into the picker's tiers after a change of its own or of its
        endpoint's zone or hints."""
        zones = self._zones
        if zones is None:
            self._usable.place(subchannel)
        else:
            endpoint = self.endpoints.get(subchannel.endpoint, subchannel.endpoint)
            self._usable.place(subchannel, zones.is_local(endpoint))

    def _publish(self) -> None:
        """A new picker over the first usable tier (O(1) but for copying its list)."""
        zones = self._zones
        usable = self._usable.choice(zones.prefers_local if zones is not None else None)
        # one assignment: a sync client's threads read it meanwhile
        self.picker = self._picker_class(usable) if usable else None
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        if not changed.done():
            changed.set_result(None)

    def wait_for_change(self) -> asyncio.Future[None]:
        """Completes at the next picker rebuild or resolver error. The future is taken when this
        is called, not when it is first awaited: a coroutine here would read it only once it
        ran, and so could miss a change made in between (asyncio.wait_for schedules it)."""
        return asyncio.shield(self._changed)

    def state(self) -> State:
        """The best state of any subchannel, as a plain channel would report it."""
        states = {s.state for s in self.subchannels.values()}
        for state in (State.READY, State.CONNECTING, State.IDLE, State.TRANSIENT_FAILURE):
            if state in states:
                return state
        return State.IDLE if not self.resolved else State.TRANSIENT_FAILURE

    def why_unavailable(self) -> str:
        """Why no subchannel can be picked, for the UNAVAILABLE status a call gets."""
        if not self.resolved:
            cause = f": {self.last_error}" if self.last_error else ""
            return f"{self.target}: no endpoints resolved yet{cause}"
        if not self.endpoints:
            return f"{self.target}: the target has no endpoints"
        endpoints = ", ".join(str(e) for e in sorted(self.subchannels))
        if not any(s.serving for s in self.subchannels.values()):
            return f"{self.target}: every endpoint says NOT_SERVING ({endpoints})"
        return f"{self.target}: every endpoint is failing to connect ({endpoints})"

    # -- outlier ejection ---------------------------------------------------------------------
    def _eject(self, subchannel: Subchannel) -> None:
        """Leave a failing endpoint out of the picker for a while, unless that would leave out
        more than half of the endpoints (then the failures are more likely the callers')."""
        retired = self.subchannels.get(subchannel.endpoint) is not subchannel
        if retired or subchannel.outcomes.is_ejected():
            return
        ejected = sum(s.outcomes.is_ejected() for s in self.subchannels.values())
        if ejected + 1 > len(self.subchannels) // 2:
            log.debug("%s: not ejecting %s: half the endpoints are out", self.target, subchannel)
            return
        with subchannel.lock:  # a sync client records outcomes from its calling threads
            duration = subchannel.outcomes.eject(time.monotonic())
        log.warning(
            "%s: ejecting %s for %.0fs: its calls keep failing",
            self.target, subchannel.endpoint, duration,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        self._readmissions[subchannel.endpoint] = loop.call_later(
            duration, self._readmit, subchannel
        )
        self._place(subchannel)
        self._resubset()
        self._publish()

    def _readmit(self, subchannel: Subchannel) -> None:
        """Back on probation: its first call decides whether it stays."""
        self._readmissions.pop(subchannel.endpoint, None)
        with subchannel.lock:
            subchannel.outcomes.readmit(time.monotonic())
        log.info("%s: %s is back, on probation", self.target, subchannel.endpoint)
        if self.subchannels.get(subchannel.endpoint) is subchannel:
            self._place(subchannel)
        self._resubset()
        self._publish()

    # -- shutdown -----------------------------------------------------------------------------
    def _retire(self, subchannel: Subchannel) -> None:
        """Close in the background once its in-flight calls finish (bounded by close_grace)."""
        readmission = self._readmissions.pop(subchannel.endpoint, None)
        if readmission is not None:
            readmission.cancel()
        self._usable.drop(subchannel)
        task = asyncio.get_running_loop().create_task(subchannel.close(self._close_grace))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self, grace: float | None) -> None:
        for readmission in self._readmissions.values():
            readmission.cancel()
        self._readmissions.clear()
        subchannels, self.subchannels, self.picker = list(self.subchannels.values()), {}, None
        self._usable = Usable()
        await asyncio.gather(*(s.close(grace) for s in subchannels), *self._closing)
        self._notify()
