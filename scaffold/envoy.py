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

    def render(self) -> str:
        return render("kube/envoy.yaml.j2", e=self)
