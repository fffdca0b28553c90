"""The pickers by the name that connect(balancer=...) and GZ_BALANCER use."""

from __future__ import annotations

from .p2c import P2cEwmaPicker
from .picker import Picker, RoundRobinPicker

PICKERS: dict[str, type[Picker]] = {p.name: p for p in (P2cEwmaPicker, RoundRobinPicker)}


def picker_class(name: str) -> type[Picker]:
    try:
        return PICKERS[name]
    except KeyError:
        raise ValueError(
            f"unknown balancer {name!r}; expected one of {', '.join(sorted(PICKERS))}"
        ) from None
