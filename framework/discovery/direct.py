"""``direct:///host1:port1,host2:port2``: a fixed list of endpoints."""

from __future__ import annotations

from .endpoint import Endpoint
from .resolver import ManualResolver
from .target import Target


def build(target: Target) -> ManualResolver:
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
