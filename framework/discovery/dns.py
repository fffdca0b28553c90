"""``dns:///name:port?refresh=10s``: every A/AAAA record of name, looked up every refresh and at
once when an endpoint fails (grpc's own DNS resolver only re-resolves on failure)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..durations import parse_duration
from .endpoint import Endpoint
from .resolver import Listener, Resolver
from .target import Target

if TYPE_CHECKING:
    from ..settings import ClientSettings

log = logging.getLogger("gz.discovery.dns")

Lookup = Callable[[str, int], Awaitable[list[str]]]
"""Returns the IP addresses of a host name; the seam tests use to change the answer."""

DEFAULT_REFRESH = 10.0
MIN_REFRESH = 0.1
# resolve_now() hints come from failing subchannels; a crash loop must not turn into a DNS flood
MIN_GAP_BETWEEN_LOOKUPS = 0.5


async def system_lookup(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class DnsResolver(Resolver):
    def __init__(
        self,
        host: str,
        port: int,
        *,
        refresh: float = DEFAULT_REFRESH,
        lookup: Lookup = system_lookup,
        target: str = "",
    ) -> None:
        self.host, self.port, self.refresh = host, port, max(refresh, MIN_REFRESH)
        self.target = target or f"dns:///{Endpoint(host, port)}"
        self._lookup = lookup
        self._wake = asyncio.Event()
        self._last_lookup = -1e9

    def resolve_now(self) -> None:
        self._wake.set()

    async def watch(self, listener: Listener) -> None:
        while True:
            wait = MIN_GAP_BETWEEN_LOOKUPS - (time.monotonic() - self._last_lookup)
            if wait > 0:
                await asyncio.sleep(wait)
            self._wake.clear()
            self._last_lookup = time.monotonic()
            await self._lookup_once(listener)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.refresh)

    async def _lookup_once(self, listener: Listener) -> None:
        try:
            addresses = await self._lookup(self.host, self.port)
        except Exception as error:
            listener.error(f"{self.target}: looking up {self.host!r} failed: {error}")
            return
        listener.update(frozenset(Endpoint(address, self.port) for address in addresses))


def build(target: Target, settings: ClientSettings | None = None) -> DnsResolver:
    if target.authority:
        raise target.error(
            f"gz uses the system resolver; remove the DNS server {target.authority!r}"
        )
    unknown = set(target.params) - {"refresh"}
    if unknown:
        raise target.error(f"unknown parameter {sorted(unknown)[0]!r}")
    try:
        endpoint = Endpoint.parse(target.endpoint)
        refresh = parse_duration(target.params.get("refresh", DEFAULT_REFRESH))
    except ValueError as error:
        raise target.error(str(error)) from None
    if refresh < MIN_REFRESH:
        raise target.error(f"refresh must be at least {MIN_REFRESH}s")
    return DnsResolver(endpoint.host, endpoint.port, refresh=refresh, target=target.text)
