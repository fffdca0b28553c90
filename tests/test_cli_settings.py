"""gz settings, gz run --print-settings and gz run --listen."""

from __future__ import annotations

import signal

import pytest

import gz

from .support import ServerProcess, run_gz

GREETER = "examples.greeter.server:Greeter"


class CodeSettings(gz.ServerSettings):
    listen: str = "127.0.0.1:7000"  # a gz default the service changes in code
    greeting: str = "hello"  # a setting of the service's own: GZ_GREETING


class Configured(gz.Service):
    settings_class = CodeSettings


pytestmark = pytest.mark.usefixtures("clean_environment")


def rows(out: str, section: str) -> dict[str, tuple[str, str]]:
    """{variable: (value, source)} of one section of the report."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(section))
    table: dict[str, tuple[str, str]] = {}
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        name, value, source = line.split(maxsplit=2)
        table[name] = (value, source)
    return table


def test_settings_name_where_each_value_came_from_and_hide_secrets(clean_environment):
    clean_environment.setenv("GZ_SHUTDOWN_DRAIN", "250ms")
    clean_environment.setenv("GZ_AUTH_TOKENS", "s3cret-one,s3cret-two")
    clean_environment.setenv("GZ_AUTH_TOKEN", "s3cret-three")
    clean_environment.setenv("GZ_ETCD_USERNAME", "gz")
    clean_environment.setenv("GZ_ETCD_PASSWORD", "pa55word")
    clean_environment.setenv("GZ_BALANCER", "round_robin")
    code, out, err = run_gz("settings", GREETER)
    assert code == 0, err
    assert "s3cret" not in out and "pa55word" not in out
    server, client = rows(out, "server settings"), rows(out, "client settings")
    assert out.startswith(f"server settings ({GREETER}):\n")
    assert server["GZ_SHUTDOWN_DRAIN"] == ("250ms", "environment GZ_SHUTDOWN_DRAIN")
    assert server["GZ_SHUTDOWN_GRACE"] == ("10s", "default")
    assert server["GZ_LISTEN"] == ("0.0.0.0:8080", "default")
    assert server["GZ_AUTH_TOKENS"] == ("***", "environment GZ_AUTH_TOKENS")
    assert server["GZ_ETCD_PASSWORD"] == ("***", "environment GZ_ETCD_PASSWORD")
    assert server["GZ_ETCD_USERNAME"] == ("gz", "environment GZ_ETCD_USERNAME")
    assert client["GZ_AUTH_TOKEN"] == ("***", "environment GZ_AUTH_TOKEN")
    assert client["GZ_BALANCER"] == ("round_robin", "environment GZ_BALANCER")
    assert "GZ_BALANCER" not in server and "GZ_LISTEN" not in client


def test_settings_show_what_a_service_sets_in_code(clean_environment):
    code, out, err = run_gz("settings", f"{__name__}:Configured")
    assert code == 0, err
    server = rows(out, "server settings")
    assert server["GZ_LISTEN"] == ("127.0.0.1:7000", "code (CodeSettings)")
    assert server["GZ_GREETING"] == ("hello", "default")
    clean_environment.setenv("GZ_LISTEN", "127.0.0.1:7001")  # the environment wins over code
    assert rows(run_gz("settings", f"{__name__}:Configured")[1], "server settings")[
        "GZ_LISTEN"
    ] == ("127.0.0.1:7001", "environment GZ_LISTEN")


def test_settings_outside_a_project_report_gz_defaults_and_ignored_variables(
    clean_environment, tmp_path
):
    clean_environment.chdir(tmp_path)
    clean_environment.setenv("GZ_METRIC_PORT", "9090")
    code, out, err = run_gz("settings")
    assert code == 0, err
    assert out.startswith("server settings:\n")
    assert rows(out, "server settings")["GZ_METRICS_PORT"] == ("(unset)", "default")
    assert "  GZ_METRIC_PORT  did you mean GZ_METRICS_PORT?" in out.splitlines()


def test_a_bad_value_exits_2_with_the_settings_line(clean_environment):
    clean_environment.setenv("GZ_SHUTDOWN_DRAIN", "soon")
    code, out, err = run_gz("settings", GREETER)
    assert code == 2 and out == ""
    assert err.startswith("gz: bad GZ_SHUTDOWN_DRAIN='soon'") and err.count("\n") == 1


def test_run_print_settings_shows_listen_from_the_option_and_exits_0(clean_environment):
    clean_environment.setenv("GZ_LISTEN", "127.0.0.1:7001")
    code, out, err = run_gz("run", GREETER, "--print-settings", "--listen", "127.0.0.1:7002")
    assert code == 0, err
    assert rows(out, "server settings")["GZ_LISTEN"] == ("127.0.0.1:7002", "--listen")
    same = run_gz("settings", GREETER)[1]  # the same report as gz settings, --listen aside
    assert rows(same, "server settings")["GZ_LISTEN"] == ("127.0.0.1:7001", "environment GZ_LISTEN")
    assert {**rows(same, "server settings"), "GZ_LISTEN": None} == {
        **rows(out, "server settings"),
        "GZ_LISTEN": None,
    }
    assert rows(same, "client settings") == rows(out, "client settings")


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:70000", "[::1:80"])
def test_run_listen_is_checked_as_gz_listen_is(listen):
    code, _, err = run_gz("run", GREETER, "--listen", listen)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"gz: Invalid value for '--listen': {listen!r}")


@pytest.mark.parametrize("reload", [False, True])
async def test_run_listens_where_listen_says_with_or_without_reload(reload):
    flags = ["--reload"] if reload else []
    server = ServerProcess("-m", "gz.scaffold.cli", "run", GREETER, *flags)
    server.command = (*server.command, "--listen", server.address)
    server.env["GZ_LISTEN"] = "127.0.0.1:1"  # --listen wins over GZ_LISTEN (and the reload child)
    try:
        server.start()
        await server.wait_serving()
        server.signal(signal.SIGTERM)  # the reloader stops its child, then exits 0
        assert await server.wait_exit() == 0
    finally:
        server.kill()
