"""``k8s://namespace/service:port`` and ``k8s:///service:port``: which namespace, service, port."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..target import Target

# Written into every pod that mounts a service account: the pod's own namespace.
SERVICE_ACCOUNT_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "default"

# Namespaces are DNS-1123 labels, Service names DNS-1035 labels, port names DNS-1123 labels.
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # fullmatch: no "x\n"
_NAMESPACE = _PORT_NAME = _DNS1123_LABEL
_SERVICE = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class KubeTarget:
    namespace: str
    service: str
    port: int | str
    """A number is dialled as is on every pod; a name is looked up in each EndpointSlice."""

    @property
    def label_selector(self) -> str:
        """Selects every EndpointSlice the endpoints controller keeps for the service."""
        return f"kubernetes.io/service-name={self.service}"

    def __str__(self) -> str:
        return f"k8s://{self.namespace}/{self.service}:{self.port}"


def default_namespace(
    env: Mapping[str, str] | None = None,
    namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE_FILE,
) -> str:
    """POD_NAMESPACE, else the service account's namespace file, else ``default``."""
    env = os.environ if env is None else env
    if env.get("POD_NAMESPACE", "").strip():
        return env["POD_NAMESPACE"].strip()
    try:
        from_file = namespace_file.read_text().strip()
    except OSError:
        from_file = ""  # not in a pod, or no service account mounted
    return from_file or DEFAULT_NAMESPACE


def parse_kube_target(
    target: Target,
    env: Mapping[str, str] | None = None,
    namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE_FILE,
) -> KubeTarget:
    """The namespace, service and port of a k8s target; TargetError saying what is wrong."""
    if target.params:
        raise target.error(f"k8s targets take no parameters, got {sorted(target.params)[0]!r}")
    service, colon, port_text = target.endpoint.partition(":")
    if not colon or not port_text:
        raise target.error("missing :port after the service (a number, or a port name like grpc)")
    if not _SERVICE.fullmatch(service):
        raise target.error(f"{service!r} is not a Service name (lowercase letters, digits, '-')")
    namespace = target.authority or default_namespace(env, namespace_file)
    if not _NAMESPACE.fullmatch(namespace):
        raise target.error(f"{namespace!r} is not a namespace (lowercase letters, digits, '-')")
    return KubeTarget(namespace, service, _parse_port(target, port_text))


def _parse_port(target: Target, text: str) -> int | str:
    if text.isascii() and text.isdigit():  # int() also reads other scripts' digits
        if not 0 < int(text) < 65536:
            raise target.error(f"port {text} is out of range 1-65535")
        return int(text)
    if not _PORT_NAME.fullmatch(text):
        raise target.error(f"{text!r} is neither a port number nor a port name such as grpc")
    return text
