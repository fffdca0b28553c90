"""The subchannel pool: one subchannel per resolved endpoint (or per member of the client's
subset, see subset.py), changed only by difference, and outlier ejection: an endpoint whose
calls keep failing is left out of the picker for a while (see outlier.py), never more than half
of them at once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from ..discovery import Endpoint
from ..logs import count
from .picker import Picker
from .subchannel import State, Subchannel
from .subset import Subsetter
from .zones import prefer_zone

log = logging.getLogger("gz.balancing")

# Which subchannels the picker gets: the first choice that yields any. READY, serving and not
# ejected first; then those still coming up (the call waits for the connection as on a plain
# grpc channel). Ejection is advice: if only ejected endpoints are left, they get the calls.
# Last, connected endpoints that say NOT_SERVING: every one of them draining (or one ClusterIP
# whose pod drains) still answers until its drain ends, which beats failing the call here.
# TRANSIENT_FAILURE is never picked.
_READY, _COMING_UP = (State.READY,), (State.IDLE, State.CONNECTING)
_OUT = (State.TRANSIENT_FAILURE, State.SHUTDOWN)  # a subset replaces these (and more)
_CHOICES = (  # (states, skip ejected, only serving)
    (_READY, True, True),
    (_COMING_UP, True, True),
    (_READY, False, True),
    (_READY, False, False),
)


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
        self.endpoints: frozenset[Endpoint] = frozenset()  # as resolved
        self.subchannels: dict[Endpoint, Subchannel] = {}  # all of them, or a subset's
        self.subsetter = subsetter or Subsetter("", 0)
        self.zone = zone  # GZ_ZONE: prefer endpoints of this zone (zones.py)
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
        added, removed = endpoints - self.endpoints, self.endpoints - endpoints
        self.endpoints = endpoints
        self.subsetter.resolved(endpoints)
        self._connect()
        if added or removed or not self.resolved:
            log.info(
                "%s: %s (+%d -%d)",
                self.target, count(len(endpoints), "endpoint"), len(added), len(removed),
            )  # fmt: skip
        self.resolved, self.last_error = True, None
        self.updated_at = time.monotonic()
        self._rebuild()

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
        wanted = self.subsetter.keep(self.endpoints, self._unusable())
        # Set against set reuses the hashes both store: no Python __hash__ per endpoint (a
        # one-endpoint change at 10,000 endpoints went from 23 to 5 ms of the pool's time).
        current = frozenset(self.subchannels)
        for endpoint in current - wanted:
            self._retire(self.subchannels.pop(endpoint))
        for endpoint in sorted(wanted - current):
            channel = self._make_channel(endpoint)
            calls = self._make_calls_channel(endpoint) if self._make_calls_channel else None
            subchannel = Subchannel(endpoint, channel, self._changed_state, self._eject, calls)
            self.subchannels[endpoint] = subchannel
            health_channel = self._make_health_channel(endpoint) if self._health_check else None
            subchannel.start(self._health_check, health_channel)

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
        self._resubset()
        self._rebuild()

    def _resubset(self) -> None:
        """With subsetting, replace members that went out and let recovered ones back in."""
        if self.subsetter.size is not None:
            self._connect()

    def _rebuild(self) -> None:
        picker = None
        for states, skip_ejected, only_serving in _CHOICES:
            usable = [
                s
                for s in self.subchannels.values()
                if s.state in states
                and (s.serving or not only_serving)
                and not (skip_ejected and s.outcomes.is_ejected())
            ]
            if usable:
                picker = self._picker_class(prefer_zone(self.zone, usable, self.endpoints))
                break
        self.picker = picker  # one assignment: a sync client's threads read it meanwhile
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
        self._resubset()
        self._rebuild()

    def _readmit(self, subchannel: Subchannel) -> None:
        """Back on probation: its first call decides whether it stays."""
        self._readmissions.pop(subchannel.endpoint, None)
        with subchannel.lock:
            subchannel.outcomes.readmit(time.monotonic())
        log.info("%s: %s is back, on probation", self.target, subchannel.endpoint)
        self._resubset()
        self._rebuild()

    # -- shutdown -----------------------------------------------------------------------------
    def _retire(self, subchannel: Subchannel) -> None:
        """Close in the background once its in-flight calls finish (bounded by close_grace)."""
        readmission = self._readmissions.pop(subchannel.endpoint, None)
        if readmission is not None:
            readmission.cancel()
        task = asyncio.get_running_loop().create_task(subchannel.close(self._close_grace))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self, grace: float | None) -> None:
        for readmission in self._readmissions.values():
            readmission.cancel()
        self._readmissions.clear()
        subchannels, self.subchannels, self.picker = list(self.subchannels.values()), {}, None
        await asyncio.gather(*(s.close(grace) for s in subchannels), *self._closing)
        self._notify()
