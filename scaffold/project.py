"""The project gz works on: the nearest pyproject.toml and its ``[tool.gz]`` table.

``gz new`` writes ``[tool.gz] service = "pkg.server:Class"``; ``gz run`` and ``gz gen`` read it
so that inside a project they need no arguments.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput


@dataclass(frozen=True)
class Project:
    root: Path
    service: str  # "pkg.server:Class"

    @property
    def package(self) -> str:
        return self.service.partition(":")[0].split(".")[0]

    @property
    def package_dir(self) -> Path:
        return self.root / self.package


def find_project(start: Path | None = None) -> Project | None:
    """The nearest pyproject.toml at or above ``start`` that has ``[tool.gz] service``."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        pyproject = directory / "pyproject.toml"
        if not pyproject.is_file():
            continue
        try:
            table = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise BadInput(f"{pyproject}: not valid TOML: {error}") from None
        service = table.get("tool", {}).get("gz", {}).get("service")
        if isinstance(service, str) and service:
            return Project(directory, service)
        return None  # the nearest pyproject is not a gz project: do not look further up
    return None


def require_project(what: str, naming: str = "it") -> Project:
    """The project here; BadInput saying to run ``what`` inside one or name ``naming``."""
    project = find_project()
    if project is None:
        raise BadInput(
            f'no pyproject.toml with [tool.gz] service = "pkg.server:Class" here or above: run '
            f"`{what}` inside a project made by `gz new service`, or name {naming} explicitly"
        )
    return project
