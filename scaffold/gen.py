"""``gz gen``: Python stubs (``_pb2.py``, ``.pyi``, ``_pb2_grpc.py``) from .proto files.

grpc_tools.protoc runs in this process, with one import root (-I) per proto: the nearest folder
from which its imports resolve. A proto is registered in the descriptor pool under its path from
that root, so a proto imported by another is generated under the importer's root: one name each.
protoc names stubs after that path (``api/common/money.proto``: ``api/common/money_pb2.py``,
``my-api.proto``: ``my_api_pb2.py``, ``shop.v1.proto``: ``shop/v1_pb2.py``) and imports them
absolutely (``from api.common import money_pb2``), which only works with the root on sys.path;
gz rewrites the imports of stubs it generated into relative ones (``from .common import
money_pb2``) and makes each folder of stubs a package, so the stubs work inside a package, which
is where gz projects keep them.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2

from gz.stderr import held_stderr

from .errors import BadInput
from .files import write_file

# the statements protoc writes for a stub (``import public`` makes the ``import *`` one)
_STUB_IMPORT = re.compile(
    r"^(?:from ([\w.]+) import (\w+_pb2)( as \w+)?|import (\w+_pb2)( as \w+)?"
    r"|from ([\w.]*?)(\w+_pb2) import \*)$",
    re.MULTILINE,
)
_PROTO_IMPORT = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.MULTILINE)
_WELL_KNOWN = "google/protobuf/"  # shipped with grpc_tools, always found


@dataclass(frozen=True)
class _Stub:
    root: Path  # the import root of its proto
    path: Path  # relative to root, as protoc names it: api/common/money_pb2.py
    text: str


def generate(protos: Iterable[Path]) -> list[Path]:
    """Generate the stubs of each proto under its import root (next to it, in the folders
    protoc names); returns the files written."""
    found = [_existing_proto(proto) for proto in protos]
    roots = import_roots(found)
    stubs: list[_Stub] = []
    for root in dict.fromkeys(roots.values()):
        group = [proto for proto in found if roots[proto] == root]
        with tempfile.TemporaryDirectory(prefix="gz-gen-") as scratch:
            outputs = (f"--{kind}_out={scratch}" for kind in ("python", "pyi", "grpc_python"))
            _protoc(group, *outputs, includes=[root])
            made = sorted(path for path in Path(scratch).rglob("*") if path.is_file())
            stubs += [
                _Stub(root, path.relative_to(scratch), path.read_text(encoding="utf-8"))
                for path in made
            ]
    ours = {stub.root / stub.path for stub in stubs}  # an import may name a stub written later
    written = []
    for stub in stubs:
        text = _relative_imports(stub, ours)
        written.append(write_file(stub.root, stub.path, text))
        written += _packages(stub.root, stub.path.parent)
    return written


def describe(*protos: Path, includes: Sequence[Path] = ()) -> descriptor_pb2.FileDescriptorSet:
    """The descriptors of ``protos`` and everything they import (imports first); ``includes``
    are import directories searched before each proto's own root (see ``import_roots``)."""
    found = [_existing_proto(proto) for proto in protos]
    roots = import_roots(found, includes)
    with tempfile.TemporaryDirectory(prefix="gz-gen-") as scratch:
        out = Path(scratch) / "descriptors.pb"
        directories = [*includes, *roots.values()]
        _protoc(found, f"--descriptor_set_out={out}", "--include_imports", includes=directories)
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def protos_in(directory: Path) -> list[Path]:
    """Every .proto in ``directory`` (a project's package) and the folders below it."""
    return sorted(path for path in directory.rglob("*.proto") if "__pycache__" not in path.parts)


def import_roots(protos: Sequence[Path], includes: Sequence[Path] = ()) -> dict[Path, Path]:
    """The import root of each proto (resolved paths): the nearest folder above it from which
    its imports resolve (those ``includes`` resolve aside), raised to its importer's root when
    another of ``protos`` imports it. BadInput if two of them import it by different paths."""
    roots = {proto: _nearest_root(proto, includes) for proto in protos}
    changed = True
    while changed:  # roots only move up, so this ends
        changed = False
        for proto in protos:
            for target in _imported(proto, roots[proto], roots):
                if roots[target] != roots[proto] and roots[proto] in roots[target].parents:
                    roots[target], changed = roots[proto], True
    for proto in protos:
        for target, name in _imported(proto, roots[proto], roots).items():
            if target.relative_to(roots[target]).as_posix() != name:
                raise BadInput(
                    f"{proto.name} imports {target.name} as {name}, another proto as "
                    f"{target.relative_to(roots[target]).as_posix()}; import it by one path "
                    "(from one folder) everywhere"
                )
    return roots


def _nearest_root(proto: Path, includes: Sequence[Path]) -> Path:
    names = [name for name in _proto_imports(proto) if not name.startswith(_WELL_KNOWN)]
    names = [name for name in names if not any((d / name).is_file() for d in includes)]
    for folder in proto.parents:
        if all((folder / name).is_file() for name in names):
            return folder
    return proto.parent  # an import found nowhere: protoc says which


def _imported(proto: Path, root: Path, protos: dict[Path, Path]) -> dict[Path, str]:
    """The protos of ``protos`` that ``proto`` imports from ``root``, with the names it uses."""
    found = {(root / name).resolve(): name for name in _proto_imports(proto)}
    return {path: name for path, name in found.items() if path in protos}


def _proto_imports(proto: Path) -> list[str]:
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", proto.read_text(encoding="utf-8"), flags=re.DOTALL)
    return _PROTO_IMPORT.findall(text)


def _existing_proto(proto: Path) -> Path:
    if proto.suffix != ".proto":
        raise BadInput(f"{proto}: not a .proto file")
    if not proto.is_file():
        raise BadInput(f"{proto}: no such file")
    return proto.resolve()


def _protoc(protos: Sequence[Path], *outputs: str, includes: Sequence[Path]) -> None:
    from grpc_tools import protoc  # a compiler extension only gz gen, new and call need

    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    directories = dict.fromkeys(includes)
    arguments = [
        "grpc_tools.protoc",
        *(f"-I{directory}" for directory in directories),
        f"-I{well_known}",
        *outputs,
        *map(str, protos),
    ]
    with held_stderr() as held:  # protoc's C++ code writes there: say one clear line instead
        status = protoc.main(arguments)
    if status != 0:
        lines = [line for line in held.text.splitlines() if line.strip()] or ["protoc failed"]
        problem = lines[0]
        for directory in directories:
            problem = problem.replace(f"{directory}{os.sep}", "")
        raise BadInput(f"{', '.join(proto.name for proto in protos)}: {problem}")


def _relative_imports(stub: _Stub, ours: set[Path]) -> str:
    """``from api.common import money_pb2`` -> ``from .common import money_pb2`` (and so on)
    in ``stub`` when the stub it names is generated here; others (installed) stay absolute."""
    here = stub.path.parent.parts

    def relative(match: re.Match[str]) -> str:
        package, module, alias = _parts(match)
        path = stub.root.joinpath(*package, f"{module}.py")
        if path not in ours and not path.is_file():  # an earlier gz gen's counts too
            return match.group(0)  # not ours (an installed package): leave it absolute
        shared = 0  # the leading packages both are in
        while shared < min(len(here), len(package)) and here[shared] == package[shared]:
            shared += 1
        where = "." * (len(here) - shared + 1) + ".".join(package[shared:])
        if match.group(7):  # import public
            return f"from {where}{'.' if package[shared:] else ''}{module} import *"
        return f"from {where} import {module}{alias}"

    return _STUB_IMPORT.sub(relative, stub.text)


def _parts(match: re.Match[str]) -> tuple[tuple[str, ...], str, str]:
    """(package parts, module, `` as alias``) of a match of _STUB_IMPORT."""
    if match.group(2):
        return tuple(match.group(1).split(".")), match.group(2), match.group(3) or ""
    if match.group(4):
        return (), match.group(4), match.group(5) or ""
    return tuple(filter(None, match.group(6).split("."))), match.group(7), ""


def _packages(root: Path, folder: Path) -> list[Path]:
    """``__init__.py`` in each folder of stubs below ROOT that lacks one: relative imports and
    packaging tools need packages there."""
    made = []
    for parent in [folder, *folder.parents][:-1]:  # not ROOT itself: the user's to decide
        if not (root / parent / "__init__.py").exists():
            made.append(write_file(root, parent / "__init__.py", ""))
    return made
