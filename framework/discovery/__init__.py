"""Discovery: turn a target into a Resolver. Each scheme lives in its own module, imported only
when a target of that scheme is used (so ``import framework`` never loads etcd or kubernetes)."""

from __future__ import annotations

import importlib

from .endpoint import Endpoint
from .resolver import Listener, ManualResolver, Resolver
from .target import FORMS, Target, TargetError, expand_bare_name, parse_target

_BACKENDS = {
    "direct": "framework.discovery.direct",
    "dns": "framework.discovery.dns",
    "etcd": "framework.discovery.etcd",
    "k8s": "framework.discovery.kubernetes",
}


def build_resolver(text: str) -> Resolver:
    """The resolver for a target string or bare service name; TargetError if it is malformed."""
    target = parse_target(expand_bare_name(text))
    try:
        backend = importlib.import_module(_BACKENDS[target.scheme])
    except ModuleNotFoundError as error:
        if error.name != _BACKENDS[target.scheme]:
            raise
        raise target.error(f"the {target.scheme} backend is not available yet") from None
    return backend.build(target)


__all__ = [
    "FORMS",
    "Endpoint",
    "Listener",
    "ManualResolver",
    "Resolver",
    "Target",
    "TargetError",
    "build_resolver",
    "expand_bare_name",
    "parse_target",
]
