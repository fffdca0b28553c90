"""gz: gRPC services that bootstrap themselves, and clients that balance over live endpoints.

Heavy backends (etcd, kubernetes, exporters) are imported only when a target or setting uses them.
"""

from .balancing import BalancedChannel
from .client import connect
from .discovery import Endpoint, ManualResolver, Resolver, TargetError
from .middleware import CallContext, Middleware
from .middleware.retry import Retry, RetryPolicy, idempotent
from .service import Service, run
from .settings import ClientSettings, ServerSettings, SettingsError

__all__ = [
    "BalancedChannel",
    "CallContext",
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
    "TargetError",
    "connect",
    "idempotent",
    "run",
]
