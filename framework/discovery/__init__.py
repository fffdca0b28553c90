"""Discovery: turn a target into a Resolver. Each scheme lives in its own module, imported only
when a target of that scheme is used (so ``import gz`` never loads etcd or kubernetes)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .endpoint import Endpoint
from .resolver import Listener, ManualResolver, Resolver, apply_change
from .target import FORMS, Target, TargetError, expand_bare_name, parse_target, target_variable

if TYPE_CHECKING:
    from ..settings import ClientSettings

_BACKENDS = {
    "direct": "gz.discovery.direct",
    "dns": "gz.discovery.dns",
    "etcd": "gz.discovery.etcd",
    "k8s": "gz.discovery.kubernetes",
}


def build_resolver(text: str, settings: ClientSettings | None = None) -> Resolver:
    """The resolver for a target string or bare service name; TargetError if it is malformed.

    ``settings`` give GZ_DISCOVERY (for bare names) and the etcd connection; left out, they
    are read from the environment when needed. Every backend's ``build`` takes the same two."""
    discovery = settings.discovery if settings is not None else None
    target = parse_target(expand_bare_name(text, discovery=discovery))
    try:
        backend = importlib.import_module(_BACKENDS[target.scheme])
    except ModuleNotFoundError as error:
        if error.name != _BACKENDS[target.scheme]:
            raise
        raise target.error(f"the {target.scheme} backend is not available yet") from None
    return backend.build(target, settings)


__all__ = [
    "FORMS",
    "Endpoint",
    "Listener",
    "ManualResolver",
    "Resolver",
    "Target",
    "TargetError",
    "apply_change",
    "build_resolver",
    "expand_bare_name",
    "parse_target",
    "target_variable",
]
