"""connect() and connect_sync(): target -> resolver -> subchannel pool -> picker -> channel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from .balancing import BalancedChannel, picker_class
from .balancing.subset import Subsetter, client_id
from .balancing.syncchannel import SyncBalancedChannel
from .discovery import Resolver, build_resolver
from .httpside import client_side
from .middleware import Middleware
from .middleware.defaults import client_middleware
from .middleware.retry import Retry, RetryPolicy
from .settings import ClientSettings
from .tls import channel_credentials, tls_options
from .variables import warn_unknown_variables

SyncInterceptor = (
    grpc.UnaryUnaryClientInterceptor
    | grpc.UnaryStreamClientInterceptor
    | grpc.StreamUnaryClientInterceptor
    | grpc.StreamStreamClientInterceptor
)


def connect(
    target: str | Resolver,
    *,
    balancer: str | None = None,
    middleware: Sequence[Middleware] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    timeout: float | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
    health_check: bool | None = None,
    retry: RetryPolicy | bool | None = None,
    settings: ClientSettings | None = None,
) -> BalancedChannel:
    """A channel that balances every call over the live endpoints of ``target``.

    ``target`` is ``direct:///h1:p1,h2:p2``, ``dns:///name:port``, ``etcd:///KEY``,
    ``k8s://namespace/service:port``, a bare service name (looked up through GZ_TARGET_<NAME>
    or GZ_DISCOVERY), or a Resolver of your own. Arguments left out come from ``settings``,
    by default ``ClientSettings.from_env()``; they also say how a bare name expands and which
    etcd an ``etcd:///KEY`` target asks.
    With ``health_check`` (default on, GZ_HEALTH_CHECK) each endpoint's grpc.health.v1 status is
    watched and an endpoint that says NOT_SERVING, as a draining gz server does, gets no new calls.
    A malformed target raises ValueError (TargetError) quoting it and showing the right form.
    Resolution starts on first use, inside the event loop that makes the calls.
    ``balancer`` is ``p2c_ewma`` (default, GZ_BALANCER) or ``round_robin``. ``retry`` (default
    on: GZ_RETRY_MAX_ATTEMPTS, GZ_IDEMPOTENT_METHODS) retries failed unary calls on another
    endpoint; pass a RetryPolicy to tune it or False to switch it off (docs/balancing.md).
    gz's default client middleware (tracing, metrics, call log, auth, deadline: see
    docs/middleware.md) runs around ``middleware``; TLS comes from GZ_TLS_* unless
    ``credentials`` are given. With GZ_METRICS_PORT set, the first connect() of a process
    without a gz server serves /metrics there (docs/observability.md). Above 64 endpoints a
    client connects to a subset of 32 of them (GZ_SUBSET_SIZE, GZ_CLIENT_ID; docs/balancing.md).
    With GZ_ZONE, k8s:// calls stay in that zone while it can carry them
    (docs/discovery/kubernetes.md).
    """
    return BalancedChannel(
        _resolver(target, settings := _settings(settings)),
        interceptors=interceptors,
        subsetter=_subsetter(settings),
        **_channel_arguments(
            settings, balancer, middleware, timeout, credentials, options, health_check, retry
        ),
    )


def connect_sync(
    target: str | Resolver,
    *,
    balancer: str | None = None,
    middleware: Sequence[Middleware] = (),
    interceptors: Sequence[SyncInterceptor] = (),
    timeout: float | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
    health_check: bool | None = None,
    retry: RetryPolicy | bool | None = None,
    settings: ClientSettings | None = None,
) -> SyncBalancedChannel:
    """``connect()`` for synchronous code (Django, Flask, Celery, scripts): a grpc.Channel that
    synchronous stubs take unchanged, with the same targets, arguments, settings, balancing,
    retries, ejection and health watch.

    One channel may be shared by every thread of a process; calls go from the calling thread
    straight to grpc, and one background thread per process (not per channel or endpoint) keeps
    the endpoints current. ``middleware`` must be call observers (``gz.CallObserver``);
    ``interceptors`` are grpc's synchronous client interceptors. Unary calls (blocking and
    ``future()``) are retried on another endpoint; streams are not. ``close()`` (or a
    ``with`` block) stops the background work within a second. A channel made before a fork
    works in the parent and the child (each starts its background work again with its next
    call); creating it lazily in each process is still the clearer pattern (docs/service.md).
    """
    settings = _settings(settings)
    first: Resolver | None = _resolver(target, settings)  # a malformed target fails here

    def make_resolver() -> Resolver:
        """The first resolver, then a new one (a forked child starts afresh)."""
        nonlocal first
        made, first = first, None
        return made or _resolver(target, settings)

    return SyncBalancedChannel(
        make_resolver,
        target=first.target,
        interceptors=interceptors,
        make_subsetter=lambda: _subsetter(settings),
        **_channel_arguments(
            settings, balancer, middleware, timeout, credentials, options, health_check, retry
        ),
    )


def _settings(settings: ClientSettings | None) -> ClientSettings:
    """The settings of a new channel; the first channel of a process also warns of unknown
    GZ_* names and starts the HTTP side (GZ_METRICS_PORT) of a process without a server."""
    warn_unknown_variables(once=True)  # a typo in a GZ_* name is otherwise silent
    settings = settings or ClientSettings.from_env()
    client_side(settings)
    return settings


def _resolver(target: str | Resolver, settings: ClientSettings) -> Resolver:
    resolver = target if isinstance(target, Resolver) else build_resolver(target, settings)
    if settings.metrics:
        from .middleware.metrics import count_resolution

        resolver = count_resolution(resolver)
    return resolver


def _subsetter(settings: ClientSettings) -> Subsetter:
    return Subsetter(client_id(settings.client_id), settings.subset_size)


def _channel_arguments(
    settings: ClientSettings,
    balancer: str | None,
    middleware: Sequence[Middleware],
    timeout: float | None,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]],
    health_check: bool | None,
    retry: RetryPolicy | bool | None,
) -> dict[str, Any]:
    """What connect() and connect_sync() give their channel, from arguments and settings."""
    timeout = timeout if timeout is not None else settings.timeout
    middleware = [*client_middleware(settings, timeout), *middleware]
    if settings.deadline:
        timeout = None  # the Deadline middleware applies it, with GZ_METHOD_TIMEOUTS
    if credentials is None:
        credentials = channel_credentials(settings)
    return {
        "picker": picker_class(balancer or settings.balancer),
        "middleware": middleware,
        "options": [*options, *tls_options(settings)],
        "credentials": credentials,
        "timeout": timeout,
        "health_check": settings.health_check if health_check is None else health_check,
        "retry": _retry(retry, settings),
        "zone": settings.zone,
    }


def _retry(retry: RetryPolicy | bool | None, settings: ClientSettings) -> Retry | None:
    """The channel's Retry middleware (None: no retries); one per channel, with its budget."""
    if retry is False:
        return None
    if not isinstance(retry, RetryPolicy):
        retry = RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            idempotent_methods=frozenset(settings.idempotent_methods),
        )
    return Retry(retry) if retry.max_attempts > 1 else None
