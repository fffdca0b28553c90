"""The HTTP side of a GZ_WORKERS instance (GZ_METRICS_PORT), served by the supervisor.

Each worker serves its own /metrics and /debug/targets on 127.0.0.1, on a port of its own that
it tells the supervisor. The supervisor's port answers for the instance: /metrics merges the
workers' (exposition.py), /debug/targets lists every worker's channels, /debug/workers shows the
workers, /readyz is 200 while every worker serves. A worker that does not answer within
``WORKER_TIMEOUT`` is left out of /metrics and named in /debug/targets, so that one stuck worker
cannot hold up a scrape.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..netaddr import join_host_port, parse_host_port

if TYPE_CHECKING:
    from ..probes import Page
    from .supervisor import Supervisor

log = logging.getLogger("gz.workers")

WORKER_TIMEOUT = 2.0
"""Seconds a worker has to answer the supervisor's request for its /metrics or targets."""
_JSON = "application/json"
_TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def instance_pages(supervisor: Supervisor) -> dict[str, Page]:
    def metrics(_headers: Mapping[str, str]) -> tuple[int, bytes, str]:
        from .exposition import merge  # prometheus_client: once something scrapes

        texts = []
        for worker in supervisor.workers:
            text = _fetch(worker.metrics_port, "/metrics") if worker.listening else None
            if text is not None:
                texts.append(text)
        return 200, merge(texts).encode(), _TEXT_FORMAT

    def targets(_headers: Mapping[str, str]) -> tuple[int, bytes, str]:
        channels = []
        for worker in supervisor.workers:
            text = _fetch(worker.metrics_port, "/debug/targets") if worker.listening else None
            if text is None:  # shown as debug_targets shows a channel whose loop is stuck
                why = "the worker did not answer"
                channels.append({"worker": worker.index, "target": f"worker {worker.index}",
                                 "balancer": "", "unavailable": why})  # fmt: skip
                continue
            for channel in json.loads(text)["channels"]:
                channels.append({"worker": worker.index, **channel})
        return _json({"channels": channels})

    def workers(_headers: Mapping[str, str]) -> tuple[int, bytes, str]:
        return _json(workers_view(supervisor))

    return {"/metrics": metrics, "/debug/targets": targets, "/debug/workers": workers}


def workers_view(supervisor: Supervisor) -> dict[str, object]:
    now = time.monotonic()
    return {
        "listen": supervisor.listen,
        "serving": supervisor.serving,
        "workers": [
            {
                "index": worker.index,
                "pid": worker.pid,
                "listening": worker.listening,
                "address": worker.own if not worker.port else _with_port(worker.own, worker.port),
                "restarts": worker.restarts,
                "up_seconds": round(now - worker.started, 1) if worker.started else 0.0,
                "last_exit": worker.last_exit or None,
            }
            for worker in supervisor.workers
        ],
    }


def _with_port(address: str, port: int) -> str:
    host, _ = parse_host_port(address, listening=True)
    return join_host_port(host, port)


def _json(view: object) -> tuple[int, bytes, str]:
    return 200, (json.dumps(view, indent=2) + "\n").encode(), _JSON


def _fetch(port: int, path: str) -> str | None:
    """A worker's answer at ``path``, None if it has no HTTP side or did not answer."""
    if not port:
        return None
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WORKER_TIMEOUT)
    try:
        connection.request("GET", path, headers={"Accept": "text/plain"})
        response = connection.getresponse()
        body = response.read().decode()
        return body if response.status == 200 else None
    except (OSError, http.client.HTTPException) as error:
        log.warning("worker on 127.0.0.1:%d did not answer %s: %s", port, path, error)
        return None
    finally:
        connection.close()
