"""The worker's end of the line to its supervisor: one Unix socket, a line per message.

A worker says ``listening PORT METRICS_PORT`` once it listens; the supervisor answers
``serving`` once every worker of the instance listens, and ``not-serving`` while one of them is
down, so that every worker reports the health of the whole instance. The supervisor stops a
worker with SIGTERM; a worker whose supervisor is gone (the line closes) stops itself the same
way, so no worker outlives its instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import ServerSettings

log = logging.getLogger("gz.workers")

VARIABLE = "_GZ_WORKER"
"""Set by the supervisor for each worker it starts (JSON: index, fd, listen, own); not a
setting: the leading underscore keeps it out of the GZ_* names users set."""


@dataclass
class WorkerLink:
    index: int
    fd: int
    listen: str  # the shared address, every worker's
    own: str  # this worker's own address
    _reader: asyncio.StreamReader = field(init=False, repr=False)
    _writer: asyncio.StreamWriter = field(init=False, repr=False)

    @classmethod
    def from_env(cls) -> WorkerLink | None:
        """This process's link, None when it is not a supervisor's worker."""
        text = os.environ.get(VARIABLE)
        if not text:
            return None
        fields = json.loads(text)
        return cls(fields["index"], fields["fd"], fields["listen"], fields["own"])

    def to_env(self) -> str:
        return json.dumps(
            {"index": self.index, "fd": self.fd, "listen": self.listen, "own": self.own}
        )

    def worker_settings(self, settings: ServerSettings) -> ServerSettings:
        """The instance's settings as this worker applies them: the shared address with its
        real port, and its own HTTP side on 127.0.0.1 (the supervisor serves GZ_METRICS_PORT)."""
        update: dict[str, object] = {"listen": self.listen}
        if settings.metrics_port is not None:
            update |= {"metrics_port": 0, "metrics_host": "127.0.0.1"}
        return settings.model_copy(update=update)

    async def open(self) -> None:
        sock = socket.socket(fileno=self.fd)
        self._reader, self._writer = await asyncio.open_unix_connection(sock=sock)

    async def listening(self, port: int, metrics_port: int | None) -> None:
        """Tell the supervisor this worker listens (``metrics_port``: its /metrics, if any)."""
        self._writer.write(f"listening {port} {metrics_port or 0}\n".encode())
        await self._writer.drain()

    async def follow(self, set_serving: Callable[[bool], Awaitable[None]]) -> None:
        """Apply the supervisor's word on the instance's health until the line closes, then
        stop this worker as SIGTERM would."""
        with contextlib.suppress(ConnectionError):
            while line := (await self._reader.readline()).decode().strip():
                if line in ("serving", "not-serving"):
                    await set_serving(line == "serving")
                else:
                    log.warning("worker %d: unknown word from the supervisor: %r", self.index, line)
        log.warning("worker %d: the supervisor is gone; shutting down", self.index)
        os.kill(os.getpid(), signal.SIGTERM)

    def close(self) -> None:
        self._writer.close()
