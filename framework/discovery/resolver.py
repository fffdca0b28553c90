"""The resolver interface: a resolver pushes the endpoint set of one target, whole or as the
change since its last push."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable
from typing import Protocol

from .endpoint import Endpoint


class Listener(Protocol):
    """What a resolver reports to (the client's subchannel pool)."""

    def update(self, endpoints: frozenset[Endpoint]) -> None:
        """The complete current set; an empty set means the target really has no endpoints."""

    def change(self, added: Collection[Endpoint], removed: Collection[Endpoint]) -> None:
        """What changed since the last set or change told: ``removed`` left the set, ``added``
        joined it or replace the equal (same address) endpoint, whose zone or hints changed.
        Resolvers that follow events (etcd, Kubernetes) push these, so that one endpoint
        changed costs the same whatever the size of the set."""

    def error(self, message: str) -> None:
        """Resolution failed; the last set stays in use. The message names the target and cause."""


def apply_change(
    endpoints: frozenset[Endpoint], added: Collection[Endpoint], removed: Collection[Endpoint]
) -> frozenset[Endpoint]:
    """``endpoints`` after a Listener.change, for a listener that wants whole sets (O(N))."""
    replaced = frozenset(added)
    return endpoints - frozenset(removed) - replaced | replaced


class Resolver(ABC):
    """Finds the endpoints of one target and keeps them current.

    ``watch`` runs until cancelled (or returns once a static set is pushed). It pushes the first
    set with ``listener.update``, and later ones with ``update`` or ``change``. It must never
    push an empty set because of an error: errors go to ``listener.error`` and the last set
    stays.
    """

    #: what the user asked for, for messages: ``dns:///greeter:8080``
    target: str = ""

    @abstractmethod
    async def watch(self, listener: Listener) -> None:
        """Push every change of the endpoint set to listener.update until cancelled."""

    def resolve_now(self) -> None:  # noqa: B027 - optional hook, a no-op for push-based backends
        """A hint that an endpoint failed: backends that poll should poll again soon."""


class ManualResolver(Resolver):
    """A resolver you push to yourself: the fixed list of ``direct:///`` and a seam for tests."""

    def __init__(self, endpoints: Iterable[Endpoint | str] = (), *, target: str = "manual") -> None:
        self.target = target
        self._endpoints = _to_set(endpoints)
        self._listeners: list[Listener] = []
        self._parsed: dict[str, Endpoint] = {}

    def set_endpoints(self, endpoints: Iterable[Endpoint | str]) -> None:
        """Replace the set; every watching channel sees the change."""
        # Text seen in the last set keeps its Endpoint object: parsing 10,000 addresses takes
        # 24 ms, and identical objects let the pool diff the sets without Python __eq__ calls.
        known, self._parsed = self._parsed, {}
        resolved: set[Endpoint] = set()
        for endpoint in endpoints:
            if isinstance(endpoint, str):
                parsed = known.get(endpoint) or Endpoint.parse(endpoint)
                endpoint = self._parsed[endpoint] = parsed
            resolved.add(endpoint)
        self._endpoints = frozenset(resolved)
        for listener in self._listeners:
            listener.update(self._endpoints)

    async def watch(self, listener: Listener) -> None:
        self._listeners.append(listener)
        try:
            listener.update(self._endpoints)
            await asyncio.Event().wait()  # the set changes only through set_endpoints
        finally:
            self._listeners.remove(listener)


def _to_set(endpoints: Iterable[Endpoint | str]) -> frozenset[Endpoint]:
    return frozenset(e if isinstance(e, Endpoint) else Endpoint.parse(e) for e in endpoints)
