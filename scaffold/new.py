"""``gz new service NAME``: a project that runs and passes its own tests in the first minute."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import gen, kube, wheel
from .errors import BadInput
from .files import write_file
from .names import class_name, kube_form, package_name, service_name
from .protos import ProtoFile, read_proto
from .templates import render

# which `gz kube` mode deploys a service that clients find through each registry
REGISTRY_MODES = {"dns": "headless", "none": "service", "k8s": "endpoints", "etcd": "etcd"}
PORT = 8080


@dataclass(frozen=True)
class NewService:
    name: str
    directory: Path
    proto: Path | None = None  # None: the example proto
    registry: str = "dns"  # a headless Service: per-call balancing by gz clients, no RBAC
    force: bool = False
    gz_requirement: str | None = None  # None: the running gz's (see wheel.py)

    @property
    def package(self) -> str:
        return package_name(self.name)


@dataclass(frozen=True)
class Created:
    files: list[Path]  # relative to the project's directory
    install: str  # the command that installs it, with its tests' dependencies
    notes: tuple[str, ...] = ()  # what gz derived from the input and the user should know


def install_command(dependency: wheel.GzDependency) -> str:
    """``pip install -e '.[test]'``, naming the bundled gz wheel if there is one: an explicit
    file is the only gz pip considers, so a gz on an index can never replace it."""
    command = "pip install -e '.[test]'"
    return f"{command} {dependency.wheel}" if dependency.wheel else command


def create(request: NewService) -> Created:
    """Write the project."""
    name = service_name(request.name)
    root = request.directory.resolve()
    if root.exists() and not root.is_dir():
        raise BadInput(f"{root} exists and is not a directory; pick another --dir")
    if root.is_dir() and any(root.iterdir()) and not request.force:
        raise BadInput(f"{root} is not empty; pick another --dir, or pass --force to write into it")
    # everything is checked before the first file is written: bad input leaves no half project
    source = read_proto(request.proto) if request.proto is not None else None
    gz_requirement = _gz_requirement(request.gz_requirement)
    spec = kube.KubeSpec(
        mode=REGISTRY_MODES[request.registry],
        name=kube_form(name),
        image=f"{kube_form(name)}:0.1.0",
        port=PORT,
    )
    manifests = kube.build(spec)
    names = {"name": name, "package": request.package, "class_name": class_name(name)}
    proto = _place_proto(source, root, names)
    dependency = (
        wheel.GzDependency(gz_requirement) if gz_requirement is not None else wheel.dependency(root)
    )
    install = install_command(dependency)
    written = [*gen.generate([proto.path, *proto.siblings])]
    context = {
        **names,
        "proto": proto,
        "example": request.proto is None,
        "registry": request.registry,
        "mode": spec.mode,
        "kube_name": spec.name,
        "port": PORT,
        "cluster_target": kube.client_target(spec),
        "gz_requirement": dependency.requirement,
        "gz_wheel": dependency.wheel,
        "install": install,
    }
    files = {
        "pyproject.toml": "pyproject.toml.j2",
        "README.md": "README.md.j2",
        "Dockerfile": "Dockerfile.j2",
        ".dockerignore": "dockerignore.j2",
        f"{request.package}/server.py": "server.py.j2",
        f"{request.package}/client.py": "client.py.j2",
        f"tests/test_{request.package}.py": "test_service.py.j2",
    }
    for relative, template in files.items():
        written.append(write_file(root, relative, render(f"service/{template}", **context)))
    init = f'"""The {name} service."""\n'
    written += [write_file(root, f"{request.package}/__init__.py", init), proto.path]
    written += [*proto.siblings, *kube.write(manifests, root, "deploy")]
    written += [root / dependency.wheel] if dependency.wheel else []
    notes = (
        (f"Kubernetes names take no '_': deploy/ names the service {spec.name}",)
        if spec.name != name
        else ()
    )
    return Created(sorted({path.resolve().relative_to(root) for path in written}), install, notes)


def _gz_requirement(text: str | None) -> str | None:
    """--gz-requirement as a PEP 508 requirement on gz, or BadInput: it lands in pyproject.toml."""
    if text is None:
        return None
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    example = "e.g. 'gz>=0.1' or 'gz @ file:///src/gz'"
    try:
        requirement = Requirement(text)
        if not text.isprintable():  # packaging lets some control characters through
            raise InvalidRequirement(text)
    except InvalidRequirement:
        raise BadInput(f"--gz-requirement {text!r} is not a requirement, {example}") from None
    if canonicalize_name(requirement.name) != "gz":
        raise BadInput(f"--gz-requirement {text!r} names {requirement.name}, not gz; {example}")
    return text


def _place_proto(source: ProtoFile | None, root: Path, names: dict[str, str]) -> ProtoFile:
    """Copy the user's proto into the package, and the protos it imports by their paths from
    its import root (the package is theirs in the project); or write the example."""
    package = Path(names["package"])
    if source is None:
        text = render("service/proto.j2", **names)
        return read_proto(write_file(root, package / f"{names['package']}.proto", text))
    copies = {package / source.path.name: source.path}
    copies |= {package / path.relative_to(source.root): path for path in source.siblings}
    for relative, path in copies.items():
        if path.resolve() != (root / relative).resolve():
            write_file(root, relative, path.read_bytes())
    return read_proto(root / package / source.path.name)
