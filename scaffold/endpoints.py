"""What a client of a target would see: the first endpoint set, or every change of it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Collection

import gz
from gz.discovery import Endpoint, Listener, apply_change, build_resolver
from gz.middleware.tracing import configure_tracing

from .errors import BadInput, Failed

CLI_SERVICE_NAME = "gz-cli"  # service.name of the spans of gz call, list, describe and health


def client_settings() -> gz.ClientSettings:
    """The GZ_* client settings; BadInput naming the variable when one is bad."""
    try:
        return gz.ClientSettings.from_env()
    except gz.SettingsError as error:
        raise BadInput(str(error)) from None


def trace_as_cli(settings: gz.ClientSettings) -> None:
    """Set tracing up (OTEL_TRACES_EXPORTER) before connect() would, naming the service
    ``gz-cli`` unless OTEL_SERVICE_NAME names it: the CLI's spans are then not
    ``unknown_service``. A bad OTEL_* value is bad input."""
    if settings.tracing:
        try:
            configure_tracing(CLI_SERVICE_NAME)
        except gz.SettingsError as error:
            raise BadInput(str(error)) from None


def resolver_for(target: str, settings: gz.ClientSettings | None = None) -> gz.Resolver:
    """Every gz command's TARGET: a full target, a bare name, or ``host:port`` as grpcurl takes."""
    try:
        return build_resolver(cli_target(target), settings)
    except ValueError as error:
        raise BadInput(str(error)) from None


# host:port or [v6]:port with a numeric port; "greeter" and "greeter:grpc" stay bare names
_ADDRESS = re.compile(r"(\[[^\]]*\]|[^:/\[\]]+):[0-9]+")


def cli_target(text: str) -> str:
    """``host:port`` and ``[::1]:port`` mean ``direct:///host:port``; anything else is as given."""
    stripped = text.strip()
    return f"direct:///{stripped}" if _ADDRESS.fullmatch(stripped) else text


def places(found: frozenset[Endpoint]) -> dict[str, dict[str, object]]:
    """``zones`` (address: zone) and ``hints`` (address: the zones it is hinted for) for gz
    resolve --json; each only when some endpoint has one, so other targets' lines stay as
    they were."""
    ordered = sorted(found)
    zones = {e.address: e.zone for e in ordered if e.zone is not None}
    hints = {e.address: sorted(e.for_zones) for e in ordered if e.for_zones}
    return {key: value for key, value in (("zones", zones), ("hints", hints)) if value}


def place(endpoint: Endpoint) -> str:
    """``  zone eu-west-1a, hinted for eu-west-1a`` for gz resolve's text lines, or ""."""
    parts = [f"zone {endpoint.zone}"] if endpoint.zone is not None else []
    if endpoint.for_zones:
        parts.append(f"hinted for {', '.join(sorted(endpoint.for_zones))}")
    return f"  {', '.join(parts)}" if parts else ""


class _Collector(Listener):
    def __init__(
        self, on_update: Callable[[frozenset[Endpoint]], None], on_error: Callable[[str], None]
    ) -> None:
        self.on_update, self.on_error = on_update, on_error
        self.changed = asyncio.Event()
        self.endpoints: frozenset[Endpoint] | None = None
        self.failed: str | None = None

    def update(self, endpoints: frozenset[Endpoint]) -> None:
        self.endpoints = endpoints
        self.on_update(endpoints)
        self.changed.set()

    def change(self, added: Collection[Endpoint], removed: Collection[Endpoint]) -> None:
        self.update(apply_change(self.endpoints or frozenset(), added, removed))

    def error(self, message: str) -> None:
        self.failed = message
        self.on_error(message)
        self.changed.set()


async def first_set(resolver: gz.Resolver, timeout: float) -> frozenset[Endpoint]:
    """The first endpoint set; Failed if resolution fails first or nothing comes in time."""
    collector = _Collector(lambda endpoints: None, lambda message: None)
    watching = asyncio.ensure_future(resolver.watch(collector))
    try:
        await asyncio.wait_for(collector.changed.wait(), timeout)
    except TimeoutError:
        raise Failed(f"{resolver.target}: nothing resolved in {timeout:g}s") from None
    finally:
        watching.cancel()
    if collector.endpoints is None:
        raise Failed(collector.failed or f"{resolver.target}: resolution failed")
    return collector.endpoints


async def watch(
    resolver: gz.Resolver,
    on_update: Callable[[frozenset[Endpoint]], None],
    on_error: Callable[[str], None],
) -> None:
    """Report every change until cancelled."""
    await resolver.watch(_Collector(on_update, on_error))
