"""Cutting every connection of one ApiClient from another thread, so a worker stops at once.

The official client blocks in socket calls that only a timeout ends: a list waits up to 30 s for
its answer, a watch up to five minutes for its next event. Each SliceApi owns its ApiClient, so
its connections are all its own: urllib3 is given connection classes that register their sockets
here, and ``shut_down()`` cuts them all. A connection opened after that fails before it connects.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import weakref
from collections.abc import Mapping
from typing import Any


class Stopped(ConnectionAbortedError):
    """A connection attempt after shut_down(): the worker is stopping."""


class Sockets:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: weakref.WeakSet[Any] = weakref.WeakSet()  # closed ones drop out by themselves
        self._shut = False

    def track(self, api_client: Any) -> None:
        """Make the client's connections register here. A pool manager that is not the urllib3
        one this knows (a newer client) is left alone: then only open responses can be cut."""
        manager = getattr(getattr(api_client, "rest_client", None), "pool_manager", None)
        pools = getattr(manager, "pool_classes_by_scheme", None)
        if not isinstance(pools, Mapping) or not all(
            isinstance(getattr(pool, "ConnectionCls", None), type) for pool in pools.values()
        ):
            return
        # per instance: other ApiClients in the process keep urllib3's own classes
        manager.pool_classes_by_scheme = {
            scheme: self._tracking_pool(pool) for scheme, pool in pools.items()
        }

    def shut_down(self) -> None:
        """Cut every open connection (a blocked read then ends) and refuse new ones."""
        with self._lock:
            self._shut = True
            sockets = list(self._open)
        for sock in sockets:
            _shut(sock)

    def _connected(self, sock: Any) -> None:
        with self._lock:
            if not self._shut:
                self._open.add(sock)
                return
        _shut(sock)  # shut_down() ran while this one was connecting

    def _check(self) -> None:
        if self._shut:
            raise Stopped("the Kubernetes client is stopping")

    def _tracking_pool(self, pool: type) -> type:
        sockets = self

        class Connection(pool.ConnectionCls):  # urllib3's HTTP(S)Connection, for this client only
            def connect(self) -> None:
                sockets._check()
                super().connect()
                sockets._connected(self.sock)

        return type(pool.__name__, (pool,), {"ConnectionCls": Connection})


def _shut(sock: Any) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)
