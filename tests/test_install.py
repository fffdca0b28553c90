"""The installed package is ``gz`` and nothing else.

framework/ is installed as ``gz``, scaffold/ as ``gz.scaffold``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from importlib.metadata import version

from .support import ROOT, run_gz

FOLDERS = {"framework": "gz", "scaffold": "gz.scaffold"}


def test_every_package_folder_is_installed_under_gz():
    tools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tools["package-dir"] == {package: folder for folder, package in FOLDERS.items()}
    found = set()
    for folder, package in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *parts)))
    assert sorted(tools["packages"]) == sorted(found)


def test_no_code_imports_the_folder_names():
    """``framework`` and ``scaffold`` are folders of this repository, not modules anyone imports."""
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        if ".venv" in path.parts or "build" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names
                          if name.split(".")[0] in FOLDERS]  # fmt: skip
    assert offenders == []


def test_version_is_the_distributions():
    code, out, err = run_gz("--version")
    assert (code, out.strip(), err) == (0, f"gz {version('gz')}", "")
    printed = subprocess.run([sys.executable, "-c", "import gz; print(gz.__version__)"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert printed.strip() == version("gz")


def test_every_public_name_is_imported_on_first_use():
    """``import gz`` imports its names lazily: each one in __all__ resolves, and none of the
    heavy modules (grpc, the settings' pydantic) is imported by ``import gz`` alone."""
    code = (
        "import sys, gz\n"
        "heavy = [m for m in ('grpc', 'pydantic_settings', 'gz.settings') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert sorted(gz.__all__) == sorted(gz._EXPORTS), 'update __all__ with _EXPORTS'\n"
        "for name in gz.__all__:\n"
        "    getattr(gz, name)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "ok", done.stderr
