"""A subchannel is one grpc.aio channel to one endpoint, with its connectivity state tracked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import grpc

from ..discovery import Endpoint

State = grpc.ChannelConnectivity
StateListener = Callable[["Subchannel", State, State], None]


class Subchannel:
    """Owns one grpc.aio channel. Multicallables are cached per balanced multicallable, so a call
    costs one dict lookup here; the state is kept current by a watcher task, never polled."""

    __slots__ = ("_on_state", "_watcher", "callables", "channel", "endpoint", "state")

    def __init__(
        self, endpoint: Endpoint, channel: grpc.aio.Channel, on_state: StateListener
    ) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self.state = State.IDLE
        self.callables: dict[object, object] = {}
        self._on_state = on_state
        self._watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.state = self.channel.get_state(try_to_connect=True)
        self._watcher = asyncio.get_running_loop().create_task(self._watch_state())

    async def _watch_state(self) -> None:
        while True:
            await self.channel.wait_for_state_change(self.state)
            old, self.state = self.state, self.channel.get_state()
            if self.state == State.IDLE:
                # A GOAWAY or an idle timeout leaves the channel IDLE; reconnect now so the
                # picker sees READY again (or a failure) instead of a stale connection.
                self.state = self.channel.get_state(try_to_connect=True)
            if old != self.state:
                self._on_state(self, old, self.state)

    async def close(self, grace: float | None) -> None:
        """Stop watching; in-flight calls get up to grace seconds, then are cancelled."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self.state = State.SHUTDOWN
        self.callables.clear()
        await self.channel.close(grace)

    def __repr__(self) -> str:
        return f"<Subchannel {self.endpoint} {self.state.name}>"
