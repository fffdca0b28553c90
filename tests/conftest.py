from __future__ import annotations

import pytest

from .support import ServerProcess


@pytest.fixture
def server_process():
    """Factory of greeter server processes; every one is killed at the end of the test."""
    started: list[ServerProcess] = []

    def start(*command: str, **env: str) -> ServerProcess:
        process = ServerProcess(*command, **env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
