"""gz: gRPC services that bootstrap themselves, and clients that balance over live endpoints.

Heavy backends (etcd, kubernetes, exporters) are imported only when a target or setting uses them.
"""

from .balancing import BalancedChannel
from .balancing.syncchannel import SyncBalancedChannel
from .client import connect, connect_sync
from .discovery import Endpoint, ManualResolver, Resolver, TargetError
from .middleware import CallContext, CallObserver, Middleware
from .middleware.retry import Retry, RetryPolicy, idempotent
from .service import Service, run
from .settings import ClientSettings, ServerSettings, SettingsError


def __getattr__(name: str) -> str:
    if name == "__version__":  # read on demand: importlib.metadata costs start-up time
        from importlib.metadata import version

        return version("gz")
    raise AttributeError(f"module 'gz' has no attribute {name!r}")


__all__ = [
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
