"""The Envoy bootstrap gz writes for the `envoy` and `envoy-sidecar` modes."""

from __future__ import annotations

from dataclasses import dataclass

from .templates import render

ADMIN_PORT = 9901  # Envoy's admin interface, bound to 127.0.0.1 only
IMAGE = "envoyproxy/envoy:v1.32-latest"  # the same config validates with Envoy 1.32 to 1.40


@dataclass(frozen=True)
class EnvoyConfig:
    cluster: str  # the upstream cluster's name: the gz service
    listen_host: str  # 0.0.0.0 for a front proxy, 127.0.0.1 for a sidecar
    listen_port: int
    upstreams: tuple[tuple[str, int], ...]  # STRICT_DNS hosts: the headless Service's FQDN
    admin_port: int = ADMIN_PORT
    dns_refresh: str = "5s"  # how soon a new or removed pod is seen
    health_interval: str = "2s"  # how soon a draining replica (NOT_SERVING) is skipped
    lb_policy: str = "LEAST_REQUEST"  # per call; favours the replica with fewer calls in flight
    # calls that never reached a replica's handler, or that a replica refused (UNAVAILABLE:
    # draining, overloaded), go to another replica; gRPC deems UNAVAILABLE safe to retry
    retry_on: str = "unavailable,reset,connect-failure,refused-stream"
    num_retries: int = 2
    idle_timeout: str = "300s"  # a connection without calls closes (both sides), freeing replicas
    stream_idle_timeout: str = "3600s"  # a stream silent this long is reset (Envoy's default: 5m)

    def render(self) -> str:
        return render("kube/envoy.yaml.j2", e=self)


def admin_request(method: str, path: str, port: int = ADMIN_PORT) -> str:
    """A bash command sending one request to the admin interface, true if Envoy answers 200:
    the envoyproxy/envoy images have bash but no curl. A subshell: a refused connection fails
    this command, not the script around it."""
    headers = "Host: localhost\\r\\nConnection: close\\r\\nContent-Length: 0\\r\\n"
    request = f"{method} {path} HTTP/1.1\\r\\n{headers}\\r\\n"
    return (
        f"(exec 3<>/dev/tcp/127.0.0.1/{port} && printf '{request}' >&3 && read -r status <&3 "
        """&& [[ $status == *' 200 '* ]])"""
    )
