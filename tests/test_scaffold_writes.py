"""Every file gz writes goes through files.write_file: never through a link, never out of its
directory, whole or not at all."""

from __future__ import annotations

import os

import pytest

from gz.scaffold.errors import BadInput
from gz.scaffold.files import write_file

from .support import run_gz


def outside_file(tmp_path):
    target = tmp_path / "outside" / "theirs.txt"
    target.parent.mkdir()
    target.write_text("not gz's")
    return target


def assert_refused(result, link):
    code, _, err = result
    assert code == 2 and err.count("\n") == 1 and err.startswith("gz: ")
    assert f"{link} is a symbolic link" in err


def test_kube_output_does_not_write_through_a_link(tmp_path):
    target = outside_file(tmp_path)
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "deployment-g.yaml").symlink_to(target)
    result = run_gz("kube", "service", "--name", "g", "--image", "g:1", "-o", str(out))
    assert_refused(result, out / "deployment-g.yaml")
    assert target.read_text() == "not gz's"


def test_new_force_does_not_write_through_a_linked_dockerfile(tmp_path):
    target = outside_file(tmp_path)
    project = tmp_path / "p"
    project.mkdir()
    (project / "Dockerfile").symlink_to(target)
    result = run_gz("new", "service", "hello", "--dir", str(project), "--force")
    assert_refused(result, project / "Dockerfile")
    assert target.read_text() == "not gz's"


def test_gen_does_not_write_through_a_linked_stub_or_folder(tmp_path):
    target = outside_file(tmp_path)
    (tmp_path / "a.proto").write_text('syntax = "proto3";\nmessage A {}\n')
    (tmp_path / "a_pb2.py").symlink_to(target)
    assert_refused(run_gz("gen", str(tmp_path / "a.proto")), tmp_path / "a_pb2.py")
    (tmp_path / "shop.v1.proto").write_text('syntax = "proto3";\nmessage B {}\n')
    (tmp_path / "shop").symlink_to(target.parent, target_is_directory=True)
    assert_refused(run_gz("gen", str(tmp_path / "shop.v1.proto")), tmp_path / "shop")
    assert os.listdir(target.parent) == ["theirs.txt"]


def test_write_file_stays_inside_replaces_whole_and_keeps_the_mode(tmp_path):
    with pytest.raises(BadInput, match="leads out of it"):
        write_file(tmp_path, "../x", "no")
    with pytest.raises(BadInput, match="leads out of it"):
        write_file(tmp_path, tmp_path / "x", "no")
    script = write_file(tmp_path, "bin/run.sh", "#!/bin/sh\n")
    assert script == tmp_path / "bin/run.sh" and script.read_text() == "#!/bin/sh\n"
    script.chmod(0o755)
    write_file(tmp_path, "bin/run.sh", b"#!/bin/sh\nexit 0\n")
    assert script.read_bytes() == b"#!/bin/sh\nexit 0\n" and script.stat().st_mode & 0o777 == 0o755
    assert os.listdir(tmp_path / "bin") == ["run.sh"]  # no temporary file left behind
