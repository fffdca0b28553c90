"""gz gen (and gz new --proto) name stubs as protoc does and make every import between them
resolve: dashes and dots in proto names, and protos importing others from other folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gz.scaffold.protos import stub_module

from .support import run_gz

TREE = Path(__file__).parent / "protos" / "tree"
SIMPLE = """syntax = "proto3";
package {package};
message A {{}}
service S {{ rpc M(A) returns (A); }}
"""


def python(code: str, cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("proto", "module"),
    [
        ("my-api.proto", "my_api_pb2"),
        ("shop.v1.proto", "shop.v1_pb2"),
        ("api/common/money.proto", "api.common.money_pb2"),
    ],
)
def test_stub_module_is_the_module_protoc_writes(proto, module):
    assert stub_module(proto) == module


def test_gen_names_stubs_as_protoc_does(tmp_path):
    (tmp_path / "my-api.proto").write_text(SIMPLE.format(package="a"))
    (tmp_path / "shop.v1.proto").write_text(SIMPLE.format(package="b"))
    code, out, err = run_gz("gen", str(tmp_path / "my-api.proto"), str(tmp_path / "shop.v1.proto"))
    assert code == 0, err
    for stub in ["my_api_pb2.py", "my_api_pb2_grpc.py", "shop/v1_pb2.pyi", "shop/__init__.py"]:
        assert (tmp_path / stub).is_file(), out
    (tmp_path / "__init__.py").write_text("")  # stubs live in a package
    python(
        f"from {tmp_path.name} import my_api_pb2_grpc\n"
        f"from {tmp_path.name}.shop import v1_pb2, v1_pb2_grpc\n"
        "v1_pb2_grpc.SStub, my_api_pb2_grpc.SStub, v1_pb2.A()",
        tmp_path.parent,
    )


def test_gen_a_tree_in_two_folders_makes_stubs_that_import(tmp_path):
    shutil.copytree(TREE, tmp_path, dirs_exist_ok=True)
    protos = ["api/shop.proto", "api/ids.proto", "api/common/money.proto"]
    code, _, err = run_gz("gen", *(str(tmp_path / proto) for proto in protos))
    assert code == 0, err
    assert "from .common import money_pb2" in (tmp_path / "api/shop_pb2.py").read_text()
    assert "from .. import ids_pb2" in (tmp_path / "api/common/money_pb2.py").read_text()
    assert (tmp_path / "api/__init__.py").is_file() and (
        tmp_path / "api/common/__init__.py"
    ).is_file()
    python(
        "from api import shop_pb2, shop_pb2_grpc, ids_pb2\n"
        "from api.common import money_pb2\n"
        "item = shop_pb2.Item(price=money_pb2.Money(cents=5, currency=ids_pb2.Id(id='EUR')))\n"
        "item.at.GetCurrentTime()\n"
        "assert shop_pb2.Item.FromString(item.SerializeToString()) == item\n"
        "assert shop_pb2_grpc.ShopStub\n",
        tmp_path,
    )


@pytest.mark.parametrize("proto", ["api/shop.proto", "shop.v1.proto", "my-api.proto"])
def test_new_from_such_a_proto_makes_a_project_whose_modules_import(tmp_path, proto):
    shutil.copytree(TREE, tmp_path / "src")
    if not proto.startswith("api/"):
        (tmp_path / "src" / proto).write_text(SIMPLE.format(package="x"))
    project = tmp_path / "p"
    code, _, err = run_gz(
        "new", "service", "x", "--dir", str(project), "--proto", str(tmp_path / "src" / proto)
    )
    assert code == 0, err
    python("import x.server, x.client", project)
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
