"""gz new service / gz gen / gz run --reload: a new project installs into a virtualenv and passes
its own tests.

The virtualenv is made once per module with ``python -m venv --without-pip`` plus a .pth file
that adds this checkout's .venv site-packages (gz and its dependencies): it takes about a
second and needs no network. The project itself is installed for real (not editable) with
``pip --python VENV install --no-deps --no-build-isolation``, and its tests run from outside the
project directory so that they import the installed package.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import grpc
import pytest

from examples.greeter import greeter_pb2

from .support import ROOT, ServerProcess, run_gz, wait_until

PROTOS = Path(__file__).parent / "protos"


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
    python = directory / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    Path(purelib, "gz-reuse.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return python


def install_and_test(python: Path, project: Path) -> subprocess.CompletedProcess[str]:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(project),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project / "tests")],
        cwd=project.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )


def installed_files(python: Path, package: str) -> set[str]:
    code = f"import {package}, pathlib; print(pathlib.Path({package}.__file__).parent)"
    where = subprocess.run(
        [str(python), "-c", code], check=True, capture_output=True, text=True, cwd="/"
    )
    directory = Path(where.stdout.strip())
    assert "site-packages" in directory.parts, directory  # the installed copy, not the source
    return {path.name for path in directory.iterdir()}


def test_new_service_installs_and_passes_its_own_tests(venv, tmp_path):
    code, out, err = run_gz("new", "service", "hello", "--dir", str(tmp_path / "hello"))
    assert code == 0, err
    project = tmp_path / "hello"
    for name in [
        "pyproject.toml",
        "README.md",
        "Dockerfile",
        ".dockerignore",
        "hello/hello.proto",
        "hello/hello_pb2.py",
        "hello/hello_pb2.pyi",
        "hello/hello_pb2_grpc.py",
        "hello/server.py",
        "hello/client.py",
        "tests/test_hello.py",
        "deploy/deployment-hello.yaml",
        "deploy/service-hello.yaml",
    ]:
        assert (project / name).is_file(), name
        assert name in out
    assert (
        "from . import hello_pb2 as hello__pb2" in (project / "hello/hello_pb2_grpc.py").read_text()
    )
    done = install_and_test(venv, project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout
    assert {"hello.proto", "hello_pb2.pyi", "server.py"} <= installed_files(venv, "hello")


def test_new_service_from_a_streaming_proto_answers_unimplemented_naming_each_method(
    venv, tmp_path
):
    project = tmp_path / "shop"
    requirement = f"gz @ {ROOT.as_uri()}"  # this checkout, as a user without an index would
    proto = str(PROTOS / "shop.proto")
    code, _, err = run_gz("new", "service", "shop-orders", "--dir", str(project), "--proto", proto,
                      "--registry", "etcd", "--gz-requirement", requirement)  # fmt: skip
    assert code == 0, err
    assert f'dependencies = ["{requirement}"]' in (project / "pyproject.toml").read_text()
    server = (project / "shop_orders/server.py").read_text()
    for method in ["Get", "Watch", "Upload", "Chat"]:
        assert f'"shop.v1.Orders/{method} is not implemented yet: write it in' in server
    assert "from . import shop_common_pb2, shop_pb2, shop_pb2_grpc" in server
    assert (project / "shop_orders/shop_common_pb2.py").is_file()
    assert "GZ_REGISTRY" in (project / "deploy/deployment-shop-orders.yaml").read_text()
    done = install_and_test(venv, project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed" in done.stdout  # health + one per method, all four call kinds


def test_generated_code_is_clean_for_ruff(tmp_path):
    assert run_gz("new", "service", "hello", "--dir", str(tmp_path / "a"))[0] == 0
    proto = str(PROTOS / "shop.proto")
    assert run_gz("new", "service", "shop", "--dir", str(tmp_path / "b"), "--proto", proto)[0] == 0
    ruff = Path(sys.executable).parent / "ruff"
    options = ["--isolated", "--line-length", "100", "--exclude", "*_pb2*"]
    for project in (tmp_path / "a", tmp_path / "b"):
        for command in (["check", "--select", "E,F,W,I,B,UP,SIM"], ["format", "--check"]):
            done = subprocess.run(
                [ruff, *command, *options, "."], cwd=project, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_is_pinned_slim_non_root_with_an_init(tmp_path):
    assert run_gz("new", "service", "hello", "--dir", str(tmp_path / "p"))[0] == 0
    dockerfile = (tmp_path / "p/Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)$", dockerfile, re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+", base[1])  # a version, not 3.12
    assert "install -y --no-install-recommends tini" in dockerfile
    assert '\nENTRYPOINT ["/usr/bin/tini", "--"]\n' in dockerfile
    assert "\nUSER 10001\n" in dockerfile
    assert dockerfile.endswith('\nCMD ["python", "-m", "hello.server"]\n')


def test_dockerignore_keeps_secrets_and_local_state_out(tmp_path):
    assert run_gz("new", "service", "hello", "--dir", str(tmp_path / "p"))[0] == 0
    patterns = (tmp_path / "p/.dockerignore").read_text().split()
    for secret in [".env", ".env.*", "*.pem", "*.key", "id_rsa*"]:
        assert f"**/{secret}" in patterns  # in any folder, not just the top
    assert {".git", ".venv", "venv"} <= set(patterns)
    assert not {"wheels", "pyproject.toml", "README.md", "hello"} & set(patterns)  # the build's


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("9bad", "is not a service name"),
        ("my service", "is not a service name"),
        ("Hello", "is not a service name"),
        ("json", "hides another module"),
        ("a" * 64, "longer than 56"),
    ],
)
def test_bad_names_exit_2_with_one_line(tmp_path, name, says):
    code, _, err = run_gz("new", "service", name, "--dir", str(tmp_path / "x"))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("gz: ") and says in err
    assert not (tmp_path / "x").exists()


def test_a_non_empty_directory_needs_force(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = run_gz("new", "service", "hello", "--dir", str(tmp_path))
    assert code == 2 and "--force" in err
    code, _, err = run_gz("new", "service", "hello", "--dir", str(tmp_path), "--force")
    assert code == 0, err
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_a_proto_without_a_service_or_with_errors_is_refused(tmp_path):
    (tmp_path / "empty.proto").write_text('syntax = "proto3";\nmessage A {}\n')
    (tmp_path / "broken.proto").write_text('syntax = "proto3";\nmessage A { nope }\n')
    code, _, err = run_gz(
        "new",
        "service",
        "x1",
        "--dir",
        str(tmp_path / "a"),
        "--proto",
        str(tmp_path / "empty.proto"),
    )
    assert code == 2 and "defines no service" in err
    code, _, err = run_gz(
        "new",
        "service",
        "x2",
        "--dir",
        str(tmp_path / "b"),
        "--proto",
        str(tmp_path / "broken.proto"),
    )
    assert code == 2 and err.startswith("gz: broken.proto:") and err.count("\n") == 1


def test_gen_regenerates_with_relative_imports_and_type_stubs(tmp_path, monkeypatch):
    for name in ["shop.proto", "shop_common.proto"]:
        (tmp_path / name).write_text((PROTOS / name).read_text())
    code, out, err = run_gz(
        "gen", str(tmp_path / "shop.proto"), str(tmp_path / "shop_common.proto")
    )
    assert code == 0, err
    assert (
        "from . import shop_common_pb2 as shop__common__pb2"
        in (tmp_path / "shop_pb2.py").read_text()
    )
    assert (
        "from . import shop_common_pb2 as _shop_common_pb2"
        in (tmp_path / "shop_pb2.pyi").read_text()
    )
    assert "from . import shop_pb2 as shop__pb2" in (tmp_path / "shop_pb2_grpc.py").read_text()
    # inside a project, no argument: every proto of its package
    assert run_gz("new", "service", "hello", "--dir", str(tmp_path / "p"))[0] == 0
    (tmp_path / "p/hello/hello_pb2.py").unlink()
    monkeypatch.chdir(tmp_path / "p")
    code, out, err = run_gz("gen")
    assert code == 0, err
    assert (tmp_path / "p/hello/hello_pb2.py").is_file() and "hello_pb2.pyi" in out
    monkeypatch.chdir(tmp_path)
    code, _, err = run_gz("gen")
    assert code == 2 and err.startswith("gz: no pyproject.toml with [tool.gz]")


async def test_run_defaults_to_the_project_service_and_reloads_on_change(tmp_path):
    assert run_gz("new", "service", "hello", "--dir", str(tmp_path / "hello"))[0] == 0
    project = tmp_path / "hello"
    server = ServerProcess("-m", "gz.scaffold.cli", "run", "--reload", GZ_NAME="hello")
    server.cwd = project
    server.start()
    try:
        await server.wait_serving()
        async with grpc.aio.insecure_channel(server.address) as channel:
            reply = await _say_hello(channel)
            assert reply.message == "Hello, reload!"
            source = project / "hello/server.py"
            source.write_text(source.read_text().replace('f"Hello, {', 'f"Hi, {'))

            async def says_hi() -> bool:
                try:
                    return (await _say_hello(channel)).message == "Hi, reload!"
                except grpc.aio.AioRpcError:
                    return False  # the reloader is restarting the child

            # the reloader polls twice a second, then restarts the child
            await wait_until(says_hi, 10, "answering 'Hi, reload!'", poll=0.1)
        server.signal(signal.SIGTERM)
        assert await server.wait_exit() == 0
        assert "hello/server.py changed; restarting" in server.stderr()
    finally:
        server.kill()


async def _say_hello(channel: grpc.aio.Channel) -> greeter_pb2.HelloReply:
    # the example proto of gz new has the greeter's field numbers, so its messages fit
    say_hello = channel.unary_unary(
        "/hello.v1.Hello/SayHello",
        request_serializer=greeter_pb2.HelloRequest.SerializeToString,
        response_deserializer=greeter_pb2.HelloReply.FromString,
    )
    return await say_hello(greeter_pb2.HelloRequest(name="reload"), timeout=2)
