"""gz call and gz health against greeter processes, over direct:// and etcd://.

The tests are plain functions: the gz commands run their own event loop (asyncio.run), as they
do on the command line, so no loop may be running around them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from opentelemetry.semconv.attributes.server_attributes import SERVER_PORT
from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME

from gz.scaffold.cli import main

from .support import ServerProcess, direct, run_gz


@pytest.fixture(scope="module")
def replicas():
    """Two greeter processes, SERVING, shared by the tests that leave them running."""
    started = [ServerProcess().start(), ServerProcess().start()]
    try:
        for replica in started:
            asyncio.run(replica.wait_serving())
        yield started
    finally:
        for replica in started:
            replica.kill()


def test_call_every_kind_over_direct(replicas):
    target = direct(replicas)
    code, out, err = run_gz("call", target, "SayHello", '{"name": "gz"}')
    assert code == 0, err
    reply = json.loads(out)
    assert reply["message"] == "Hello, gz!"
    assert reply["servedBy"] in {replica.address for replica in replicas}
    code, out, err = run_gz("call", target, "greeter.v1.Greeter/LotsOfReplies", '{"count": 2}')
    assert code == 0, err
    assert [json.loads(line)["message"] for line in out.splitlines()] == [
        "Hello, ! (1/2)",
        "Hello, ! (2/2)",
    ]
    code, out, err = run_gz(
        "call", target, "Greeter.LotsOfGreetings", "-", stdin='[{"name": "a"}, {"name": "b"}]'
    )
    assert code == 0, err
    assert json.loads(out)["message"] == "Hello, a, b!"


def test_call_host_port_like_grpcurl(replicas):
    code, out, err = run_gz("call", replicas[0].address, "SayHello", '{"name":"x"}')
    assert code == 0, err
    assert json.loads(out) == {"message": "Hello, x!", "servedBy": replicas[0].address}


def test_calls_are_balanced_over_the_endpoints(replicas):
    served = set()
    for _ in range(20):
        code, out, err = run_gz("call", direct(replicas), "SayHello")
        assert code == 0, err
        served.add(json.loads(out)["servedBy"])
    # each gz call is a new client whose picks are spread over both replicas: that all 20 land
    # on one has a chance of 2 in a million
    assert served == {replica.address for replica in replicas}


@pytest.mark.parametrize(
    ("variable", "value"), [("GZ_BALANCER", "bogus"), ("GZ_TLS_CA", "/no/such/ca.pem")]
)
def test_call_with_a_bad_setting_says_which_in_one_line(replicas, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    code, out, err = run_gz("call", direct(replicas), "SayHello")
    assert code == 2 and out == ""
    assert err.startswith("gz: ") and variable in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("method", "request_json", "says"),
    [
        ("Nope", "{}", "no service offers 'Nope'"),
        ("greeter.v1.Greeter/Nope", "{}", "has no method 'Nope'"),
        ("SayHello", "{not json", "the request is not JSON"),
        ("SayHello", '{"nam": 1}', "greeter.v1.HelloRequest"),
        ("SayHello", "[{}]", "takes one JSON object"),
    ],
)
def test_bad_calls_exit_2_with_one_line(replicas, method, request_json, says):
    code, _, err = run_gz("call", direct(replicas[:1]), method, request_json)
    assert code == 2
    assert err.startswith("gz: ") and err.count("\n") == 1 and says in err


def test_a_failed_call_exits_1_naming_the_status(replicas):
    code, _, err = run_gz(
        "call", direct(replicas[:1]), "SayHello", '{"delaySeconds": 2}', "--timeout", "300ms"
    )
    assert code == 1
    assert err.startswith("gz: /greeter.v1.Greeter/SayHello: DEADLINE_EXCEEDED")


def test_health_over_direct(replicas):
    code, out, err = run_gz("health", direct(replicas), "--service", "greeter.v1.Greeter")
    assert code == 0, err
    assert sorted(out.splitlines()) == sorted(f"{r.address} SERVING" for r in replicas)
    code, out, err = run_gz("health", direct(replicas), "--service", "no.Such")
    assert code == 1 and "2 of 2 endpoints not SERVING" in err
    assert "SERVICE_UNKNOWN" in out


def test_health_fails_when_one_endpoint_is_down_or_draining(server_process):
    serving, down, draining = (server_process(GZ_SHUTDOWN_DRAIN="5s") for _ in range(3))
    for replica in (serving, down, draining):
        asyncio.run(replica.wait_serving())
    draining.signal(signal.SIGTERM)
    down.kill()
    code, out, err = run_gz("health", direct([serving, down, draining]), "--timeout", "1s")
    assert code == 1
    statuses = dict(line.split() for line in out.splitlines())
    assert statuses[serving.address] == "SERVING"
    assert statuses[down.address] == "UNAVAILABLE"
    assert statuses[draining.address] == "NOT_SERVING"
    assert err == "gz: 2 of 3 endpoints not SERVING\n"


def test_call_and_health_over_etcd(etcd, server_process):
    env = {
        "GZ_REGISTRY": "etcd",
        "GZ_ETCD_ENDPOINTS": etcd.endpoint,
        "GZ_ADVERTISE_HOST": "127.0.0.1",
    }
    replicas = [server_process(**env), server_process(**env)]
    asyncio.run(etcd.wait_registered({r.address for r in replicas}, timeout=20))
    target = f"etcd://{etcd.endpoint}/greeter"
    code, out, err = run_gz("health", target)
    assert code == 0, err
    assert sorted(out.splitlines()) == sorted(f"{r.address} SERVING" for r in replicas)
    code, out, err = run_gz("call", target, "SayHello", '{"name": "etcd"}')
    assert code == 0, err
    assert json.loads(out)["message"] == "Hello, etcd!"
    code, out, err = run_gz("resolve", target, "--json")
    assert sorted(json.loads(out)["endpoints"]) == sorted(r.address for r in replicas)


def test_health_over_tls_uses_the_client_tls_settings(server_process, pki, monkeypatch):
    replica = server_process(GZ_TLS_CERT=pki["server_cert"], GZ_TLS_KEY=pki["server_key"])
    monkeypatch.setenv("GZ_TLS_CA", pki["ca"])
    for _ in range(200):  # the test's own health probe speaks plaintext: ask gz health
        code, out, err = run_gz("health", direct([replica]), "--timeout", "1s")
        if code == 0 or replica.process.poll() is not None:
            break
        time.sleep(0.1)
    assert (code, out) == (0, f"{replica.address} SERVING\n"), replica.stderr()
    monkeypatch.delenv("GZ_TLS_CA")
    code, out, err = run_gz("health", direct([replica]), "--timeout", "1s")
    assert (code, out) == (1, f"{replica.address} UNAVAILABLE\n")
    monkeypatch.setenv("GZ_TLS_CA", "/no/such/ca.pem")
    code, out, err = run_gz("health", direct([replica]))
    assert code == 2 and err.startswith("gz: ") and "GZ_TLS_CA" in err, err


def test_bad_targets_exit_2():
    for command in (["call", "nope://x", "SayHello"], ["health", "direct:///x"]):
        code, _, err = run_gz(*command)
        assert code == 2 and err.startswith("gz: bad target") and err.count("\n") == 1


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["new"],
        ["new", "service"],
        ["gen"],
        ["run"],
        ["kube"],
        ["resolve"],
        ["call"],
        ["list"],
        ["describe"],
        ["health"],
    ],
)
def test_every_command_has_help(command):
    code, out, _ = run_gz(*command, "--help")
    assert code == 0 and out.startswith("Usage: gz")


def test_shell_completion_script():
    result = CliRunner().invoke(main, [], env={"_GZ_COMPLETE": "bash_source"}, prog_name="gz")
    assert result.exit_code == 0
    assert "_GZ_COMPLETE=bash_complete" in result.stdout


def test_call_spans_name_the_cli_and_leave_reflection_out(replicas):
    """With tracing on, gz call's spans name the service gz-cli, and its reflection look-ups
    make none: one client span, for the call asked for. (A process of its own: tracing is set
    up once per process.)"""
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console"}
    env.pop("OTEL_SERVICE_NAME", None)
    command = [sys.executable, "-m", "gz.scaffold.cli", "call", replicas[0].address, "SayHello"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    decoder, documents, index = json.JSONDecoder(), [], 0
    while index < len(done.stdout):  # the reply, then the spans: JSON objects one after another
        document, index = decoder.raw_decode(done.stdout, index)
        documents.append(document)
        while index < len(done.stdout) and done.stdout[index].isspace():
            index += 1
    spans = [d for d in documents if "kind" in d]
    assert [s["name"] for s in spans] == ["greeter.v1.Greeter/SayHello"]
    (span,) = spans
    assert span["kind"] == "SpanKind.CLIENT"
    assert span["resource"]["attributes"][SERVICE_NAME] == "gz-cli"
    assert span["attributes"][SERVER_PORT] == int(replicas[0].address.rpartition(":")[2])
