"""``gz run --reload``: run the service in a child process and restart it when a source changes.

Polling modification times keeps gz free of a file-watching dependency; twice a second is plenty
for a person editing files. A changed .proto is regenerated (``gz gen``) before the restart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click

from . import gen
from .errors import BadInput

POLL_SECONDS = 0.5
_SKIPPED_DIRECTORIES = {"__pycache__", "venv", "build", "dist", "node_modules"}
_WATCHED_SUFFIXES = {".py", ".proto"}


def snapshot(root: Path) -> dict[Path, int]:
    """Modification times of every .py and .proto under root (hidden and build dirs skipped)."""
    times: dict[Path, int] = {}
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [
            d for d in subdirectories if not d.startswith(".") and d not in _SKIPPED_DIRECTORIES
        ]
        for name in files:
            path = Path(directory, name)
            if path.suffix in _WATCHED_SUFFIXES:
                try:
                    times[path] = path.stat().st_mtime_ns
                except FileNotFoundError:
                    continue
    return times


def changed(before: dict[Path, int], after: dict[Path, int]) -> set[Path]:
    return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}


def run_with_reload(spec: str, root: Path, options: Sequence[str] = ()) -> int:
    """Serve ``spec`` until interrupted, restarting on every change under ``root``; each child
    ``gz run`` gets ``options`` (``--listen``)."""
    # a development loop should restart at once, not drain for the production default
    env = {"GZ_SHUTDOWN_DRAIN": "0", **os.environ}
    command = [sys.executable, "-m", "gz.scaffold.cli", "run", spec, *options]
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # -> finally: stop the child
    child: subprocess.Popen[bytes] | None = None
    try:
        while True:
            before = snapshot(root)
            # its own process group: Ctrl-C reaches only the reloader, which stops the child
            # with one SIGTERM (a second signal would make it skip its drain)
            child = subprocess.Popen(command, cwd=root, env=env, process_group=0)
            edits = _wait_for_change(child, root, before)
            _stop(child)
            _regenerate(edits)
            click.echo(f"gz: {_describe(edits, root)} changed; restarting", err=True)
    except KeyboardInterrupt:
        return 0
    finally:
        if child is not None:
            _stop(child)


def _wait_for_change(
    child: subprocess.Popen[bytes], root: Path, before: dict[Path, int]
) -> set[Path]:
    reported_exit = False
    while True:
        time.sleep(POLL_SECONDS)
        if child.poll() is not None and not reported_exit:
            click.echo(f"gz: the service exited {child.returncode}; waiting for a change", err=True)
            reported_exit = True
        edits = changed(before, snapshot(root))
        if edits:
            return edits


def _stop(child: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _regenerate(edits: set[Path]) -> None:
    protos = [path for path in edits if path.suffix == ".proto" and path.exists()]
    try:
        gen.generate(protos)
    except BadInput as error:  # keep serving the old stubs; the user sees why
        click.echo(f"gz: {error.format_message()}", err=True)


def _describe(edits: set[Path], root: Path) -> str:
    names = sorted(str(path.relative_to(root)) for path in edits)
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
