"""Holding back what C++ code (grpc's core, protoc) writes straight to file descriptor 2, so that
gz can say in one line what went wrong instead of printing their log lines first."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

_fd2 = threading.Lock()  # file descriptor 2 is one per process


class HeldOutput:
    text = ""  # what was written inside the block, once it has ended


@contextlib.contextmanager
def held_stderr() -> Iterator[HeldOutput]:
    """File descriptor 2 goes to a temporary file inside the block; nothing of it is printed
    (``write_stderr`` passes on what should be)."""
    held = HeldOutput()
    with _fd2, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to hold
            yield held
            return
        os.dup2(sink.fileno(), 2)
        try:
            yield held
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            held.text = sink.read().decode(errors="replace")


def write_stderr(text: str) -> None:
    """Write to file descriptor 2 itself, as the held C++ code would have."""
    data = text.encode()
    while data:
        data = data[os.write(2, data) :]
