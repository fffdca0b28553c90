"""gz kube: every mode validates against the Kubernetes schemas of kubernetes-validate (1.30 and
the newest it ships, strict: unknown fields fail), keeps the shutdown timeline consistent, and
its Envoy configs pass `envoy --mode validate` and proxy real gRPC calls to two replicas."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path

import grpc
import kubernetes_validate
import pytest
import yaml

from gz.durations import parse_duration
from gz.scaffold import kube

from .support import free_port, http_get, run_gz, say_hello, wait_until

ENVOY = Path(sys.executable).parent / "envoy"
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


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


@pytest.mark.parametrize("mode", list(kube.MODES))
def test_every_object_validates_against_the_kubernetes_schemas(mode):
    for obj in manifests(mode):
        if obj["kind"] == "DestinationRule":  # an Istio CRD: no schema in kubernetes-validate
            assert obj["apiVersion"] == "networking.istio.io/v1"
            assert obj["metadata"]["name"] and obj["metadata"]["namespace"] == "shop"
            assert obj["spec"]["host"] == "greeter.shop.svc.cluster.local"
            continue
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


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
        if obj["kind"] != "DestinationRule":
            kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)


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
        ("envoy", "--client", "api", "the endpoints and envoy-sidecar modes only"),
        ("endpoints", "--client-image", "api:2", "the envoy-sidecar mode only"),
    ],
)
def test_an_option_of_other_modes_exits_2_naming_it_and_its_modes(mode, option, value, modes):
    # given even with its default value: the user meant it, and it would do nothing
    code, out, err = run_gz("kube", mode, "--name", "greeter", "--image", "g:1", option, value)
    assert code == 2 and out == ""
    assert err == f"gz: {option} applies to {modes}, not {mode}: leave it out\n"


def test_every_option_applies_where_the_table_says():
    values = {"max_connection_age": "1m", "etcd_endpoints": "etcd-0:2379", "client": "api"}
    for field, modes in kube.MODE_OPTIONS.items():
        option, value = "--" + field.replace("_", "-"), values.get(field, "image:1")
        for mode in modes:
            manifests(mode, option, value)  # exits 0
    manifests("mesh", "--service-account", "caller", "--metrics-port", "9100")  # every mode


def envoy_config(mode: str) -> dict:
    (config_map,) = of_kind(manifests(mode), "ConfigMap")
    return yaml.safe_load(config_map["data"]["envoy.yaml"])


@pytest.mark.parametrize("mode", ["envoy", "envoy-sidecar"])
def test_envoy_config_passes_envoy_validate(mode, tmp_path):
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(envoy_config(mode)))
    done = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path)],
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
    config = envoy_config("envoy")
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
    envoy = subprocess.Popen(
        [str(ENVOY), "-c", str(path), "--disable-hot-restart", "--log-level", "warn"],
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
        # the Envoy Deployment's preStop hook (without its sleep) fails Envoy's /healthz
        healthz = f"http://127.0.0.1:{listen}/healthz"
        status, _ = await asyncio.to_thread(http_get, healthz, 2)
        assert status == 200
        script = envoy_prestop().replace("/9901 ", f"/{admin} ").rpartition("; sleep")[0]
        subprocess.run(["/bin/bash", "-c", script], check=True, timeout=10)
        status, _ = await asyncio.to_thread(http_get, healthz, 2)
        assert status == 503
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
        log.close()


def envoy_prestop() -> str:
    deployments = of_kind(manifests("envoy"), "Deployment")
    (proxy,) = [d for d in deployments if d["metadata"]["name"] == "greeter-envoy"]
    command = proxy["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]
    assert command["command"][:2] == ["/bin/bash", "-c"]
    return command["command"][2]


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
