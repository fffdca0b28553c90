"""/debug/targets on the HTTP side: every live channel of the process as its client sees it.

``/debug/targets`` answers JSON, ``/debug/targets.html`` the same as plain HTML tables (no
script). The HTTP thread asks each channel's event loop for the views (balancing/snapshot.py)
and waits at most ``LOOP_TIMEOUT`` in all: the loop is the only thread that changes balancing
state, so a view is consistent and nothing on the call path takes a lock. A loop that does not
answer in time (blocked, or busy) is reported as such instead of holding up the HTTP side, which
serves the probes too.

It shows only what gz logs anyway: targets, endpoint addresses, states, counts and resolver
errors; never settings, tokens, passwords or metadata.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import json
import logging
import time

from .balancing.channel import BalancedChannel
from .balancing.outlier import WINDOW
from .balancing.snapshot import View, channel_view, live_channels

log = logging.getLogger("gz.probes")

PATHS = ("/debug/targets", "/debug/targets.html")
LOOP_TIMEOUT = 0.5
"""Seconds the HTTP thread waits, in all, for the event loops to build their channels' views."""

COLUMNS = (
    "endpoint", "connectivity", "health", "usable", "in flight", "latency", "outlier", "failures",
)  # fmt: skip
"""The table's columns: the HTML page and ``gz debug`` show the same."""

_JSON = "application/json"
_HTML = "text/html; charset=utf-8"


def answer(path: str) -> tuple[int, bytes, str]:
    """(status, body, content type) for one of PATHS."""
    view = {"channels": collect()}
    if path.endswith(".html"):
        return 200, page(view).encode(), _HTML
    return 200, (json.dumps(view, indent=2) + "\n").encode(), _JSON


def collect(timeout: float = LOOP_TIMEOUT) -> list[View]:
    """The view of every live channel, each built in its own event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[BalancedChannel]] = {}
    views: dict[BalancedChannel, View] = {}
    for channel in live_channels():
        pool = channel._pool  # one read: the loop may make it meanwhile
        if pool is None:  # never used: nothing changes it, any thread may read it
            views[channel] = channel_view(channel, None)
        else:
            by_loop.setdefault(pool.loop, []).append(channel)
    asked = {loop: _ask(loop, channels) for loop, channels in by_loop.items()}
    deadline = time.monotonic() + timeout
    for loop, future in asked.items():
        channels = by_loop[loop]
        try:
            built = future.result(max(0.0, deadline - time.monotonic()))
            views.update(zip(channels, built, strict=True))
        except Exception as error:
            future.cancel()
            why = _why(error, timeout)
            views.update((channel, _unanswered(channel, why)) for channel in channels)
    return [views[channel] for channel in sorted(views, key=lambda channel: channel.target)]


class _LoopGone(Exception):
    """The channel's event loop is stopped or closed: it would never answer."""


def _ask(
    loop: asyncio.AbstractEventLoop, channels: list[BalancedChannel]
) -> concurrent.futures.Future[list[View]]:
    """A future of the channels' views, built in ``loop``."""

    async def build() -> list[View]:
        return [channel.snapshot() for channel in channels]

    if loop.is_running():
        coroutine = build()
        try:
            return asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError:  # closed since is_running() was read
            coroutine.close()
    gone: concurrent.futures.Future[list[View]] = concurrent.futures.Future()
    gone.set_exception(_LoopGone("its event loop is not running"))
    return gone


def _why(error: Exception, timeout: float) -> str:
    if isinstance(error, TimeoutError):
        return f"its event loop did not answer within {timeout:g}s (blocked or busy)"
    if isinstance(error, _LoopGone):
        return str(error)
    log.error("/debug/targets: building a view failed", exc_info=error)
    return f"building the view failed: {type(error).__name__}"


def _unanswered(channel: BalancedChannel, why: str) -> View:
    return {"target": channel.target, "balancer": channel.balancer, "unavailable": why}


# -- text: the HTML page and gz debug ----------------------------------------------------------
def summary(channel: View) -> list[str]:
    """The lines under a channel's target: state, resolver, retry budget."""
    if "unavailable" in channel:
        return [f"not shown: {channel['unavailable']}"]
    resolver, budget = channel["resolver"], channel["retry_budget"]
    if resolver["last_update_seconds_ago"] is None:
        updated = "no endpoint set yet"
    else:
        updated = f"last set {resolver['last_update_seconds_ago']:g}s ago"
    error = f", error: {resolver['error']}" if resolver["error"] else ""
    lines = [
        f"state: {channel['state']}, balancer: {channel['balancer']}",
        f"resolver: {resolver['endpoints']} endpoints, {updated}{error}",
    ]
    if budget is None:
        lines.append("retries: off")
    else:
        lines.append(
            f"retry budget: {budget['retries']} of {budget['allowed']:g} retries used over"
            f" {budget['window_seconds']:g}s ({budget['calls']} calls),"
            f" {budget['max_attempts']} attempts at most"
        )
    return lines


def cells(endpoint: View) -> list[str]:
    """One endpoint's row, in COLUMNS order."""
    if endpoint["ejected"]:
        outlier = f"ejected, {endpoint['ejected_seconds_left']:g}s left"
    elif endpoint["on_probation"]:
        outlier = "on probation"
    else:
        outlier = "-"
    latency = endpoint["latency_ms"]
    failures = f"{endpoint['recent_failures']}/{endpoint['recent_calls']}"
    if endpoint["consecutive_failures"]:
        failures += f", {endpoint['consecutive_failures']} in a row"
    return [
        endpoint["address"],
        endpoint["connectivity"],
        endpoint["health"],
        "yes" if endpoint["usable"] else "no",
        str(endpoint["in_flight"]),
        "-" if latency is None else f"{latency:.1f}ms",
        outlier,
        failures,
    ]


def page(view: View) -> str:
    """The HTML page: a heading, summary and table per channel; every value escaped."""
    parts = [
        "<!doctype html><html><head><meta charset=utf-8><title>gz: targets</title>",
        "<style>table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px;"
        "text-align:left}</style></head><body><h1>Targets</h1>",
        '<p>As JSON: <a href="/debug/targets">/debug/targets</a>. Failures: failed of all'
        f" calls over the last {WINDOW:g}s, since the last ejection.</p>",
    ]
    if not view["channels"]:
        parts.append("<p>No client channels in this process.</p>")
    for channel in view["channels"]:
        parts.append(f"<h2>{html.escape(channel['target'])}</h2>")
        parts.extend(f"<p>{html.escape(line)}</p>" for line in summary(channel))
        rows = [cells(endpoint) for endpoint in channel.get("endpoints", ())]
        if rows:
            parts.append(_table(COLUMNS, rows))
    parts.append("</body></html>\n")
    return "".join(parts)


def _table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"
