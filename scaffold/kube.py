"""``gz kube MODE``: the manifests of one of the seven ways to reach a gz service on Kubernetes.

Each mode is a function from a KubeSpec to a list of Manifests; the objects themselves are built
in kube_objects (the same Deployment for every mode) and the Envoy config in envoy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gz.discovery import target_variable
from gz.durations import format_duration

from . import envoy
from .errors import BadInput
from .kube_objects import (
    CONTAINER_SECURITY,
    RESOURCES,
    Object,
    PodSpec,
    Shutdown,
    autoscaler,
    config_map,
    deployment,
    disruption_budget,
    downward_env,
    endpointslice_reader,
    env_secret,
    env_value,
    grpc_port,
    grpc_probes,
    metadata,
    prestop_sleep,
    service,
)
from .names import kube_name, namespace_name, service_account_name

ENVOY_USER = 101  # the `envoy` user of the envoyproxy/envoy images
PROXIED = {"envoy", "envoy-sidecar", "mesh"}  # a gz client reaches the replicas through a proxy
SIDECAR_PORT = 9000  # where the sidecar Envoy listens on 127.0.0.1 for its app

MODES: dict[str, str] = {
    "service": "Deployment + ClusterIP Service; the server closes connections at "
    "GZ_MAX_CONNECTION_AGE so calls spread over time",
    "headless": "Deployment + headless Service; clients resolve every pod with dns:///",
    "etcd": "Deployment registering in etcd (GZ_REGISTRY=etcd, POD_IP); clients use etcd:///",
    "endpoints": "Deployment + headless Service + ServiceAccount/Role/RoleBinding to read "
    "EndpointSlices; clients use k8s://",
    "envoy": "Deployment + headless Service, and an Envoy Deployment + Service + ConfigMap that "
    "balances every call",
    "envoy-sidecar": "Deployment + headless Service, and the client's Deployment with an Envoy "
    "sidecar on 127.0.0.1",
    "mesh": "Deployment + Service with appProtocol grpc, Istio sidecar injection and a "
    "DestinationRule (LEAST_REQUEST, outlier detection)",
}

# Options that only some modes use (KubeSpec field -> those modes); every other option applies to
# every mode. gz kube refuses one given for another mode rather than silently ignore it.
MODE_OPTIONS: dict[str, tuple[str, ...]] = {
    "max_connection_age": ("service",),
    "etcd_endpoints": ("etcd",),
    "envoy_image": ("envoy", "envoy-sidecar"),
    "client": ("endpoints", "envoy-sidecar"),
    "client_image": ("envoy-sidecar",),
}


def check_options(mode: str, given: Iterable[str]) -> None:
    """BadInput naming the first of the ``given`` fields that ``mode`` does not use."""
    for name in given:
        modes = MODE_OPTIONS.get(name, (mode,))
        if mode not in modes:
            which = " and ".join(modes) + (" modes" if len(modes) > 1 else " mode")
            option = "--" + name.replace("_", "-")
            raise BadInput(f"{option} applies to the {which} only, not {mode}: leave it out")


@dataclass(frozen=True)
class KubeSpec:
    mode: str
    name: str
    image: str
    port: int = 8080
    namespace: str = "default"
    replicas: int = 3
    shutdown: Shutdown = field(default_factory=Shutdown)
    max_connection_age: float = 30.0
    etcd_endpoints: str = "etcd:2379"
    envoy_image: str = envoy.IMAGE
    client: str = ""  # envoy-sidecar: the Deployment that calls the service
    client_image: str = ""
    metrics_port: int | None = 9090  # GZ_METRICS_PORT: /metrics, /healthz, /readyz over HTTP
    service_account: str = ""  # the service's pods run as it, token mounted (k8s:// inside)

    @property
    def host(self) -> str:
        """The Service's cluster DNS name."""
        return f"{self.name}.{self.namespace}.svc.cluster.local"

    @property
    def client_name(self) -> str:
        return self.client or f"{self.name}-client"


@dataclass(frozen=True)
class Manifest:
    object: Object
    note: str = ""  # comment lines written above the object

    @property
    def kind(self) -> str:
        return str(self.object["kind"])

    @property
    def name(self) -> str:
        return str(self.object["metadata"]["name"])

    @property
    def file_name(self) -> str:
        return f"{self.kind.lower()}-{self.name}.yaml"


def client_target(spec: KubeSpec) -> str:
    """What a gz client in the cluster should dial for this mode."""
    return {
        "service": f"dns:///{spec.host}:{spec.port}",
        "headless": f"dns:///{spec.host}:{spec.port}",
        "etcd": f"etcd:///{spec.name}",
        "endpoints": f"k8s://{spec.namespace}/{spec.name}:grpc",
        "envoy": f"dns:///{spec.name}-envoy.{spec.namespace}.svc.cluster.local:{spec.port}",
        "envoy-sidecar": f"direct:///127.0.0.1:{_sidecar_port(spec)}",
        "mesh": f"dns:///{spec.host}:{spec.port}",
    }[spec.mode]


def _check_ports_and_images(spec: KubeSpec) -> None:
    if spec.metrics_port == spec.port:
        raise BadInput(f"--metrics-port {spec.metrics_port} is also --port; pick another one")
    for label, value in (("--image", spec.image), ("--envoy-image", spec.envoy_image)):
        if not value.strip() or any(ch.isspace() for ch in value):
            raise BadInput(f"{label} {value!r} is not an image reference, e.g. greeter:0.1.0")


def build(spec: KubeSpec) -> list[Manifest]:
    _check_ports_and_images(spec)
    for name in (spec.name, f"{spec.name}-envoy", spec.client_name):
        kube_name(name)  # derived names must be valid too
    namespace_name(spec.namespace)
    if spec.service_account:
        service_account_name(spec.service_account)
    manifests = _MODES[spec.mode](spec)
    header = f"gz kube {spec.mode}: {MODES[spec.mode]}.\nClients target {client_target(spec)}"
    if spec.mode in PROXIED:
        header += "\nwith GZ_HEALTH_CHECK=false: the proxy checks each replica's health itself"
    if spec.service_account and spec.mode != "endpoints":  # endpoints mode writes it
        header += (
            f"\n{spec.name} runs as the ServiceAccount {spec.service_account}, which must exist; "
            "for k8s:// targets it\nneeds list and watch on endpointslices (gz kube endpoints "
            f"--client {spec.service_account} writes both)"
        )
    first = manifests[0]
    notes = "\n".join(filter(None, [header, first.note]))
    return [Manifest(first.object, notes), *manifests[1:]]


# -- the server's Deployment, the same in every mode ------------------------------------------
def app_container(spec: KubeSpec, name: str, image: str, env: list[Object]) -> Object:
    shutdown = spec.shutdown
    ports, metrics = [grpc_port(spec.port)], []
    if spec.metrics_port:
        ports.append({"name": "metrics", "containerPort": spec.metrics_port, "protocol": "TCP"})
        metrics = [env_value("GZ_METRICS_PORT", str(spec.metrics_port))]
    return {
        "name": name,
        "image": image,
        "ports": ports,
        "env": [
            env_value("GZ_NAME", name),
            env_value("GZ_LISTEN", f"0.0.0.0:{spec.port}"),
            *downward_env(),
            env_value("GZ_SHUTDOWN_DRAIN", format_duration(shutdown.drain)),
            env_value("GZ_SHUTDOWN_GRACE", format_duration(shutdown.grace)),
            env_value("GZ_LOG_FORMAT", "json"),
            *metrics,
            *env,
        ],
        **grpc_probes(spec.port, shutdown),
        "lifecycle": prestop_sleep(shutdown),
        "resources": RESOURCES,
        "securityContext": CONTAINER_SECURITY,
    }


def scaled(
    name: str, spec: KubeSpec, pod: PodSpec, replicas: int | None = None, note: str = ""
) -> list[Manifest]:
    """A Deployment with its HorizontalPodAutoscaler and PodDisruptionBudget."""
    count = spec.replicas if replicas is None else replicas
    return [
        Manifest(deployment(name, spec.namespace, count, pod), note),
        Manifest(autoscaler(name, spec.namespace, count)),
        Manifest(disruption_budget(name, spec.namespace)),
    ]


def app_pod(spec: KubeSpec, containers: list[Object], **pod: Any) -> PodSpec:
    """The pod of a gz process; Prometheus finds its GZ_METRICS_PORT by the usual annotations."""
    annotations = dict(pod.pop("annotations", {}))
    if spec.metrics_port:
        annotations = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(spec.metrics_port),
            "prometheus.io/path": "/metrics",
            **annotations,
        }
    return PodSpec(containers, spec.shutdown, annotations=annotations, **pod)


def app(spec: KubeSpec, env: Sequence[Object] = (), note: str = "", **pod: Any) -> list[Manifest]:
    """The service's own Deployment: the only one that runs as --service-account."""
    container = app_container(spec, spec.name, spec.image, list(env))
    pod_spec = app_pod(spec, [container], service_account=spec.service_account, **pod)
    return scaled(spec.name, spec, pod_spec, note=note)


def _service(spec: KubeSpec, *, headless: bool, note: str = "") -> Manifest:
    return Manifest(
        service(spec.name, spec.namespace, spec.name, spec.port, headless=headless), note
    )


# -- the seven modes ---------------------------------------------------------------------------
def _service_mode(spec: KubeSpec) -> list[Manifest]:
    age = format_duration(spec.max_connection_age)
    env = [
        env_value("GZ_MAX_CONNECTION_AGE", age),
        env_value("GZ_MAX_CONNECTION_AGE_GRACE", format_duration(spec.shutdown.grace)),
    ]
    note = (
        "A ClusterIP Service balances connections, not calls (L4): one HTTP/2 connection carries\n"
        "every call of a client to one pod. GZ_MAX_CONNECTION_AGE makes the server close each\n"
        f"connection gracefully after {age}, so clients reconnect and spread over the pods within\n"
        "that time. New pods get calls only after clients reconnect: pick headless, endpoints or\n"
        "envoy for per-call balancing."
    )
    return [*app(spec, env, note), _service(spec, headless=False)]


def _headless_mode(spec: KubeSpec) -> list[Manifest]:
    note = "clusterIP: None: DNS answers with every ready pod; gz clients re-resolve every 10s."
    return [*app(spec), _service(spec, headless=True, note=note)]


def _etcd_mode(spec: KubeSpec) -> list[Manifest]:
    secret = f"{spec.name}-etcd"
    env = [
        env_value("GZ_REGISTRY", "etcd"),
        env_value("GZ_ETCD_ENDPOINTS", spec.etcd_endpoints),
        env_value("GZ_ETCD_KEY", spec.name),
        env_secret("GZ_ETCD_USERNAME", secret, "username"),
        env_secret("GZ_ETCD_PASSWORD", secret, "password"),
    ]
    note = (
        f"Each pod registers POD_IP:{spec.port} under {spec.name}/<lease> in etcd at\n"
        f"{spec.etcd_endpoints} and revokes the lease on SIGTERM. For etcd users, create the\n"
        f"Secret {secret} with keys username and password (optional)."
    )
    return app(spec, env, note)


def _endpoints_mode(spec: KubeSpec) -> list[Manifest]:
    client = spec.client_name
    # the service's own account (if it calls others through k8s://) may read them here too
    accounts = list(dict.fromkeys(filter(None, (client, spec.service_account))))
    rbac = endpointslice_reader(accounts, spec.namespace, spec.name)
    note = (
        f"Pods that call {spec.name} through k8s:// run as the ServiceAccount {client}\n"
        "(serviceAccountName), which may list and watch EndpointSlices in this namespace."
    )
    if spec.service_account and spec.service_account != client:
        note += f"\nSo may {spec.service_account}, the account {spec.name} itself runs as."
    return [
        *app(spec),
        _service(spec, headless=True),
        Manifest(rbac[0], note),
        *(Manifest(obj) for obj in rbac[1:]),
    ]


def _envoy_config_map(spec: KubeSpec, name: str, listen_host: str, port: int) -> Manifest:
    config = envoy.EnvoyConfig(
        cluster=spec.name,
        listen_host=listen_host,
        listen_port=port,
        upstreams=((spec.host, spec.port),),
    )
    obj = config_map(name, spec.namespace, spec.name, {"envoy.yaml": config.render()})
    return Manifest(obj, f"The Envoy bootstrap; STRICT_DNS to the headless Service {spec.host}.")


def _envoy_volume(config_map_name: str) -> tuple[Object, Object]:
    volume = {"name": "envoy-config", "configMap": {"name": config_map_name}}
    mount = {"name": "envoy-config", "mountPath": "/etc/envoy", "readOnly": True}
    return volume, mount


def _envoy_container(spec: KubeSpec, mount: Object) -> Object:
    return {
        "name": "envoy",
        "image": spec.envoy_image,
        "args": ["--config-path", "/etc/envoy/envoy.yaml", "--log-level", "warn"],
        "volumeMounts": [mount],
        "resources": RESOURCES,
        "securityContext": CONTAINER_SECURITY,
    }


def _envoy_mode(spec: KubeSpec) -> list[Manifest]:
    proxy = f"{spec.name}-envoy"
    volume, mount = _envoy_volume(proxy)
    # Envoy exits at once on SIGTERM, so preStop first fails its health check: /healthz answers
    # 503 (the pod leaves the Service) and open HTTP/2 connections get GOAWAY, then it waits.
    wait = math.ceil(spec.shutdown.prestop + spec.shutdown.drain)
    request = (
        "POST /healthcheck/fail HTTP/1.1\\r\\nHost: localhost\\r\\nContent-Length: 0\\r\\n\\r\\n"
    )
    fail = (
        f"exec 3<>/dev/tcp/127.0.0.1/{envoy.ADMIN_PORT} && printf '{request}' >&3 "
        f"&& read -r status <&3; sleep {wait}"  # bash only: the image needs no curl
    )
    probe = {
        "httpGet": {"path": "/healthz", "port": "grpc"},
        "periodSeconds": 5,
        "timeoutSeconds": 2,
    }
    container = {
        **_envoy_container(spec, mount),
        "ports": [grpc_port(spec.port)],
        "readinessProbe": {**probe, "failureThreshold": 1},
        "livenessProbe": {**probe, "failureThreshold": 3, "periodSeconds": 10},
        "lifecycle": {"preStop": {"exec": {"command": ["/bin/bash", "-c", fail]}}},
    }
    pod = PodSpec(
        [container],
        Shutdown(prestop=wait, drain=0, grace=0),
        volumes=[volume],
        run_as_user=ENVOY_USER,
    )
    note = f"Envoy: clients connect here; every call is balanced over the pods of {spec.name}."
    return [
        *app(spec),
        _service(spec, headless=True),
        _envoy_config_map(spec, proxy, "0.0.0.0", spec.port),
        *scaled(proxy, spec, pod, replicas=2, note=note),
        Manifest(service(proxy, spec.namespace, proxy, spec.port, headless=False)),
    ]


def _sidecar_port(spec: KubeSpec) -> int:
    return SIDECAR_PORT if spec.port != SIDECAR_PORT else SIDECAR_PORT + 1


def _envoy_sidecar_mode(spec: KubeSpec) -> list[Manifest]:
    client = spec.client_name
    config_name = f"{client}-envoy"
    volume, mount = _envoy_volume(config_name)
    # a native sidecar (an init container that keeps running) starts before the app and stops
    # after it, so the app never calls a proxy that is not there
    sidecar = {**_envoy_container(spec, mount), "restartPolicy": "Always"}
    variable = target_variable(spec.name)
    target = client_target(spec)
    container = app_container(
        spec,
        client,
        spec.client_image or spec.image,
        # Envoy checks the replicas' health; a watch through it would see one replica only
        [env_value(variable, target), env_value("GZ_HEALTH_CHECK", "false")],
    )
    pod = app_pod(spec, [container], init_containers=[sidecar], volumes=[volume])
    note = (
        f"{client} calls {spec.name} through the Envoy beside it: {variable}={target}, so\n"
        f"gz.connect({spec.name!r}) goes to the sidecar. {client} is assumed to be a gz\n"
        f"service itself (gRPC probes on {spec.port}); drop the probes if it serves nothing."
    )
    return [
        *app(spec),
        _service(spec, headless=True),
        _envoy_config_map(spec, config_name, "127.0.0.1", _sidecar_port(spec)),
        *scaled(client, spec, pod, note=note),
    ]


def _mesh_mode(spec: KubeSpec) -> list[Manifest]:
    total = math.ceil(spec.shutdown.prestop + spec.shutdown.after_sigterm)
    # the proxy gets SIGTERM with the app; it must outlive the preStop sleep and the drain
    proxy_config = {
        "holdApplicationUntilProxyStarts": True,
        "terminationDrainDuration": f"{total}s",
    }
    rule = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": metadata(spec.name, spec.namespace, spec.name),
        "spec": {
            "host": spec.host,
            "trafficPolicy": {
                "loadBalancer": {"simple": "LEAST_REQUEST"},
                "outlierDetection": {
                    "consecutive5xxErrors": 5,
                    "interval": "10s",
                    "baseEjectionTime": "30s",
                    "maxEjectionPercent": 50,
                },
            },
        },
    }
    mesh_service = service(
        spec.name, spec.namespace, spec.name, spec.port, headless=False, app_protocol="grpc"
    )
    return [
        *app(
            spec,
            labels={"sidecar.istio.io/inject": "true"},
            annotations={"proxy.istio.io/config": json.dumps(proxy_config)},
        ),
        Manifest(mesh_service, "appProtocol grpc: the sidecars balance every call (L7)."),
        Manifest(rule, "Per-call LEAST_REQUEST; a pod failing 5 calls in a row rests 30s."),
    ]


_MODES: dict[str, Callable[[KubeSpec], list[Manifest]]] = {
    "service": _service_mode,
    "headless": _headless_mode,
    "etcd": _etcd_mode,
    "endpoints": _endpoints_mode,
    "envoy": _envoy_mode,
    "envoy-sidecar": _envoy_sidecar_mode,
    "mesh": _mesh_mode,
}


# -- output ------------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the Envoy config) as literal blocks; no anchors for shared parts."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _string(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _string)


def to_yaml(manifest: Manifest) -> str:
    comment = "".join(f"# {line}\n".replace("# \n", "#\n") for line in manifest.note.splitlines())
    body = yaml.dump(manifest.object, Dumper=_Dumper, sort_keys=False, width=100)
    return comment + body


def to_documents(manifests: list[Manifest]) -> str:
    return "---\n".join(to_yaml(manifest) for manifest in manifests)


def write(manifests: list[Manifest], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for manifest in manifests:
        path = directory / manifest.file_name
        path.write_text(to_yaml(manifest), encoding="utf-8")
        paths.append(path)
    return paths
