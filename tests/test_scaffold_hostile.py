"""gz new and gz kube never write broken or unsafe output: every value that reaches a file is
either written as given (read back equal) or refused with one ``gz: ...`` line and exit 2, and
nothing lands outside the target directory."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gz.discovery import TargetError, expand_bare_name
from gz.discovery.kubernetes.slices import _fqdn
from gz.scaffold import kube, names
from gz.scaffold.errors import BadInput

from .support import ROOT, run_gz

GREETER_PROTO = str(ROOT / "examples/greeter/greeter.proto")
REQUIREMENT = ["--gz-requirement", "gz>=0.1"]  # no wheel build: fast, and nothing outside


def refused(code: int, err: str) -> bool:
    return code == 2 and err.startswith("gz: ") and err.count("\n") == 1


def files_under(path: Path) -> set[Path]:
    return {item for item in path.rglob("*") if item.is_file()}


# -- 1. a trailing newline is not part of a name -----------------------------------------------
@pytest.mark.parametrize(
    "check",
    [
        names.service_name,
        names.kube_name,
        names.namespace_name,
        names.service_account_name,
        kube.check_name,
    ],
)
def test_a_name_with_a_trailing_newline_is_refused(check):
    assert check("prod") == "prod"
    with pytest.raises(BadInput):
        check("prod\n")


def test_targets_and_host_names_with_a_trailing_newline_are_refused():
    with pytest.raises(TargetError):
        expand_bare_name("greeter\n", {}, discovery="dns")
    with pytest.raises(ValueError, match="not a host name"):
        _fqdn("pod.greeter.shop.svc\n")


def test_kube_namespace_with_a_newline_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "deploy"
    code, _, err = run_gz(
        "kube", "envoy", "--name", "g", "--image", "g:1", "--namespace", "prod\n", "-o", str(out)
    )
    assert refused(code, err) and "namespace" in err
    assert not out.exists()


# -- 2. a name is checked against every use before anything is written -------------------------
def test_new_service_with_an_underscore_names_kubernetes_objects_with_a_dash(tmp_path):
    code, out, err = run_gz("new", "service", "my_svc", "--dir", str(tmp_path / "p"), *REQUIREMENT)
    assert code == 0, err
    assert "deploy/ names the service my-svc" in out
    deployment = yaml.safe_load((tmp_path / "p/deploy/deployment-my-svc.yaml").read_text())
    assert deployment["metadata"]["name"] == "my-svc"
    assert tomllib.loads((tmp_path / "p/pyproject.toml").read_text())["project"]["name"] == "my_svc"


@pytest.mark.parametrize("name", ["shop-", "shop_", "a" * 57, "a" * 63])
def test_a_name_that_fails_any_use_writes_nothing(tmp_path, name):
    target = tmp_path / "p"
    code, _, err = run_gz("new", "service", name, "--dir", str(target), *REQUIREMENT)
    assert refused(code, err), err
    assert not target.exists()
    assert run_gz("new", "service", "shop", "--dir", str(target), *REQUIREMENT)[0] == 0


def test_the_longest_name_gz_new_takes_deploys_in_every_mode(tmp_path):
    name = "a" * kube.NAME_LIMIT
    assert run_gz("new", "service", name, "--dir", str(tmp_path / "p"), *REQUIREMENT)[0] == 0
    for mode in kube.MODES:
        code, _, err = run_gz("kube", mode, "--name", name, "--image", "a:1")
        assert code == 0, (mode, err)


# -- 4. what lands in code and in pyproject.toml ----------------------------------------------
def test_a_proto_whose_stub_module_is_no_python_name_is_refused(tmp_path):
    proto = tmp_path / "x;print(42)#.proto"
    proto.write_text('syntax = "proto3";\nmessage M {}\nservice S { rpc R(M) returns (M); }\n')
    target = tmp_path / "p"
    code, _, err = run_gz("new", "service", "y", "--dir", str(target), "--proto", str(proto))
    assert refused(code, err) and "x;print(42)#_pb2" in err
    assert not target.exists()


@pytest.mark.parametrize(
    "requirement", ['gz @ file:///src/g"z', "gz @ file:///src/g\\z", "gz>=0.1; python_version>'3'"]
)
def test_gz_requirement_is_written_as_a_toml_string(tmp_path, requirement):
    code, _, err = run_gz(
        "new", "service", "hello", "--dir", str(tmp_path), "--gz-requirement", requirement
    )
    assert code == 0, err
    pyproject = tomllib.loads((tmp_path / "pyproject.toml").read_text())
    assert pyproject["project"]["dependencies"] == [requirement]


@pytest.mark.parametrize(
    "requirement", ['gz"]\n[evil]\nx = ["', "requests>=1", "gz>=1\n", "gz @ file:///\x7f"]
)
def test_a_bad_gz_requirement_exits_2_and_writes_nothing(tmp_path, requirement):
    target = tmp_path / "p"
    code, _, err = run_gz(
        "new", "service", "hello", "--dir", str(target), "--gz-requirement", requirement
    )
    assert refused(code, err) and "--gz-requirement" in err
    assert not target.exists()


# -- 5. gz call: every bad input is one line, exit 2 ---------------------------------------------
CALL = ["call", "127.0.0.1:1", "SayHello", "--proto", GREETER_PROTO, "--timeout", "1s"]


@pytest.mark.parametrize(
    "request_json",
    ["[" * 100_000 + "]" * 100_000, '{"name":' * 100_000 + "1" + "}" * 100_000, "5", "null"],
)
def test_call_with_a_deep_or_non_object_request_exits_2_with_one_line(request_json):
    code, _, err = run_gz(*CALL, "-d", "@", stdin=request_json)
    assert refused(code, err), err


@pytest.mark.parametrize(
    "header", ["k: é", "k: a\nb", "k: \x00", "-bin: AAAA", "x-bin: é", ": v", "K Y: v"]
)
def test_call_with_a_bad_header_exits_2_with_one_line(header):
    code, _, err = run_gz(*CALL, "{}", "-H", header)
    assert refused(code, err) and "header" in err, err


# -- 6. ports that one pod would listen on twice -------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "options", "names_"),
    [
        ("envoy", ["--port", "9901"], ["--port", "Envoy's admin port"]),
        ("envoy-sidecar", ["--port", "9901"], ["--port", "Envoy's admin port"]),
        ("envoy-sidecar", ["--metrics-port", "9901"], ["--metrics-port", "admin"]),
        ("envoy-sidecar", ["--metrics-port", "9000"], ["--metrics-port", "sidecar Envoy"]),
        ("headless", ["--metrics-port", "8080"], ["--port", "--metrics-port"]),
        ("mesh", ["--port", "15006"], ["--port", "Istio"]),
    ],
)
def test_colliding_ports_exit_2_naming_both(tmp_path, mode, options, names_):
    out = tmp_path / "deploy"
    code, _, err = run_gz("kube", mode, "--name", "g", "--image", "g:1", *options, "-o", str(out))
    assert refused(code, err), err
    assert all(name in err for name in names_)
    assert not out.exists()


def test_ports_that_share_no_pod_are_fine():
    # the app pods of the envoy mode run no Envoy: its admin port is free there
    assert (
        run_gz("kube", "envoy", "--name", "g", "--image", "g:1", "--metrics-port", "9901")[0] == 0
    )


# -- properties: hostile values for every option that reaches output -----------------------------
HOSTILE = [
    "\n",
    "\r\n",
    "/",
    "../",
    "..",
    '"',
    "'",
    "\\",
    ": x",
    "#",
    " ",
    "é",
    "\u2028",
    "\x00",
    "${X}",
    "{{ x }}",
    "-",
    "_",
    "a" * 60,
]
VALID = ["greeter", "g", "shop", "a1-b2", "my_svc", "g:1", "etcd:2379"]


def hostile() -> st.SearchStrategy[str]:
    piece = st.sampled_from(HOSTILE)
    return st.one_of(
        st.sampled_from(VALID),
        st.builds(lambda base, bad: base + bad, st.sampled_from(VALID), piece),
        st.builds(lambda bad, base: bad + base, piece, st.sampled_from(VALID)),
        st.text(max_size=20),
    )


PROPERTY = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure stays a failure
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Every option of gz kube that takes text and puts it in the output (as the KubeSpec field).
KUBE_OPTIONS = [
    "name", "image", "namespace", "service_account", "etcd_endpoints", "etcd_secret",
    "etcd_tls_secret", "envoy_image", "client", "client_image",
]  # fmt: skip


def applies(field: str, mode: str) -> bool:
    return mode in kube.MODE_OPTIONS.get(field, (mode,))


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def strings(document: object) -> list[str]:
    """Every string in a parsed document, the Envoy config inside a ConfigMap's too."""
    if isinstance(document, dict):
        found = [*document.keys()]
        for value in document.values():
            found += strings(value)
        return found
    if isinstance(document, list):
        return [text for item in document for text in strings(item)]
    if isinstance(document, str):
        return [document, *(strings(yaml.safe_load(document)) if "\n" in document else [])]
    return []


def wrote_or_refused(code: int, err: str, written: set[Path]) -> bool:
    """Whether the command wrote (something); else it refused in one line and wrote nothing."""
    event("written" if code == 0 else "refused")
    if code != 0:
        assert refused(code, err), (code, err)
        assert not written
        return False
    assert written
    return True


@PROPERTY
@given(
    mode=st.sampled_from(list(kube.MODES)),
    values=st.fixed_dictionaries({}, optional={field: hostile() for field in KUBE_OPTIONS}),
    port=st.sampled_from([8080, 9000, 9001, 9090, 9901, 15006]),
    metrics_port=st.sampled_from([0, 8080, 9000, 9001, 9090, 9901]),
)
def test_kube_writes_what_it_was_given_or_exits_2(
    tmp_path_factory, mode, values, port, metrics_port
):
    root = tmp_path_factory.mktemp("kube")
    out = root / "deploy"
    values = {"name": "greeter", "image": "greeter:1", **values}
    given_ = {field: value for field, value in values.items() if applies(field, mode)}
    arguments = [item for field, value in given_.items() for item in (flag(field), value)]
    ports = ["--port", str(port), "--metrics-port", str(metrics_port)]
    code, _, err = run_gz("kube", mode, *arguments, *ports, "-o", str(out))
    written = files_under(root)
    if not wrote_or_refused(code, err, written):
        return
    assert all(path.parent == out and path.suffix == ".yaml" for path in written)
    documents = [yaml.safe_load(path.read_text(encoding="utf-8")) for path in written]
    found = {text for document in documents for text in strings(document)}
    for field, value in given_.items():
        assert value in found or value == "", (field, value)  # "" is the option left at its default
    for document in documents:
        assert document["metadata"]["namespace"] == given_.get("namespace", "default")


@PROPERTY
@given(
    name=hostile(),
    requirement=st.one_of(
        st.just("gz>=0.1"), st.builds(lambda text: "gz @ file:///" + text, hostile())
    ),
)
def test_new_writes_what_it_was_given_or_exits_2(tmp_path_factory, name, requirement):
    root = tmp_path_factory.mktemp("new")
    target = root / "p"
    code, _, err = run_gz(
        "new", "service", name, "--dir", str(target), "--gz-requirement", requirement
    )
    written = files_under(root)
    if not wrote_or_refused(code, err, written):
        return
    assert all(target in path.parents for path in written)
    pyproject = tomllib.loads((target / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["name"] == name
    assert pyproject["project"]["dependencies"] == [requirement]
    kube_name = names.kube_form(name)
    deployment = target / f"deploy/deployment-{kube_name}.yaml"
    assert yaml.safe_load(deployment.read_text(encoding="utf-8"))["metadata"]["name"] == kube_name
