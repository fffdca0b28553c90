"""gz: gRPC services that bootstrap themselves, and clients that balance over live endpoints.

Every name here is imported on first use (PEP 562), so ``import gz`` costs next to nothing and a
program pays for what it uses when it first uses it: a client for the channel's modules and
its settings, a server for the server's. Heavy backends (etcd, kubernetes, exporters) are
imported only when a target or setting uses them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each public name and the module that defines it.
_EXPORTS = {
    "BalancedChannel": ".balancing",
    "CallContext": ".middleware",
    "CallObserver": ".middleware",
    "ClientSettings": ".settings",
    "Endpoint": ".discovery",
    "ManualResolver": ".discovery",
    "Middleware": ".middleware",
    "Resolver": ".discovery",
    "Retry": ".middleware.retry",
    "RetryPolicy": ".middleware.retry",
    "ServerSettings": ".settings",
    "Service": ".service",
    "SettingsError": ".settings",
    "SyncBalancedChannel": ".balancing.syncchannel",
    "TargetError": ".discovery",
    "connect": ".client",
    "connect_sync": ".client",
    "idempotent": ".middleware.retry",
    "run": ".service",
}

if TYPE_CHECKING:  # what type checkers and editors see
    from .balancing import BalancedChannel
    from .balancing.syncchannel import SyncBalancedChannel
    from .client import connect, connect_sync
    from .discovery import Endpoint, ManualResolver, Resolver, TargetError
    from .middleware import CallContext, CallObserver, Middleware
    from .middleware.retry import Retry, RetryPolicy, idempotent
    from .service import Service, run
    from .settings import ClientSettings, ServerSettings, SettingsError


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read on demand: importlib.metadata costs start-up time
        from importlib.metadata import version

        return version("gz")
    module = _EXPORTS.get(name)
    if module is None:
        return _submodule(name)
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def _submodule(name: str) -> Any:
    """``gz.discovery`` and the like without importing them first, as before names were lazy."""
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise  # the submodule exists but something it imports does not
        raise AttributeError(f"module 'gz' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [  # the names of _EXPORTS (tests/test_install.py checks)
    "BalancedChannel",
    "CallContext",
    "CallObserver",
    "ClientSettings",
    "Endpoint",
    "ManualResolver",
    "Middleware",
    "Resolver",
    "Retry",
    "RetryPolicy",
    "ServerSettings",
    "Service",
    "SettingsError",
    "SyncBalancedChannel",
    "TargetError",
    "connect",
    "connect_sync",
    "idempotent",
    "run",
]
