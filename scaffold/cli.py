"""``gz``: run services and look at what clients see. Bad input exits 2 with one clear line."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import sys

import click

import framework
from framework.discovery import Endpoint, Listener, build_resolver


class BadInput(click.ClickException):
    """Exit 2 with one line saying what is wrong."""

    exit_code = 2

    def show(self, file: object = None) -> None:
        click.echo(f"gz: {self.format_message()}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """gz: gRPC services that bootstrap themselves, clients that balance over live endpoints."""


@main.command()
@click.argument("service", metavar="MODULE:CLASS")
def run(service: str) -> None:
    """Run a framework.Service subclass, e.g. ``gz run examples.greeter.server:Greeter``.

    Settings come from GZ_* environment variables; SIGTERM drains and exits 0.
    """
    sys.exit(framework.run(load_service(service)))


def load_service(spec: str) -> type[framework.Service]:
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise BadInput(f"{spec!r} is not MODULE:CLASS, e.g. myservice.server:MyService")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise BadInput(f"cannot import {module_name!r}: {error}") from None
    service = getattr(module, class_name, None)
    if not (isinstance(service, type) and issubclass(service, framework.Service)):
        raise BadInput(f"{spec!r} is not a framework.Service subclass")
    return service


@main.command()
@click.argument("target")
@click.option("--watch", is_flag=True, help="Keep running and print every change.")
@click.option("--json", "as_json", is_flag=True, help="Print each set as a JSON line.")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for a first set.")
def resolve(target: str, watch: bool, as_json: bool, timeout: float) -> None:
    """Print the endpoints TARGET resolves to (direct:///, dns:///, or a bare service name)."""
    try:
        resolver = build_resolver(target)
    except ValueError as error:
        raise BadInput(str(error)) from None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_print_endpoints(resolver, watch, as_json, timeout))


class _Printer(Listener):
    def __init__(self, target: str, as_json: bool, watching: bool) -> None:
        self.target, self.as_json, self.watching = target, as_json, watching
        self.changed = asyncio.Event()
        self.failed: str | None = None

    def update(self, endpoints: frozenset[Endpoint]) -> None:
        addresses = [e.address for e in sorted(endpoints)]
        if self.as_json:
            click.echo(json.dumps({"target": self.target, "endpoints": addresses}))
        else:
            click.echo(f"{self.target}: {len(addresses)} endpoints")
            for address in addresses:
                click.echo(f"  {address}")
        self.changed.set()

    def error(self, message: str) -> None:
        self.failed = message
        if self.watching:
            click.echo(f"error: {message}", err=True)
        self.changed.set()


async def _print_endpoints(resolver: framework.Resolver, watch: bool, as_json: bool,
                           timeout: float) -> None:  # fmt: skip
    printer = _Printer(resolver.target, as_json, watch)
    watching = asyncio.ensure_future(resolver.watch(printer))
    try:
        if watch:
            await watching
            return
        try:
            await asyncio.wait_for(printer.changed.wait(), timeout)
        except TimeoutError:
            raise click.ClickException(
                f"{resolver.target}: nothing resolved in {timeout}s"
            ) from None
        if printer.failed:
            raise click.ClickException(printer.failed)
    finally:
        watching.cancel()


if __name__ == "__main__":
    main()
