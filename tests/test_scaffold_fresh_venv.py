"""A user's first minute, for real: gz installed from this checkout (not editable) into a fresh
virtualenv, ``gz new service hello``, then exactly the install and test commands it prints, with
no gz on any package index.

gz's dependencies come from the package index: about 30 s. Then gz is uninstalled, so that the
printed command must install it again from the project alone, as in a virtualenv of its own; its
dependencies stay, which keeps the test to one install from the index.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .support import ROOT

PIP_TIMEOUT = 300  # seconds; pip installs from the index


def fresh_venv(directory: Path) -> dict[str, str]:
    """A virtualenv with pip, and the environment of a shell that activated it."""
    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env["PATH"] = f"{directory / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(directory)
    return env


def shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(shlex.split(command), cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=PIP_TIMEOUT)  # fmt: skip
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture
def gz_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """gz as a user installs it from a source checkout: pip install /path/to/gz."""
    where = tmp_path_factory.mktemp("gz")
    source = where / "src"  # a copy: building writes build/ and gz.egg-info into the source
    ignore = shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, source, ignore=ignore)
    env = fresh_venv(where / "venv")
    shell(f"pip install --quiet {source}", where, env)
    return env


def test_gz_new_then_the_printed_commands_install_and_pass_in_a_fresh_venv(gz_env, tmp_path):
    done = shell("gz new service hello", tmp_path, gz_env)
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("next: ")]
    steps = line.removeprefix("next: ").split(" && ")
    assert steps[0] == "cd hello" and steps[-1] == "gz run", line
    install, test = steps[1:-1]
    assert install.startswith("pip install -e '.[test]' wheels/gz-") and test == "pytest"
    project = tmp_path / "hello"
    env = gz_env  # the same virtualenv, after:
    shell("pip uninstall --yes gz", tmp_path, env)  # from now on only the project has gz
    installed = shell(install, project, env)
    assert f"Processing ./{install.split()[-1]}" in installed.stdout
    assert "Downloading gz-" not in installed.stdout  # never from an index
    assert shell("gz --version", tmp_path, env).stdout.startswith("gz ")  # its entry point
    tested = shell(test, project, env)
    assert "3 passed" in tested.stdout
    origin = subprocess.run(
        ["python", "-c", "import importlib.metadata as m; "
         "print(m.distribution('gz').read_text('direct_url.json'))"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    url = json.loads(origin.stdout)["url"]
    assert url == (project / install.split()[-1]).as_uri()
