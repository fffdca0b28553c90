"""``direct:///host1:port1,host2:port2``: a fixed list of endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .endpoint import Endpoint
from .resolver import ManualResolver
from .target import Target

if TYPE_CHECKING:
    from ..settings import ClientSettings


def build(target: Target, settings: ClientSettings | None = None) -> ManualResolver:
    if target.authority:
        raise target.error(f"direct targets take no authority, got {target.authority!r}")
    if target.params:
        raise target.error("direct targets take no parameters")
    endpoints = []
    for item in target.endpoint.split(","):
        try:
            endpoints.append(Endpoint.parse(item))
        except ValueError as error:
            raise target.error(str(error)) from None
    return ManualResolver(endpoints, target=target.text)
