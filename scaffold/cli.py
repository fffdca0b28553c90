"""``gz``: scaffold services, run them, deploy them, and look at what clients see.

Bad input exits 2 with one ``gz: ...`` line; a failure of the world (a call, a health check)
exits 1 the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

import gz
from gz.discovery import Endpoint
from gz.durations import parse_duration
from gz.logs import count
from gz.netaddr import parse_host_port

from . import browse, debug, endpoints, gen, handlers, health, kube, settings_report
from . import call as calling
from .errors import BadInput, Failed
from .kube_objects import Shutdown
from .new import REGISTRY_MODES, NewService, create
from .project import Project, find_project, require_project
from .schema import ProtoFiles


class Duration(click.ParamType):
    """0.5, 500ms, 10s, 2m: the same forms as the GZ_* variables."""

    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


DURATION = Duration()


class ListenAddress(click.ParamType):
    """host:port to listen on, checked as GZ_LISTEN is."""

    name = "host:port"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        try:
            parse_host_port(str(value), listening=True)
        except ValueError as error:
            self.fail(str(error), param, ctx)
        return str(value)


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class OneLineErrors(click.Group):
    """Every error is one ``gz: ...`` line on stderr: exit 2 for bad input, 1 for failures."""

    def main(
        self, args: list[str] | None = None, prog_name: str | None = "gz", **extra: object
    ) -> None:
        try:
            result = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.UsageError as error:
            where = error.ctx.command_path if error.ctx else "gz"
            click.echo(f"gz: {one_line(error.format_message())} (see {where} --help)", err=True)
            sys.exit(2)
        except click.ClickException as error:
            click.echo(f"gz: {one_line(error.format_message())}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("gz: aborted", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


def one_line(message: str) -> str:
    """click lists choices on lines of their own (a missing MODE): gz errors are one line."""
    return " ".join(message.split())


@click.group(name="gz", cls=OneLineErrors, context_settings=CONTEXT)
@click.version_option(package_name="gz", prog_name="gz", message="%(prog)s %(version)s")
def main() -> None:
    """gz: gRPC services that bootstrap themselves, clients that balance over live endpoints.

    Shell completion: eval "$(_GZ_COMPLETE=bash_source gz)" (or zsh_source, fish_source).
    """


# -- gz new service ----------------------------------------------------------------------------
@main.group()
def new() -> None:
    """Create a new project."""


@new.command("service")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    help="Where to write the project (default: ./NAME).",
)
@click.option(
    "--proto",
    type=click.Path(path_type=Path),
    help="Your own .proto (default: an example with a unary and a streaming method).",
)
@click.option(
    "--registry",
    type=click.Choice(list(REGISTRY_MODES)),
    default="dns",
    show_default=True,
    help="How clients find it; picks the manifests in deploy/ (dns: a headless Service, "
    "none: a ClusterIP Service).",
)
@click.option("--force", is_flag=True, help="Write into a directory that is not empty.")
@click.option(
    "--gz-requirement",
    help='The dependency on gz in pyproject.toml, e.g. "gz @ file:///src/gz" (default: '
    "gz>=VERSION, and a wheel of this gz in wheels/ unless it came from a package index).",
)
def new_service(
    name: str,
    directory: Path | None,
    proto: Path | None,
    registry: str,
    force: bool,
    gz_requirement: str | None,
) -> None:
    """A service project NAME: proto, stubs, service, client, tests, Dockerfile, manifests.

    Example: gz new service hello; then the install and test commands it prints.
    """
    request = NewService(name, directory or Path(name), proto, registry, force, gz_requirement)
    created = create(request)
    click.echo(f"created {request.directory}/ with:")
    for path in created.files:
        click.echo(f"  {path}")
    for note in created.notes:
        click.echo(note)
    click.echo(f"next: cd {request.directory} && {created.install} && pytest && gz run")


# -- gz gen ------------------------------------------------------------------------------------
@main.command("gen")
@click.argument("protos", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--add-handlers",
    is_flag=True,
    help="Append a stub to the service class for each RPC it does not implement.",
)
def gen_command(protos: tuple[Path, ...], add_handlers: bool) -> None:
    """Regenerate Python stubs (_pb2.py, .pyi, _pb2_grpc.py) with package-relative imports.

    Without PROTOS: every .proto in the package of the project here (from pyproject.toml).
    In a project, then lists the RPCs its service class does not implement (they answer
    UNIMPLEMENTED); --add-handlers writes a stub for each into the class instead.
    """
    project = find_project()
    if not protos:
        project = require_project("gz gen", "the .proto files")
        protos = tuple(gen.protos_in(project.package_dir))
        if not protos:
            raise BadInput(f"no .proto in {project.package_dir}; name the files: gz gen FILE.proto")
    elif add_handlers and project is None:
        project = require_project("gz gen --add-handlers", "the service")
    for path in gen.generate(protos):
        click.echo(f"wrote {os.path.relpath(path)}")
    if project is not None:
        _check_handlers(project, add_handlers)


def _check_handlers(project: Project, add: bool) -> None:
    """After the stubs: the RPCs the service class lacks, or (``add``) a stub for each."""
    try:
        service_class = load_service(project.service, project.root)
    except BadInput as error:
        if add:
            raise
        # the stubs are written; a service that does not import here must not fail gz gen
        click.echo(f"gz: {error.format_message()}; its RPCs were not checked", err=True)
        return
    for line in handlers.check(project, service_class, add):
        click.echo(line)


# -- gz run ------------------------------------------------------------------------------------
@main.command()
@click.argument("service", metavar="[MODULE:CLASS]", required=False)
@click.option("--reload", is_flag=True, help="Restart when a .py or .proto file changes.")
@click.option(
    "--listen",
    type=ListenAddress(),
    metavar="HOST:PORT",
    help="Listen here instead of GZ_LISTEN, e.g. 127.0.0.1:9000.",
)
@click.option(
    "--print-settings",
    is_flag=True,
    help="Print the settings the service would run with (as gz settings does) and exit.",
)
def run(service: str | None, reload: bool, listen: str | None, print_settings: bool) -> None:
    """Run a service: a gz.Service subclass as MODULE:CLASS.

    Example: gz run examples.greeter.server:Greeter. Without MODULE:CLASS, the [tool.gz]
    service of the project's pyproject.toml. Settings come from GZ_* environment variables;
    SIGTERM drains and exits 0.
    """
    if service is None:
        project = require_project("gz run", "MODULE:CLASS")
        service = project.service
    else:
        project = find_project()
    root = project.root if project is not None else Path.cwd()
    service_class = load_service(service, root)  # bad input fails here, before any child
    overrides = {"listen": listen} if listen else {}
    if print_settings:
        options = {field: (f"--{field}", value) for field, value in overrides.items()}
        lines = settings_report.report(service_class.settings_class, service, options)
        click.echo("\n".join(lines))
        return
    if reload:
        from .reload import run_with_reload

        sys.exit(run_with_reload(service, root, ["--listen", listen] if listen else []))
    sys.exit(gz.run(service_class, **overrides))


# -- gz settings -------------------------------------------------------------------------------
@main.command("settings")
@click.argument("service", metavar="[MODULE:CLASS]", required=False)
def settings_command(service: str | None) -> None:
    """Print the effective server and client settings and where each came from.

    Each is the default, from the environment (the variable is named), or from code (the
    service's settings_class changes gz's default). Tokens and passwords show as ***. Without
    MODULE:CLASS, the [tool.gz] service of the project here, if any.
    """
    project = find_project()
    service = service or (project.service if project is not None else None)
    if service is None:
        click.echo("\n".join(settings_report.report()))
        return
    root = project.root if project is not None else Path.cwd()
    service_class = load_service(service, root)
    click.echo("\n".join(settings_report.report(service_class.settings_class, service)))


def load_service(spec: str, root: Path) -> type[gz.Service]:
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise BadInput(f"{spec!r} is not MODULE:CLASS, e.g. myservice.server:MyService")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as error:
        raise BadInput(f"cannot import {module_name!r}: {error}") from None
    service = getattr(module, class_name, None)
    if not (isinstance(service, type) and issubclass(service, gz.Service)):
        raise BadInput(f"{spec!r} is not a gz.Service subclass")
    return service


# -- gz kube -----------------------------------------------------------------------------------
def _modes_help() -> str:
    return "\n".join(f"\b\n{mode}: {text}" for mode, text in kube.MODES.items())


@main.command(
    "kube",
    help=f"""Write Kubernetes manifests for one of seven ways to deploy.

Every Deployment gets gRPC probes, POD_IP and POD_NAMESPACE, a preStop sleep and a
terminationGracePeriodSeconds that covers preStop + drain + grace, resources, an HPA
(autoscaling/v2) and a PodDisruptionBudget. MODE is one of:

{_modes_help()}

Example: gz kube headless --name greeter --image greeter:0.1.0 -o deploy/""",
)
@click.argument("mode", metavar="MODE", type=click.Choice(list(kube.MODES)))
@click.option("--name", required=True, help="The service (a DNS-1035 name).")
@click.option("--image", required=True, help="The service's container image.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--namespace", default="default", show_default=True)
@click.option(
    "--replicas",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="The autoscaler's minReplicas (the Deployment leaves replicas to it).",
)
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Processes per pod (GZ_WORKERS=auto with a CPU limit of that many cores), each also on "
    "its own port --port + 1 + I, named grpc-wI.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write one file per object into this directory (default: print).",
)
@click.option(
    "--prestop",
    type=DURATION,
    default="5s",
    show_default=True,
    help="preStop sleep before SIGTERM.",
)
@click.option("--drain", type=DURATION, default="5s", show_default=True, help="GZ_SHUTDOWN_DRAIN.")
@click.option("--grace", type=DURATION, default="10s", show_default=True, help="GZ_SHUTDOWN_GRACE.")
@click.option(
    "--max-connection-age",
    type=DURATION,
    default="30s",
    show_default=True,
    help="service mode: GZ_MAX_CONNECTION_AGE.",
)
@click.option(
    "--etcd-endpoints", default="etcd:2379", show_default=True, help="etcd mode: GZ_ETCD_ENDPOINTS."
)
@click.option(
    "--etcd-secret",
    default="",
    metavar="SECRET",
    help="etcd mode: GZ_ETCD_USERNAME/PASSWORD from this Secret's keys username and password "
    "(default: from NAME-etcd if it exists).",
)
@click.option(
    "--etcd-tls-secret",
    default="",
    metavar="SECRET",
    help="etcd mode: mount this kubernetes.io/tls Secret (ca.crt, tls.crt, tls.key) for "
    "GZ_ETCD_CA/CERT/KEYFILE.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=9090,
    show_default=True,
    help="GZ_METRICS_PORT, with Prometheus scrape annotations; 0: none.",
)
@click.option(
    "--envoy-image",
    default=kube.envoy.IMAGE,
    show_default=True,
    help="envoy/envoy-sidecar: the Envoy image.",
)
@click.option(
    "--client",
    default="",
    help="endpoints/envoy-sidecar/mesh: the client's name and ServiceAccount (default "
    "NAME-client).",
)
@click.option(
    "--client-image",
    default="",
    help="envoy-sidecar: the client's image (default: --image); endpoints: write the client's "
    "Deployment with it.",
)
@click.option(
    "--service-account",
    default="",
    metavar="NAME",
    help="Run the service's pods as this ServiceAccount with its token mounted, for a service "
    "that calls others through k8s://; endpoints: also bound to the EndpointSlice reader Role.",
)
@click.pass_context
def kube_command(
    ctx: click.Context,
    output: Path | None,
    prestop: float,
    drain: float,
    grace: float,
    metrics_port: int,
    **fields: Any,
) -> None:
    defaulted = (None, ParameterSource.DEFAULT)
    given = [name for name in fields if ctx.get_parameter_source(name) not in defaulted]
    kube.check_options(fields["mode"], given)
    spec = kube.KubeSpec(
        shutdown=Shutdown(prestop=prestop, drain=drain, grace=grace),
        metrics_port=metrics_port or None,
        **fields,
    )
    manifests = kube.build(spec)
    if output is None:
        click.echo(kube.to_documents(manifests), nl=False)
        return
    for path in kube.write(manifests, output):
        click.echo(f"wrote {path}")
    click.echo(f"clients target {kube.client_target(spec)}")
    if kube.advice(spec):
        click.echo(kube.advice(spec))


# -- gz resolve --------------------------------------------------------------------------------
@main.command()
@click.argument("target")
@click.option("--watch", is_flag=True, help="Keep running and print every change.")
@click.option("--json", "as_json", is_flag=True, help="Print each set as a JSON line.")
@click.option(
    "--timeout",
    type=DURATION,
    default="5s",
    show_default=True,
    help="How long to wait for a first set.",
)
def resolve(target: str, watch: bool, as_json: bool, timeout: float) -> None:
    """Print the endpoints TARGET resolves to, as a client would see them.

    Exits 1 when TARGET has no endpoints; with --watch an empty set is printed like any other
    (a service may be starting) and gz keeps watching.

    Example: gz resolve etcd:///greeter --watch
    """
    resolver = endpoints.resolver_for(target)

    def show(found: frozenset[Endpoint]) -> None:
        ordered = sorted(found)
        addresses = [endpoint.address for endpoint in ordered]
        if as_json:
            answer = {"target": resolver.target, "endpoints": addresses, **endpoints.places(found)}
            click.echo(json.dumps(answer))
            return
        click.echo(f"{resolver.target}: {count(len(addresses), 'endpoint')}")
        for endpoint in ordered:
            click.echo(f"  {endpoint.address}{endpoints.place(endpoint)}")

    def complain(message: str) -> None:
        click.echo(f"gz: {message}", err=True)

    with contextlib.suppress(KeyboardInterrupt):
        if watch:
            asyncio.run(endpoints.watch(resolver, show, complain))
        else:
            found = asyncio.run(endpoints.first_set(resolver, timeout))
            show(found)
            if not found:  # as for gz health: nothing to call is a failure, not an answer
                raise Failed(f"{resolver.target}: no endpoints")


# -- gz call, gz list, gz describe ------------------------------------------------------------
def _server_options(command: Any) -> Any:
    """-H, --proto, -I and --timeout: what gz call, gz list and gz describe share."""
    options = [
        click.option(
            "-H",
            "--header",
            "headers",
            multiple=True,
            metavar="'KEY: VALUE'",
            help="Metadata for the call and for reflection; a -bin key takes base64. Repeatable.",
        ),
        click.option(
            "--proto",
            "protos",
            multiple=True,
            type=click.Path(path_type=Path),
            metavar="FILE",
            help="Take services and messages from this .proto, not from server reflection. "
            "Repeatable.",
        ),
        click.option(
            "-I",
            "--import-path",
            "includes",
            multiple=True,
            type=click.Path(path_type=Path),
            metavar="DIR",
            help="Where --proto files and their imports are found. Repeatable.",
        ),
        click.option(
            "--timeout",
            type=DURATION,
            default="10s",
            show_default=True,
            help="The deadline of the call and of each reflection request.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@dataclass(frozen=True)
class _Server:
    """A TARGET and how to talk to it, checked before anything is sent: bad input exits 2."""

    resolver: gz.Resolver
    settings: gz.ClientSettings
    metadata: list[tuple[str, str | bytes]]
    protos: ProtoFiles | None

    @classmethod
    def of(
        cls,
        target: str,
        headers: tuple[str, ...],
        protos: tuple[Path, ...],
        includes: tuple[Path, ...],
    ) -> _Server:
        settings = endpoints.client_settings()  # a bad GZ_* value is bad input: exit 2
        endpoints.trace_as_cli(settings)  # so is a bad OTEL_* value
        resolver = endpoints.resolver_for(target, settings)  # so is a malformed target
        metadata = [calling.parse_header(text) for text in headers]
        if includes and not protos:
            raise BadInput("-I says where --proto files are: give --proto FILE too")
        return cls(resolver, settings, metadata, ProtoFiles(protos, includes) if protos else None)


@main.command("call")
@click.argument("target")
@click.argument("method")
@click.argument("request", metavar="[JSON]", required=False)
@click.option(
    "-d",
    "--data",
    metavar="JSON|@",
    help="The request instead of the JSON argument; @ reads it from standard input.",
)
@click.option("--emit-defaults", is_flag=True, help="Print fields that hold their default value.")
@_server_options
def call_command(
    target: str,
    method: str,
    request: str | None,
    data: str | None,
    emit_defaults: bool,
    headers: tuple[str, ...],
    protos: tuple[Path, ...],
    includes: tuple[Path, ...],
    timeout: float,
) -> None:
    """Call METHOD on TARGET: a JSON request in, the replies out as JSON.

    TARGET is host:port, or any gz target (etcd:///greeter, k8s://..., a bare name): the call
    goes through discovery and balancing. METHOD is package.Service/Method, Service/Method or
    just Method; server reflection (or --proto) describes the messages. JSON defaults to {};
    "-" or -d @ reads it from standard input. A client-streaming method takes several JSON
    objects one after another, or an array. One reply is printed indented; a stream of replies
    one JSON object per line.

    Example: gz call 127.0.0.1:8080 SayHello '{"name": "gz"}'
    """
    server = _Server.of(target, headers, protos, includes)
    text = _request_text(request, data)
    asyncio.run(
        calling.call(
            server.resolver,
            method,
            text,
            timeout,
            server.metadata,
            click.echo,
            server.settings,
            protos=server.protos,
            emit_defaults=emit_defaults,
        )
    )


def _request_text(argument: str | None, data: str | None) -> str:
    if argument is not None and data is not None:
        raise BadInput("give the request once: as the JSON argument or with -d")
    if data is not None and data.startswith("@") and data != "@":
        raise BadInput(f"-d {data}: -d @ reads standard input; for a file: -d @ < {data[1:]}")
    if argument == "-" or data == "@":
        return sys.stdin.read()
    return argument or data or "{}"


@main.command("list")
@click.argument("target")
@click.argument("service", required=False)
@_server_options
def list_command(
    target: str,
    service: str | None,
    headers: tuple[str, ...],
    protos: tuple[Path, ...],
    includes: tuple[Path, ...],
    timeout: float,
) -> None:
    """List the services of TARGET, or the methods of SERVICE: full names, one a line.

    Server reflection says what there is; with --proto the files do and TARGET is not asked.

    Example: gz list 127.0.0.1:8080 greeter.v1.Greeter
    """
    server = _Server.of(target, headers, protos, includes)
    names = asyncio.run(
        browse.list_names(
            server.resolver, service, timeout, server.metadata, server.settings, server.protos
        )
    )
    for name in names:
        click.echo(name)


@main.command("describe")
@click.argument("target")
@click.argument("symbol", required=False)
@_server_options
def describe_command(
    target: str,
    symbol: str | None,
    headers: tuple[str, ...],
    protos: tuple[Path, ...],
    includes: tuple[Path, ...],
    timeout: float,
) -> None:
    """Describe SYMBOL as proto source: a service, method, message or enum.

    SYMBOL is a full name (pkg.Service, pkg.Service.Method, pkg.Message); without it, every
    service is described.

    Server reflection says what there is; with --proto the files do and TARGET is not asked.

    Example: gz describe 127.0.0.1:8080 greeter.v1.HelloRequest
    """
    server = _Server.of(target, headers, protos, includes)
    text = asyncio.run(
        browse.describe(
            server.resolver, symbol, timeout, server.metadata, server.settings, server.protos
        )
    )
    click.echo(text)


# -- gz health ---------------------------------------------------------------------------------
@main.command("health")
@click.argument("target")
@click.option("--service", default="", help="The service name to check (default: the server).")
@click.option("--timeout", type=DURATION, default="3s", show_default=True)
def health_command(target: str, service: str, timeout: float) -> None:
    """grpc.health.v1 Check on every endpoint of TARGET; exit 0 only if all are SERVING.

    Example: gz health k8s://shop/greeter:grpc --service greeter.v1.Greeter
    """
    settings = endpoints.client_settings()
    endpoints.trace_as_cli(settings)
    resolver = endpoints.resolver_for(target, settings)

    async def check() -> dict[str, str]:
        found = await endpoints.first_set(resolver, timeout)
        return await health.check_all(found, service, timeout, settings)

    statuses = asyncio.run(check())
    for address, status in statuses.items():
        click.echo(f"{address} {status}")
    bad = [address for address, status in statuses.items() if status != "SERVING"]
    if not statuses:
        raise Failed(f"{resolver.target}: no endpoints")
    if bad:
        raise Failed(f"{len(bad)} of {count(len(statuses), 'endpoint')} not SERVING")


# -- gz debug ----------------------------------------------------------------------------------
@main.command("debug")
@click.argument("address", metavar="HOST:PORT")
@click.option("--watch", is_flag=True, help="Keep refreshing the view until Ctrl-C.")
@click.option(
    "--interval", type=DURATION, default="2s", show_default=True, help="How often --watch reads."
)
def debug_command(address: str, watch: bool, interval: float) -> None:
    """What a process's client channels see: per target the resolver, the retry budget and each
    endpoint's connectivity, health, load and outlier state (its /debug/targets).

    HOST:PORT is the process's HTTP side (GZ_METRICS_PORT).

    Example: gz debug 10.0.0.7:9090 --watch
    """
    debug.show(address, watch, interval)


if __name__ == "__main__":
    main()
