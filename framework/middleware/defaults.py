"""The middleware every gz server and client gets, chosen by settings (docs/middleware.md).

Order, outermost first. Server: tracing, metrics, call log, deadline, recovery, shedding, auth,
then the service's own middleware (the first four are call observers: one layer on unary methods).
Client: tracing, metrics, call log, auth, deadline, then the caller's middleware. A middleware
switched off by its setting is not in the list at all.
"""

from __future__ import annotations

from ..settings import ClientSettings, ServerSettings
from .calllog import CallLog
from .chain import Middleware
from .deadline import Deadline


def server_middleware(settings: ServerSettings, service_name: str = "") -> list[Middleware]:
    """The default server chain for ``settings``."""
    chain = _observing(settings, service_name)
    if settings.deadline:
        chain.append(Deadline())
    if settings.recovery:
        from .recovery import Recovery

        chain.append(Recovery())
    if settings.shed_cpu is not None or settings.max_concurrency is not None:
        from .shedding import Shedding

        chain.append(Shedding(settings.shed_cpu, settings.max_concurrency))
    if settings.auth_tokens:
        from .auth import TokenAuth

        chain.append(TokenAuth(settings.auth_tokens))
    return chain


def client_middleware(
    settings: ClientSettings, timeout: float | None = None, service_name: str = ""
) -> list[Middleware]:
    """The default client chain; ``timeout`` is the default deadline of calls (GZ_TIMEOUT)."""
    chain = _observing(settings, service_name)
    if settings.auth_token:
        from .auth import BearerToken

        chain.append(BearerToken(settings.auth_token))
    if settings.deadline:
        chain.append(Deadline(timeout, settings.method_timeouts))
    return chain


def _observing(settings: ServerSettings | ClientSettings, service_name: str) -> list[Middleware]:
    chain: list[Middleware] = []
    if settings.tracing:
        from .tracing import Tracing, configure_tracing

        configure_tracing(service_name)
        chain.append(Tracing())
    if settings.metrics:
        from .metrics import Metrics  # prometheus_client: imported only when used

        # exemplars follow tracing: on when Tracing() takes part (a tracer provider is set)
        exemplars = None if settings.tracing else False
        chain.append(Metrics(settings.metrics_buckets, exemplars=exemplars))
    if settings.call_log:
        chain.append(CallLog(settings.slow_call))
    return chain
