"""An RPC added to the proto later: ``gz gen`` names it, ``gz gen --add-handlers`` writes the
stub ``gz new --proto`` would have written (imports included), and the call answers
UNIMPLEMENTED naming the method; the imports go where ruff's isort wants them."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

import gz
from gz.scaffold.imports import Import, add_imports

from .support import gz_command, run_gz

RUFF = Path(sys.executable).parent / "ruff"
RUFF_OPTIONS = ["--isolated", "--line-length", "100", "--exclude", "*_pb2*"]
PROTO = """syntax = "proto3";

package parcels.v1;
{imports}
service Parcels {{
  rpc Find(ParcelId) returns (Parcel);{added}
}}

message ParcelId {{
  string id = 1;
}}

message Parcel {{
  string id = 1;
}}
"""
ADDED = """
  rpc Track(ParcelId) returns (stream Parcel);
  rpc Drop(stream ParcelId) returns (google.protobuf.Empty);"""


def gz_gen(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # a process of its own: gz gen imports the service, fresh after each change
    return subprocess.run(
        gz_command("gen", *args), cwd=project, capture_output=True, text=True, timeout=60
    )


def ruff_is_clean(project: Path) -> None:
    for command in (["check", "--select", "E,F,W,I,B,UP,SIM"], ["format", "--check"]):
        done = subprocess.run(
            [RUFF, *command, *RUFF_OPTIONS, "."], cwd=project, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr


async def test_gen_reports_an_added_rpc_and_add_handlers_writes_its_stub_once(tmp_path):
    source = tmp_path / "parcels.proto"
    source.write_text(PROTO.format(imports="", added=""))
    project = tmp_path / "parcels"
    code, _, err = run_gz(
        "new", "service", "parcels", "--dir", str(project), "--proto", str(source)
    )
    assert code == 0, err
    proto = project / "parcels/parcels.proto"
    proto.write_text(PROTO.format(imports='\nimport "google/protobuf/empty.proto";\n', added=ADDED))

    done = gz_gen(project)
    assert done.returncode == 0, done.stderr
    missing = [line for line in done.stdout.splitlines() if "not implemented" in line]
    assert missing == [
        f"parcels.v1.Parcels/{name}: not implemented by Parcels, it answers UNIMPLEMENTED "
        "(gz gen --add-handlers writes a stub)"
        for name in ("Track", "Drop")
    ]

    server = project / "parcels/server.py"
    before = server.read_text()
    done = gz_gen(project, "--add-handlers")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-4:] == [
        "added a stub of parcels.v1.Parcels/Track to parcels/server.py",
        "added a stub of parcels.v1.Parcels/Drop to parcels/server.py",
        "added to parcels/server.py: from collections.abc import AsyncIterator",
        "added to parcels/server.py: import google.protobuf.empty_pb2 as google_protobuf_empty_pb2",
    ]
    after = server.read_text()
    # the class's first part and everything after it are untouched; the stubs end the class
    head, tail = before.split("\n\n\nif __name__")
    assert after.endswith(f"\n\n\nif __name__{tail}")
    assert head.split("\nclass ")[1] in after
    # what gz new writes for the whole proto
    fresh = tmp_path / "fresh"
    code, _, err = run_gz("new", "service", "parcels", "--dir", str(fresh), "--proto", str(proto))
    assert code == 0, err
    assert after == (fresh / "parcels/server.py").read_text()
    ruff_is_clean(project)

    done = gz_gen(project, "--add-handlers")
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stdout.splitlines() if not line.startswith("wrote ")] == []
    assert server.read_text() == after

    await _answers_unimplemented_naming_itself(project)


async def _answers_unimplemented_naming_itself(project: Path) -> None:
    sys.path.insert(0, str(project))
    try:
        module = importlib.import_module("parcels.server")
        parcels_pb2 = importlib.import_module("parcels.parcels_pb2")
        settings = gz.ServerSettings(listen="127.0.0.1:0", shutdown_drain=0, shutdown_grace=1)
        service = module.Parcels(settings)
        await service.server.start()
        try:
            async with grpc.aio.insecure_channel(service.address) as channel:
                track = channel.unary_stream(
                    "/parcels.v1.Parcels/Track",
                    request_serializer=parcels_pb2.ParcelId.SerializeToString,
                    response_deserializer=parcels_pb2.Parcel.FromString,
                )
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await track(parcels_pb2.ParcelId(id="1"), timeout=5).read()
        finally:
            await service.server.stop()
    finally:
        sys.path.remove(str(project))
        for name in [name for name in sys.modules if name.split(".")[0] == "parcels"]:
            del sys.modules[name]
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert raised.value.details() == (
        "parcels.v1.Parcels/Track is not implemented yet: write it in parcels/server.py"
    )


def test_add_handlers_needs_a_project_and_gen_outside_one_checks_nothing(tmp_path, monkeypatch):
    (tmp_path / "parcels.proto").write_text(PROTO.format(imports="", added=""))
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_gz("gen", "parcels.proto")
    assert code == 0 and "not implemented" not in out
    code, _, err = run_gz("gen", "--add-handlers", "parcels.proto")
    assert code == 2 and err.startswith("gz: no pyproject.toml") and err.count("\n") == 1


HEAD = '"""A service."""\n\nfrom __future__ import annotations\n\n'


@pytest.mark.parametrize(
    ("source", "wanted", "expected"),
    [
        (  # joins the from-import of its module, in isort's order
            HEAD + "import grpc\n\nfrom . import a_pb2, c_pb2\n",
            [Import("", "b_pb2", level=1)],
            HEAD + "import grpc\n\nfrom . import a_pb2, b_pb2, c_pb2\n",
        ),
        (  # a new standard-library section between __future__ and third party
            HEAD + "import grpc\n",
            [Import("collections.abc", "AsyncIterator")],
            HEAD + "from collections.abc import AsyncIterator\n\nimport grpc\n",
        ),
        (  # sorted into its section: `import x` before `from x import`
            HEAD + "import grpc\nimport gz\nfrom google.protobuf import json_format\n",
            [Import("google.protobuf.empty_pb2", alias="google_protobuf_empty_pb2")],
            HEAD + "import google.protobuf.empty_pb2 as google_protobuf_empty_pb2\nimport grpc\n"
            "import gz\nfrom google.protobuf import json_format\n",
        ),
        (  # a relative section after the first party one
            HEAD + "import grpc\n\nimport shop\n",
            [Import("", "shop_pb2", level=1)],
            HEAD + "import grpc\n\nimport shop\n\nfrom . import shop_pb2\n",
        ),
        (  # too long for one line: wrapped as ruff wraps it
            HEAD + "from . import " + ", ".join(f"m{n:02}_pb2" for n in range(10)) + "\n",
            [Import("", "z_pb2", level=1)],
            HEAD
            + "from . import (\n"
            + "".join(f"    m{n:02}_pb2,\n" for n in range(10))
            + "    z_pb2,\n)\n",
        ),
        (  # already imported, under any form: nothing changes
            HEAD + "from typing import AsyncIterator\n\nimport grpc\n",
            [Import("grpc"), Import("collections.abc", "AsyncIterator")],
            HEAD + "from typing import AsyncIterator\n\nimport grpc\n",
        ),
    ],
)
def test_imports_go_where_isort_wants_them(tmp_path, source, wanted, expected):
    result, _ = add_imports(source, wanted, first_party="shop")
    assert result == expected
    (tmp_path / "shop").mkdir()  # so that ruff sees shop as first party
    (tmp_path / "shop/server.py").write_text(result)
    done = subprocess.run(
        [RUFF, "check", "--select", "I", *RUFF_OPTIONS, "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout
