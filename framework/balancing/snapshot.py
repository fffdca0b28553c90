"""What each live channel of the process sees, as plain data for /debug/targets.

Channels register when made and leave when closed (or collected: the set holds them weakly), so
the debug page can list them without any work on the call path. A view is built from state the
pool already keeps, only when asked, and only inside the channel's own event loop: that loop is
the one thread that changes the state (debug_targets.py asks it from the HTTP thread).
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from ..middleware.retry import Retry
from .outlier import WINDOW

if TYPE_CHECKING:
    from .channel import BalancedChannel
    from .pool import SubchannelPool
    from .subchannel import Subchannel

View = dict[str, Any]

# Guards the set itself: channels are made and closed in event loops while the HTTP thread
# lists them.
_lock = threading.Lock()
_live: weakref.WeakSet[BalancedChannel] = weakref.WeakSet()


def register(channel: BalancedChannel) -> None:
    with _lock:
        _live.add(channel)


def unregister(channel: BalancedChannel) -> None:
    with _lock:
        _live.discard(channel)


def live_channels() -> list[BalancedChannel]:
    """Every channel made and not yet closed, by target."""
    with _lock:
        channels = list(_live)
    return sorted(channels, key=lambda channel: channel.target)


def channel_view(channel: BalancedChannel, pool: SubchannelPool | None) -> View:
    """The view of ``channel`` whose pool is ``pool``. With a pool, call it in the pool's loop;
    without (the channel was never used), any thread may: nothing then changes."""
    now = time.monotonic()
    retry = channel.retry or next((m for m in channel._middleware if isinstance(m, Retry)), None)
    view: View = {
        "target": channel.target,
        "balancer": channel.balancer,
        "state": "IDLE" if pool is None else pool.state().name,
        "resolver": _resolver_view(pool, now),
        "retry_budget": None if retry is None else _budget_view(retry, now, pool is not None),
        "endpoints": [],
    }
    if pool is not None:
        usable = set(pool.picker.subchannels) if pool.picker is not None else set()
        members = pool.subsetter.members()  # None: no subsetting, every endpoint is in
        view["endpoints"] = [
            {
                **_endpoint_view(subchannel, subchannel in usable, channel._health_check, now),
                "in_subset": members is None or endpoint in members,  # False: a replacement
            }
            for endpoint, subchannel in sorted(pool.subchannels.items())
        ]
    return view


def _resolver_view(pool: SubchannelPool | None, now: float) -> View:
    updated = None if pool is None or pool.updated_at is None else round(now - pool.updated_at, 1)
    return {
        "resolved": pool is not None and pool.resolved,
        "endpoints": 0 if pool is None else len(pool.endpoints),
        "subset_size": None if pool is None else pool.subsetter.size,  # None: all connected
        "last_update_seconds_ago": updated,
        "error": None if pool is None else pool.last_error,
    }


def _budget_view(retry: Retry, now: float, used: bool) -> View:
    calls, retries, allowed = retry.budget.usage(now) if used else (0, 0, retry.budget.reserve)
    return {
        "max_attempts": retry.policy.max_attempts,
        "window_seconds": retry.policy.budget_window,
        "calls": calls,
        "retries": retries,
        "allowed": round(allowed, 1),
    }


def _endpoint_view(subchannel: Subchannel, usable: bool, health_check: bool, now: float) -> View:
    load, outcomes = subchannel.load, subchannel.outcomes
    with subchannel.lock:  # a sync client's threads record outcomes meanwhile
        calls, failures = outcomes.recent(now)
    left = round(max(0.0, outcomes.ejected_until - now), 1) if outcomes.is_ejected() else None
    health = "SERVING" if subchannel.serving else "NOT_SERVING"
    if not health_check:
        health = "UNCHECKED"
    elif not subchannel.health_known:
        health = "UNKNOWN"  # no answer yet: taken as serving meanwhile
    return {
        "address": subchannel.peer,
        "connectivity": subchannel.state.name,
        "health": health,
        "usable": usable,
        "in_flight": load.inflight,
        "latency_ms": round(load.ewma_us / 1000, 3) if load.samples else None,
        "ejected": left is not None,
        "ejected_seconds_left": left,
        "ejections": outcomes.ejections,
        "on_probation": outcomes.on_probation,
        "recent_window_seconds": WINDOW,
        "recent_calls": calls,
        "recent_failures": failures,
        "consecutive_failures": outcomes.consecutive,
    }
