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
from gz.netaddr import parse_host_port

from . import envoy
from .errors import BadInput
from .files import write_file
from .kube_objects import (
    CONTAINER_SECURITY,
    RESOURCES,
    Identity,
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
    image_version,
    metadata,
    prestop_sleep,
    resources,
    service,
    worker_container_ports,
    worker_ports,
)
from .names import kube_name, namespace_name, secret_name, service_account_name

ENVOY_USER = 101  # the `envoy` user of the envoyproxy/envoy images
PROXIED = {"envoy", "envoy-sidecar", "mesh"}  # a gz client reaches the replicas through a proxy
SIDECAR_PORT = 9000  # where the sidecar Envoy listens on 127.0.0.1 for its app
# the ports an Istio sidecar takes in every pod of the mesh mode (istio.io "Ports used by Istio")
ISTIO_PORTS = (15000, 15001, 15004, 15006, 15008, 15020, 15021, 15090)
# gz kube names objects after the service: the Service NAME-envoy and the client NAME-client
# (a Deployment, its pods' label). Both are limited to 63 characters, so NAME is to this.
DERIVED_SUFFIXES = ("-envoy", "-client")
NAME_LIMIT = 63 - max(map(len, DERIVED_SUFFIXES))

MODES: dict[str, str] = {
    "service": "Deployment + ClusterIP Service; the server closes connections at "
    "GZ_MAX_CONNECTION_AGE so calls spread over time",
    "headless": "Deployment + headless Service; clients resolve every pod with dns:///",
    "etcd": "Deployment registering in etcd (GZ_REGISTRY=etcd, POD_IP); clients use etcd:///",
    "endpoints": "Deployment + headless Service + ServiceAccount/Role/RoleBinding to read "
    "EndpointSlices (and the client's Deployment with --client-image); clients use k8s://",
    "envoy": "Deployment + headless Service, and an Envoy Deployment + Service + ConfigMap that "
    "balances every call",
    "envoy-sidecar": "Deployment + headless Service, and the client's Deployment with an Envoy "
    "sidecar on 127.0.0.1",
    "mesh": "Deployment + Service with appProtocol grpc, Istio sidecar injection, a "
    "DestinationRule (LEAST_REQUEST, outlier detection), STRICT mTLS and an AuthorizationPolicy "
    "for the client",
}

# Options that only some modes use (KubeSpec field -> those modes); every other option applies to
# every mode. gz kube refuses one given for another mode rather than silently ignore it.
MODE_OPTIONS: dict[str, tuple[str, ...]] = {
    "max_connection_age": ("service",),
    "etcd_endpoints": ("etcd",),
    "etcd_secret": ("etcd",),
    "etcd_tls_secret": ("etcd",),
    "envoy_image": ("envoy", "envoy-sidecar"),
    "client": ("endpoints", "envoy-sidecar", "mesh"),
    "client_image": ("endpoints", "envoy-sidecar"),
}


def check_options(mode: str, given: Iterable[str]) -> None:
    """BadInput naming the first of the ``given`` fields that ``mode`` does not use."""
    for name in given:
        modes = MODE_OPTIONS.get(name, (mode,))
        if mode not in modes:
            listed = " and ".join(filter(None, [", ".join(modes[:-1]), modes[-1]]))
            which = listed + (" modes" if len(modes) > 1 else " mode")
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
    etcd_secret: str = ""  # keys username, password; "" for the optional Secret NAME-etcd
    etcd_tls_secret: str = ""  # a kubernetes.io/tls Secret with ca.crt, tls.crt and tls.key
    envoy_image: str = envoy.IMAGE
    client: str = ""  # the Deployment (and ServiceAccount) that calls the service
    client_image: str = ""  # envoy-sidecar: default --image; endpoints: "" writes no client
    metrics_port: int | None = 9090  # GZ_METRICS_PORT: /metrics, /healthz, /readyz over HTTP
    service_account: str = ""  # the service's pods run as it, token mounted (k8s:// inside)
    workers: int = 1  # GZ_WORKERS processes per pod of the service, each on a port of its own

    @property
    def host(self) -> str:
        """The Service's cluster DNS name."""
        return f"{self.name}.{self.namespace}.svc.cluster.local"

    @property
    def client_name(self) -> str:
        return self.client or f"{self.name}-client"

    @property
    def server(self) -> Identity:
        return Identity(self.name, self.name, "server", self.name, image_version(self.image))

    @property
    def client_identity(self) -> Identity:
        image = self.client_image or self.image
        name = self.client_name
        return Identity(name, name, "client", self.name, image_version(image))

    def proxy(self, instance: str) -> Identity:
        """An Envoy of this service's: labelled as envoy, not as the service."""
        return Identity("envoy", instance, "proxy", self.name, image_version(self.envoy_image))


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


def _pod_ports(spec: KubeSpec) -> list[list[tuple[int, str, str | None]]]:
    """The ports each kind of pod listens on: (port, what it is, the option that sets it)."""
    client: list[tuple[int, str, str | None]] = [(spec.port, "--port", "--port")]
    if spec.metrics_port:
        client.append((spec.metrics_port, "--metrics-port", "--metrics-port"))
    # the service's workers listen beside --port: moved with it
    workers = [(n, f"the worker port {name}", "--port") for name, n in _worker_ports(spec)]
    app = [client[0], *workers, *client[1:]]
    admin = (envoy.ADMIN_PORT, "Envoy's admin port", None)
    if spec.mode == "envoy":  # the Envoy pods listen on --port too
        return [app, [(spec.port, "--port", "--port"), admin]]
    if spec.mode == "envoy-sidecar":
        listener = (_sidecar_port(spec), "the sidecar Envoy's listener", None)
        return [app, [*client, listener, admin]]
    if spec.mode == "mesh":
        return [[*app, *((port, "a port of the Istio sidecar", None) for port in ISTIO_PORTS)]]
    return [app]


def _worker_ports(spec: KubeSpec) -> list[tuple[str, int]]:
    return worker_ports(spec.port, spec.workers)


def _check_workers(spec: KubeSpec) -> None:
    if spec.workers < 1:
        raise BadInput(
            f"--workers {spec.workers}: a pod runs at least 1 worker process "
            "(1, the default, runs the service as one process)"
        )
    last = spec.port + spec.workers
    if spec.workers > 1 and last > 65535:
        raise BadInput(
            f"--workers {spec.workers} with --port {spec.port}: the worker ports would run to "
            f"{last}, past 65535; pick a lower --port or fewer workers"
        )


def _check_ports_and_images(spec: KubeSpec) -> None:
    for ports in _pod_ports(spec):  # two listeners on one port in a pod: one fails to bind
        for index, (port, what, option) in enumerate(ports):
            for other, other_what, other_option in ports[index + 1 :]:
                if port == other:
                    change = other_option or option
                    raise BadInput(
                        f"{what} {port} is also {other_what} in the {spec.mode} mode; "
                        f"pick another {change}"
                    )
    for label, value in (("--image", spec.image), ("--envoy-image", spec.envoy_image)):
        if not value.strip() or any(ch.isspace() for ch in value):
            raise BadInput(f"{label} {value!r} is not an image reference, e.g. greeter:0.1.0")
    if spec.mode == "etcd":
        for endpoint in spec.etcd_endpoints.split(","):
            try:
                parse_host_port(endpoint.strip())
            except ValueError as error:  # the pods would fail at start-up instead
                raise BadInput(f"--etcd-endpoints: {error}") from None


def check_name(name: str) -> str:
    """A service name for every mode: a Kubernetes name that leaves room for the names gz kube
    derives from it; BadInput saying what is wrong."""
    if len(name) > NAME_LIMIT:
        suffixes = " and ".join(DERIVED_SUFFIXES)
        raise BadInput(
            f"{name!r} is longer than {NAME_LIMIT} characters, the most that leaves room for "
            f"the {suffixes} gz kube appends (Kubernetes names hold 63); pick a shorter name"
        )
    return kube_name(name)


# how the proxy in front of the replicas learns that one is unhealthy
_PROXY_HEALTH = {
    "envoy": "Envoy checks each replica's health itself (grpc.health.v1)",
    "envoy-sidecar": "Envoy checks each replica's health itself (grpc.health.v1)",
    "mesh": "Istio does not check replicas actively: a replica leaves once\nits readiness "
    "probe fails (EndpointSlices, xDS), and outlier detection ejects one whose calls fail",
}


def build(spec: KubeSpec) -> list[Manifest]:
    _check_workers(spec)
    _check_ports_and_images(spec)
    check_name(spec.name)
    kube_name(spec.client_name)
    namespace_name(spec.namespace)
    if spec.service_account:
        service_account_name(spec.service_account)
    secrets = {"--etcd-secret": spec.etcd_secret, "--etcd-tls-secret": spec.etcd_tls_secret}
    for option, secret in secrets.items():
        if secret:
            secret_name(option, secret)
    manifests = _MODES[spec.mode](spec)
    header = f"gz kube {spec.mode}: {MODES[spec.mode]}.\nClients target {client_target(spec)}"
    if spec.mode in PROXIED:
        header += f"\nwith GZ_HEALTH_CHECK=false: {_PROXY_HEALTH[spec.mode]}"
    if spec.service_account and spec.mode != "endpoints":  # endpoints mode writes it
        header += (
            f"\n{spec.name} runs as the ServiceAccount {spec.service_account}, which must exist; "
            "for k8s:// targets it\nneeds list and watch on endpointslices (gz kube endpoints "
            f"--client {spec.service_account} writes both)"
        )
    if spec.workers > 1:
        header += f"\n{_workers_note(spec)}"
    if advice(spec):
        header += f"\n{advice(spec)}"
    first = manifests[0]
    notes = "\n".join(filter(None, [header, first.note]))
    return [Manifest(first.object, notes), *manifests[1:]]


def _workers_note(spec: KubeSpec) -> str:
    """How the calls reach the workers of a pod, by mode."""
    ports = ", ".join(f"{name} {number}" for name, number in _worker_ports(spec))
    reach = {
        "etcd": "all are registered in etcd, so etcd:/// clients spread calls over them",
        "endpoints": "the Service lists them, so k8s:// clients make every worker an endpoint",
    }.get(spec.mode, f"clients reach the shared port {spec.port}; the kernel spreads their "
          "connections over the workers")  # fmt: skip
    memory = {kind: amounts["memory"] for kind, amounts in resources(spec.workers).items()}
    return (
        f"GZ_WORKERS=auto: {spec.workers} processes per pod, one per core of its CPU limit "
        f"(memory: requests {memory['requests']}, limits {memory['limits']}).\n"
        f"Each also listens on its own port ({ports}): {reach}."
    )


# -- the server's Deployment, the same in every mode ------------------------------------------
def app_container(
    spec: KubeSpec,
    name: str,
    image: str,
    env: list[Object],
    mounts: Sequence[Object] = (),
    workers: int = 1,
) -> Object:
    """A gz process's container; ``workers`` > 1 runs that many (GZ_WORKERS), each on a port
    of its own beside --port, with a core each."""
    shutdown = spec.shutdown
    ports, metrics = [grpc_port(spec.port), *worker_container_ports(spec.port, workers)], []
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
            # auto: as many as the CPU limit below allows
            *([env_value("GZ_WORKERS", "auto")] if workers > 1 else []),
            *downward_env(),
            env_value("GZ_SHUTDOWN_DRAIN", format_duration(shutdown.drain)),
            env_value("GZ_SHUTDOWN_GRACE", format_duration(shutdown.grace)),
            env_value("GZ_LOG_FORMAT", "json"),
            *metrics,
            *env,
        ],
        **grpc_probes(spec.port, shutdown),
        "lifecycle": prestop_sleep(shutdown),
        "resources": resources(workers),
        "securityContext": CONTAINER_SECURITY,
        **({"volumeMounts": list(mounts)} if mounts else {}),
    }


def scaled(
    app: Identity, spec: KubeSpec, pod: PodSpec, replicas: int | None = None, note: str = ""
) -> list[Manifest]:
    """A Deployment with its HorizontalPodAutoscaler, which owns the replica count (from
    ``replicas``, default --replicas, up), and its PodDisruptionBudget."""
    name, count = app.instance, spec.replicas if replicas is None else replicas
    return [
        Manifest(deployment(name, spec.namespace, app, pod), note),
        Manifest(autoscaler(name, spec.namespace, app, count)),
        Manifest(disruption_budget(name, spec.namespace, app)),
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


def app(
    spec: KubeSpec,
    env: Sequence[Object] = (),
    note: str = "",
    mounts: Sequence[Object] = (),
    **pod: Any,
) -> list[Manifest]:
    """The service's own Deployment: the only one that runs as --service-account."""
    container = app_container(spec, spec.name, spec.image, list(env), mounts, spec.workers)
    pod_spec = app_pod(spec, [container], service_account=spec.service_account, **pod)
    return scaled(spec.server, spec, pod_spec, note=note)


def _service(spec: KubeSpec, *, headless: bool, note: str = "", workers: int = 1) -> Manifest:
    """``workers``: list the worker ports too (for k8s:// clients only: the others reach the
    shared port)."""
    obj = service(
        spec.name, spec.namespace, spec.server, spec.port, headless=headless, workers=workers
    )
    return Manifest(obj, note)


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


ETCD_TLS_DIR = "/etc/gz/etcd-tls"  # where --etcd-tls-secret is mounted


def _etcd_mode(spec: KubeSpec) -> list[Manifest]:
    # --etcd-secret is required once named (a pod without it fails to start, naming it); the
    # default Secret is optional, for etcd clusters without users
    secret, optional = spec.etcd_secret or f"{spec.name}-etcd", not spec.etcd_secret
    env = [
        env_value("GZ_REGISTRY", "etcd"),
        env_value("GZ_ETCD_ENDPOINTS", spec.etcd_endpoints),
        env_value("GZ_ETCD_KEY", spec.name),
        env_secret("GZ_ETCD_USERNAME", secret, "username", optional=optional),
        env_secret("GZ_ETCD_PASSWORD", secret, "password", optional=optional),
    ]
    users = f"etcd users come from the Secret {secret} (keys username and password)"
    users += ", if it exists." if optional else "."
    registers = (
        f"Each pod registers POD_IP:{spec.port}"
        if spec.workers == 1
        else f"Each worker registers POD_IP:<its port, {spec.port + 1} and up>"
    )
    note = (
        f"{registers} under {spec.name}/<lease> in etcd at\n"
        f"{spec.etcd_endpoints} and revokes the lease on SIGTERM. {users}"
    )
    pod: dict[str, Any] = {}
    if spec.etcd_tls_secret:
        # the keys of a kubernetes.io/tls Secret as cert-manager writes it
        files = {"GZ_ETCD_CA": "ca.crt", "GZ_ETCD_CERT": "tls.crt", "GZ_ETCD_KEYFILE": "tls.key"}
        env += [env_value(name, f"{ETCD_TLS_DIR}/{key}") for name, key in files.items()]
        pod["volumes"] = [{"name": "etcd-tls", "secret": {"secretName": spec.etcd_tls_secret}}]
        pod["mounts"] = [{"name": "etcd-tls", "mountPath": ETCD_TLS_DIR, "readOnly": True}]
        note += (
            f"\nTLS: the Secret {spec.etcd_tls_secret} (ca.crt, tls.crt, tls.key) is mounted at "
            f"{ETCD_TLS_DIR}."
        )
    return app(spec, env, note, **pod)


def _endpoints_mode(spec: KubeSpec) -> list[Manifest]:
    client = spec.client_name
    # the service's own account (if it calls others through k8s://) may read them here too
    accounts = list(dict.fromkeys(filter(None, (client, spec.service_account))))
    rbac = endpointslice_reader(accounts, spec.namespace, spec.client_identity)
    note = (
        f"Pods that call {spec.name} through k8s:// run as the ServiceAccount {client}\n"
        "(serviceAccountName), which may list and watch EndpointSlices in this namespace."
    )
    if spec.service_account and spec.service_account != client:
        note += f"\nSo may {spec.service_account}, the account {spec.name} itself runs as."
    return [
        *app(spec),
        _service(spec, headless=True, workers=spec.workers),
        Manifest(rbac[0], note),
        *(Manifest(obj) for obj in rbac[1:]),
        *_endpoints_client(spec),
    ]


def _endpoints_client(spec: KubeSpec) -> list[Manifest]:
    """The client's Deployment, bound to its ServiceAccount, if --client-image names it."""
    if not spec.client_image:
        return []
    variable, target = target_variable(spec.name), client_target(spec)
    container = app_container(
        spec, spec.client_name, spec.client_image, [env_value(variable, target)]
    )
    pod = app_pod(spec, [container], service_account=spec.client_name)
    note = (
        f"{spec.client_name} calls {spec.name} through k8s://: {variable}={target}. It is\n"
        f"assumed to be a gz service itself (gRPC probes on {spec.port}); drop the probes if it "
        "serves nothing."
    )
    return scaled(spec.client_identity, spec, pod, note=note)


def advice(spec: KubeSpec) -> str:
    """What is left to do by hand, said after the manifests are written ("" for nothing)."""
    if spec.mode == "endpoints" and not spec.client_image:
        return (
            f"no client Deployment written (--client-image not given): in your client's pod spec "
            f"set serviceAccountName: {spec.client_name} and automountServiceAccountToken: true"
        )
    return ""


def _envoy_config_map(
    spec: KubeSpec, name: str, instance: str, listen_host: str, port: int
) -> Manifest:
    """The Envoy bootstrap, labelled as the Envoy of ``instance`` (a label value: <= 63)."""
    config = envoy.EnvoyConfig(
        cluster=spec.name,
        listen_host=listen_host,
        listen_port=port,
        upstreams=((spec.host, spec.port),),
    )
    obj = config_map(name, spec.namespace, spec.proxy(instance), {"envoy.yaml": config.render()})
    return Manifest(obj, f"The Envoy bootstrap; STRICT_DNS to the headless Service {spec.host}.")


def _envoy_volume(config_map_name: str) -> tuple[Object, Object]:
    volume = {"name": "envoy-config", "configMap": {"name": config_map_name}}
    mount = {"name": "envoy-config", "mountPath": "/etc/envoy", "readOnly": True}
    return volume, mount


def _envoy_container(spec: KubeSpec, mount: Object) -> Object:
    # on /drain_listeners?graceful Envoy asks every connection to close at once (HTTP/2 GOAWAY)
    # and closes its listeners after --drain-time-s: GZ_SHUTDOWN_DRAIN, as a gz server does
    drain = ["--drain-time-s", str(math.ceil(spec.shutdown.drain)), "--drain-strategy", "immediate"]
    return {
        "name": "envoy",
        "image": spec.envoy_image,
        "args": ["--config-path", "/etc/envoy/envoy.yaml", "--log-level", "warn", *drain],
        "volumeMounts": [mount],
        "resources": RESOURCES,
        "securityContext": CONTAINER_SECURITY,
    }


def _envoy_mode(spec: KubeSpec) -> list[Manifest]:
    proxy = f"{spec.name}-envoy"
    volume, mount = _envoy_volume(proxy)
    # Envoy exits at once on SIGTERM, so preStop runs the shutdown of a gz server: fail the
    # health check (/healthz answers 503: the pod leaves the Service) and wait --prestop, drain
    # the listeners (GOAWAY, no new connections) and wait drain + grace for in-flight calls.
    # terminationGracePeriodSeconds is then prestop + drain + grace + margin, as for the app.
    shutdown = spec.shutdown
    fail = envoy.admin_request("POST", "/healthcheck/fail")
    drain = envoy.admin_request("POST", "/drain_listeners?graceful")
    prestop_script = (
        f"{fail}; sleep {math.ceil(shutdown.prestop)}; "
        f"{drain}; sleep {math.ceil(shutdown.after_sigterm)}"
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
        "lifecycle": {"preStop": {"exec": {"command": ["/bin/bash", "-c", prestop_script]}}},
    }
    pod = PodSpec([container], shutdown, volumes=[volume], run_as_user=ENVOY_USER)
    note = f"Envoy: clients connect here; every call is balanced over the pods of {spec.name}."
    identity = spec.proxy(proxy)
    return [
        *app(spec),
        _service(spec, headless=True),
        _envoy_config_map(spec, proxy, proxy, "0.0.0.0", spec.port),
        *scaled(identity, spec, pod, replicas=2, note=note),
        Manifest(service(proxy, spec.namespace, identity, spec.port, headless=False)),
    ]


def _sidecar_port(spec: KubeSpec) -> int:
    return SIDECAR_PORT if spec.port != SIDECAR_PORT else SIDECAR_PORT + 1


def _envoy_sidecar_mode(spec: KubeSpec) -> list[Manifest]:
    client = spec.client_name
    config_name = f"{client}-envoy"
    volume, mount = _envoy_volume(config_name)
    # a native sidecar (an init container that keeps running, Kubernetes >= 1.29) stops after
    # the app, and with a startup probe the app starts only once Envoy is ready: its admin
    # /ready answers 200 when its listener and cluster are up (bound to 127.0.0.1, hence exec)
    ready = envoy.admin_request("GET", "/ready")
    sidecar = {
        **_envoy_container(spec, mount),
        "restartPolicy": "Always",
        "startupProbe": {
            "exec": {"command": ["/bin/bash", "-c", ready]},
            "periodSeconds": 1,
            "timeoutSeconds": 1,
            "failureThreshold": 60,
        },
    }
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
        _envoy_config_map(spec, config_name, client, "127.0.0.1", _sidecar_port(spec)),
        *scaled(spec.client_identity, spec, pod, note=note),
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
        "metadata": metadata(spec.name, spec.namespace, spec.server),
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
        spec.name, spec.namespace, spec.server, spec.port, headless=False, app_protocol="grpc"
    )
    return [
        *app(
            spec,
            labels={"sidecar.istio.io/inject": "true"},
            annotations={"proxy.istio.io/config": json.dumps(proxy_config)},
        ),
        Manifest(mesh_service, "appProtocol grpc: the sidecars balance every call (L7)."),
        Manifest(rule, "Per-call LEAST_REQUEST; a pod failing 5 calls in a row rests 30s."),
        *_mesh_security(spec),
    ]


def _mesh_security(spec: KubeSpec) -> list[Manifest]:
    """STRICT mTLS to the service's pods, and only the client's ServiceAccount may call them."""
    selector = {"matchLabels": spec.server.selector}
    peers = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": metadata(spec.name, spec.namespace, spec.server),
        "spec": {"selector": selector, "mtls": {"mode": "STRICT"}},
    }
    # the default trust domain; kubelet probes reach the sidecar's agent, not this policy
    principal = f"cluster.local/ns/{spec.namespace}/sa/{spec.client_name}"
    policy = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": metadata(spec.name, spec.namespace, spec.server),
        "spec": {
            "selector": selector,
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": [principal]}}]}],
        },
    }
    note = (
        f"Only pods running as the ServiceAccount {spec.client_name} (--client) may call "
        f"{spec.name}:\nits identity is {principal} (the default trust domain)."
    )
    return [
        Manifest(peers, "STRICT: the pods take mutual TLS from other sidecars only."),
        Manifest(policy, note),
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


def write(manifests: list[Manifest], root: Path, folder: str = "") -> list[Path]:
    """Each manifest to ROOT/FOLDER/its file name, as files.write_file writes."""
    return [write_file(root, Path(folder, m.file_name), to_yaml(m)) for m in manifests]
