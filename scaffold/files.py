"""Every file gz writes goes through ``write_file``: inside its directory, never through a link.

A symbolic link in a project (a Dockerfile, a stub, a manifest) may point anywhere; writing
through it would change a file the user never named, so gz refuses instead of following it.
Each file is written whole to a temporary name next to it, then renamed over the old one: an
interrupted gz leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path, PurePath

from .errors import BadInput


def write_file(root: Path, relative: str | PurePath, content: str | bytes) -> Path:
    """Write ``content`` (text as UTF-8) to ROOT/RELATIVE, making its folders; returns the path.

    Refused (exit 2) when the path leaves ROOT or goes through a symbolic link below it."""
    parts = PurePath(relative).parts
    if not parts or PurePath(relative).is_absolute() or ".." in parts:
        raise BadInput(f"{relative}: gz writes only inside {root}; this path leads out of it")
    path = root.joinpath(*parts)
    root.mkdir(parents=True, exist_ok=True)
    folder = root
    for part in parts:  # every link below ROOT, each made folder included
        folder = folder / part
        if folder.is_symlink():
            raise BadInput(
                f"{folder} is a symbolic link; gz does not write through links: remove it, "
                "or pick another directory"
            )
        if folder != path:
            folder.mkdir(parents=True, exist_ok=True)
    if not path.resolve().is_relative_to(root.resolve()):  # a link swapped in while we looked
        raise BadInput(f"{path}: gz writes only inside {root}; this path leads out of it")
    data = content.encode() if isinstance(content, str) else content
    _replace(path, data)
    return path


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file beside ``path``, then rename it over ``path``."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    existing = path.stat().st_mode & 0o777 if path.is_file() else None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(partial, flags, 0o666)  # a new file: 0o666 less the umask, as open()
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        if existing is not None:  # a rewritten file keeps its mode (an executable stays one)
            os.chmod(partial, existing)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
