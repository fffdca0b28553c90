"""gz's exit codes and error lines as docs/cli.md states them: 2 for bad input, 1 for a failure
of the world, each with exactly one line on stderr that starts with a single ``gz: ``."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from gz.scaffold import kube

from .support import ROOT, free_port, gz_command, run_gz


def one_gz_line(err: str) -> str:
    assert err.startswith("gz: ") and err.count("\n") == 1, err
    assert not err.startswith(("gz: gz ", "gz: gz:")), err  # one prefix, not the command again
    return err


def test_resolve_exits_1_when_the_target_has_no_endpoints(etcd):
    target = f"etcd://{etcd.endpoint}/nosuch"
    code, out, err = run_gz("resolve", target)
    assert code == 1 and out == f"{target}: 0 endpoints\n"
    assert one_gz_line(err) == f"gz: {target}: no endpoints\n"
    code, out, err = run_gz("resolve", target, "--json")
    assert code == 1 and json.loads(out) == {"target": target, "endpoints": []}
    one_gz_line(err)


def test_resolve_says_1_endpoint():
    code, out, err = run_gz("resolve", "direct:///127.0.0.1:1")
    assert code == 0, err
    assert out == "direct:///127.0.0.1:1: 1 endpoint\n  127.0.0.1:1\n"


def test_resolve_watch_prints_an_empty_set_and_keeps_watching(etcd):
    target = f"etcd://{etcd.endpoint}/nosuch"
    watching = subprocess.Popen(
        gz_command("resolve", target, "--watch"), stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert watching.stdout.readline() == f"{target}: 0 endpoints\n"
        etcd.etcdctl("put", "nosuch/1", "127.0.0.1:1001")
        assert watching.stdout.readline() == f"{target}: 1 endpoint\n"
        watching.send_signal(signal.SIGINT)  # Ctrl-C ends a watch: not a failure
        assert watching.wait(10) == 0
    finally:
        watching.kill()
        watching.wait()


def test_health_counts_endpoints_in_the_singular_too():
    target = f"direct:///127.0.0.1:{free_port()}"  # nobody listens
    code, out, err = run_gz("health", target, "--timeout", "2s")
    assert code == 1 and out.endswith(" UNAVAILABLE\n")
    assert one_gz_line(err) == "gz: 1 of 1 endpoint not SERVING\n"


def test_kube_without_a_mode_names_the_modes_on_one_line():
    code, _, err = run_gz("kube")
    assert code == 2
    one_gz_line(err)
    assert "Missing argument 'MODE'" in err and ", ".join(kube.MODES) in err


@pytest.mark.parametrize("command", ["gen", "run"])
def test_commands_outside_a_project_say_so_with_one_prefix(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_gz(command)
    assert code == 2
    assert one_gz_line(err).startswith("gz: no pyproject.toml with [tool.gz] service")
    assert f"`gz {command}`" in err


@pytest.mark.parametrize(
    "arguments",
    [
        ["nope"],
        ["new", "service"],
        ["new", "service", "Bad_Name"],
        ["gen", "missing.proto"],
        ["run", "no_such_module:Service"],
        ["run", "examples.greeter.server:Greeter", "--listen", "127.0.0.1"],
        ["settings", "examples.greeter.server:Nope"],
        ["kube", "nope", "--name", "a", "--image", "b"],
        ["kube", "headless", "--name", "a", "--image", "b", "--workers", "0"],
        ["resolve"],
        ["resolve", "nope://x"],
        ["call", "direct:///127.0.0.1:1", "Method", "-H", "no colon"],
        ["health", "nope://x"],
    ],
)
def test_bad_input_exits_2_with_one_gz_line(arguments):
    code, _, err = run_gz(*arguments)
    assert code == 2, err
    one_gz_line(err)
