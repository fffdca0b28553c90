"""Settings for servers and clients; every field is read from a ``GZ_`` environment variable.

Each model is built once, at start-up. A bad value raises ``SettingsError`` whose message is one
line naming the variable, the value and the accepted form.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .durations import Duration, parse_duration
from .netaddr import check_advertise_host, check_bind_host, parse_host_port
from .tlsfiles import key_matches_certificate, load_certificates, load_private_key


def _split_commas(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _comma_list(value: object) -> object:
    return _split_commas(value) if isinstance(value, str) else value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(_comma_list)]
"""A list written in the environment as ``a,b,c``."""


def _not_blank(value: str | None, remedy: str) -> str | None:
    """A security setting set but empty is never "off": ValueError saying what to do."""
    if value is not None and not value.strip():
        raise ValueError(f"set but empty: {remedy}")
    return value


def _existing_file(path: str | None) -> str | None:
    if _not_blank(path, "give the path of a PEM file, or unset the variable") is None:
        return None
    if Path(path).is_dir():
        raise ValueError("a directory, not a file")
    if not Path(path).is_file():
        raise ValueError("no such file")
    return path


ExistingFile = Annotated[str | None, AfterValidator(_existing_file)]
"""The path of a file that must exist (a certificate or key), or None when unset."""


def _holds_certificates(path: str | None) -> str | None:
    if path is not None:
        load_certificates(path)
    return path


def _holds_private_key(path: str | None) -> str | None:
    if path is not None:
        load_private_key(path)
    return path


CertificateFile = Annotated[ExistingFile, AfterValidator(_holds_certificates)]
"""A PEM file of one or more certificates (a certificate with its chain, or CAs), or None."""
PrivateKeyFile = Annotated[ExistingFile, AfterValidator(_holds_private_key)]
"""A PEM file with an unencrypted private key, or None."""


class WholeLine(ValueError):
    """A validation problem whose message is the whole line: it names its variables itself, and
    quotes no value that may be a secret (tokens, passwords)."""


def _printable_token(token: str, what: str) -> str:
    """A bearer token as it travels in gRPC metadata; WholeLine without quoting it."""
    token = token.strip()
    if not token:
        raise WholeLine(f"{what} is set but empty: give a token, or unset {what}")
    if not all(" " <= ch <= "~" for ch in token):
        raise WholeLine(
            f"{what}: a token may hold only printable ASCII characters, which is all gRPC "
            "metadata carries (the token is not shown)"
        )
    return token


def _token_list(value: object) -> object:
    """``a,b`` -> ["a", "b"]. Set without a token, or with an empty one between commas, is an
    error: a variable that is set never means "no authentication"."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple) or not value:
        return value  # [] given in code: the default, no authentication
    if not any(isinstance(item, str) and item.strip() for item in value):
        raise WholeLine(
            "GZ_AUTH_TOKENS is set but holds no token: give a comma list of tokens, "
            "or unset it to switch authentication off"
        )
    for number, item in enumerate(value, 1):
        if isinstance(item, str) and not item.strip():
            raise WholeLine(
                f"GZ_AUTH_TOKENS: token {number} of {len(value)} is empty (two commas in a row, "
                "or one at an end): remove it; gz refuses rather than guess what was meant"
            )
    return [_printable_token(t, "GZ_AUTH_TOKENS") if isinstance(t, str) else t for t in value]


TokenList = Annotated[list[str], NoDecode, BeforeValidator(_token_list)]
"""GZ_AUTH_TOKENS: a comma list of bearer tokens, none of them empty."""


class SettingsError(ValueError):
    """A GZ_ variable has a value gz cannot use; the message names it."""


class _GzSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GZ_", extra="ignore", frozen=True)

    @classmethod
    def from_env(cls, **overrides: object):
        """Read the environment (overrides win); SettingsError names the first bad variable."""
        try:
            return cls(**overrides)
        except ValidationError as error:
            raise SettingsError(_describe(error)) from None


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    if isinstance(first.get("ctx", {}).get("error"), WholeLine):
        return str(first["ctx"]["error"])
    field = str(first["loc"][0]) if first["loc"] else "?"
    message = str(first["msg"]).removeprefix("Value error, ")
    if first.get("input") is None:
        return f"GZ_{field.upper()} is not set: {message}"
    return f"bad GZ_{field.upper()}={first.get('input')!r}: {message}"


class EtcdSettings(_GzSettings):
    """How to reach etcd; shared by servers (registration) and clients (etcd:// targets)."""

    etcd_endpoints: CommaList = Field(default_factory=lambda: ["127.0.0.1:2379"])
    etcd_username: str | None = None
    etcd_password: str | None = Field(default=None, validate_default=True)
    etcd_ca: CertificateFile = None
    etcd_cert: CertificateFile = None
    etcd_keyfile: PrivateKeyFile = Field(default=None, validate_default=True)

    @field_validator("etcd_endpoints")
    @classmethod
    def _endpoints_are_host_port(cls, endpoints: list[str]) -> list[str]:
        for endpoint in endpoints:
            parse_host_port(endpoint)
        if not endpoints:
            raise ValueError("expected a comma list of host:port, e.g. 10.0.0.1:2379,10.0.0.2:2379")
        return endpoints

    @field_validator("etcd_username")
    @classmethod
    def _username_not_blank(cls, username: str | None) -> str | None:
        remedy = "give the etcd user, or unset GZ_ETCD_USERNAME and GZ_ETCD_PASSWORD"
        return _not_blank(username, f"{remedy} to connect without authentication")

    @field_validator("etcd_password")
    @classmethod
    def _password_with_username(cls, password: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("etcd_username") and password is None:
            raise ValueError("GZ_ETCD_USERNAME is set, so GZ_ETCD_PASSWORD must be set too")
        if password is not None and "etcd_username" in info.data and not info.data["etcd_username"]:
            raise WholeLine(
                "GZ_ETCD_PASSWORD is set but GZ_ETCD_USERNAME is not: set both, or neither"
            )
        return password

    @field_validator("etcd_keyfile")
    @classmethod
    def _keyfile_with_cert(cls, path: str | None, info: ValidationInfo) -> str | None:
        message = "GZ_ETCD_CERT and GZ_ETCD_KEYFILE go together (client certificate)"
        path = _file_paired_with(path, info, "etcd_cert", message)
        return _key_of_certificate(path, info, "etcd_cert", "GZ_ETCD_CERT", "GZ_ETCD_KEYFILE")


def _file_paired_with(
    path: str | None, info: ValidationInfo, partner: str, message: str
) -> str | None:
    """``path`` set if and only if the field ``partner`` (validated before) is set."""
    if partner in info.data and (path is None) != (info.data[partner] is None):
        raise ValueError(message)
    return path


def _key_of_certificate(
    path: str | None, info: ValidationInfo, partner: str, cert_variable: str, key_variable: str
) -> str | None:
    """``path`` (a key, checked already) belongs to the first certificate in ``partner``."""
    certificate = info.data.get(partner)
    if path is None or certificate is None:
        return path
    if not key_matches_certificate(certificate, path):
        raise WholeLine(
            f"{cert_variable}={certificate!r} and {key_variable}={path!r}: the key does not "
            "match the certificate (the first one in the file, which must be the key's own)"
        )
    return path


def _method_timeouts(value: object) -> object:
    """``SayHello=200ms,/pkg.Svc/Slow=5s`` -> {"SayHello": 0.2, "/pkg.Svc/Slow": 5.0}."""
    if not isinstance(value, str):
        return value
    timeouts = {}
    for item in _split_commas(value):
        method, equals, duration = item.partition("=")
        if not equals or not method.strip():
            raise ValueError(f"expected Method=duration pairs such as SayHello=200ms, got {item!r}")
        timeouts[method.strip()] = seconds = parse_duration(duration)
        if seconds <= 0:
            raise ValueError(
                f"{item!r}: a timeout must be more than 0, or every call fails at once"
            )
    return timeouts


MethodTimeouts = Annotated[dict[str, float], NoDecode, BeforeValidator(_method_timeouts)]


def _lease_ttl(value: object) -> int:
    """A duration (``10``, ``10s``, ``1m``) of whole seconds, 2 s to 1 h: etcd leases count
    whole seconds, and etcd raises shorter TTLs to its own minimum anyway."""
    if not isinstance(value, str | int | float):
        raise ValueError(f"expected a duration such as 10s or 1m, got {value!r}")
    seconds = parse_duration(value)
    whole = round(seconds)
    if abs(seconds - whole) > 1e-6:  # tolerance: 0.1m is 6.000000000000001 in floats
        raise ValueError(f"etcd leases last whole seconds: write e.g. {math.ceil(seconds)}s")
    if not 2 <= whole <= 3600:
        raise ValueError("an etcd lease TTL must be 2s to 1h (e.g. 10s)")
    return whole


LeaseTtl = Annotated[int, BeforeValidator(_lease_ttl)]


def _workers(value: object) -> int:
    from .workers.count import parse_workers  # reads cgroup files only for `auto`

    return parse_workers(value)


Workers = Annotated[int, NoDecode, BeforeValidator(_workers)]
"""GZ_WORKERS: a number of processes, or ``auto`` (one per CPU the container may use)."""

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
"""Upper bounds (seconds) of the latency histograms: 100 µs to 10 s, a superset of Go's
DefBuckets, so a sub-millisecond call gets a bucket of its own and dashboards that pick a Go
bound (``le="0.1"``) still find it."""
_BUCKETS_FORM = "increasing upper bounds in seconds, e.g. 0.0005,0.001,0.01,0.1,1"


def _latency_buckets(value: object) -> object:
    """``0.001,0.01,0.1`` -> (0.001, 0.01, 0.1); checked by _increasing_bounds."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        raise ValueError(f"set but empty: give {_BUCKETS_FORM}, or unset it for the defaults")
    bounds = []
    for item in value.split(","):
        try:
            bounds.append(float(item))
        except ValueError:
            raise ValueError(f"{item.strip()!r} is not seconds: expected {_BUCKETS_FORM}") from None
    return tuple(bounds)


def _increasing_bounds(bounds: tuple[float, ...]) -> tuple[float, ...]:
    if not bounds:
        raise ValueError(f"expected {_BUCKETS_FORM}")
    if not all(math.isfinite(bound) and bound > 0 for bound in bounds):
        raise ValueError("each bound must be a positive number of seconds (+Inf is always added)")
    if any(low >= high for low, high in itertools.pairwise(bounds)):
        raise ValueError(f"the bounds must increase: expected {_BUCKETS_FORM}")
    return bounds


_Bounds = (BeforeValidator(_latency_buckets), AfterValidator(_increasing_bounds))
LatencyBuckets = Annotated[tuple[float, ...], NoDecode, *_Bounds]
"""GZ_METRICS_BUCKETS: ``0.001,0.01,0.1`` (seconds, increasing)."""


class MiddlewareSettings(_GzSettings):
    """The default middleware of servers and clients (docs/middleware.md), their HTTP side and
    TLS."""

    tracing: bool = True
    metrics: bool = True
    metrics_buckets: LatencyBuckets = LATENCY_BUCKETS
    # The HTTP side (probes.py): a server starts it, a process without one on its first connect()
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str | None = None  # unset: the listen host, else 0.0.0.0 (docs/security.md)
    call_log: bool = True
    slow_call: Duration = 0.5
    deadline: bool = True
    tls_cert: CertificateFile = None
    tls_key: PrivateKeyFile = Field(default=None, validate_default=True)
    tls_ca: CertificateFile = None

    @field_validator("metrics_host")
    @classmethod
    def _bindable_host(cls, host: str | None) -> str | None:
        if host is None or not host.strip():
            return None  # unset (or set empty): the listen host
        return check_bind_host(host)

    @field_validator("tls_key")
    @classmethod
    def _key_with_cert(cls, path: str | None, info: ValidationInfo) -> str | None:
        message = "GZ_TLS_CERT and GZ_TLS_KEY go together (certificate and its key)"
        path = _file_paired_with(path, info, "tls_cert", message)
        return _key_of_certificate(path, info, "tls_cert", "GZ_TLS_CERT", "GZ_TLS_KEY")


class ServerSettings(EtcdSettings, MiddlewareSettings):
    """Everything a server reads at start-up (see docs/configuration.md)."""

    name: str = ""
    listen: str = "0.0.0.0:8080"
    advertise_host: str | None = None
    registry: Literal["none", "etcd"] = "none"
    etcd_key: str | None = None
    etcd_ttl: LeaseTtl = 10
    shutdown_drain: Duration = 5.0
    shutdown_grace: Duration = 10.0
    max_connection_age: Duration | None = None  # off; set behind an L4 load balancer
    max_connection_age_grace: Duration = 10.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    reflection: bool = True
    recovery: bool = True
    shed_cpu: float | None = Field(default=None, gt=0, le=100)
    max_concurrency: int | None = Field(default=None, ge=1)
    auth_tokens: TokenList = Field(default_factory=list)
    workers: Workers = 1
    worker_port: int | None = Field(default=None, ge=0, le=65535)  # unset: the listen port + 1

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, listen: str) -> str:
        parse_host_port(listen, listening=True)
        return listen

    @field_validator("advertise_host")
    @classmethod
    def _dialable_host(cls, host: str | None) -> str | None:
        if host is None or not host.strip():
            return None  # unset (or set empty): worked out at start-up, see netaddr
        return check_advertise_host(host)

    @field_validator("tls_ca")
    @classmethod
    def _server_ca_needs_cert(cls, ca: str | None, info: ValidationInfo) -> str | None:
        if ca is not None and info.data.get("tls_cert") is None and "tls_key" in info.data:
            raise ValueError(
                "a TLS server needs its own certificate: set GZ_TLS_CERT and GZ_TLS_KEY too "
                "(GZ_TLS_CA then requires client certificates signed by that CA)"
            )
        return ca

    def worker_ports(self) -> list[int]:
        """The port of each worker of its own (0: any free one), beside the shared listen port.
        Only with GZ_WORKERS above 1."""
        first = self.worker_port
        if first is None:
            _, port = parse_host_port(self.listen, listening=True)
            first = port + 1 if port else 0
        return [first + index if first else 0 for index in range(self.workers)]

    @field_validator("worker_port")
    @classmethod
    def _room_for_every_worker(cls, port: int | None, info: ValidationInfo) -> int | None:
        workers = info.data.get("workers", 1)
        if port and port + workers - 1 > 65535:
            raise ValueError(f"{workers} workers need ports {port} to {port + workers - 1}")
        return port

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, level: object) -> object:
        return level.upper() if isinstance(level, str) else level


# A label value, as topology.kubernetes.io/zone is: alphanumerics at both ends (fullmatch).
_ZONE = re.compile(r"(?=.{1,63}\Z)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


class ClientSettings(EtcdSettings, MiddlewareSettings):
    """Defaults for connect(); arguments to connect() win over these."""

    balancer: Literal["p2c_ewma", "round_robin"] = "p2c_ewma"
    retry_max_attempts: int = Field(default=3, ge=1, le=10)  # 1: no retries
    idempotent_methods: CommaList = Field(default_factory=list)  # pkg.Service/Method or /*
    timeout: Duration | None = None
    discovery: Literal["etcd", "k8s", "dns"] | None = None
    health_check: bool = True
    subset_size: int | None = Field(default=None, ge=0)  # None: 32 above 64 endpoints; 0: off
    client_id: str | None = None  # ranks the subset; default HOSTNAME, else random
    method_timeouts: MethodTimeouts = Field(default_factory=dict)
    auth_token: str | None = None
    tls: bool | None = None  # default: on when GZ_TLS_CA or GZ_TLS_CERT is set
    tls_server_name: str | None = None
    zone: str | None = None  # k8s:// calls stay in this zone while it can carry them

    @field_validator("auth_token", mode="before")
    @classmethod
    def _usable_token(cls, token: object) -> object:
        return _printable_token(token, "GZ_AUTH_TOKEN") if isinstance(token, str) else token

    @field_validator("tls_server_name")
    @classmethod
    def _server_name_not_blank(cls, name: str | None) -> str | None:
        return _not_blank(name, "give the name servers' certificates carry, or unset it")

    @field_validator("client_id")
    @classmethod
    def _client_id_not_blank(cls, client_id: str | None) -> str | None:
        return _not_blank(client_id, "give this client a stable id, or unset it (HOSTNAME)")

    @field_validator("zone")
    @classmethod
    def _zone_label(cls, zone: str | None) -> str | None:
        """Empty is unset: what the downward API gives a pod whose node has no zone label."""
        zone = zone.strip() if zone is not None else None
        if zone and not _ZONE.fullmatch(zone):
            raise ValueError(
                "expected a zone as nodes carry it in topology.kubernetes.io/zone, e.g. "
                "eu-west-1a: up to 63 letters, digits, '-', '_' or '.', a letter or digit at "
                "each end"
            )
        return zone or None

    @field_validator("timeout")
    @classmethod
    def _timeout_above_zero(cls, timeout: float | None) -> float | None:
        if timeout is not None and timeout <= 0:
            raise ValueError(
                "a timeout must be more than 0, or every call fails at once; "
                "leave GZ_TIMEOUT unset for no timeout"
            )
        return timeout
