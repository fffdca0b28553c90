"""Target strings: ``scheme://authority/endpoint?params`` or a bare logical service name."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

FORMS: dict[str, str] = {
    "direct": "direct:///host1:port1,host2:port2",
    "dns": "dns:///name:port or dns:///name:port?refresh=10s",
    "etcd": "etcd://host1:2379,host2:2379/KEY or etcd:///KEY",
    "k8s": "k8s://namespace/service:port or k8s:///service:port",
}
FULL_FORMS = "; ".join(FORMS.values())
ALL_FORMS = FULL_FORMS + "; or a bare service name such as greeter"

_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://(.*)$", re.IGNORECASE | re.DOTALL)
_BARE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?(:[A-Za-z0-9-]+)?")
# A bare name with GZ_DISCOVERY becomes one of these; k8s uses the port named "grpc".
_DISCOVERY_TEMPLATES = {
    "etcd": "etcd:///{name}",
    "k8s": "k8s:///{name}:{port}",
    "dns": "dns:///{name}:{port}",
}
_DEFAULT_PORTS = {"k8s": "grpc", "dns": "8080"}


class TargetError(ValueError):
    """A target gz cannot use; the message quotes it and shows the right form."""


@dataclass(frozen=True, slots=True)
class Target:
    text: str
    scheme: str
    authority: str
    endpoint: str
    params: Mapping[str, str] = field(default_factory=dict)

    def error(self, problem: str) -> TargetError:
        """A TargetError quoting this target, saying what is wrong and the right form."""
        return TargetError(f"bad target {self.text!r}: {problem}; expected {FORMS[self.scheme]}")


def parse_target(text: str) -> Target:
    """Split a ``scheme://authority/endpoint?params`` target; the backend checks the rest."""
    if not isinstance(text, str):
        kind = type(text).__name__
        raise TargetError(
            f"bad target {text!r}: a target is a str, not {kind}; expected {ALL_FORMS}"
        )
    if not text.strip():
        raise TargetError(f"bad target {text!r}: empty; expected {ALL_FORMS}")
    match = _SCHEME.match(text.strip())
    if match is None:
        raise TargetError(f"bad target {text!r}: no scheme; expected {ALL_FORMS}")
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme not in FORMS:
        raise TargetError(f"bad target {text!r}: unknown scheme {scheme!r}; expected {ALL_FORMS}")
    if any(ch.isspace() for ch in rest):  # outer whitespace is forgiven, inner is a typo
        raise TargetError(f"bad target {text!r}: whitespace inside; expected {FORMS[scheme]}")
    rest, _, query = rest.partition("?")
    authority, slash, endpoint = rest.partition("/")
    pairs = parse_qsl(query)
    target = Target(text, scheme, authority, endpoint, dict(pairs))
    if not slash or not endpoint:
        raise target.error("nothing after the authority")
    if query and not target.params:
        raise target.error(f"unreadable parameters {query!r}")
    if len(target.params) < len(pairs):
        raise target.error(f"a parameter is given twice in {query!r}")
    return target


def target_variable(name: str) -> str:
    """The variable that gives a bare name its full target: GZ_TARGET_ORDER_API for
    ``order-api``."""
    return "GZ_TARGET_" + re.sub(r"[^A-Z0-9]", "_", name.upper())


def expand_bare_name(
    text: str, env: Mapping[str, str] | None = None, *, discovery: str | None = None
) -> str:
    """A bare logical name (``greeter`` or ``greeter:8080``) becomes a full target via
    GZ_TARGET_<NAME>, else ``discovery`` (default: GZ_DISCOVERY); a full target is returned
    unchanged."""
    if not isinstance(text, str) or "://" in text:
        return text  # parse_target explains what is wrong with a non-string
    env = os.environ if env is None else env
    if not _BARE_NAME.fullmatch(text):  # "greeter\n" is none
        raise TargetError(f"bad target {text!r}: no scheme, nor a bare name; expected {ALL_FORMS}")
    name, _, port = text.partition(":")
    variable = target_variable(name)
    if env.get(variable):
        return env[variable]
    discovery = discovery or env.get("GZ_DISCOVERY", "")
    if discovery not in _DISCOVERY_TEMPLATES:
        not_this = f", not {discovery!r}" if discovery else ""
        raise TargetError(
            f"bad target {text!r}: a bare service name needs {variable} (a full target) or "
            f"GZ_DISCOVERY=etcd|k8s|dns{not_this}; or write a full target: {FULL_FORMS}"
        )
    port = port or _DEFAULT_PORTS.get(discovery, "")
    return _DISCOVERY_TEMPLATES[discovery].format(name=name, port=port)


def server_of(text: str) -> tuple[str, int | None] | None:
    """The logical server a target names, as OpenTelemetry's ``server.address`` and
    ``server.port`` describe it: the host and port of ``dns:///`` and of a one-endpoint
    ``direct:///`` target, ``service.namespace`` of ``k8s://`` (the port when it is a number),
    the key of ``etcd:///``. None when the target names no single server (several direct
    endpoints, a resolver of one's own)."""
    try:
        target = parse_target(text)
    except TargetError:
        return None
    if target.scheme == "etcd":
        return target.endpoint, None
    if "," in target.endpoint:  # several direct endpoints
        return None
    host, _, port = target.endpoint.rpartition(":")
    host = host[1:-1] if host.startswith("[") else host  # IPv6: the address has no brackets
    if target.scheme == "k8s" and target.authority:
        host = f"{host}.{target.authority}"
    if not host:
        return None
    return host, int(port) if port.isascii() and port.isdigit() else None
