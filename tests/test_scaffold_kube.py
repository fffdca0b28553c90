"""gz kube: every mode validates against the Kubernetes schemas of kubernetes-validate (1.30 and
the newest it ships, strict: unknown fields fail), keeps the shutdown timeline consistent, and
its Envoy configs pass `envoy --mode validate` and proxy real gRPC calls to two replicas."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import grpc
import kubernetes_validate
import pytest
import yaml

from gz.discovery.kubernetes.slices import read_slice
from gz.durations import parse_duration
from gz.scaffold import kube
from gz.settings import ServerSettings

from .kube_api import endpoint_slice
from .support import free_port, http_get, run_gz, say_hello, wait_until

ENVOY = Path(sys.executable).parent / "envoy"
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
NAME, INSTANCE = "app.kubernetes.io/name", "app.kubernetes.io/instance"
# the options that make each mode write all it can
EXTRA: dict[str, tuple[str, ...]] = {
    "service": (),
    "headless": (),
    "etcd": ("--etcd-secret", "etcd-users", "--etcd-tls-secret", "etcd-tls"),
    "endpoints": ("--client-image", "api:2"),
    "envoy": (),
    "envoy-sidecar": ("--client-image", "api:2"),
    "mesh": (),
}


def manifests(mode: str, *extra: str) -> list[dict]:
    code, out, err = run_gz(
        "kube", mode, "--name", "greeter", "--image", "greeter:1", "--namespace", "shop", *extra
    )
    assert code == 0, err
    return list(yaml.safe_load_all(out))


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def env_of(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


# Istio's CRDs: kubernetes-validate has no schema for them, so check_istio checks their shape
ISTIO = {
    "DestinationRule": "networking.istio.io/v1",
    "PeerAuthentication": "security.istio.io/v1",
    "AuthorizationPolicy": "security.istio.io/v1",
}


def validate(obj: dict, versions: list[str] = VERSIONS) -> None:
    if obj["kind"] in ISTIO:
        check_istio(obj)
        return
    for version in versions:
        kubernetes_validate.validate(obj, version, strict=True)


def check_istio(obj: dict) -> None:
    assert obj["apiVersion"] == ISTIO[obj["kind"]]
    metadata, spec = obj["metadata"], obj["spec"]
    assert set(metadata) == {"name", "namespace", "labels"} and metadata["name"]
    allowed = {
        "DestinationRule": {"host", "trafficPolicy"},
        "PeerAuthentication": {"selector", "mtls"},
        "AuthorizationPolicy": {"selector", "action", "rules"},
    }[obj["kind"]]
    assert set(spec) <= allowed, set(spec) - allowed
    if "selector" in spec:  # workload selectors: matchLabels only, on the stable labels
        assert set(spec["selector"]) == {"matchLabels"}
        assert set(spec["selector"]["matchLabels"]) == {NAME, INSTANCE}
    if obj["kind"] == "DestinationRule":
        assert spec["host"].endswith(".svc.cluster.local")
    if obj["kind"] == "PeerAuthentication":
        assert spec["mtls"] == {"mode": "STRICT"}
    if obj["kind"] == "AuthorizationPolicy":
        assert spec["action"] in {"ALLOW", "DENY", "AUDIT", "CUSTOM"}
        for rule in spec["rules"]:
            assert set(rule) <= {"from", "to", "when"}
            for source in rule.get("from", []):
                assert set(source) == {"source"}
                for principal in source["source"].get("principals", []):
                    assert re.fullmatch(r"[^/]+/ns/[^/]+/sa/[^/]+", principal), principal


@pytest.mark.parametrize("mode", list(kube.MODES))
def test_every_object_validates_against_the_kubernetes_schemas(mode):
    for obj in manifests(mode, *EXTRA[mode]):
        validate(obj)


@pytest.mark.parametrize("mode", list(kube.MODES))
def test_every_deployment_probes_grpc_knows_its_pod_and_outlives_its_drain(mode):
    objects = manifests(mode, "--prestop", "3s", "--drain", "4s", "--grace", "7s")
    scaled = {
        hpa["spec"]["scaleTargetRef"]["name"] for hpa in of_kind(objects, "HorizontalPodAutoscaler")
    }
    assert {hpa["apiVersion"] for hpa in of_kind(objects, "HorizontalPodAutoscaler")} == {
        "autoscaling/v2"
    }
    for deployment in of_kind(objects, "Deployment"):
        assert deployment["metadata"]["name"] in scaled
        pod = deployment["spec"]["template"]["spec"]
        apps = [c for c in pod["containers"] if c["name"] != "envoy"]
        for container in apps:
            env = env_of(container)
            assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
            assert (
                env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
            )
            port = container["ports"][0]["containerPort"]
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
                assert container[probe]["grpc"] == {"port": port}
            prestop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            drain = parse_duration(env["GZ_SHUTDOWN_DRAIN"]["value"])
            grace = parse_duration(env["GZ_SHUTDOWN_GRACE"]["value"])
            assert (prestop, drain, grace) == (3, 4, 7)
            assert pod["terminationGracePeriodSeconds"] > prestop + drain + grace
            liveness = container["livenessProbe"]
            assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain + grace
            assert container["resources"]["requests"] and container["resources"]["limits"]
        assert pod["securityContext"]["runAsNonRoot"] is True


# -- the checklist every mode's manifests meet ---------------------------------------------------
ZONE, NODE = "topology.kubernetes.io/zone", "kubernetes.io/hostname"
LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
MARGIN = 5  # Shutdown.margin: seconds for a process to exit after its last call


def check_manifests(objects: list[dict], replicas: int = 3) -> None:
    """The restricted Pod Security Standard on every container, probes, a shutdown timeline
    that fits the grace period, the autoscaler owning replicas, topology spread, labels."""
    check_labels(objects)
    autoscalers = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objects, "HorizontalPodAutoscaler")
    }
    budgets = {b["metadata"]["name"]: b for b in of_kind(objects, "PodDisruptionBudget")}
    for deployment in of_kind(objects, "Deployment"):
        name, spec = deployment["metadata"]["name"], deployment["spec"]
        assert "replicas" not in spec, name  # the autoscaler's, or each apply resets it
        expected = 2 if name.endswith("-envoy") else replicas
        assert autoscalers[name]["spec"]["minReplicas"] == expected
        selector = spec["selector"]["matchLabels"]
        assert set(selector) == {NAME, INSTANCE}  # immutable: only what never changes
        assert budgets[name]["spec"]["selector"]["matchLabels"] == selector
        template = spec["template"]
        assert deployment["metadata"]["labels"].items() <= template["metadata"]["labels"].items()
        pod = template["spec"]
        check_restricted(pod)
        check_probes(pod)
        check_shutdown(pod)
        check_spread(pod, selector)
    selectors = [d["spec"]["selector"]["matchLabels"] for d in of_kind(objects, "Deployment")]
    for service in of_kind(objects, "Service"):
        if "selector" in service["spec"]:
            assert service["spec"]["selector"] in selectors


def check_labels(objects: list[dict]) -> None:
    """The recommended labels on every object and pod template, by what it belongs to."""
    by_component = {
        "server": ("greeter", "1"),
        "proxy": ("envoy", kube.envoy.IMAGE.rpartition(":")[2]),
        "client": (None, None),  # its own name; the tag of --client-image (2) or --image (1)
    }
    for obj in objects:
        labels = obj["metadata"]["labels"]
        for value in labels.values():  # what the API server accepts as a label value
            assert LABEL_VALUE.fullmatch(value) and len(value) <= 63, value
        assert labels["app.kubernetes.io/managed-by"] == "gz"
        assert labels["app.kubernetes.io/part-of"] == "greeter"
        name, version = by_component[labels["app.kubernetes.io/component"]]
        assert labels[NAME] == (name or labels[INSTANCE])
        assert labels["app.kubernetes.io/version"] in ({version} if version else {"1", "2"})
        assert labels[INSTANCE]
        if obj["kind"] == "Deployment":
            template = obj["spec"]["template"]["metadata"]["labels"]
            assert labels.items() <= template.items()


def containers_of(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def check_restricted(pod: dict) -> None:
    """The restricted Pod Security Standard, for every container, sidecars included."""
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
    for volume in pod.get("volumes", []):
        assert set(volume) - {"name"} <= {"configMap", "secret", "emptyDir", "projected"}
    context = pod["securityContext"]
    for container in containers_of(pod):
        own = container["securityContext"]
        assert own.get("runAsNonRoot", context.get("runAsNonRoot")) is True
        assert own.get("runAsUser", context.get("runAsUser")) != 0
        assert own["allowPrivilegeEscalation"] is False
        assert own["capabilities"] == {"drop": ["ALL"]}
        assert not own.get("privileged")
        seccomp = own.get("seccompProfile", context.get("seccompProfile"))
        assert seccomp == {"type": "RuntimeDefault"}


def check_probes(pod: dict) -> None:
    for container in pod["containers"]:
        assert {"readinessProbe", "livenessProbe"} <= set(container), container["name"]
        if "grpc" in container["readinessProbe"]:  # a gz server: slow starts are not restarts
            assert "startupProbe" in container
    for sidecar in pod.get("initContainers", []):
        assert sidecar["restartPolicy"] == "Always"  # native: started before, stopped after
        assert "startupProbe" in sidecar  # the app starts once it is ready


def prestop_seconds(container: dict) -> int:
    """How long the preStop hook takes: a sleep action, or the sleeps of a script."""
    hook = container["lifecycle"]["preStop"]
    if "sleep" in hook:
        return hook["sleep"]["seconds"]
    script = hook["exec"]["command"][-1]
    return sum(int(seconds) for seconds in re.findall(r"\bsleep (\d+)", script))


def check_shutdown(pod: dict) -> None:
    """The grace period covers preStop, then the drain and in-flight grace, and a margin."""
    period = pod["terminationGracePeriodSeconds"]
    for container in pod["containers"]:
        prestop = prestop_seconds(container)
        env = env_of(container)
        if "GZ_SHUTDOWN_DRAIN" in env:  # a gz server drains after preStop, on SIGTERM
            drain = parse_duration(env["GZ_SHUTDOWN_DRAIN"]["value"])
            grace = parse_duration(env["GZ_SHUTDOWN_GRACE"]["value"])
            assert period >= prestop + drain + grace + MARGIN
        else:  # Envoy drains inside its preStop hook: SIGTERM stops it at once
            args = container["args"]
            drain = int(args[args.index("--drain-time-s") + 1])
            script = container["lifecycle"]["preStop"]["exec"]["command"][-1]
            after_drain = int(script.rpartition("sleep ")[2])
            assert "/drain_listeners?graceful" in script and after_drain >= drain
            assert period >= prestop + MARGIN


def check_spread(pod: dict, selector: dict) -> None:
    constraints = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert set(constraints) == {ZONE, NODE}
    for constraint in constraints.values():
        assert constraint == {
            "maxSkew": 1,
            "topologyKey": constraint["topologyKey"],
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector},
            "matchLabelKeys": ["pod-template-hash"],
        }


@pytest.mark.parametrize("mode", list(kube.MODES))
def test_every_mode_meets_the_manifest_checklist(mode):
    check_manifests(manifests(mode, *EXTRA[mode]))
    check_manifests(manifests(mode, "--replicas", "5", "--drain", "2s", "--grace", "9s"), 5)


@pytest.mark.parametrize("mode", ["endpoints", "envoy", "envoy-sidecar", "mesh"])
def test_the_longest_names_still_make_label_values(mode):
    client = () if mode == "envoy" else ("--client", "c" * 63)
    # 56: the longest name that leaves room for -client and -envoy
    code, out, err = run_gz("kube", mode, "--name", "g" * 56, "--image", "g:1", *client)
    assert code == 0, err
    for obj in yaml.safe_load_all(out):
        for value in obj["metadata"]["labels"].values():
            assert LABEL_VALUE.fullmatch(value) and len(value) <= 63, (obj["kind"], value)


def test_the_autoscaler_owns_the_replica_count():
    objects = manifests("headless", "--replicas", "4")
    assert "replicas" not in of_kind(objects, "Deployment")[0]["spec"]
    (autoscaler,) = of_kind(objects, "HorizontalPodAutoscaler")
    assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (4, 12)


def test_pods_spread_over_zones_then_nodes_within_their_revision():
    pod = pod_of(manifests("service"))
    keys = [c["topologyKey"] for c in pod["topologySpreadConstraints"]]
    assert keys == [ZONE, NODE]
    for constraint in pod["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == {NAME: "greeter", INSTANCE: "greeter"}
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]


def test_labels_are_the_recommended_set_and_envoy_is_labelled_as_envoy():
    objects = manifests("envoy", "--envoy-image", "envoyproxy/envoy:v1.33.2")
    server = [o for o in objects if o["metadata"]["name"] == "greeter"]
    for obj in server:
        assert obj["metadata"]["labels"] == {
            NAME: "greeter",
            INSTANCE: "greeter",
            "app.kubernetes.io/version": "1",
            "app.kubernetes.io/component": "server",
            "app.kubernetes.io/part-of": "greeter",
            "app.kubernetes.io/managed-by": "gz",
        }
    proxy = [o for o in objects if o["metadata"]["name"] == "greeter-envoy"]
    assert {o["kind"] for o in proxy} >= {"ConfigMap", "Deployment", "Service"}
    for obj in proxy:
        labels = obj["metadata"]["labels"]
        assert (labels[NAME], labels[INSTANCE]) == ("envoy", "greeter-envoy")
        assert labels["app.kubernetes.io/component"] == "proxy"
        assert labels["app.kubernetes.io/version"] == "v1.33.2"
    (front,) = [s for s in of_kind(objects, "Service") if s["metadata"]["name"] == "greeter-envoy"]
    assert front["spec"]["selector"] == {NAME: "envoy", INSTANCE: "greeter-envoy"}


@pytest.mark.parametrize(
    ("image", "version"),
    [("greeter:1.4.2", "1.4.2"), ("reg.io:5000/greeter", None), ("reg.io:5000/a/b:v2", "v2"),
     ("greeter@sha256:" + "a" * 64, None), ("greeter:1.0@sha256:" + "a" * 64, "1.0"),
     ("greeter:" + "x" * 70 + "-", "x" * 63), ("greeter:_rc.1-", "rc.1"), ("greeter:a$b", None)],
)  # fmt: skip
def test_the_version_label_is_the_image_tag_when_it_makes_a_label_value(image, version):
    code, out, err = run_gz("kube", "headless", "--name", "greeter", "--image", image)
    assert code == 0, err
    for obj in yaml.safe_load_all(out):
        assert obj["metadata"]["labels"].get("app.kubernetes.io/version") == version
        kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)


def test_service_mode_sets_max_connection_age_and_explains_the_l4_limit():
    _, out, _ = run_gz(
        "kube", "service", "--name", "greeter", "--image", "g:1", "--max-connection-age", "1m"
    )
    assert "balances connections, not calls (L4)" in out
    objects = list(yaml.safe_load_all(out))
    env = env_of(of_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0])
    assert env["GZ_MAX_CONNECTION_AGE"]["value"] == "60s"
    assert "clusterIP" not in of_kind(objects, "Service")[0]["spec"]


def test_metrics_port_is_exposed_and_annotated_for_prometheus_unless_zero():
    deployment = of_kind(manifests("headless"), "Deployment")[0]["spec"]["template"]
    container = deployment["spec"]["containers"][0]
    assert env_of(container)["GZ_METRICS_PORT"]["value"] == "9090"
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert deployment["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    deployment = of_kind(manifests("headless", "--metrics-port", "0"), "Deployment")[0]
    assert "GZ_METRICS_PORT" not in env_of(deployment["spec"]["template"]["spec"]["containers"][0])
    assert "annotations" not in deployment["spec"]["template"]["metadata"]


def test_headless_and_etcd_modes():
    service = of_kind(manifests("headless"), "Service")[0]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["name"] == "grpc"
    objects = manifests("etcd", "--etcd-endpoints", "etcd-0:2379,etcd-1:2379")
    env = env_of(of_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0])
    assert env["GZ_REGISTRY"]["value"] == "etcd"
    assert env["GZ_ETCD_ENDPOINTS"]["value"] == "etcd-0:2379,etcd-1:2379"
    assert env["GZ_ETCD_PASSWORD"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_endpoints_mode_grants_list_and_watch_on_endpointslices_to_the_client():
    objects = manifests("endpoints")
    (account,) = of_kind(objects, "ServiceAccount")
    (role,) = of_kind(objects, "Role")
    (binding,) = of_kind(objects, "RoleBinding")
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        }
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "shop"}
    ]


def pod_of(objects: list[dict], name: str = "greeter") -> dict:
    (deployment,) = [d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == name]
    return deployment["spec"]["template"]["spec"]


@pytest.mark.parametrize("mode", list(kube.MODES))
def test_service_account_runs_the_service_with_its_token_for_k8s_targets(mode):
    objects = manifests(mode, "--service-account", "greeter-caller")
    pod = pod_of(objects)
    assert pod["serviceAccountName"] == "greeter-caller"
    assert pod["automountServiceAccountToken"] is True  # in-cluster config needs the token
    for deployment in of_kind(objects, "Deployment"):
        if deployment["metadata"]["name"] != "greeter":  # Envoy, a sidecar client: no API calls
            other = deployment["spec"]["template"]["spec"]
            assert other["automountServiceAccountToken"] is False
            assert "serviceAccountName" not in other
    for obj in objects:
        validate(obj, VERSIONS[-1:])


def test_without_service_account_no_token_is_mounted():
    pod = pod_of(manifests("headless"))
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod


def test_endpoints_mode_binds_the_reader_role_to_the_service_account_too():
    objects = manifests("endpoints", "--service-account", "greeter-caller")
    accounts = {a["metadata"]["name"] for a in of_kind(objects, "ServiceAccount")}
    assert accounts == {"greeter-client", "greeter-caller"}  # both exist, so both pods start
    (binding,) = of_kind(objects, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": name, "namespace": "shop"}
        for name in ("greeter-client", "greeter-caller")
    ]
    # the same account for the service and its clients: one ServiceAccount, one subject
    objects = manifests("endpoints", "--service-account", "readers", "--client", "readers")
    assert [a["metadata"]["name"] for a in of_kind(objects, "ServiceAccount")] == ["readers"]
    assert [s["name"] for s in of_kind(objects, "RoleBinding")[0]["subjects"]] == ["readers"]
    assert pod_of(objects)["serviceAccountName"] == "readers"


def test_a_namespace_may_start_with_a_digit():
    code, out, err = run_gz("kube", "endpoints", "--name", "greeter", "--image", "g:1",
                        "--namespace", "1team")  # fmt: skip
    assert code == 0, err
    objects = list(yaml.safe_load_all(out))
    assert {obj["metadata"]["namespace"] for obj in objects} == {"1team"}
    assert "clients target k8s://1team/greeter:grpc" in out.lower()
    for obj in objects:
        kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)


@pytest.mark.parametrize(
    ("option", "value"),
    [("--namespace", "Team_1"), ("--namespace", "-team"), ("--namespace", "a" * 64),
     ("--service-account", "Caller!"), ("--service-account", "a..b")],
)  # fmt: skip
def test_a_bad_namespace_or_service_account_exits_2_naming_it(option, value):
    code, _, err = run_gz("kube", "headless", "--name", "greeter", "--image", "g:1", option, value)
    assert code == 2 and err.startswith("gz: ") and err.count("\n") == 1
    assert repr(value) in err


def test_mesh_mode_injects_the_sidecar_and_balances_per_request():
    objects = manifests("mesh")
    template = of_kind(objects, "Deployment")[0]["spec"]["template"]
    assert template["metadata"]["labels"]["sidecar.istio.io/inject"] == "true"
    assert of_kind(objects, "Service")[0]["spec"]["ports"][0]["appProtocol"] == "grpc"
    policy = of_kind(objects, "DestinationRule")[0]["spec"]["trafficPolicy"]
    assert policy["loadBalancer"]["simple"] == "LEAST_REQUEST"
    assert {"consecutive5xxErrors", "interval", "baseEjectionTime"} <= set(
        policy["outlierDetection"]
    )


def test_envoy_sidecar_runs_beside_the_client_which_targets_loopback():
    objects = manifests("envoy-sidecar", "--client", "shop-api", "--client-image", "api:2")
    (client,) = [d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == "shop-api"]
    pod = client["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["name"] == "envoy"
    assert pod["initContainers"][0]["restartPolicy"] == "Always"  # a native sidecar
    assert pod["containers"][0]["image"] == "api:2"
    env = env_of(pod["containers"][0])
    assert env["GZ_TARGET_GREETER"]["value"] == "direct:///127.0.0.1:9000"
    assert env["GZ_HEALTH_CHECK"]["value"] == "false"  # Envoy checks the replicas


def test_envoy_sidecar_starts_the_app_only_once_envoy_is_ready():
    pod = pod_of(manifests("envoy-sidecar"), "greeter-client")
    (sidecar,) = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: Kubernetes >= 1.29
    probe = sidecar["startupProbe"]
    assert probe["exec"]["command"][:2] == ["/bin/bash", "-c"]
    assert "GET /ready " in probe["exec"]["command"][2]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 30
    assert "startupProbe" in pod["containers"][0]


def test_mesh_mode_requires_mtls_and_lets_only_the_client_account_call():
    code, out, err = run_gz("kube", "mesh", "--name", "greeter", "--image", "greeter:1",
                            "--namespace", "shop", "--client", "shop-api")  # fmt: skip
    assert code == 0, err
    objects = list(yaml.safe_load_all(out))
    selector = {"matchLabels": {NAME: "greeter", INSTANCE: "greeter"}}
    (peers,) = of_kind(objects, "PeerAuthentication")
    assert peers["spec"] == {"selector": selector, "mtls": {"mode": "STRICT"}}
    (policy,) = of_kind(objects, "AuthorizationPolicy")
    assert policy["spec"] == {
        "selector": selector,
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/shop-api"]}}]}],
    }
    for obj in objects:
        validate(obj)
    # Istio does not health-check replicas: it goes by readiness and outlier detection
    header = out.split("apiVersion", 1)[0]
    assert "checks each replica" not in header and "outlier detection" in header
    assert "does not check replicas actively" in header


def test_envoy_retries_refused_calls_elsewhere_and_keeps_quiet_streams():
    config = envoy_config("envoy")
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    typed = manager["typed_config"]
    assert typed["stream_idle_timeout"] == "3600s"
    assert typed["common_http_protocol_options"] == {"idle_timeout": "300s"}
    route = typed["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert route["timeout"] == "0s"
    assert route["max_stream_duration"] == {"grpc_timeout_header_max": "0s"}  # the deadline
    retry = route["retry_policy"]
    assert retry["retry_on"] == "unavailable,reset,connect-failure,refused-stream"
    assert retry["num_retries"] == 2 and "per_try_timeout" not in retry
    assert retry["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    (cluster,) = config["static_resources"]["clusters"]
    options = cluster["typed_extension_protocol_options"]
    protocol = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert protocol["common_http_protocol_options"] == {"idle_timeout": "300s"}


def test_envoy_drains_within_its_grace_period():
    objects = manifests("envoy", "--prestop", "3s", "--drain", "4s", "--grace", "7s")
    pod = pod_of(objects, "greeter-envoy")
    (container,) = pod["containers"]
    args = container["args"]
    assert args[args.index("--drain-time-s") + 1] == "4"
    assert args[args.index("--drain-strategy") + 1] == "immediate"
    script = container["lifecycle"]["preStop"]["exec"]["command"][2]
    fail, drain = script.index("/healthcheck/fail"), script.index("/drain_listeners?graceful")
    assert fail < drain
    assert re.findall(r"sleep (\d+)", script) == ["3", "11"]  # prestop, then drain + grace
    assert pod["terminationGracePeriodSeconds"] == 3 + 4 + 7 + MARGIN


def test_etcd_mode_takes_tls_files_and_users_from_secrets():
    objects = manifests("etcd", *EXTRA["etcd"])
    pod = pod_of(objects)
    (container,) = pod["containers"]
    env = env_of(container)
    for variable, key in [("GZ_ETCD_USERNAME", "username"), ("GZ_ETCD_PASSWORD", "password")]:
        reference = env[variable]["valueFrom"]["secretKeyRef"]
        assert reference == {"name": "etcd-users", "key": key, "optional": False}
    assert pod["volumes"] == [{"name": "etcd-tls", "secret": {"secretName": "etcd-tls"}}]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == "etcd-tls" and mount["readOnly"] is True
    directory = mount["mountPath"]
    files = {"GZ_ETCD_CA": "ca.crt", "GZ_ETCD_CERT": "tls.crt", "GZ_ETCD_KEYFILE": "tls.key"}
    assert {name: env[name]["value"] for name in files} == {
        name: f"{directory}/{key}" for name, key in files.items()
    }
    # the names gz's settings read (GZ_ETCD_KEY is the server's own)
    read = {f"GZ_{name.upper()}" for name in ServerSettings.model_fields}
    assert {name for name in env if name.startswith("GZ_ETCD_")} <= read
    # without the options: users from the optional NAME-etcd, no TLS
    env = env_of(pod_of(manifests("etcd"))["containers"][0])
    assert env["GZ_ETCD_USERNAME"]["valueFrom"]["secretKeyRef"]["name"] == "greeter-etcd"
    assert "GZ_ETCD_CA" not in env


def test_a_bad_etcd_secret_name_exits_2_naming_it():
    code, _, err = run_gz("kube", "etcd", "--name", "greeter", "--image", "g:1",
                          "--etcd-tls-secret", "Etcd_TLS")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "--etcd-tls-secret 'Etcd_TLS'" in err


def test_endpoints_mode_writes_the_client_deployment_bound_to_its_account():
    objects = manifests("endpoints", "--client", "shop-api", "--client-image", "api:2")
    pod = pod_of(objects, "shop-api")
    assert pod["serviceAccountName"] == "shop-api"
    assert pod["automountServiceAccountToken"] is True  # k8s:// reads EndpointSlices
    (container,) = pod["containers"]
    assert container["image"] == "api:2"
    assert env_of(container)["GZ_TARGET_GREETER"]["value"] == "k8s://shop/greeter:grpc"
    assert "shop-api" in {a["metadata"]["name"] for a in of_kind(objects, "ServiceAccount")}


def test_endpoints_mode_without_a_client_image_says_what_to_set(tmp_path):
    code, out, err = run_gz("kube", "endpoints", "--name", "greeter", "--image", "g:1",
                            "-o", str(tmp_path))  # fmt: skip
    assert code == 0, err
    assert not any(path.name.startswith("deployment-greeter-client") for path in tmp_path.iterdir())
    assert (
        "no client Deployment written (--client-image not given): in your client's pod spec set "
        "serviceAccountName: greeter-client and automountServiceAccountToken: true"
    ) in out
    _, out, _ = run_gz("kube", "endpoints", "--name", "greeter", "--image", "g:1")
    assert "set serviceAccountName: greeter-client" in out.split("apiVersion", 1)[0]


def test_output_directory_gets_one_file_per_object(tmp_path):
    code, out, err = run_gz(
        "kube", "envoy", "--name", "greeter", "--image", "g:1", "-o", str(tmp_path)
    )
    assert code == 0, err
    files = sorted(path.name for path in tmp_path.iterdir())
    assert "configmap-greeter-envoy.yaml" in files and "deployment-greeter-envoy.yaml" in files
    assert "clients target dns:///greeter-envoy.default.svc.cluster.local:8080" in out


@pytest.mark.parametrize(
    "arguments",
    [
        ["kube", "nope", "--name", "a", "--image", "b"],
        ["kube", "service", "--name", "Bad_Name", "--image", "b"],
        ["kube", "service", "--name", "a", "--image", "has space"],
        ["kube", "service", "--name", "a", "--image", "b", "--port", "70000"],
        ["kube", "service", "--image", "b"],
        ["kube", "service", "--name", "a", "--image", "b", "--metrics-port", "8080"],
    ],
)
def test_bad_input_exits_2_with_one_line(arguments):
    code, _, err = run_gz(*arguments)
    assert code == 2
    assert err.startswith("gz: ") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("mode", "option", "value", "modes"),
    [
        ("etcd", "--max-connection-age", "30s", "the service mode only"),
        ("service", "--etcd-endpoints", "etcd:2379", "the etcd mode only"),
        ("headless", "--envoy-image", "envoy:1", "the envoy and envoy-sidecar modes only"),
        ("envoy", "--client", "api", "the endpoints, envoy-sidecar and mesh modes only"),
        ("service", "--client-image", "api:2", "the endpoints and envoy-sidecar modes only"),
        ("headless", "--etcd-secret", "users", "the etcd mode only"),
        ("mesh", "--etcd-tls-secret", "tls", "the etcd mode only"),
    ],
)
def test_an_option_of_other_modes_exits_2_naming_it_and_its_modes(mode, option, value, modes):
    # given even with its default value: the user meant it, and it would do nothing
    code, out, err = run_gz("kube", mode, "--name", "greeter", "--image", "g:1", option, value)
    assert code == 2 and out == ""
    assert err == f"gz: {option} applies to {modes}, not {mode}: leave it out\n"


def test_every_option_applies_where_the_table_says():
    values = {"max_connection_age": "1m", "etcd_endpoints": "etcd-0:2379", "client": "api",
              "etcd_secret": "users", "etcd_tls_secret": "tls"}  # fmt: skip
    for field, modes in kube.MODE_OPTIONS.items():
        option, value = "--" + field.replace("_", "-"), values.get(field, "image:1")
        for mode in modes:
            manifests(mode, option, value)  # exits 0
    manifests("mesh", "--service-account", "caller", "--metrics-port", "9100")  # every mode


# -- --workers: processes per pod ------------------------------------------------------------
def ports_of(container: dict) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def service_ports(objects: list[dict], name: str = "greeter") -> list[tuple[str, int, str]]:
    (service,) = [s for s in of_kind(objects, "Service") if s["metadata"]["name"] == name]
    return [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]]


@pytest.mark.parametrize("mode", list(kube.MODES))
def test_workers_get_a_core_each_and_a_port_each(mode):
    objects = manifests(mode, "--workers", "2", *EXTRA[mode])
    for obj in objects:
        validate(obj)
    check_manifests(objects)
    (container,) = pod_of(objects)["containers"]
    assert env_of(container)["GZ_WORKERS"] == {"name": "GZ_WORKERS", "value": "auto"}
    assert container["resources"] == {  # requests == limits: whole cores, auto counts them
        "requests": {"cpu": "2", "memory": "192Mi"},
        "limits": {"cpu": "2", "memory": "384Mi"},
    }
    assert ports_of(container) == {"grpc": 8080, "grpc-w0": 8081, "grpc-w1": 8082, "metrics": 9090}
    assert container["readinessProbe"]["grpc"] == {"port": 8080}  # the shared port
    (autoscaler,) = [h for h in of_kind(objects, "HorizontalPodAutoscaler")
                     if h["metadata"]["name"] == "greeter"]  # fmt: skip
    target = autoscaler["spec"]["metrics"][0]["resource"]["target"]
    assert target == {"type": "Utilization", "averageUtilization": 70}  # of requests: still right
    for deployment in of_kind(objects, "Deployment"):  # Envoy and clients: one process as ever
        if deployment["metadata"]["name"] != "greeter":
            for other in deployment["spec"]["template"]["spec"]["containers"]:
                assert "GZ_WORKERS" not in env_of(other)
                assert other["resources"] == kube.RESOURCES
                assert not any(name.startswith("grpc-w") for name in ports_of(other))
    # only k8s:// clients dial the workers' own ports; the others reach the shared one
    if mode == "endpoints":
        assert service_ports(objects) == [
            ("grpc", 8080, "grpc"), ("grpc-w0", 8081, "grpc-w0"), ("grpc-w1", 8082, "grpc-w1")
        ]  # fmt: skip
    elif mode != "etcd":  # etcd: each worker registers itself, no Service
        assert service_ports(objects) == [("grpc", 8080, "grpc")]
    code, out, err = run_gz("kube", mode, "--name", "greeter", "--image", "g:1", "--workers", "2")
    assert code == 0, err
    header = out.split("apiVersion", 1)[0]  # the first object's comment says how calls spread
    assert "# GZ_WORKERS=auto: 2 processes per pod" in header
    assert ("every worker an endpoint" in header) == (mode == "endpoints")


def test_one_worker_is_the_default_and_changes_nothing():
    for extra in ((), ("--workers", "1")):
        objects = manifests("endpoints", *extra)
        (container,) = pod_of(objects)["containers"]
        assert "GZ_WORKERS" not in env_of(container)
        assert container["resources"] == {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "256Mi"},
        }
        assert ports_of(container) == {"grpc": 8080, "metrics": 9090}
        assert service_ports(objects) == [("grpc", 8080, "grpc")]


def test_more_workers_cost_a_core_and_memory_each_from_the_given_port():
    objects = manifests("endpoints", "--workers", "4", "--port", "9000", "--metrics-port", "9100")
    (container,) = pod_of(objects)["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": f"{128 + 3 * 64}Mi"},
        "limits": {"cpu": "4", "memory": f"{256 + 3 * 128}Mi"},
    }
    workers = {f"grpc-w{i}": 9001 + i for i in range(4)}
    assert ports_of(container) == {"grpc": 9000, **workers, "metrics": 9100}
    assert service_ports(objects)[1:] == [(name, n, name) for name, n in workers.items()]


def test_the_endpoints_mode_slices_make_every_worker_an_endpoint():
    """What the EndpointSlice controller makes of the Service (each port by name, numbered as
    the pod numbers its targetPort) is what the k8s:// resolver expands."""
    objects = manifests("endpoints", "--workers", "3")
    numbers = ports_of(pod_of(objects)["containers"][0])
    ports = [{"name": name, "protocol": "TCP", "port": numbers[target]}
             for name, _, target in service_ports(objects)]  # fmt: skip
    found = read_slice(endpoint_slice("greeter-x1", "greeter", ["10.0.0.1"], ports=ports), "grpc")
    assert {e.address for e in found.serving} == {"10.0.0.1:8081", "10.0.0.1:8082", "10.0.0.1:8083"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--workers", "0"), "gz: --workers 0: a pod runs at least 1 worker process"),
        (("--workers", "-2"), "gz: --workers -2: a pod runs at least 1 worker process"),
        (("--workers", "two"), "gz: Invalid value for '--workers': 'two' is not a valid integer"),
        (("--workers", "3", "--port", "65533"), "gz: --workers 3 with --port 65533: the worker "
         "ports would run to 65536, past 65535; pick a lower --port or fewer workers"),
        (("--workers", "3", "--metrics-port", "8082"), "gz: the worker port grpc-w1 8082 is also "
         "--metrics-port in the headless mode; pick another --metrics-port"),
    ],
)  # fmt: skip
def test_bad_workers_exit_2_with_one_line_saying_why(extra, message):
    code, out, err = run_gz("kube", "headless", "--name", "greeter", "--image", "g:1", *extra)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1, err


def envoy_config(mode: str, *extra: str) -> dict:
    (config_map,) = of_kind(manifests(mode, *extra), "ConfigMap")
    return yaml.safe_load(config_map["data"]["envoy.yaml"])


def envoy_container(mode: str, *extra: str) -> dict:
    """The Envoy container: the proxy's in envoy mode, the client's sidecar in envoy-sidecar."""
    for deployment in of_kind(manifests(mode, *extra), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in containers_of(pod):
            if container["name"] == "envoy":
                return container
    raise AssertionError(f"no Envoy in {mode}")


def envoy_command(container: dict, config: Path) -> list[str]:
    """The container's Envoy command line, reading ``config``."""
    args = list(container["args"])
    args[args.index("--config-path") + 1] = str(config)
    return [str(ENVOY), *args]


@pytest.mark.parametrize("mode", ["envoy", "envoy-sidecar"])
def test_envoy_config_passes_envoy_validate(mode, tmp_path):
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(envoy_config(mode)))
    done = subprocess.run(
        [*envoy_command(envoy_container(mode), path), "--mode", "validate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout


async def test_generated_envoy_proxies_grpc_and_balances_over_two_replicas(
    server_process, tmp_path
):
    replicas = [server_process(), server_process()]
    for replica in replicas:
        await replica.wait_serving()
    shutdown = ("--drain", "1s")  # Envoy's listeners close 1s into the drain
    config = envoy_config("envoy", *shutdown)
    listen, admin = free_port(), free_port()
    # the generated config, with loopback addresses in place of the cluster's
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    listener.update(address="127.0.0.1", port_value=listen)
    (cluster,) = config["static_resources"]["clusters"]
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {
            "endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": r.port}}
            }
        }
        for r in replicas
    ]
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "envoy.log").open("w")
    container = envoy_container("envoy", *shutdown)
    envoy = subprocess.Popen(
        [*envoy_command(container, path), "--disable-hot-restart"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        await _wait_healthy_hosts(admin, 2)
        served: Counter[str] = Counter()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{listen}") as channel:  # one connection
            for _ in range(40):
                served[(await say_hello(channel, "envoy")).served_by] += 1
        assert set(served) == {r.address for r in replicas}, served
        assert min(served.values()) >= 5, served
        # the sidecar's startup probe passes on a live Envoy, fails where none listens
        probe = envoy_container("envoy-sidecar")["startupProbe"]["exec"]["command"]
        assert run_script(probe[2], admin).returncode == 0
        assert run_script(probe[2], free_port()).returncode != 0
        # the Envoy Deployment's preStop hook (without its sleeps) fails Envoy's /healthz, then
        # drains its listeners: they close after --drain-time-s
        healthz = f"http://127.0.0.1:{listen}/healthz"
        status, _ = await asyncio.to_thread(http_get, healthz, 2)
        assert status == 200
        script = container["lifecycle"]["preStop"]["exec"]["command"][2]
        assert run_script(re.sub(r"\bsleep \d+", "true", script), admin).returncode == 0
        status, _ = await asyncio.to_thread(http_get, healthz, 2)
        assert status == 503

        async def stopped() -> bool:
            _, text = await asyncio.to_thread(http_get, f"http://127.0.0.1:{admin}/stats", 1)
            return "listener_manager.listener_stopped: 1" in text

        await wait_until(stopped, 10, "Envoy's listener closed by the drain", poll=0.2)
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
        log.close()


def run_script(script: str, admin: int) -> subprocess.CompletedProcess[str]:
    """A preStop or probe script of the manifests, against the admin interface on ``admin``."""
    script = script.replace(f"/{kube.envoy.ADMIN_PORT} ", f"/{admin} ")
    return subprocess.run(["/bin/bash", "-c", script], capture_output=True, text=True, timeout=10)


async def _wait_healthy_hosts(admin: int, count: int, timeout: float = 20.0) -> None:
    """Until Envoy's gRPC health checks have passed on ``count`` hosts."""

    async def healthy() -> bool:
        try:
            _, text = await asyncio.to_thread(http_get, f"http://127.0.0.1:{admin}/clusters", 1)
        except OSError:
            return False
        lines = text.splitlines()
        return sum(1 for line in lines if line.endswith("::health_flags::healthy")) >= count

    await wait_until(healthy, timeout, f"{count} healthy Envoy hosts", poll=0.1)
