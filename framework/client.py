"""connect(): target -> resolver -> subchannel pool -> picker -> BalancedChannel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from .balancing import BalancedChannel, picker_class
from .discovery import Resolver, build_resolver
from .middleware import Middleware
from .settings import ClientSettings


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
    settings: ClientSettings | None = None,
) -> BalancedChannel:
    """A channel that balances every call over the live endpoints of ``target``.

    ``target`` is ``direct:///h1:p1,h2:p2``, ``dns:///name:port``, ``etcd:///KEY``,
    ``k8s://namespace/service:port``, a bare service name (looked up through GZ_TARGET_<NAME>
    or GZ_DISCOVERY), or a Resolver of your own. Arguments left out come from GZ_* settings.
    With ``health_check`` (default on, GZ_HEALTH_CHECK) each endpoint's grpc.health.v1 status is
    watched and an endpoint that says NOT_SERVING, as a draining gz server does, gets no new calls.
    A malformed target raises ValueError (TargetError) quoting it and showing the right form.
    Resolution starts on first use, inside the event loop that makes the calls.
    """
    settings = settings or ClientSettings.from_env()
    resolver = target if isinstance(target, Resolver) else build_resolver(target)
    return BalancedChannel(
        resolver,
        picker=picker_class(balancer or settings.balancer),
        middleware=middleware,
        interceptors=interceptors,
        options=options,
        credentials=credentials,
        timeout=timeout if timeout is not None else settings.timeout,
        health_check=settings.health_check if health_check is None else health_check,
    )
