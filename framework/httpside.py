"""Who starts the HTTP side (probes.py, GZ_METRICS_PORT) of a process.

A server starts its own as it starts. A process that only calls starts one on its first
``connect()`` with GZ_METRICS_PORT set, unless a gz server of the process serves one already:
/metrics then shows its grpc_client_* families, /healthz and /readyz answer 200 while it runs
(there is nothing to wait for), and it serves until the process exits. A server started later
in that process takes it over (its /readyz then follows the server) instead of binding the same
port again.
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import TYPE_CHECKING

from .netaddr import join_host_port

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .probes import Page, ProbeServer
    from .settings import ClientSettings

log = logging.getLogger("gz.probes")

_lock = threading.Lock()
_started = False  # a server or connect() started an HTTP side in this process
_client_side: ProbeServer | None = None  # connect()'s, until a server takes it over


def server_side(host: str, port: int, pages: Mapping[str, Page] | None = None) -> ProbeServer:
    """The HTTP side of a server that is starting, serving and not yet ready (``pages``: see
    ProbeServer)."""
    global _started, _client_side
    with _lock:
        _started = True
        side = _client_side
        if side is not None and port and port == side.port:
            _client_side = None
            side.ready = False
            log.info("the server takes over the HTTP side connect() started on port %d", port)
            return side
        return _start(host, port, pages)


def client_side(settings: ClientSettings) -> None:
    """Start the HTTP side of a process that only calls, once; none without GZ_METRICS_PORT.
    A port that cannot be bound raises OSError, on every connect() until it is fixed."""
    global _started, _client_side
    if _started or settings.metrics_port is None:
        return
    with _lock:
        if _started:
            return
        side = _start(settings.metrics_host or "0.0.0.0", settings.metrics_port)
        side.ready = True
        atexit.register(side.close)  # the thread is a daemon: this only closes the port first
        _started, _client_side = True, side


def _start(host: str, port: int, pages: Mapping[str, Page] | None = None) -> ProbeServer:
    from .probes import ProbeServer  # prometheus_client: only for processes that serve metrics

    try:
        side = ProbeServer(host, port, pages)
    except OSError as error:
        raise OSError(
            f"cannot listen on GZ_METRICS_PORT={port} on {host} (GZ_METRICS_HOST, else the"
            f" listen host): {error}"
        ) from None
    side.start()
    log.info("metrics and probes on http://%s/metrics, /healthz, /readyz",
             join_host_port(host, side.port))  # fmt: skip
    return side
