"""The attributes of call spans, named by OpenTelemetry's RPC semantic conventions (the constants
of the opentelemetry-semantic-conventions package): worked out once per method, per status code
and per peer, so a call only looks them up. Imported only when tracing takes part."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
from collections.abc import Collection

import grpc
from opentelemetry.semconv._incubating.attributes.rpc_attributes import (
    RPC_GRPC_STATUS_CODE,
    RPC_METHOD,
    RPC_RESPONSE_STATUS_CODE,
    RPC_SERVICE,
    RPC_SYSTEM,
    RPC_SYSTEM_NAME,
    RpcSystemNameValues,
    RpcSystemValues,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.network_attributes import (
    NETWORK_PEER_ADDRESS,
    NETWORK_PEER_PORT,
    NETWORK_TRANSPORT,
    NETWORK_TYPE,
    NetworkTransportValues,
    NetworkTypeValues,
)
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT

from ..discovery.target import server_of
from .chain import Method

# Shared by every span of a method, code or peer: never changed (set_attributes copies them).
Attributes = dict[str, str | int]


def _rpc_names() -> tuple[bool, bool]:
    """(old, new): which RPC attribute names spans carry. The conventions let an instrumentation
    that already emits rpc.system, rpc.service, rpc.method (the bare name) and
    rpc.grpc.status_code keep them until the user opts in to their successors with
    OTEL_SEMCONV_STABILITY_OPT_IN: ``rpc`` for rpc.system.name, rpc.method (``pkg.Service/Method``)
    and rpc.response.status_code (the code's name) alone, ``rpc/dup`` for both sets."""
    opted = os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "")
    chosen = {item.strip() for item in opted.split(",")}
    if "rpc/dup" in chosen:
        return True, True
    return "rpc" not in chosen, "rpc" in chosen


OLD_NAMES, NEW_NAMES = _rpc_names()  # read once: the process's spans all speak one dialect

_TCP = NetworkTransportValues.TCP.value
_UNIX = NetworkTransportValues.UNIX.value
_IP_TYPES = {4: NetworkTypeValues.IPV4.value, 6: NetworkTypeValues.IPV6.value}


def method_attributes(method: Method) -> Attributes:
    """What is known when a call starts: rpc.*, and on the client the server its target names
    (the host of ``dns:///greeter:8080``, not the endpoint a call goes to: that is the peer)."""
    attributes: Attributes = {}
    if OLD_NAMES:
        attributes |= {
            RPC_SYSTEM: RpcSystemValues.GRPC.value,
            RPC_SERVICE: method.service,
            RPC_METHOD: method.name,
        }
    if NEW_NAMES:  # rpc.method is in both sets: with rpc/dup its new meaning wins
        attributes |= {
            RPC_SYSTEM_NAME: RpcSystemNameValues.GRPC.value,
            RPC_METHOD: f"{method.service}/{method.name}",
        }
    server = server_of(method.target) if method.target else None
    if server is not None:
        attributes[SERVER_ADDRESS] = server[0]
        if server[1] is not None:
            attributes[SERVER_PORT] = server[1]
    return attributes


def status_attributes(errors: Collection[grpc.StatusCode]) -> dict[grpc.StatusCode, Attributes]:
    """Per status code: rpc.grpc.status_code (or rpc.response.status_code), and error.type
    (the code's name, as the conventions ask) for the codes in ``errors``, those that fail a
    call on this side."""
    return {
        code: {
            **({RPC_GRPC_STATUS_CODE: code.value[0]} if OLD_NAMES else {}),
            **({RPC_RESPONSE_STATUS_CODE: code.name} if NEW_NAMES else {}),
            **({ERROR_TYPE: code.name} if code in errors else {}),
        }
        for code in grpc.StatusCode
    }


@functools.lru_cache(maxsize=1024)
def endpoint_peer(address: str, as_server: bool) -> Attributes:
    """A client's peer: the endpoint a call went to, ``host:port`` or ``[v6]:port``. With
    ``as_server`` (a target that names no single server, such as several direct endpoints) it
    is the server.* too."""
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") else host
    attributes: Attributes = {NETWORK_PEER_ADDRESS: host, NETWORK_TRANSPORT: _TCP}
    if port.isdigit():
        attributes[NETWORK_PEER_PORT] = int(port)
    with contextlib.suppress(ValueError):  # a host name (a direct target's): no type to tell
        attributes[NETWORK_TYPE] = _IP_TYPES[ipaddress.ip_address(host).version]
    if as_server:
        attributes[SERVER_ADDRESS] = host
        if NETWORK_PEER_PORT in attributes:
            attributes[SERVER_PORT] = attributes[NETWORK_PEER_PORT]
    return attributes


@functools.lru_cache(maxsize=1024)
def grpc_peer(peer: str) -> Attributes:
    """A server's peer as grpc's ``context.peer()`` spells it: ``ipv4:10.0.0.9:51234``,
    ``ipv6:[::1]:51234``, ``unix:/run/app.sock``. (Cached: a connection's calls share one.)"""
    kind, _, rest = peer.partition(":")
    if kind in _IP_TYPES.values():
        host, _, port = rest.rpartition(":")
        attributes: Attributes = {
            NETWORK_PEER_ADDRESS: host[1:-1] if host.startswith("[") else host,
            NETWORK_TRANSPORT: _TCP,
            NETWORK_TYPE: kind,
        }
        if port.isdigit():
            attributes[NETWORK_PEER_PORT] = int(port)
        return attributes
    if kind in ("unix", "unix-abstract"):
        return {NETWORK_PEER_ADDRESS: rest, NETWORK_TRANSPORT: _UNIX}
    return {NETWORK_PEER_ADDRESS: peer}  # a form grpc may add later: kept whole
