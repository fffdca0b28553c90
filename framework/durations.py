"""Durations as gz writes them: seconds (``0.5``) or with a unit (``500ms``, ``10s``, ``2m``)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
DURATION_FORM = "a duration such as 0.5, 500ms, 10s or 2m"


def parse_duration(value: str | float | int) -> float:
    """Return seconds; raise ValueError for anything that is not a non-negative duration."""
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_FORM}, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"expected {DURATION_FORM}, got a negative number {value!r}")
        return float(value)
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"expected {DURATION_FORM}, got {value!r}")
    number, unit = match.groups()
    return float(number) * _UNITS[unit or "s"]


def format_duration(seconds: float) -> str:
    """The shortest form parse_duration reads back: ``500ms``, ``10s``, ``1.5s``."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A pydantic field type: accepts what parse_duration accepts, stores seconds."""
