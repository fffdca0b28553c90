"""``gz new service NAME``: a project that runs and passes its own tests in the first minute."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from . import gen, kube, wheel
from .errors import BadInput
from .names import class_name, package_name, service_name
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
    source = read_proto(request.proto) if request.proto is not None else None  # before writing
    package_dir = root / request.package
    package_dir.mkdir(parents=True, exist_ok=True)
    names = {"name": name, "package": request.package, "class_name": class_name(name)}
    proto = _place_proto(source, package_dir, names)
    dependency = (
        wheel.GzDependency(request.gz_requirement)
        if request.gz_requirement is not None
        else wheel.dependency(root)
    )
    install = install_command(dependency)
    written = [*gen.generate([proto.path, *proto.siblings])]
    spec = kube.KubeSpec(
        mode=REGISTRY_MODES[request.registry], name=name, image=f"{name}:0.1.0", port=PORT
    )
    context = {
        **names,
        "proto": proto,
        "example": request.proto is None,
        "registry": request.registry,
        "mode": spec.mode,
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
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(f"service/{template}", **context), encoding="utf-8")
        written.append(path)
    (package_dir / "__init__.py").write_text(f'"""The {name} service."""\n', encoding="utf-8")
    written += [package_dir / "__init__.py", proto.path, *proto.siblings]
    written += kube.write(kube.build(spec), root / "deploy")
    written += [root / dependency.wheel] if dependency.wheel else []
    return Created(sorted({path.resolve().relative_to(root) for path in written}), install)


def _place_proto(source: ProtoFile | None, package_dir: Path, names: dict[str, str]) -> ProtoFile:
    """Copy the user's proto (and the sibling protos it imports), or write the example."""
    if source is None:
        target = package_dir / f"{names['package']}.proto"
        target.write_text(render("service/proto.j2", **names), encoding="utf-8")
        return read_proto(target)
    for path in (source.path, *source.siblings):
        destination = package_dir / path.name
        if path.resolve() != destination.resolve():
            shutil.copyfile(path, destination)
    return read_proto(package_dir / source.path.name)
