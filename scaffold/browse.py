"""``gz list`` and ``gz describe``: what a server offers, over reflection or from ``--proto``
files (which are read without asking the server)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import gz

from . import prototext
from .reflection import Reflection
from .schema import Schema


@contextlib.asynccontextmanager
async def _schema(
    target: str | gz.Resolver,
    timeout: float,
    metadata: list[tuple[str, str | bytes]],
    settings: gz.ClientSettings | None,
    protos: Schema | None,
) -> AsyncIterator[Schema]:
    if protos is not None:
        yield protos
        return
    async with gz.connect(target, timeout=timeout, settings=settings) as channel:
        yield Reflection(channel, timeout, metadata)


async def list_names(
    target: str | gz.Resolver,
    service: str | None,
    timeout: float,
    metadata: list[tuple[str, str | bytes]],
    settings: gz.ClientSettings | None = None,
    protos: Schema | None = None,
) -> list[str]:
    """Every service's full name; with ``service``, the full names of its methods."""
    async with _schema(target, timeout, metadata, settings, protos) as schema:
        if service is None:
            return await schema.services()
        found = await schema.service(service)
        return [method.full_name for method in found.methods]


async def describe(
    target: str | gz.Resolver,
    symbol: str | None,
    timeout: float,
    metadata: list[tuple[str, str | bytes]],
    settings: gz.ClientSettings | None = None,
    protos: Schema | None = None,
) -> str:
    """``symbol`` (or, without it, every service) as proto source."""
    async with _schema(target, timeout, metadata, settings, protos) as schema:
        names = [symbol] if symbol is not None else await schema.services()
        found = [await schema.symbol(name) for name in names]
    return "\n".join(prototext.describe(item) for item in found)
