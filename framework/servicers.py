"""The generated servicer bases of a service class, and the RPCs it leaves to them.

grpcio-tools writes ``class XServicer`` into ``x_pb2_grpc`` next to ``add_XServicer_to_server``;
every method of that base answers UNIMPLEMENTED, so a method the class still inherits from it
is an RPC nobody wrote (typically one added to the proto later).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

AddToServer = Callable[[Any, Any], None]


def generated_bases(cls: type) -> list[tuple[type, AddToServer]]:
    """Each generated servicer base of ``cls`` (in MRO order) with its ``add_*_to_server``."""
    found = []
    for base in cls.__mro__:
        add = getattr(sys.modules.get(base.__module__), f"add_{base.__name__}_to_server", None)
        if callable(add):
            found.append((base, add))
    return found


def unimplemented(cls: type) -> list[str]:
    """``pkg.Service/Method`` of each RPC that ``cls`` still inherits from a generated base.

    Nothing is called: the method resolved on ``cls`` is compared with the base's own function.
    """
    missing: list[str] = []
    for base, _ in generated_bases(cls):
        service = _service_of(base)
        if service is None:
            continue
        for method in service.methods:
            name = f"{service.full_name}/{method.name}"
            generated = vars(base).get(method.name)
            inherited = generated is not None and getattr(cls, method.name, None) is generated
            if inherited and name not in missing:
                missing.append(name)
    return missing


def _service_of(base: type) -> ServiceDescriptor | None:
    """``XServicer`` of ``x_pb2_grpc`` serves service ``X`` of ``x_pb2`` (the DESCRIPTOR)."""
    if not base.__module__.endswith("_pb2_grpc") or not base.__name__.endswith("Servicer"):
        return None
    try:
        messages = importlib.import_module(base.__module__.removesuffix("_grpc"))
    except ImportError:  # hand-written or renamed stubs: nothing to compare with
        return None
    file = getattr(messages, "DESCRIPTOR", None)
    services = getattr(file, "services_by_name", {})
    service: ServiceDescriptor | None = services.get(base.__name__.removesuffix("Servicer"))
    return service
