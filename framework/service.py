"""Service: the base class an application subclasses together with its generated servicer."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import ClassVar, NoReturn

from .logs import configure_logging
from .middleware import Middleware
from .server import Server
from .settings import ServerSettings, SettingsError
from .workers.link import WorkerLink


class Service:
    """A gRPC service that bootstraps itself::

        class Greeter(gz.Service, greeter_pb2_grpc.GreeterServicer):
            async def SayHello(self, request, context):
                return greeter_pb2.HelloReply(message=f"Hello, {request.name}!")

        if __name__ == "__main__":
            Greeter.main()

    Settings come from GZ_* variables (``settings_class`` may add fields of your own); handlers
    may be ``async def`` or plain ``def`` (run in a thread pool).
    """

    settings_class: ClassVar[type[ServerSettings]] = ServerSettings
    middleware: ClassVar[Sequence[Middleware]] = ()

    def __init__(self, settings: ServerSettings | None = None) -> None:
        self.settings = settings if settings is not None else self.settings_class.from_env()
        self.server = Server(self, self.settings, self.middleware)

    @property
    def name(self) -> str:
        """GZ_NAME, else the class name in lower case; also the default etcd key."""
        return self.settings.name or type(self).__name__.lower()

    @property
    def address(self) -> str:
        """The advertised ``host:port`` clients dial; empty until the server listens."""
        return self.server.address

    async def on_start(self) -> None:
        """Called once listening, before reporting SERVING and registering. Override freely."""

    async def on_stop(self) -> None:
        """Called after the server stopped and in-flight calls finished. Override freely."""

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT and drain; returns the exit code."""
        return await self.server.serve()

    @classmethod
    def main(cls) -> NoReturn:
        """Read settings, serve, exit 0 after a graceful drain (2 on a bad setting)."""
        sys.exit(run(cls))


def run(service_class: type[Service], **overrides: object) -> int:
    """What ``Service.main()`` and ``gz run`` do; returns the process exit code. ``overrides``
    win over the environment, as in ``from_env`` (``gz run --listen``). With GZ_WORKERS above 1
    this process supervises that many copies of itself, each of which serves."""
    link = WorkerLink.from_env()
    try:
        settings = service_class.settings_class.from_env(**overrides)
    except SettingsError as error:
        print(f"gz: {error}", file=sys.stderr)
        return 2
    if link is not None:
        settings = link.worker_settings(settings)
    configure_logging(
        settings.log_level, settings.log_format, worker=None if link is None else link.index
    )
    try:
        if link is None and settings.workers > 1:
            from .workers.supervisor import Plan, hand_over

            hand_over(Plan.of(service_class.__name__, settings))
        return asyncio.run(service_class(settings).serve())
    except SettingsError as error:  # e.g. OTEL_TRACES_EXPORTER, read when the server starts
        print(f"gz: {error}", file=sys.stderr)
        return 2
    except (OSError, TypeError) as error:
        print(f"gz: {service_class.__name__}: {error}", file=sys.stderr)
        return 1
