"""A TCP relay that counts the bytes going each way: how the cases see compression on the wire.

grpc Python shows neither side whether a message was compressed (the compressed-flag of a
message and the ``grpc-encoding`` header never reach the application), so the compression
cases ask this relay instead: a 300 kB payload of zeros crosses it as a few hundred bytes when
compressed, and as at least its own size when not.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class Counts:
    """Bytes relayed so far: client to server (``up``) and server to client (``down``)."""

    up: int = 0
    down: int = 0


class Wire:
    """Listens on 127.0.0.1 and relays every connection to ``upstream`` (host:port)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.counts = Counts()
        self.address = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Wire:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        return self

    def snapshot(self) -> Counts:
        return Counts(self.counts.up, self.counts.down)

    def since(self, before: Counts) -> Counts:
        """The bytes relayed since ``before`` (a snapshot)."""
        return Counts(self.counts.up - before.up, self.counts.down - before.down)

    async def close(self) -> None:
        """Stop listening and drop every connection (the relays then end by themselves)."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.upstream.rsplit(":", 1)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, "up"), self._pump(up_reader, writer, "down")
            )
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        """Copy one direction until its end; a broken connection drops both."""
        try:
            while data := await reader.read(65536):
                setattr(self.counts, direction, getattr(self.counts, direction) + len(data))
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.transport.abort()
