"""``gz gen``, after the stubs: the RPCs the project's service class does not implement.

Each answers UNIMPLEMENTED (grpc's generated base does). ``--add-handlers`` appends a stub per
RPC to the class, the text ``gz new --proto`` writes, with the imports its type hints need;
everything else in the file stays as it was.
"""

from __future__ import annotations

import ast
from pathlib import Path

from gz.servicers import unimplemented

from . import gen
from .errors import BadInput
from .files import write_file
from .imports import Import, add_imports
from .project import Project
from .protos import Method, read_proto
from .templates import render_macro


def check(project: Project, service_class: type, add: bool) -> list[str]:
    """Lines to print: each RPC the class lacks, or (``add``) each stub and import added."""
    missing = unimplemented(service_class)
    if not add:
        return [_missing_line(name, service_class) for name in missing]
    return add_stubs(project, service_class, missing) if missing else []


def add_stubs(project: Project, service_class: type, names: list[str]) -> list[str]:
    """Append a stub for each RPC of ``names`` to the class named by ``[tool.gz] service``."""
    module_name, _, class_name = project.service.partition(":")
    relative = Path(*module_name.split(".")).with_suffix(".py")
    path = project.root / relative
    if not path.is_file():
        raise BadInput(f"{relative}: no such file; [tool.gz] service names {project.service}")
    source = path.read_text(encoding="utf-8")
    classes = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)]
    node = next((n for n in classes if n.name == class_name), None)
    if node is None or node.end_lineno is None:
        raise BadInput(f"{relative} has no class {class_name} at its top level to add handlers to")
    defined = {n.name for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    methods = _methods(project.package_dir)
    todo = [methods[n] for n in names if n in methods and methods[n].name not in defined]
    lines = [_missing_line(n, service_class) for n in names if n not in methods]
    if not todo:
        return lines
    where = relative.as_posix()
    text = source.splitlines(keepends=True)
    end = node.end_lineno  # the class's last line: the stubs go right after it, inside the body
    text[end - 1] = text[end - 1] if text[end - 1].endswith("\n") else text[end - 1] + "\n"
    text.insert(end, "".join(render_macro("service/macros.j2", "stub", m, where) for m in todo))
    level = module_name.count(".")  # the stubs' modules are in the project's top package
    source, imported = add_imports("".join(text), _imports(todo, level), project.package)
    write_file(project.root, relative, source)
    lines += [f"added a stub of {m.service}/{m.name} to {where}" for m in todo]
    return lines + [f"added to {where}: {statement}" for statement in imported]


def _missing_line(name: str, service_class: type) -> str:
    return (
        f"{name}: not implemented by {service_class.__name__}, it answers UNIMPLEMENTED "
        "(gz gen --add-handlers writes a stub)"
    )


def _methods(package_dir: Path) -> dict[str, Method]:
    """``pkg.Service/Method`` -> what gz new knows of it, for every proto in the package."""
    methods = {}
    for proto in gen.protos_in(package_dir):
        try:
            found = read_proto(proto).methods
        except BadInput:  # e.g. a proto of messages only: no RPC to write
            continue
        methods |= {f"{method.service}/{method.name}": method for method in found}
    return methods


def _imports(methods: list[Method], level: int) -> list[Import]:
    """What the stubs' type hints and bodies name, as gz new's server.py imports it."""
    streaming = any(m.client_streaming or m.server_streaming for m in methods)
    wanted = [Import("collections.abc", "AsyncIterator")] if streaming else []
    wanted.append(Import("grpc"))
    for ref in (ref for m in methods for ref in (m.request, m.reply)):
        package, _, name = ref.module.rpartition(".")
        local = Import(package, name, alias=ref.alias if package else "", level=level)
        wanted.append(local if ref.local else Import(ref.module, alias=ref.alias))
    return list(dict.fromkeys(wanted))  # once each, in order
