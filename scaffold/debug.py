"""``gz debug HOST:PORT``: a process's /debug/targets (what its client channels see of their
endpoints) as terminal tables, once or refreshed with --watch."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from typing import Any

import click

from gz.debug_targets import COLUMNS, cells, summary
from gz.logs import count
from gz.netaddr import join_host_port, parse_host_port

from .errors import BadInput, Failed

FETCH_TIMEOUT = 5.0  # seconds; the page itself waits at most 0.5 s for the process's loops


def targets_url(address: str) -> str:
    """The /debug/targets URL of a process's HTTP side at ``address`` (host:port)."""
    try:
        host, port = parse_host_port(address)
    except ValueError as error:
        raise BadInput(f"{error} (the process's GZ_METRICS_PORT)") from None
    return f"http://{join_host_port(host, port)}/debug/targets"


def fetch(url: str) -> dict[str, Any]:
    """The page as JSON; Failed saying why when it cannot be read."""
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response:
            view = json.load(response)
    except urllib.error.HTTPError as error:
        raise Failed(f"{url} answered {error.code} (a gz older than /debug/targets?)") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        hint = " (is GZ_METRICS_PORT set there?)"
        raise Failed(f"cannot read {url}: {reason}{hint}") from None
    except ValueError:
        raise Failed(f"{url} did not answer JSON (not a gz HTTP side?)") from None
    if not isinstance(view, dict) or not isinstance(view.get("channels"), list):
        raise Failed(f"{url} did not answer a /debug/targets view")
    return view


def render(address: str, view: dict[str, Any]) -> str:
    """Each channel: its target, summary lines and an endpoint table with aligned columns."""
    channels = view["channels"]
    lines = [f"{address}: {count(len(channels), 'client channel')}"]
    for channel in channels:
        lines += ["", channel["target"], *(f"  {line}" for line in summary(channel))]
        rows = [[name.upper() for name in COLUMNS]]
        rows += [cells(endpoint) for endpoint in channel.get("endpoints", ())]
        if len(rows) > 1:
            lines += _aligned(rows)
    return "\n".join(lines)


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[n]) for row in rows) for n in range(len(rows[0]))]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def show(address: str, watch: bool, interval: float) -> None:
    """Print the view once (Failed when it cannot be read), or every ``interval`` seconds until
    Ctrl-C; then a failed read is one ``gz:`` line on stderr and the next try follows."""
    url = targets_url(address)
    if interval <= 0:
        raise BadInput(f"--interval must be more than 0, not {interval:g}")
    if not watch:
        click.echo(render(address, fetch(url)))
        return
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            try:
                text = render(address, fetch(url))
            except Failed as error:
                click.echo(f"gz: {error.format_message()}", err=True)
            else:
                click.clear()  # only on a terminal: piped output gets one view after another
                click.echo(text + "\n")
            time.sleep(interval)
