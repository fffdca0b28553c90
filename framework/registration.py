"""Registration: how a server tells a registry where it is. The server calls register() once it
listens and deregister() first thing on shutdown."""

from __future__ import annotations

import importlib
from typing import Protocol

from .settings import ServerSettings


class Registration(Protocol):
    async def register(self, address: str) -> None:
        """Announce ``host:port``; must not raise when the registry is down (retry instead)."""

    async def deregister(self) -> None:
        """Withdraw the announcement at once."""


class NoRegistration:
    """GZ_REGISTRY=none: clients find the server some other way (a list, DNS, Kubernetes)."""

    async def register(self, address: str) -> None:
        return None

    async def deregister(self) -> None:
        return None


_REGISTRIES = {"etcd": "gz.discovery.etcd"}


def registration_for(settings: ServerSettings, service_name: str) -> Registration:
    """The registration GZ_REGISTRY asks for; backends are imported only when used."""
    if settings.registry == "none":
        return NoRegistration()
    backend = importlib.import_module(_REGISTRIES[settings.registry])
    return backend.registration(settings, service_name)
