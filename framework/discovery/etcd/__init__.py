"""The etcd backend: ``etcd://h1:2379,h2:2379/KEY`` and ``etcd:///KEY`` targets (endpoints then
come from GZ_ETCD_ENDPOINTS), and GZ_REGISTRY=etcd registration. Imported only when used."""

from __future__ import annotations

from ...netaddr import parse_host_port
from ...settings import EtcdSettings, ServerSettings
from ..target import Target
from .connection import EtcdConfig, EtcdRefused, EtcdUnavailable
from .registration import EtcdRegistration
from .resolver import EtcdResolver


def build(target: Target, settings: EtcdSettings | None = None) -> EtcdResolver:
    if target.params:
        raise target.error("etcd targets take no parameters")
    key = target.endpoint.strip("/")
    if not key or any(ch.isspace() for ch in key):
        raise target.error(f"{target.endpoint!r} is not an etcd key")
    endpoints = tuple(item.strip() for item in target.authority.split(",") if item.strip())
    for endpoint in endpoints:
        try:
            parse_host_port(endpoint)
        except ValueError as error:
            raise target.error(f"bad etcd endpoint: {error}") from None
    if target.authority and not endpoints:
        raise target.error(f"bad etcd endpoints {target.authority!r}")
    config = EtcdConfig.from_settings(settings or EtcdSettings.from_env(), endpoints)
    return EtcdResolver(config, key, target=target.text)


def registration(settings: ServerSettings, service_name: str) -> EtcdRegistration:
    key = settings.etcd_key or service_name
    return EtcdRegistration(EtcdConfig.from_settings(settings), key, settings.etcd_ttl)


__all__ = [
    "EtcdConfig",
    "EtcdRefused",
    "EtcdRegistration",
    "EtcdResolver",
    "EtcdUnavailable",
    "build",
    "registration",
]
