"""An endpoint is one address a call can be sent to."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..netaddr import join_host_port, parse_host_port


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    host: str
    port: int
    # Where it runs, from discoveries that know (k8s://): left out of equality and order, so an
    # endpoint is the same one, with the same subchannel, whatever its zone or hints say.
    zone: str | None = field(default=None, compare=False)
    """Its zone (EndpointSlice ``zone``), None when unknown."""
    for_zones: frozenset[str] = field(default=frozenset(), compare=False)
    """The zones whose clients it serves (EndpointSlice ``hints.forZones``); empty: no hints."""

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """``host:port`` or ``[v6]:port``; ValueError naming the text otherwise."""
        return cls(*parse_host_port(text))

    @property
    def address(self) -> str:
        """What grpc dials: ``host:port``, IPv6 in brackets."""
        return join_host_port(self.host, self.port)

    def __str__(self) -> str:
        return self.address
