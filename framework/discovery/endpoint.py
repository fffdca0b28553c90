"""An endpoint is one address a call can be sent to."""

from __future__ import annotations

from dataclasses import dataclass

from ..netaddr import join_host_port, parse_host_port


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    host: str
    port: int

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
