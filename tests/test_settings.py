"""GZ_* variables: each one read from the environment, and one clear line for each bad value."""

from __future__ import annotations

import pytest

from gz import netaddr, variables
from gz.durations import parse_duration
from gz.settings import (
    LATENCY_BUCKETS,
    ClientSettings,
    EtcdSettings,
    ServerSettings,
    SettingsError,
)

pytestmark = pytest.mark.usefixtures("clean_environment")


def test_defaults_without_any_variable():
    server = ServerSettings.from_env()
    assert (server.name, server.listen, server.advertise_host) == ("", "0.0.0.0:8080", None)
    assert (server.registry, server.etcd_key, server.etcd_ttl) == ("none", None, 10)
    assert (server.shutdown_drain, server.shutdown_grace) == (5.0, 10.0)
    assert (server.log_level, server.log_format) == ("INFO", "text")
    assert server.etcd_endpoints == ["127.0.0.1:2379"]
    client = ClientSettings.from_env()
    assert (client.balancer, client.timeout, client.discovery, client.health_check) == (
        "p2c_ewma", None, None, True,
    )  # fmt: skip
    assert client.metrics_buckets == server.metrics_buckets == LATENCY_BUCKETS
    assert (LATENCY_BUCKETS[0], LATENCY_BUCKETS[-1]) == (0.0001, 10.0)  # 100 µs to 10 s
    assert (client.metrics_port, client.metrics_host) == (None, None)  # no HTTP side


@pytest.mark.parametrize(
    ("variable", "text", "field", "value"),
    [
        ("GZ_NAME", "greeter", "name", "greeter"),
        ("GZ_LISTEN", "127.0.0.1:9000", "listen", "127.0.0.1:9000"),
        ("GZ_LISTEN", "[::1]:9000", "listen", "[::1]:9000"),
        ("GZ_ADVERTISE_HOST", "10.0.0.7", "advertise_host", "10.0.0.7"),
        ("GZ_ADVERTISE_HOST", "greeter-0.greeter", "advertise_host", "greeter-0.greeter"),
        ("GZ_ADVERTISE_HOST", "fd00::7", "advertise_host", "fd00::7"),
        ("GZ_ADVERTISE_HOST", "[fd00::7]", "advertise_host", "fd00::7"),
        ("GZ_ADVERTISE_HOST", "", "advertise_host", None),  # set empty: as if unset
        ("GZ_REGISTRY", "etcd", "registry", "etcd"),
        ("GZ_ETCD_KEY", "greeter.rpc", "etcd_key", "greeter.rpc"),
        ("GZ_ETCD_TTL", "30", "etcd_ttl", 30),
        ("GZ_ETCD_TTL", "2", "etcd_ttl", 2),
        ("GZ_ETCD_TTL", "10s", "etcd_ttl", 10),
        ("GZ_ETCD_TTL", "1m", "etcd_ttl", 60),
        ("GZ_ETCD_TTL", "0.1m", "etcd_ttl", 6),
        ("GZ_ETCD_TTL", "2000ms", "etcd_ttl", 2),
        ("GZ_ETCD_TTL", "1h", "etcd_ttl", 3600),
        ("GZ_SHUTDOWN_DRAIN", "500ms", "shutdown_drain", 0.5),
        ("GZ_SHUTDOWN_GRACE", "2m", "shutdown_grace", 120.0),
        ("GZ_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("GZ_LOG_FORMAT", "json", "log_format", "json"),
        ("GZ_ETCD_ENDPOINTS", "10.0.0.1:2379, 10.0.0.2:2379", "etcd_endpoints",
         ["10.0.0.1:2379", "10.0.0.2:2379"]),
        ("GZ_ETCD_USERNAME", "root", "etcd_username", "root"),
    ],
)  # fmt: skip
def test_server_variable_is_read(clean_environment, variable, text, field, value):
    clean_environment.setenv(variable, text)
    if variable == "GZ_ETCD_USERNAME":
        clean_environment.setenv("GZ_ETCD_PASSWORD", "secret")  # they go together
    assert getattr(ServerSettings.from_env(), field) == value


@pytest.mark.parametrize(
    ("variable", "text", "field", "value"),
    [
        ("GZ_BALANCER", "round_robin", "balancer", "round_robin"),
        ("GZ_BALANCER", "p2c_ewma", "balancer", "p2c_ewma"),
        ("GZ_RETRY_MAX_ATTEMPTS", "1", "retry_max_attempts", 1),
        ("GZ_IDEMPOTENT_METHODS", "a.B/Get, a.C/*", "idempotent_methods", ["a.B/Get", "a.C/*"]),
        ("GZ_TIMEOUT", "1.5", "timeout", 1.5),
        ("GZ_TIMEOUT", "1ms", "timeout", 0.001),
        ("GZ_METHOD_TIMEOUTS", "SayHello=200ms", "method_timeouts", {"SayHello": 0.2}),
        ("GZ_DISCOVERY", "etcd", "discovery", "etcd"),
        ("GZ_DISCOVERY", "k8s", "discovery", "k8s"),
        ("GZ_DISCOVERY", "dns", "discovery", "dns"),
        ("GZ_HEALTH_CHECK", "false", "health_check", False),
        ("GZ_ETCD_ENDPOINTS", "etcd-0.etcd:2379", "etcd_endpoints", ["etcd-0.etcd:2379"]),
        ("GZ_METRICS_BUCKETS", "0.0005, 0.001,1e-1", "metrics_buckets", (0.0005, 0.001, 0.1)),
        ("GZ_METRICS_PORT", "9091", "metrics_port", 9091),  # a process that only calls
        ("GZ_METRICS_HOST", "127.0.0.1", "metrics_host", "127.0.0.1"),
    ],
)
def test_client_variable_is_read(clean_environment, variable, text, field, value):
    clean_environment.setenv(variable, text)
    assert getattr(ClientSettings.from_env(), field) == value


def test_etcd_credentials_and_tls_files_are_read(clean_environment, pki):
    files = {"ca": pki["ca"], "cert": pki["client_cert"], "key": pki["client_key"]}
    clean_environment.setenv("GZ_ETCD_USERNAME", "root")
    clean_environment.setenv("GZ_ETCD_PASSWORD", "secret")
    clean_environment.setenv("GZ_ETCD_CA", str(files["ca"]))
    clean_environment.setenv("GZ_ETCD_CERT", str(files["cert"]))
    clean_environment.setenv("GZ_ETCD_KEYFILE", str(files["key"]))
    etcd = EtcdSettings.from_env()
    assert (etcd.etcd_username, etcd.etcd_password) == ("root", "secret")
    assert (etcd.etcd_ca, etcd.etcd_cert, etcd.etcd_keyfile) == (
        str(files["ca"]), str(files["cert"]), str(files["key"]),
    )  # fmt: skip


def test_arguments_win_over_the_environment(clean_environment):
    clean_environment.setenv("GZ_LISTEN", "127.0.0.1:9000")
    assert ServerSettings.from_env(listen="127.0.0.1:9001").listen == "127.0.0.1:9001"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0.5", 0.5), ("2", 2.0), ("500ms", 0.5), ("10s", 10.0), ("2m", 120.0), ("1h", 3600.0),
     ("1.5s", 1.5), (".25", 0.25), ("0", 0.0)],
)  # fmt: skip
def test_durations(clean_environment, text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)
    clean_environment.setenv("GZ_SHUTDOWN_DRAIN", text)
    assert ServerSettings.from_env().shutdown_drain == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("settings", "variable", "text"),
    [
        (ServerSettings, "GZ_SHUTDOWN_DRAIN", "soon"),
        (ServerSettings, "GZ_SHUTDOWN_DRAIN", "5 minutes"),
        (ServerSettings, "GZ_SHUTDOWN_GRACE", "-1s"),
        (ServerSettings, "GZ_SHUTDOWN_GRACE", "10d"),
        (ClientSettings, "GZ_TIMEOUT", "1x"),
        (ClientSettings, "GZ_BALANCER", "least_conn"),
        (ClientSettings, "GZ_RETRY_MAX_ATTEMPTS", "0"),
        (ServerSettings, "GZ_LISTEN", "8080"),
        (ServerSettings, "GZ_LISTEN", "localhost"),
        (ServerSettings, "GZ_LISTEN", "::1:8080"),
        (ServerSettings, "GZ_LISTEN", "127.0.0.1:99999"),
        (ServerSettings, "GZ_REGISTRY", "consul"),
        (ServerSettings, "GZ_ETCD_TTL", "1"),
        (ServerSettings, "GZ_ETCD_TTL", "3601"),
        (ServerSettings, "GZ_ETCD_TTL", "ten"),
        (ServerSettings, "GZ_ETCD_TTL", "1.5"),
        (ServerSettings, "GZ_ETCD_TTL", "2500ms"),
        (ServerSettings, "GZ_ETCD_TTL", "1s"),
        (ServerSettings, "GZ_ETCD_TTL", "2h"),
        (ServerSettings, "GZ_ETCD_TTL", "-5s"),
        (ClientSettings, "GZ_TIMEOUT", "0"),
        (ClientSettings, "GZ_TIMEOUT", "0s"),
        (ClientSettings, "GZ_TIMEOUT", "0ms"),
        (ClientSettings, "GZ_METHOD_TIMEOUTS", "SayHello=0"),
        (ServerSettings, "GZ_ADVERTISE_HOST", "0.0.0.0"),
        (ServerSettings, "GZ_ADVERTISE_HOST", "::"),
        (ServerSettings, "GZ_ADVERTISE_HOST", "[::]"),
        (ServerSettings, "GZ_ADVERTISE_HOST", "10.0.0.1:80"),
        (ServerSettings, "GZ_ADVERTISE_HOST", "[fd00::1]:80"),
        (ServerSettings, "GZ_ADVERTISE_HOST", "greeter:8080"),
        (ServerSettings, "GZ_ADVERTISE_HOST", "http://10.0.0.1"),
        (ServerSettings, "GZ_ETCD_ENDPOINTS", "10.0.0.1:2379,10.0.0.2"),
        (ClientSettings, "GZ_ETCD_ENDPOINTS", "http//etcd:2379"),
        (ClientSettings, "GZ_ETCD_ENDPOINTS", ","),
        (ClientSettings, "GZ_ETCD_ENDPOINTS", "127.0.0.1:0"),
        (ServerSettings, "GZ_LOG_LEVEL", "LOUD"),
        (ServerSettings, "GZ_LOG_FORMAT", "xml"),
        (ClientSettings, "GZ_BALANCER", "random"),
        (ClientSettings, "GZ_DISCOVERY", "consul"),
        (ClientSettings, "GZ_HEALTH_CHECK", "maybe"),
        (ClientSettings, "GZ_ETCD_CA", "/nonexistent/ca.pem"),
    ],
)
def test_a_bad_value_is_one_line_naming_variable_and_value(
    clean_environment, settings, variable, text
):
    clean_environment.setenv(variable, text)
    with pytest.raises(SettingsError) as raised:
        settings.from_env()
    message = str(raised.value)
    assert "\n" not in message
    assert variable in message
    assert repr(text) in message


@pytest.mark.parametrize(
    ("variable", "text", "advice"),
    [
        ("GZ_TIMEOUT", "0", "leave GZ_TIMEOUT unset for no timeout"),
        ("GZ_ETCD_TTL", "2.5s", "whole seconds: write e.g. 3s"),
        ("GZ_ETCD_TTL", "1s", "2s to 1h"),
        ("GZ_ADVERTISE_HOST", "0.0.0.0", "wildcard that no client can dial"),
        ("GZ_ADVERTISE_HOST", "10.0.0.1:80", "without a port"),
        ("GZ_METRICS_BUCKETS", "1ms,10ms", "'1ms' is not seconds"),
        ("GZ_METRICS_BUCKETS", "0.1,0.01", "the bounds must increase"),
        ("GZ_METRICS_BUCKETS", "0,0.1", "a positive number of seconds (+Inf is always added)"),
        ("GZ_METRICS_BUCKETS", "0.1,+Inf", "(+Inf is always added)"),
        ("GZ_METRICS_BUCKETS", "0.1,,1", "'' is not seconds"),
        ("GZ_METRICS_BUCKETS", " ", "set but empty"),
    ],
)
def test_a_bad_value_says_what_to_do(clean_environment, variable, text, advice):
    clean_environment.setenv(variable, text)
    settings = ClientSettings if variable == "GZ_TIMEOUT" else ServerSettings
    with pytest.raises(SettingsError, match=f"^bad {variable}=") as raised:
        settings.from_env()
    assert advice in str(raised.value)


@pytest.mark.parametrize(
    ("variable", "companion"),
    [("GZ_ETCD_USERNAME", "GZ_ETCD_PASSWORD"), ("GZ_ETCD_CERT", "GZ_ETCD_KEYFILE")],
)
def test_a_missing_companion_variable_is_named(clean_environment, pki, variable, companion):
    clean_environment.setenv(variable, pki["client_cert"])
    with pytest.raises(SettingsError) as raised:
        ClientSettings.from_env()
    message = str(raised.value)
    assert "\n" not in message
    assert companion in message


def test_a_settings_error_is_a_value_error():
    assert issubclass(SettingsError, ValueError)


# -- the advertised host: GZ_ADVERTISE_HOST, a specific listen host, POD_IP, this machine ------
@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """No POD_IP, and a machine whose first non-loopback address a test sets in ["address"]."""
    monkeypatch.delenv("POD_IP", raising=False)
    found: dict[str, str | None] = {"address": "192.168.1.20"}
    monkeypatch.setattr(netaddr, "first_non_loopback_address", lambda: found["address"])
    return found


@pytest.mark.parametrize(
    ("configured", "listen_host", "pod_ip", "address", "advertised"),
    [
        ("10.0.0.7", "10.1.1.1", "10.2.2.2", "192.168.1.20", "10.0.0.7"),  # GZ_ADVERTISE_HOST
        (None, "10.1.1.1", "10.2.2.2", "192.168.1.20", "10.1.1.1"),  # then a specific listen host
        (None, "127.0.0.1", "10.2.2.2", "192.168.1.20", "127.0.0.1"),
        (None, "0.0.0.0", "10.2.2.2", "192.168.1.20", "10.2.2.2"),  # then POD_IP
        (None, "::", "fd00::2", "192.168.1.20", "fd00::2"),
        (None, "0.0.0.0", None, "192.168.1.20", "192.168.1.20"),  # then this machine's address
        (None, "0.0.0.0", "0.0.0.0", "192.168.1.20", "192.168.1.20"),  # a wildcard POD_IP: no
        (None, "0.0.0.0", None, None, "127.0.0.1"),  # then loopback, never a wildcard
    ],
)
def test_the_advertised_host_in_order(
    monkeypatch, machine, configured, listen_host, pod_ip, address, advertised
):
    if pod_ip is not None:
        monkeypatch.setenv("POD_IP", pod_ip)
    machine["address"] = address
    assert netaddr.advertise_host(listen_host, configured) == advertised


async def test_a_server_advertises_gz_advertise_host_over_everything(
    clean_environment, machine, serve_greeter
):
    clean_environment.setenv("GZ_ADVERTISE_HOST", "10.0.0.7")
    clean_environment.setenv("POD_IP", "10.2.2.2")
    service = await serve_greeter()  # listens on 127.0.0.1, a specific host
    assert service.server.address == f"10.0.0.7:{service.server.port}"


# -- GZ_* names gz does not know -------------------------------------------------------------
@pytest.fixture
def fresh_check(clean_environment):
    """A process that has not checked its variables yet."""
    clean_environment.setattr(variables, "_reported", set())
    clean_environment.setattr(variables, "_checked", False)
    return clean_environment


def unknown_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("gz") and "is not a gz variable" in record.getMessage()
    ]


def test_a_misspelt_variable_is_warned_about_with_the_closest_name(fresh_check, caplog):
    fresh_check.setenv("GZ_METRIC_PORT", "9090")
    fresh_check.setenv("GZ_TIMOUT", "2s")
    fresh_check.setenv("GZ_ZZZQQQ", "1")
    variables.warn_unknown_variables()
    assert sorted(unknown_warnings(caplog)) == [
        "GZ_METRIC_PORT is not a gz variable and is ignored; did you mean GZ_METRICS_PORT?",
        "GZ_TIMOUT is not a gz variable and is ignored; did you mean GZ_TIMEOUT?",
        "GZ_ZZZQQQ is not a gz variable and is ignored; docs/configuration.md lists them",
    ]
    assert all(record.levelname == "WARNING" for record in caplog.records)


def test_known_and_dynamic_variables_are_not_warned_about(fresh_check, caplog):
    class OwnSettings(ServerSettings):
        greeting: str = "hello"  # a service's own field: GZ_GREETING

    known = {"GZ_LISTEN": "127.0.0.1:1", "GZ_TIMEOUT": "2s", "GZ_ETCD_TTL": "10s", "gz_name": "x"}
    for name, value in {**known, "GZ_TARGET_ORDER_API": "direct:///127.0.0.1:1"}.items():
        fresh_check.setenv(name, value)
    fresh_check.setenv("GZ_GREETING", "hi")
    fresh_check.setenv("GZ_TARGET", "x")  # no <NAME>: not a target variable
    variables.warn_unknown_variables()
    assert unknown_warnings(caplog) == [
        "GZ_TARGET is not a gz variable and is ignored; did you mean GZ_TARGET_<NAME>?"
    ]
    assert OwnSettings.from_env().greeting == "hi"


async def test_connect_checks_once_per_process_and_servers_at_start(
    fresh_check, caplog, serve_greeter
):
    import gz

    fresh_check.setenv("GZ_BALANCR", "round_robin")
    for _ in range(3):
        async with gz.connect("direct:///127.0.0.1:1"):
            pass
    assert unknown_warnings(caplog) == [
        "GZ_BALANCR is not a gz variable and is ignored; did you mean GZ_BALANCER?"
    ]
    fresh_check.setenv("GZ_SHUTDOWN_DRAINN", "1s")
    async with gz.connect("direct:///127.0.0.1:1"):
        pass  # checked already: connect costs nothing more
    assert len(unknown_warnings(caplog)) == 1
    await serve_greeter()  # a server checks at start-up: only the new name is told
    assert unknown_warnings(caplog)[1:] == [
        "GZ_SHUTDOWN_DRAINN is not a gz variable and is ignored; did you mean GZ_SHUTDOWN_DRAIN?"
    ]
    await serve_greeter()
    assert len(unknown_warnings(caplog)) == 2  # each name once per process
