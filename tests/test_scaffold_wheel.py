"""How a project of ``gz new`` depends on gz (scaffold/wheel.py): by the running gz's PEP 610
direct_url.json, and the wheel of the running gz it carries when gz is on no index."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import Distribution, PathDistribution
from pathlib import Path

import pytest

from gz.scaffold import wheel

from .support import ROOT, run_gz


def fake_gz(tmp_path: Path, direct_url: dict[str, object] | None) -> Distribution:
    """The running gz's dist-info, copied, with the given direct_url.json."""
    dist = wheel.installed()
    metadata = next(path for path in dist.files or [] if path.name == "METADATA")
    copy = tmp_path / "site" / metadata.parts[0]
    shutil.copytree(Path(str(metadata.locate())).parent, copy)
    (copy / "direct_url.json").unlink(missing_ok=True)
    if direct_url is not None:
        (copy / "direct_url.json").write_text(json.dumps(direct_url))
    return PathDistribution(copy)


def test_gz_from_an_index_is_a_plain_requirement(tmp_path):
    dist = fake_gz(tmp_path, None)
    found = wheel.dependency(tmp_path / "p", dist)
    assert found == wheel.GzDependency(f"gz>={dist.version}")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    "direct_url",
    [
        {"url": "file:///src/gz", "dir_info": {}},
        {"url": "file:///src/gz", "dir_info": {"editable": True}},
        {"url": "file:///gone/gz-0.1.0-py3-none-any.whl", "archive_info": {}},
        {"url": "https://example.com/gz-0.1.0-py3-none-any.whl", "archive_info": {}},
        {"url": "https://example.com/gz.git", "vcs_info": {"vcs": "git", "commit_id": "ab12"}},
    ],
    ids=["dir", "editable", "wheel-gone", "wheel-url", "git"],
)
def test_gz_from_elsewhere_comes_with_a_wheel_built_from_the_running_gz(tmp_path, direct_url):
    dist = fake_gz(tmp_path, direct_url)
    found = wheel.dependency(tmp_path / "p", dist)
    name = f"wheels/gz-{dist.version}-py3-none-any.whl"
    assert found == wheel.GzDependency(f"gz>={dist.version}", name)
    with zipfile.ZipFile(tmp_path / "p" / name) as built:
        assert "gz/scaffold/wheel.py" in built.namelist()
    assert sorted(path.name for path in (tmp_path / "p/wheels").iterdir()) == [Path(name).name]


def test_gz_from_a_wheel_file_that_is_still_there_copies_it(tmp_path):
    original = tmp_path / "dist/gz-0.1.0-py3-none-any.whl"
    original.parent.mkdir()
    original.write_bytes(b"the wheel pip installed")
    digest = hashlib.sha256(original.read_bytes()).hexdigest()
    archive = {"url": original.as_uri(), "archive_info": {"hash": f"sha256={digest}"}}
    found = wheel.dependency(tmp_path / "p", fake_gz(tmp_path, archive))
    assert found.wheel is not None
    assert (tmp_path / "p" / found.wheel).read_bytes() == b"the wheel pip installed"
    original.write_bytes(b"replaced since")  # not what was installed: built instead
    found = wheel.dependency(tmp_path / "q", fake_gz(tmp_path / "2", archive))
    assert found.wheel is not None
    assert zipfile.is_zipfile(tmp_path / "q" / found.wheel)


def test_the_built_wheel_has_the_files_of_pip_wheel_and_a_valid_record(tmp_path):
    source = tmp_path / "src"  # a copy: pip wheel writes build/ and egg-info into its source
    source.mkdir()
    for name in ["pyproject.toml", "README.md"]:
        shutil.copyfile(ROOT / name, source / name)
    for folder in ["framework", "scaffold"]:
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    ours = tmp_path / "ours.whl"
    ours.write_bytes(wheel.build(wheel.installed()))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(tmp_path / "pip"), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    (pips,) = (tmp_path / "pip").glob("gz-*.whl")
    assert pips.name == f"gz-{wheel.installed().version}-py3-none-any.whl"
    with zipfile.ZipFile(ours) as built, zipfile.ZipFile(pips) as reference:
        assert sorted(built.namelist()) == sorted(reference.namelist())
        dist_info = f"gz-{wheel.installed().version}.dist-info"
        assert {name.split("/")[0] for name in built.namelist()} == {"gz", dist_info}
        entry_points = built.read(f"{dist_info}/entry_points.txt").decode()
        assert "[console_scripts]\ngz = gz.scaffold.cli:main" in entry_points
        assert "Tag: py3-none-any" in built.read(f"{dist_info}/WHEEL").decode()
        assert {"gz/py.typed", "gz/scaffold/templates/service/Dockerfile.j2"} <= set(
            built.namelist()
        )
        record = built.read(f"{dist_info}/RECORD").decode().splitlines()
        assert record[-1] == f"{dist_info}/RECORD,,"
        assert len(record) == len(built.namelist())
        for line in record[:-1]:
            name, digest, size = line.split(",")
            data = built.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert (digest, int(size)) == (f"sha256={expected.decode()}", len(data)), name


def test_the_same_gz_makes_the_same_wheel_bytes(tmp_path):
    # a rebuilt project (gz new --force) keeps the image's dependency layer cached
    assert wheel.build(wheel.installed()) == wheel.build(wheel.installed())


def test_gz_new_prints_the_install_command_that_names_the_wheel(tmp_path):
    code, out, err = run_gz("new", "service", "hello", "--dir", str(tmp_path / "p"))
    assert code == 0, err
    found = wheel.dependency(tmp_path / "other")
    assert found.wheel is not None  # this checkout's gz is installed from its folder
    assert f"  {found.wheel}\n" in out
    assert f"next: cd {tmp_path / 'p'} && pip install -e '.[test]' {found.wheel} && pytest" in out
    dockerfile = (tmp_path / "p/Dockerfile").read_text()
    assert f"COPY {found.wheel} ./{found.wheel}\n" in dockerfile
    assert dockerfile.index(found.wheel) < dockerfile.index("COPY hello ./hello")
    assert "RUN pip install --no-deps ." in dockerfile
    code, out, err = run_gz("new", "service", "hello", "--dir", str(tmp_path / "q"),
                            "--gz-requirement", "gz==0.1.0")  # fmt: skip
    assert code == 0, err
    assert "wheels" not in out and not (tmp_path / "q/wheels").exists()
    assert "next: cd" in out and "&& pip install -e '.[test]' && pytest" in out
    dockerfile = (tmp_path / "q/Dockerfile").read_text()
    assert "wheels" not in dockerfile
    # the dependencies from pyproject.toml, in a layer before the code: a code change reuses it
    layers = ["COPY pyproject.toml ./\n", "pip install -r", "COPY hello ./hello\n", "--no-deps"]
    assert [dockerfile.index(layer) for layer in layers] == sorted(
        dockerfile.index(layer) for layer in layers
    )
