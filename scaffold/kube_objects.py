"""Kubernetes objects as plain dicts, each built one way for every mode (apps/v1, v1,
autoscaling/v2, policy/v1, rbac.authorization.k8s.io/v1; checked against the 1.30+ schemas)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gz.discovery.kubernetes.ports import worker_port_name

Object = dict[str, Any]

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
RUN_AS_USER = 10001  # the non-root user of the Dockerfile `gz new` writes
SPREAD_KEYS = ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


@dataclass(frozen=True)
class Identity:
    """The recommended app.kubernetes.io labels of a workload and of every object that belongs
    to it. Selectors use only name and instance: a Deployment's selector is immutable, so it
    must not hold what changes between releases (the version)."""

    name: str  # the application: the gz service's name, or envoy
    instance: str  # this deployment of it: unique in the namespace
    component: str  # server, proxy or client
    part_of: str  # the gz service all of them are there for
    version: str = ""  # the image tag; "" when the image has none

    @property
    def selector(self) -> dict[str, str]:
        return {NAME_LABEL: self.name, INSTANCE_LABEL: self.instance}

    @property
    def labels(self) -> dict[str, str]:
        version = {"app.kubernetes.io/version": self.version} if self.version else {}
        return {
            **self.selector,
            **version,
            "app.kubernetes.io/component": self.component,
            "app.kubernetes.io/part-of": self.part_of,
            "app.kubernetes.io/managed-by": "gz",
        }


def image_version(image: str) -> str:
    """The tag of an image reference as a label value, or "" (no tag, or none that fits)."""
    name, _, tag = image.split("@", 1)[0].rpartition(":")
    if not name or "/" in tag:  # registry:5000/app has a port, not a tag
        return ""
    value = tag[:63].strip("-_.")  # a tag may be longer and end with them; a label may not
    return value if _LABEL_VALUE.fullmatch(value) else ""


@dataclass(frozen=True)
class Shutdown:
    """The shutdown timeline of a pod; terminationGracePeriodSeconds covers all of it.

    kubelet runs the preStop sleep (endpoints controllers, kube-proxy and DNS caches catch up
    while the pod still serves), then sends SIGTERM: the gz server says NOT_SERVING and
    deregisters, keeps serving for ``drain``, then lets in-flight calls run for ``grace``.
    """

    prestop: float = 5.0
    drain: float = 5.0
    grace: float = 10.0
    margin: float = 5.0  # for the process to exit after server.stop(grace)

    @property
    def termination_grace_period(self) -> int:
        return math.ceil(self.prestop + self.drain + self.grace + self.margin)

    @property
    def after_sigterm(self) -> float:
        return self.drain + self.grace


def metadata(name: str, namespace: str, app: Identity) -> Object:
    return {"name": name, "namespace": namespace, "labels": app.labels}


def env_value(name: str, value: str) -> Object:
    return {"name": name, "value": value}


def env_field(name: str, path: str) -> Object:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def env_secret(name: str, secret: str, key: str, *, optional: bool) -> Object:
    """From a Secret's key; optional: if it does not exist the variable is unset, otherwise the
    pod does not start (CreateContainerConfigError naming the Secret)."""
    return {
        "name": name,
        "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}},
    }


def downward_env() -> list[Object]:
    """POD_IP is the address a gz server advertises; POD_NAMESPACE is k8s:///'s namespace.
    GZ_ZONE is the pod's zone label, which Kubernetes copies from its node where the
    PodTopologyLabelsAdmission feature is on (alpha in 1.33, beta in 1.35); elsewhere the
    label is missing, the variable empty, and gz prefers no zone (docs/deploy.md)."""
    return [
        env_field("POD_IP", "status.podIP"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("GZ_ZONE", "metadata.labels['topology.kubernetes.io/zone']"),
    ]


def grpc_probes(port: int, shutdown: Shutdown) -> Object:
    """Native gRPC probes (grpc.health.v1, Kubernetes >= 1.27 GA).

    Readiness fails as soon as the server drains (NOT_SERVING), which takes the pod out of the
    EndpointSlices. Liveness fails then too, so its window (period x failures) is longer than
    drain + grace: a draining pod is never restarted half way through its calls.
    """
    liveness_period = 10
    failures = math.floor(shutdown.after_sigterm / liveness_period) + 2
    return {
        "startupProbe": {"grpc": {"port": port}, "periodSeconds": 1, "failureThreshold": 60},
        "readinessProbe": {
            "grpc": {"port": port},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 1,
        },
        "livenessProbe": {
            "grpc": {"port": port},
            "periodSeconds": liveness_period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        },
    }


def prestop_sleep(shutdown: Shutdown) -> Object:
    """The native sleep action (Kubernetes >= 1.30): no `sleep` binary needed in the image."""
    return {"preStop": {"sleep": {"seconds": math.ceil(shutdown.prestop)}}}


RESOURCES: Object = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"cpu": "1", "memory": "256Mi"},
}
# what each worker process after the first adds to RESOURCES' memory, in Mi
WORKER_MEMORY_REQUEST, WORKER_MEMORY_LIMIT = 64, 128


def resources(workers: int = 1) -> Object:
    """RESOURCES for one process. For several, a whole core each, requested as much as
    limited: GZ_WORKERS=auto counts the cgroup's CPU limit, and a worker is one process on one
    core, so fewer requested cores would leave workers fighting over them."""
    if workers == 1:
        return RESOURCES
    extra, cpu = workers - 1, str(workers)
    request = _mebibytes(RESOURCES["requests"]["memory"]) + WORKER_MEMORY_REQUEST * extra
    limit = _mebibytes(RESOURCES["limits"]["memory"]) + WORKER_MEMORY_LIMIT * extra
    return {
        "requests": {"cpu": cpu, "memory": f"{request}Mi"},
        "limits": {"cpu": cpu, "memory": f"{limit}Mi"},
    }


def _mebibytes(quantity: str) -> int:
    return int(quantity.removesuffix("Mi"))


CONTAINER_SECURITY: Object = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def grpc_port(port: int) -> Object:
    return {"name": "grpc", "containerPort": port, "protocol": "TCP"}


def worker_ports(port: int, workers: int) -> list[tuple[str, int]]:
    """(name, number) of each worker's own port when there are several: grpc-wI on
    port + 1 + I, where GZ_WORKER_PORT's default puts worker I. One is no worker port at all."""
    if workers == 1:
        return []
    return [(worker_port_name("grpc", i), port + 1 + i) for i in range(workers)]


def worker_container_ports(port: int, workers: int) -> list[Object]:
    return [
        {"name": name, "containerPort": number, "protocol": "TCP"}
        for name, number in worker_ports(port, workers)
    ]


@dataclass
class PodSpec:
    """What varies between the Deployments gz writes; the rest is the same everywhere."""

    containers: list[Object]
    shutdown: Shutdown
    init_containers: list[Object] = field(default_factory=list)
    volumes: list[Object] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    run_as_user: int = RUN_AS_USER
    service_account: str = ""
    """Run as this ServiceAccount with its token mounted; "" for the namespace's default one,
    without a token."""


def topology_spread(selector: dict[str, str]) -> list[Object]:
    """One replica more per zone, then per node, at most; ScheduleAnyway makes it a preference,
    so clusters with fewer zones or nodes than replicas (or no zone labels) schedule every pod.
    pod-template-hash: a rollout spreads the new ReplicaSet's pods, not old and new together."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector},
            "matchLabelKeys": ["pod-template-hash"],
        }
        for key in SPREAD_KEYS
    ]


def deployment(name: str, namespace: str, app: Identity, pod: PodSpec) -> Object:
    """No spec.replicas: its HorizontalPodAutoscaler sets them, and every `kubectl apply` of a
    replicas field would reset the autoscaler's choice."""
    spec: Object = {
        "terminationGracePeriodSeconds": pod.shutdown.termination_grace_period,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": pod.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": pod.containers,
        "topologySpreadConstraints": topology_spread(app.selector),
    }
    if pod.init_containers:
        spec["initContainers"] = pod.init_containers
    if pod.volumes:
        spec["volumes"] = pod.volumes
    if pod.service_account:
        # the app reads EndpointSlices itself (k8s:// targets): in-cluster config needs the token
        spec["serviceAccountName"] = pod.service_account
        spec["automountServiceAccountToken"] = True
    else:
        spec["automountServiceAccountToken"] = False  # nothing in the pod talks to the API server
    template_metadata: Object = {"labels": {**app.labels, **pod.labels}}
    if pod.annotations:
        template_metadata["annotations"] = pod.annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(name, namespace, app),
        "spec": {
            "selector": {"matchLabels": app.selector},
            # a new pod is ready before an old one goes: capacity never drops in a rollout
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "template": {"metadata": template_metadata, "spec": spec},
        },
    }


def service(
    name: str,
    namespace: str,
    app: Identity,
    port: int,
    *,
    headless: bool,
    app_protocol: str = "kubernetes.io/h2c",
    workers: int = 1,
) -> Object:
    """``workers``: list each worker's port too, so its EndpointSlices carry them and
    k8s:///name:grpc clients make every worker an endpoint."""
    # named "grpc": k8s:///name:grpc finds it, and so does a bare name with GZ_DISCOVERY=k8s
    named = [("grpc", port), *worker_ports(port, workers)]
    spec: Object = {
        "selector": app.selector,
        "ports": [
            {
                "name": name,
                "port": number,
                "targetPort": name,
                "protocol": "TCP",
                "appProtocol": app_protocol,
            }
            for name, number in named
        ],
    }
    if headless:
        spec = {"clusterIP": "None", **spec}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, namespace, app),
        "spec": spec,
    }


def autoscaler(name: str, namespace: str, app: Identity, replicas: int) -> Object:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(name, namespace, app),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": replicas,
            "maxReplicas": max(replicas * 3, replicas + 1),
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
        },
    }


def disruption_budget(name: str, namespace: str, app: Identity) -> Object:
    """Node drains evict one pod at a time, so drains never take several replicas at once."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(name, namespace, app),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": app.selector}},
    }


def config_map(name: str, namespace: str, app: Identity, data: dict[str, str]) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(name, namespace, app),
        "data": data,
    }


def endpointslice_reader(accounts: Sequence[str], namespace: str, app: Identity) -> list[Object]:
    """A ServiceAccount for each of ``accounts``, a Role and a RoleBinding to all of them: what
    a k8s:/// client needs (list, watch). The first account names the Role."""
    role = f"{accounts[0]}-endpointslice-reader"
    return [
        *(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": metadata(account, namespace, app),
            }
            for account in accounts
        ),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata(role, namespace, app),
            "rules": [
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(role, namespace, app),
            "subjects": [
                {"kind": "ServiceAccount", "name": account, "namespace": namespace}
                for account in accounts
            ],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        },
    ]
