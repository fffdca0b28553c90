"""EndpointSlices (discovery.k8s.io/v1, read as plain JSON) to endpoints.

The slices are read as JSON rather than through the client's models so that one odd slice costs
a warning, not the whole list: the models refuse a slice that lacks a required field.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..endpoint import Endpoint
from ..tally import Tally
from .ports import port_name_values, port_names, target_ports

log = logging.getLogger("gz.discovery.k8s")

Json = Mapping[str, Any]

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*")  # fullmatch: no "x\n"


def _ipv4(text: str) -> str:
    return str(ipaddress.IPv4Address(text))


def _ipv6(text: str) -> str:
    return str(ipaddress.IPv6Address(text))


def _fqdn(text: str) -> str:
    if not _HOSTNAME.fullmatch(text):
        raise ValueError(f"{text!r} is not a host name")
    return text


# addressType -> a check that returns the address to dial or raises ValueError
_ADDRESS_TYPES: dict[str, Callable[[str], str]] = {"IPv4": _ipv4, "IPv6": _ipv6, "FQDN": _fqdn}


@dataclass(frozen=True, slots=True)
class SliceEndpoints:
    """What one slice contributes to the service's endpoint set."""

    serving: frozenset[Endpoint] = frozenset()
    """Serving and not terminating: these get calls."""
    terminating: frozenset[Endpoint] = frozenset()
    """Still serving but terminating: used only while no endpoint of the service is serving."""
    port_names: frozenset[str] = frozenset()
    problems: tuple[str, ...] = ()


def slice_name(obj: Any) -> str:
    """metadata.name, or "" when obj has none (or is no object at all)."""
    return _metadata_text(obj, "name")


def resource_version(obj: Any) -> str:
    """metadata.resourceVersion, or "" when obj has none (or is no object at all)."""
    return _metadata_text(obj, "resourceVersion")


def _metadata_text(obj: Any, key: str) -> str:
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    value = metadata.get(key) if isinstance(metadata, Mapping) else None
    return value if isinstance(value, str) else ""


def read_slice(obj: Json, port: int | str) -> SliceEndpoints:
    """The endpoints of one slice on the target's port; problems are reported, never raised."""
    problems: list[str] = []
    try:
        return _read_slice(obj, port, problems)
    except (AttributeError, TypeError, ValueError) as error:  # a shape the API never sends
        return SliceEndpoints(problems=(*problems, f"is unreadable ({error})"))


def _read_slice(obj: Json, port: int | str, problems: list[str]) -> SliceEndpoints:
    names = frozenset(port_names(obj))
    odd_names = [n for n in port_name_values(obj) if not isinstance(n, str)]
    if odd_names:
        problems.append(f"has port names that are not strings ({', '.join(map(repr, odd_names))})")
    numbers = target_ports(obj, port, problems)
    check = _ADDRESS_TYPES.get(obj.get("addressType", ""))
    if check is None:
        problems.append(f"has an unsupported addressType {obj.get('addressType')!r}")
    if not numbers or check is None:
        return SliceEndpoints(port_names=names, problems=tuple(problems))
    serving: set[Endpoint] = set()
    terminating: set[Endpoint] = set()
    for index, item in enumerate(obj.get("endpoints") or ()):
        address = _first_address(item, check, index, problems)
        if address is None:
            continue
        is_serving, is_terminating = _conditions(item)
        if is_serving:
            zone, for_zones = _zone(item), _for_zones(item)
            # one endpoint per worker port, each with its address's place and state
            (terminating if is_terminating else serving).update(
                Endpoint(address, number, zone, for_zones) for number in numbers
            )
    return SliceEndpoints(frozenset(serving), frozenset(terminating), names, tuple(problems))


def _first_address(
    item: Any, check: Callable[[str], str], index: int, problems: list[str]
) -> str | None:
    """The API says an endpoint's addresses are fungible and consumers may use the first."""
    addresses = item.get("addresses") if isinstance(item, Mapping) else None
    if not addresses or not isinstance(addresses, list):
        problems.append(f"has endpoint #{index} without addresses")
        return None
    try:
        return check(str(addresses[0]))
    except ValueError:
        problems.append(f"has endpoint #{index} with a bad address {addresses[0]!r}")
        return None


def _conditions(item: Json) -> tuple[bool, bool]:
    """(serving, terminating). serving defers to ready when absent; an unknown ready counts as
    ready and an unknown terminating as not terminating, as the API asks consumers to do."""
    conditions = item.get("conditions") or {}
    serving = conditions.get("serving")
    if serving is None:
        serving = conditions.get("ready")
    return serving is not False, conditions.get("terminating") is True


def _zone(item: Json) -> str | None:
    """The endpoint's zone (for zone-aware routing, see balancing/zones.py); None if unknown."""
    zone = item.get("zone")
    return zone if isinstance(zone, str) and zone else None


def _for_zones(item: Json) -> frozenset[str]:
    """hints.forZones: the zones the EndpointSlice controller meant this endpoint for."""
    hints = item.get("hints")
    listed = hints.get("forZones") if isinstance(hints, Mapping) else None
    if not isinstance(listed, list):
        return frozenset()
    names = (z.get("name") for z in listed if isinstance(z, Mapping))
    return frozenset(name for name in names if isinstance(name, str) and name)


class ServiceSlices:
    """Every slice of one service, by name. A service with more than 100 endpoints has several
    slices: the endpoint set is their union, and an event changes only its own slice, so what
    it changed is found in the work of one slice (``take_changes``)."""

    def __init__(self, service: str, port: int | str) -> None:
        self.service, self.port = service, port
        self._slices: dict[str, SliceEndpoints] = {}
        self._serving, self._terminating = Tally(), Tally()  # the union of the slices'
        self._told: Tally | None = None  # which of the two the listener was last told
        self._warned: dict[str, tuple[str, ...]] = {}  # so a relist does not repeat warnings
        self._odd: set[str] = set()  # the same, for objects that are no usable slice at all
        self._odd_before: set[str] = set()  # during a relist: those of the list before

    def replace(self, items: Iterable[Any]) -> None:
        """The whole list again (after a relist)."""
        self._slices.clear()
        self._serving.clear()
        self._terminating.clear()
        self._odd_before, self._odd = self._odd, set()
        try:
            for obj in items:
                self.put(obj)
        finally:
            self._odd_before = set()
        self._warned = {name: self._warned[name] for name in self._slices}  # put() set each

    def put(self, obj: Any, event: str = "") -> None:
        """Add or replace a slice, from a list item or an ADDED or MODIFIED ``event``."""
        name = self._name(obj, event)
        if name is None:
            return
        contribution = read_slice(obj, self.port)
        if contribution.problems and self._warned.get(name) != contribution.problems:
            log.warning(
                "EndpointSlice %r of service %r %s; skipped that part",
                name, self.service, "; ".join(contribution.problems),
            )  # fmt: skip
        self._warned[name] = contribution.problems
        self._count(self._slices.get(name), contribution)
        self._slices[name] = contribution

    def remove(self, obj: Any, event: str = "DELETED") -> None:
        name = self._name(obj, event)
        if name is not None:
            self._count(self._slices.pop(name, None), None)
            self._warned.pop(name, None)

    def _count(self, old: SliceEndpoints | None, new: SliceEndpoints | None) -> None:
        """Move one slice's endpoints from ``old`` to ``new`` in the tallies."""
        if old is not None:
            for endpoint in old.serving:
                self._serving.remove(endpoint)
            for endpoint in old.terminating:
                self._terminating.remove(endpoint)
        if new is not None:
            for endpoint in new.serving:
                self._serving.add(endpoint)
            for endpoint in new.terminating:
                self._terminating.add(endpoint)

    def _name(self, obj: Any, event: str) -> str | None:
        """The slice's name; None, after one warning saying what is wrong, if obj is no
        usable slice (the API server never sends one, but nothing should crash if it does)."""
        name = slice_name(obj)
        if name:
            return name
        if event:
            source = f"{'an' if event[:1] in 'AEIOU' else 'a'} {event} event"
            problem = (
                "without an object" if obj is None
                else f"whose object is not an object ({obj!r:.80})" if not isinstance(obj, Mapping)
                else "whose object has no metadata.name"
            )  # fmt: skip
        else:
            source = "an item of the EndpointSlice list"
            problem = (
                f"that is not an object ({obj!r:.80})" if not isinstance(obj, Mapping)
                else "that has no metadata.name"
            )  # fmt: skip
        message = f"EndpointSlices of service {self.service!r}: skipped {source} {problem}"
        if message not in self._odd and message not in self._odd_before:
            log.warning("%s", message)
        self._odd.add(message)
        return None

    def take_all(self, again: bool = False) -> frozenset[Endpoint] | None:
        """The whole set for Listener.update, or None if it is as last told (``again``: even
        so). Serving endpoints; terminating-but-serving ones only when there is nothing else,
        so a one-replica rollout is not left without a pod while the old one still answers."""
        tally, other = (
            (self._serving, self._terminating) if self._serving
            else (self._terminating, self._serving)
        )  # fmt: skip
        endpoints = tally.take_all(again or tally is not self._told)
        other.forget()
        self._told = tally
        return endpoints

    def take_changes(self) -> tuple[list[Endpoint], list[Endpoint]] | None:
        """(added, removed) since the listener was last told, as Listener.change takes them;
        None when only the whole set will do (none told yet, or terminating endpoints in
        use)."""
        if not self._serving or self._told is not self._serving:
            return None
        self._terminating.forget()
        return self._serving.take_changes()

    def missing_port(self) -> str | None:
        """Why the set is empty when the cause is the target's port name, else None."""
        if isinstance(self.port, int) or not self._slices:
            return None
        names = frozenset[str]().union(*(s.port_names for s in self._slices.values()))
        if self.port in names:
            return None
        listed = ", ".join(repr(n) for n in sorted(names)) or "none"
        return (
            f"no EndpointSlice of service {self.service!r} has a port named {self.port!r} "
            f"(its ports: {listed}); use one of those names or a port number"
        )
