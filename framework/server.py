"""The grpc.aio server behind a Service: servicers, health, reflection, registration, drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from .binding import add_port
from .httpside import server_side
from .middleware import Middleware
from .middleware.auth import TokenAuth
from .middleware.defaults import server_middleware
from .middleware.handlers import wrap_method_handler
from .netaddr import advertise_host, join_host_port, parse_host_port
from .registration import Registration, registration_for
from .servicers import generated_bases, unimplemented
from .settings import ServerSettings
from .stopsignals import stop_signals
from .tls import server_credentials
from .variables import warn_unknown_variables
from .workers.link import WorkerLink

if TYPE_CHECKING:
    from .probes import ProbeServer
    from .service import Service

log = logging.getLogger("gz.server")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Server:
    """Runs one Service: ``start()``, then ``stop()`` in the documented shutdown order.

    The service's ``middleware`` runs inside gz's default chain (tracing, metrics, call log,
    deadline, recovery, shedding, auth as settings choose); ``default_middleware=False`` leaves
    only the service's own.
    """

    def __init__(
        self,
        service: Service,
        settings: ServerSettings,
        middleware: Sequence[Middleware] = (),
        registration: Registration | None = None,
        default_middleware: bool = True,
    ) -> None:
        self.service = service
        self.settings = settings
        self.address = ""  # the advertised host:port, once listening
        self.port = 0
        self.service_names: list[str] = []
        self._middleware = tuple(middleware)
        self._default_middleware = default_middleware
        self.probes: ProbeServer | None = None  # the GZ_METRICS_PORT endpoint, once started
        self._registration = registration or registration_for(settings, service.name)
        self._registered = False
        self._stopping: asyncio.Task[None] | None = None
        # one of GZ_WORKERS processes: it also listens on a port of its own, which is the one
        # it registers, and serves only while every worker of the instance does
        self._link = WorkerLink.from_env()
        self._following: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen, report SERVING, then register: a registered address never refuses calls.
        A worker of several reports SERVING and registers once its supervisor says that every
        worker listens."""
        warn_unknown_variables()  # a typo in a GZ_* name is otherwise silent
        # grpc.aio objects belong to the running loop, so they are made here, not in __init__.
        middleware = self._middleware
        if self._default_middleware:
            middleware = (*server_middleware(self.settings, self.service.name), *middleware)
        credentials = server_credentials(self.settings)
        self._executor = ThreadPoolExecutor(thread_name_prefix=f"gz-{self.service.name}")
        options = server_options(self.settings, shared_port=self._link is not None)
        self._server = grpc.aio.server(migration_thread_pool=self._executor, options=options)
        self._health = health.aio.HealthServicer()
        self.service_names = self._add_servicers(middleware)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        if self.settings.reflection:
            self._add_reflection(middleware)
        self.port = add_port(self._server, self.settings, credentials)
        if self._link is not None:  # the port registered is the worker's own
            self.port = add_port(self._server, self.settings, credentials, self._link.own)
        listen_host, _ = parse_host_port(self.settings.listen, listening=True)
        if self.settings.metrics_port is not None:
            metrics_host = self.settings.metrics_host or listen_host
            self.probes = server_side(metrics_host, self.settings.metrics_port)
        for name in ("", *self.service_names):  # grpc's health says SERVING for "" at first
            await self._health.set(name, NOT_SERVING)
        await self._server.start()
        host = advertise_host(listen_host, self.settings.advertise_host)
        self.address = join_host_port(host, self.port)
        await self.service.on_start()
        log.info(
            "serving %s on %s (listening on %s; services: %s)",
            self.service.name, self.address, self.settings.listen, ", ".join(self.service_names),
        )  # fmt: skip
        if self._link is None:
            await self._set_serving(True)
            return
        await self._link.open()
        await self._link.listening(self.port, None if self.probes is None else self.probes.port)
        self._following = asyncio.ensure_future(self._link.follow(self._set_serving))

    async def _set_serving(self, serving: bool) -> None:
        """Health of every service, then the registration (once) and /readyz."""
        for name in ("", *self.service_names):
            await self._health.set(name, SERVING if serving else NOT_SERVING)
        if serving and not self._registered:
            self._registered = True
            await self._registration.register(self.address)
        if self.probes is not None:
            self.probes.ready = serving

    def _add_servicers(self, middleware: Sequence[Middleware]) -> list[str]:
        """Register every generated servicer base of the service, with ``middleware`` applied."""
        recorder = _RegistrationRecorder(self._server, middleware, self._executor)
        for _, add in generated_bases(type(self.service)):
            add(self.service, recorder)
            recorder.flush()
        name = type(self.service).__name__
        if not recorder.service_names:
            raise TypeError(
                f"{name} has no generated servicer base class: declare it as "
                f"class {name}(gz.Service, your_pb2_grpc.YourServicer)"
            )
        missing = unimplemented(type(self.service))
        if missing:  # e.g. an RPC added to the proto later: say so once, not on every call
            log.warning(
                "%s does not implement %s: they answer UNIMPLEMENTED; "
                "gz gen --add-handlers writes stubs", name, ", ".join(missing),
            )  # fmt: skip
        return recorder.service_names

    def _add_reflection(self, middleware: Sequence[Middleware]) -> None:
        """Reflection describes every service, so it asks for the same bearer token as they do
        (the chain's TokenAuth); health never does: probes have no token."""
        guards = [m for m in middleware if isinstance(m, TokenAuth)]
        names = [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        recorder = _RegistrationRecorder(self._server, guards, self._executor)
        servicer = reflection.aio.ReflectionServicer(names)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, recorder)
        recorder.flush()

    async def stop(self) -> None:
        """Not serving and deregistered; wait GZ_SHUTDOWN_DRAIN; stop(grace); then on_stop()."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        if self._following is not None:
            self._following.cancel()
        if self.probes is not None:
            self.probes.ready = False
        await self._health.enter_graceful_shutdown()
        try:
            await self._registration.deregister()
        except Exception:  # the drain must go on even if the registry is unreachable
            log.exception("deregistering %s failed; its lease will expire by itself", self.address)
        log.info("draining %s for %.3gs", self.address, self.settings.shutdown_drain)
        await asyncio.sleep(self.settings.shutdown_drain)
        await self._server.stop(self.settings.shutdown_grace)
        await self.service.on_stop()
        self._close_side_resources()
        log.info("stopped %s", self.address)

    def _close_side_resources(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.probes is not None:
            self.probes.close()

    async def abort(self) -> None:
        """Stop now: in-flight calls are cancelled (a second signal)."""
        await self._server.stop(None)
        self._close_side_resources()

    async def serve(self) -> int:
        """Start, run until SIGTERM or SIGINT, drain; a second signal stops at once (exit 1)."""
        with stop_signals() as signals:
            await self.start()
            first = await signals.get()
            log.info("%s: shutting down gracefully", signal.Signals(first).name)
            stopping = asyncio.ensure_future(self.stop())
            second = asyncio.ensure_future(signals.get())
            await asyncio.wait({stopping, second}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():
                second.cancel()
                stopping.result()
                return 0
            log.warning("%s again: stopping without draining", signal.Signals(second.result()).name)
            stopping.cancel()
            await self.abort()
            return 1


def server_options(settings: ServerSettings, *, shared_port: bool = False) -> list[tuple[str, int]]:
    """Keepalive set explicitly on both sides: gz clients ping every 5 min while calls are
    active, and a gz server accepts pings every 10 s even without calls, so no client's pings
    earn a too_many_pings GOAWAY. GZ_MAX_CONNECTION_AGE closes connections gracefully
    after that age so that clients behind an L4 load balancer reconnect and spread.
    ``shared_port``: the workers of one instance share the listen port (SO_REUSEPORT)."""
    options = [
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.keepalive_time_ms", 60_000),  # the server's own pings find dead clients
        ("grpc.keepalive_timeout_ms", 20_000),
        # grpc shares a port between processes by default (SO_REUSEPORT); a second server on
        # a taken port must fail to start instead of silently taking half of its connections
        ("grpc.so_reuseport", int(shared_port)),
    ]
    if settings.max_connection_age:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace * 1000)),
        ]
    return options


class _RegistrationRecorder:
    """Stands in for the grpc server while generated ``add_*_to_server`` functions run: wraps
    each method handler in the middleware chain once and records the service names."""

    def __init__(
        self, server: grpc.aio.Server, middleware: Sequence[Middleware], executor: Any
    ) -> None:
        self.service_names: list[str] = []
        self._pending: list[Any] = []
        self._server, self._middleware, self._executor = server, middleware, executor

    def add_registered_method_handlers(
        self, service_name: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self._pending.clear()
        if service_name in self.service_names:
            return
        self.service_names.append(service_name)
        wrapped = {
            name: wrap_method_handler(
                f"/{service_name}/{name}", handler, self._middleware, self._executor
            )
            for name, handler in handlers.items()
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service_name, wrapped),)
        )
        self._server.add_registered_method_handlers(service_name, wrapped)

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        # Generated code calls this with the unwrapped handlers too; when it also calls
        # add_registered_method_handlers (grpcio-tools >= 1.62) those replace these.
        self._pending.extend(handlers)

    def flush(self) -> None:
        """Pass on generic handlers of old generated code (no middleware for them)."""
        for handler in self._pending:
            name = getattr(handler, "service_name", lambda: None)()
            log.warning("%s: stubs from an old grpcio-tools; middleware does not apply", name)
            if name and name not in self.service_names:
                self.service_names.append(name)
        self._server.add_generic_rpc_handlers(tuple(self._pending))
        self._pending.clear()
