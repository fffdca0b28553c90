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
from pathlib import Path
from typing import Any

import click

import gz
from gz.discovery import Endpoint
from gz.durations import parse_duration

from . import call as calling
from . import endpoints, gen, health, kube
from .errors import BadInput, Failed
from .kube_objects import Shutdown
from .new import REGISTRY_MODES, NewService, create
from .project import find_project, require_project


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
            click.echo(f"gz: {error.format_message()} (see {where} --help)", err=True)
            sys.exit(2)
        except click.ClickException as error:
            click.echo(f"gz: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("gz: aborted", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


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
    default="none",
    show_default=True,
    help="How clients find it; picks the manifests in deploy/ (none: a Service).",
)
@click.option("--force", is_flag=True, help="Write into a directory that is not empty.")
@click.option(
    "--gz-requirement",
    default="gz",
    show_default=True,
    help='The dependency on gz in pyproject.toml, e.g. "gz @ file:///src/gz".',
)
def new_service(
    name: str,
    directory: Path | None,
    proto: Path | None,
    registry: str,
    force: bool,
    gz_requirement: str,
) -> None:
    """A service project NAME: proto, stubs, service, client, tests, Dockerfile, manifests.

    Example: gz new service hello && cd hello && pip install -e '.[test]' && pytest
    """
    request = NewService(name, directory or Path(name), proto, registry, force, gz_requirement)
    files = create(request)
    click.echo(f"created {request.directory}/ with:")
    for path in files:
        click.echo(f"  {path}")
    click.echo(f"next: cd {request.directory} && pip install -e '.[test]' && pytest && gz run")


# -- gz gen ------------------------------------------------------------------------------------
@main.command("gen")
@click.argument("protos", nargs=-1, type=click.Path(path_type=Path))
def gen_command(protos: tuple[Path, ...]) -> None:
    """Regenerate Python stubs (_pb2.py, .pyi, _pb2_grpc.py) with package-relative imports.

    Without PROTOS: every .proto in the package of the project here (from pyproject.toml).
    """
    if not protos:
        project = require_project("gz gen")
        protos = tuple(gen.protos_in(project.package_dir))
        if not protos:
            raise BadInput(f"no .proto in {project.package_dir}; name the files: gz gen FILE.proto")
    for path in gen.generate(protos):
        click.echo(f"wrote {os.path.relpath(path)}")


# -- gz run ------------------------------------------------------------------------------------
@main.command()
@click.argument("service", metavar="[MODULE:CLASS]", required=False)
@click.option("--reload", is_flag=True, help="Restart when a .py or .proto file changes.")
def run(service: str | None, reload: bool) -> None:
    """Run a service: a gz.Service subclass as MODULE:CLASS.

    Example: gz run examples.greeter.server:Greeter. Without MODULE:CLASS, the [tool.gz]
    service of the project's pyproject.toml. Settings come from GZ_* environment variables;
    SIGTERM drains and exits 0.
    """
    if service is None:
        project = require_project("gz run")
        service = project.service
    else:
        project = find_project()
    root = project.root if project is not None else Path.cwd()
    service_class = load_service(service, root)  # bad input fails here, before any child
    if reload:
        from .reload import run_with_reload

        sys.exit(run_with_reload(service, root))
    sys.exit(gz.run(service_class))


def load_service(spec: str, root: Path) -> type[gz.Service]:
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise BadInput(f"{spec!r} is not MODULE:CLASS, e.g. myservice.server:MyService")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
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
@click.option("--replicas", type=click.IntRange(1), default=3, show_default=True)
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
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=9090,
    show_default=True,
    help="GZ_METRICS_PORT, with Prometheus scrape annotations; 0: none.",
)
@click.option("--envoy-image", default=kube.envoy.IMAGE, show_default=True)
@click.option(
    "--client", default="", help="endpoints/envoy-sidecar: the client's name (default NAME-client)."
)
@click.option(
    "--client-image", default="", help="envoy-sidecar: the client's image (default: --image)."
)
@click.option(
    "--service-account",
    default="",
    metavar="NAME",
    help="Run the service's pods as this ServiceAccount with its token mounted, for a service "
    "that calls others through k8s://; endpoints: also bound to the EndpointSlice reader Role.",
)
def kube_command(
    output: Path | None,
    prestop: float,
    drain: float,
    grace: float,
    metrics_port: int,
    **fields: Any,
) -> None:
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

    Example: gz resolve etcd:///greeter --watch
    """
    resolver = endpoints.resolver_for(target)

    def show(found: frozenset[Endpoint]) -> None:
        addresses = [endpoint.address for endpoint in sorted(found)]
        if as_json:
            click.echo(json.dumps({"target": resolver.target, "endpoints": addresses}))
            return
        click.echo(f"{resolver.target}: {len(addresses)} endpoints")
        for address in addresses:
            click.echo(f"  {address}")

    def complain(message: str) -> None:
        click.echo(f"error: {message}", err=True)

    with contextlib.suppress(KeyboardInterrupt):
        if watch:
            asyncio.run(endpoints.watch(resolver, show, complain))
        else:
            show(asyncio.run(endpoints.first_set(resolver, timeout)))


# -- gz call -----------------------------------------------------------------------------------
@main.command("call")
@click.argument("target")
@click.argument("method")
@click.argument("request", metavar="[JSON]", default="{}")
@click.option(
    "-H",
    "--header",
    "headers",
    multiple=True,
    metavar="'KEY: VALUE'",
    help="Request metadata; may be repeated.",
)
@click.option("--timeout", type=DURATION, default="10s", show_default=True)
def call_command(
    target: str, method: str, request: str, headers: tuple[str, ...], timeout: float
) -> None:
    """Call METHOD on TARGET with a JSON request; print each reply as a JSON line.

    METHOD is package.Service/Method, Service/Method or just Method; the server's reflection
    describes the messages. JSON "-" reads standard input; a client-streaming method takes an
    array of requests. Any target works, through discovery and balancing.

    Example: gz call etcd:///greeter SayHello '{"name": "gz"}'
    """
    settings = endpoints.client_settings()  # a bad GZ_* value is bad input: exit 2
    resolver = endpoints.resolver_for(target, settings)  # so is a malformed target
    if request == "-":
        request = sys.stdin.read()
    metadata = [_header(text) for text in headers]
    asyncio.run(calling.call(resolver, method, request, timeout, metadata, click.echo, settings))


def _header(text: str) -> tuple[str, str]:
    key, colon, value = text.partition(":")
    if not colon or not key.strip():
        raise BadInput(f"header {text!r} is not 'KEY: VALUE'")
    return key.strip().lower(), value.strip()


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
        raise Failed(f"{len(bad)} of {len(statuses)} endpoints not SERVING")


if __name__ == "__main__":
    main()
