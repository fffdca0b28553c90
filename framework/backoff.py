"""Jittered exponential backoff for loops that retry a registry or an API server."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Delays that double from ``first`` up to ``cap``, each drawn at random from [d/2, d] so
    that many clients retrying one server do not move in step. ``reset()`` after a success."""

    __slots__ = ("_attempts", "cap", "first")

    def __init__(self, first: float = 0.1, cap: float = 1.0) -> None:
        self.first, self.cap = first, cap
        self._attempts = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.first * 2**self._attempts)
        self._attempts = min(self._attempts + 1, 32)
        return random.uniform(ceiling / 2, ceiling)

    async def sleep(self) -> None:
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        self._attempts = 0
