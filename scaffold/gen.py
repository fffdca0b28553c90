"""``gz gen``: Python stubs (``_pb2.py``, ``.pyi``, ``_pb2_grpc.py``) from .proto files.

grpc_tools.protoc runs in this process. protoc writes ``import x_pb2`` for a sibling proto,
which only works with the stubs' directory on sys.path; gz rewrites those imports into relative
ones so the stubs work inside a package, which is where gz projects keep them.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2

from gz.stderr import held_stderr

from .errors import BadInput

_SIBLING_IMPORT = re.compile(r"^import (\w+_pb2)( as \w+)?$", re.MULTILINE)


def generate(protos: Iterable[Path]) -> list[Path]:
    """Generate stubs next to each proto; returns the files written."""
    written: list[Path] = []
    for proto in protos:
        proto = _existing_proto(proto)
        directory = proto.parent
        _protoc(
            [proto],
            f"--python_out={directory}",
            f"--pyi_out={directory}",
            f"--grpc_python_out={directory}",
        )
        written += [directory / f"{proto.stem}_pb2{end}" for end in (".py", ".pyi", "_grpc.py")]
    for stub in written:  # after all are written: an import may name a stub generated later
        _make_imports_relative(stub)
    return written


def describe(*protos: Path, includes: Sequence[Path] = ()) -> descriptor_pb2.FileDescriptorSet:
    """The descriptors of ``protos`` and everything they import (imports first); ``includes``
    are import directories searched before each proto's own."""
    found = [_existing_proto(proto) for proto in protos]
    with tempfile.TemporaryDirectory(prefix="gz-gen-") as scratch:
        out = Path(scratch) / "descriptors.pb"
        _protoc(found, f"--descriptor_set_out={out}", "--include_imports", includes=includes)
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def protos_in(directory: Path) -> list[Path]:
    """Every .proto directly in ``directory`` (a project's package)."""
    return sorted(directory.glob("*.proto"))


def _existing_proto(proto: Path) -> Path:
    if proto.suffix != ".proto":
        raise BadInput(f"{proto}: not a .proto file")
    if not proto.is_file():
        raise BadInput(f"{proto}: no such file")
    return proto.resolve()


def _protoc(protos: Sequence[Path], *outputs: str, includes: Sequence[Path] = ()) -> None:
    from grpc_tools import protoc  # a compiler extension only gz gen, new and call need

    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    directories = dict.fromkeys([*includes, *(proto.parent for proto in protos)])
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


def _make_imports_relative(stub: Path) -> None:
    """``import x_pb2 as y`` -> ``from . import x_pb2 as y`` when x_pb2 is generated here."""
    text = stub.read_text(encoding="utf-8")

    def relative(match: re.Match[str]) -> str:
        module, alias = match.group(1), match.group(2) or ""
        if not (stub.parent / f"{module}.py").is_file():
            return match.group(0)  # not ours (an installed package): leave it absolute
        return f"from . import {module}{alias}"

    rewritten = _SIBLING_IMPORT.sub(relative, text)
    if rewritten != text:
        stub.write_text(rewritten, encoding="utf-8")
