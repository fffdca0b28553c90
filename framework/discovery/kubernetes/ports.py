"""Which ports of an EndpointSlice a target dials on each address.

A numbered target port is dialled as is. A named one is looked up in the slice; if the slice
also has ports named ``<name>-w0``, ``<name>-w1``, ... (a service running GZ_WORKERS processes,
each on a port of its own), every one of those is dialled instead, so that a client spreads its
calls over the workers rather than leaving that to the kernel, one connection at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

Json = Mapping[str, Any]


def worker_port_name(name: str, index: int) -> str:
    """The port of worker ``index`` beside the port ``name``: grpc-w0, grpc-w1, ..."""
    return f"{name}-w{index}"


def port_names(obj: Json) -> Iterable[str]:
    """The names of the slice's ports ("" for an unnamed one); a name that is not a string
    cannot match a target's port name and is left out."""
    return (name for name in port_name_values(obj) if isinstance(name, str))


def port_name_values(obj: Json) -> Iterable[Any]:
    for item in obj.get("ports") or ():
        if isinstance(item, Mapping):
            yield item.get("name") or ""


def target_ports(obj: Json, wanted: int | str, problems: list[str]) -> tuple[int, ...]:
    """The ports to dial on every address of the slice; empty, with a problem, if there are
    none."""
    number = _port_number(obj, wanted, problems)
    if number is None:
        return ()
    if isinstance(wanted, int):
        return (number,)
    return _worker_ports(obj, wanted, problems) or (number,)


def _usable(number: Any) -> bool:
    return isinstance(number, int) and not isinstance(number, bool) and 0 < number < 65536


def _port_number(obj: Json, wanted: int | str, problems: list[str]) -> int | None:
    """A numbered target port is dialled as is; a named one is looked up in this slice, since
    pods behind one Service may number the same named port differently."""
    if isinstance(wanted, int):
        return wanted
    ports = obj.get("ports") or ()
    if not ports:
        problems.append("has no ports")
        return None
    for item in ports:
        if isinstance(item, Mapping) and (item.get("name") or "") == wanted:
            number = item.get("port")
            if not _usable(number):
                problems.append(f"has port {wanted!r} without a usable number ({number!r})")
                return None
            return number
    names = ", ".join(sorted(repr(n) for n in port_names(obj)))
    problems.append(f"has no port named {wanted!r} (its ports: {names})")
    return None


def _worker_ports(obj: Json, name: str, problems: list[str]) -> tuple[int, ...]:
    """The numbers of ``name``-w0, -w1, ... in order; the first one missing ends the list, as
    the workers are numbered from 0 without gaps."""
    numbers: dict[str, Any] = {}
    for item in obj.get("ports") or ():
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            numbers.setdefault(item["name"], item.get("port"))  # the first, as _port_number
    found: list[int] = []
    for index in itertools.count():
        key = worker_port_name(name, index)
        if key not in numbers:
            break
        if not _usable(numbers[key]):
            problems.append(f"has port {key!r} without a usable number ({numbers[key]!r})")
            break
        found.append(numbers[key])
    return tuple(found)
