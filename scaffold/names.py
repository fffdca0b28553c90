"""Names users give gz: service names, Python packages and classes, Kubernetes objects."""

from __future__ import annotations

import keyword
import re
import sys

from .errors import BadInput

_SERVICE_NAME = re.compile(r"[a-z]([a-z0-9_-]*[a-z0-9])?")  # fullmatch, not match: no "x\n"
_KUBE_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # DNS-1035 label: what a Service needs
# Namespaces are DNS-1123 labels (a digit may come first, unlike a Service's DNS-1035 name);
# ServiceAccount names are DNS-1123 subdomains.
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NAMESPACE = re.compile(_LABEL)
_SUBDOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_TAKEN = {"grpc", "google", "gz", "tests", "test"}


def service_name(name: str) -> str:
    """A name for ``gz new service``: lower case letters, digits, '-' and '_', a letter first
    and a letter or digit last, so that both ``package_name`` and ``kube_form`` of it are names
    (gz new checks the length with the Kubernetes names gz kube derives from it)."""
    if not _SERVICE_NAME.fullmatch(name):
        raise BadInput(
            f"{name!r} is not a service name: use lower case letters, digits, '-' and '_', "
            "starting with a letter and ending with a letter or digit, e.g. hello or order-service"
        )
    package = package_name(name)
    if keyword.iskeyword(package) or package in _TAKEN or package in sys.stdlib_module_names:
        raise BadInput(
            f"{name!r} would make a Python package {package!r} that hides another module; "
            f"pick another name, e.g. {name}-service"
        )
    return name


def package_name(name: str) -> str:
    """hello-world -> hello_world"""
    return name.replace("-", "_")


def kube_form(name: str) -> str:
    """my_svc -> my-svc: Kubernetes names take no '_'."""
    return name.replace("_", "-")


def class_name(name: str) -> str:
    """hello-world -> HelloWorld"""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[-_]", name) if part)


def kube_name(name: str) -> str:
    """A Kubernetes object name (DNS-1035 label), or BadInput saying what is wrong."""
    return _checked(
        name, _KUBE_NAME, 63,
        f"{name!r} is not a Kubernetes name: use at most 63 lower case letters, digits and "
        "'-', starting with a letter and ending with a letter or digit, e.g. greeter",
    )  # fmt: skip


def namespace_name(namespace: str) -> str:
    """A Kubernetes namespace (DNS-1123 label), or BadInput saying what is wrong."""
    return _checked(
        namespace, _NAMESPACE, 63,
        f"namespace {namespace!r} is not a Kubernetes namespace name: use at most 63 lower "
        "case letters, digits and '-', starting and ending with a letter or digit, e.g. shop",
    )  # fmt: skip


def service_account_name(account: str) -> str:
    """A ServiceAccount name (DNS-1123 subdomain), or BadInput saying what is wrong."""
    return _checked(
        account, _SUBDOMAIN, 253,
        f"service account {account!r} is not a ServiceAccount name: use lower case letters, "
        "digits, '-' and '.' between labels that start and end with a letter or digit, "
        "e.g. greeter",
    )  # fmt: skip


def secret_name(option: str, secret: str) -> str:
    """A Secret name (DNS-1123 subdomain) given to ``option``, or BadInput saying what is wrong."""
    return _checked(
        secret, _SUBDOMAIN, 253,
        f"{option} {secret!r} is not a Secret name: use lower case letters, digits, '-' and '.' "
        "between labels that start and end with a letter or digit, e.g. greeter-etcd",
    )  # fmt: skip


def _checked(name: str, pattern: re.Pattern[str], limit: int, complaint: str) -> str:
    if len(name) > limit or not pattern.fullmatch(name):
        raise BadInput(complaint)
    return name
