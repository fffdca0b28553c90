"""How a project of ``gz new`` depends on gz, wherever the running gz came from.

gz is on no package index yet, so a bare ``gz`` dependency would not install. The running gz's
PEP 610 ``direct_url.json`` says where it came from: without one it came from an index, and
``gz>=VERSION`` is enough; otherwise (a source checkout, editable or not, or a wheel file) the
project gets a wheel of the running gz in ``wheels/`` to install with it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from importlib.metadata import Distribution, distributions
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import Failed
from .files import write_file

WHEELS = "wheels"
# the dist-info files a wheel carries; INSTALLER, REQUESTED, direct_url.json are the installer's
DIST_INFO = ("METADATA", "WHEEL", "entry_points.txt", "top_level.txt")
DATA = {"py.typed"}  # package data besides .py files; scaffold's templates/ is the other
# a fixed date makes the wheel of one gz the same bytes each time (the zip format starts at 1980)
DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class GzDependency:
    requirement: str  # the dependency in pyproject.toml
    wheel: str | None = None  # the wheel in the project to install with it, e.g. wheels/gz-...whl


def dependency(root: Path, dist: Distribution | None = None) -> GzDependency:
    """``gz>=VERSION``, plus a wheel of the running gz in ROOT/wheels/ if it is on no index."""
    dist = dist or installed()
    requirement = f"gz>={dist.version}"
    direct_url = dist.read_text("direct_url.json")
    if direct_url is None:
        return GzDependency(requirement)
    name = f"{WHEELS}/gz-{dist.version}-py3-none-any.whl"
    source = installed_from(direct_url)
    write_file(root, name, source.read_bytes() if source is not None else build(dist))
    return GzDependency(requirement, name)


def installed() -> Distribution:
    """The running gz's distribution. A source checkout may hold a gz.egg-info that setuptools
    left behind and that comes first on sys.path; it has no RECORD, an installed gz does."""
    found = list(distributions(name="gz"))
    for dist in found:
        if dist.read_text("RECORD") is not None:
            return dist
    if not found:
        raise Failed("gz is not installed; install it (pip install /path/to/gz), then run gz again")
    return found[0]


def installed_from(direct_url: str) -> Path | None:
    """The local wheel file gz was installed from, if it is still there unchanged."""
    info = json.loads(direct_url)
    parts = urlsplit(info.get("url", ""))
    archive = info.get("archive_info")
    if archive is None or parts.scheme != "file" or not parts.path.endswith(".whl"):
        return None
    path = Path(unquote(parts.path))
    if not path.is_file():
        return None
    algorithm, _, expected = str(archive.get("hash", "")).partition("=")
    if expected and algorithm in hashlib.algorithms_guaranteed:
        same = hashlib.new(algorithm, path.read_bytes()).hexdigest() == expected
        return path if same else None  # replaced since: build from what is installed instead
    return path


def build(dist: Distribution) -> bytes:
    """A wheel of the running gz from its package files and dist-info, as ``pip wheel`` makes:
    its bytes, which ``dependency`` writes whole (never a half-written wheel)."""
    import gz.scaffold  # the running one: in an editable install its folders are apart

    files = package_files(Path(gz.__path__[0]), "gz")
    files.update(package_files(Path(gz.scaffold.__path__[0]), "gz/scaffold"))
    dist_info = f"gz-{dist.version}.dist-info"
    for path in dist.files or []:  # its RECORD: the dist-info files are listed there too
        if len(path.parts) == 2 and path.parts[0].endswith(".dist-info") and path.name in DIST_INFO:
            files[f"{dist_info}/{path.name}"] = path.read_binary()
    if f"{dist_info}/METADATA" not in files:
        raise Failed("the installed gz has no METADATA; reinstall gz, then run gz new again")
    record = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in files.items()]
    files[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,", ""]).encode()
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, DATE)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data)
    return wheel.getvalue()


def package_files(folder: Path, prefix: str) -> dict[str, bytes]:
    """The .py files of each package (a folder with __init__.py), py.typed, and templates/."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or "__pycache__" in relative.parts:
            continue
        if relative.parts[0] == "scaffold" and prefix == "gz":
            continue  # an installed gz has scaffold/ inside; it is walked on its own
        template = prefix == "gz/scaffold" and relative.parts[0] == "templates"
        packaged = (path.parent / "__init__.py").is_file()
        if template or (packaged and (path.suffix == ".py" or path.name in DATA)):
            files[f"{prefix}/{relative.as_posix()}"] = path.read_bytes()
    return files


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
