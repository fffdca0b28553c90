"""Host and port parsing, and the address a server advertises to its clients."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket

HOST_PORT_FORM = "host:port, e.g. 10.0.0.7:8080, greeter.default.svc:8080 or [::1]:8080"


def parse_host_port(text: str, *, listening: bool = False) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6); raise ValueError naming the text otherwise.
    Port 0 ("any free port") is only for an address to listen on: no peer is ever at port 0."""
    host, sep, port_text = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        _check_ipv6(host, text)
    elif ":" in host:
        raise ValueError(f"{text!r} is not {HOST_PORT_FORM} (put an IPv6 address in brackets)")
    # isascii: str.isdigit() and int() also take other scripts' digits ("٨٠" would be 80)
    ok_port = port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535
    if not sep or not host or not ok_port:
        raise ValueError(f"{text!r} is not {HOST_PORT_FORM}")
    if any(ch.isspace() or ch in "/?#@," for ch in host):
        raise ValueError(f"{text!r} is not {HOST_PORT_FORM}")
    if int(port_text) == 0 and not listening:
        raise ValueError(
            f"{text!r} has port 0, where nothing can be reached (0 means 'any free port' only "
            "to a server choosing where to listen): give the real port"
        )
    return host, int(port_text)


def _check_ipv6(host: str, text: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"{text!r} is not {HOST_PORT_FORM}: bad IPv6 address") from None


def join_host_port(host: str, port: int) -> str:
    """The inverse of parse_host_port: brackets IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_unspecified(host: str) -> bool:
    """True for wildcard listen hosts (``0.0.0.0``, ``::``, empty) that no client can dial."""
    if host in ("", "*"):
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def check_advertise_host(text: str) -> str:
    """A host clients can dial, without a port: an IP address (IPv6 with or without brackets,
    returned without) or a host name. ValueError saying what is wrong and what to set."""
    host = text.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if is_unspecified(host):
        raise ValueError(
            f"{host or 'an empty value'} is a wildcard that no client can dial: set "
            "GZ_ADVERTISE_HOST to this server's own address (e.g. the pod IP), or unset it"
        )
    with contextlib.suppress(ValueError):  # an IP address; else a host name, checked below
        return str(ipaddress.ip_address(host))
    if ":" in host:
        raise ValueError(
            "expected a host without a port, e.g. 10.0.0.7 or greeter-0.greeter: the advertised "
            "port is always the one the server listens on (GZ_LISTEN)"
        )
    if any(ch.isspace() or ch in "/?#@,[]" for ch in host):
        raise ValueError("expected an IP address or a host name, e.g. 10.0.0.7")
    return host


def check_bind_host(text: str) -> str:
    """A host to listen on, without a port: an IP address (wildcards too; IPv6 with or without
    brackets, returned without) or a host name. ValueError saying what is wrong."""
    host = text.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    if ":" in host or not host or any(ch.isspace() or ch in "/?#@,[]" for ch in host):
        raise ValueError(
            "expected an address of this machine without a port, e.g. 127.0.0.1, 0.0.0.0 or ::1"
        )
    return host


def advertise_host(listen_host: str, configured: str | None = None) -> str:
    """The host clients should dial: configured, else the specific listen host, else POD_IP,
    else the first non-loopback address of this machine, else loopback. Never a wildcard:
    ``configured`` comes from GZ_ADVERTISE_HOST, which check_advertise_host already vetted.
    The listen host goes before POD_IP because it is the only address the server answers on."""
    for candidate in (configured, None if is_unspecified(listen_host) else listen_host):
        if candidate:
            return candidate
    pod_ip = os.environ.get("POD_IP", "").strip()
    if pod_ip and not is_unspecified(pod_ip):
        return pod_ip
    return first_non_loopback_address() or "127.0.0.1"


def first_non_loopback_address() -> str | None:
    """An address of this host other than loopback, found without sending any packet."""
    candidates = _interface_ipv4_addresses() + _hostname_addresses()
    for wanted in (4, 6):
        for address in candidates:
            parsed = ipaddress.ip_address(address.split("%")[0])
            if parsed.version == wanted and not (parsed.is_loopback or parsed.is_link_local):
                return address
    return None


def _interface_ipv4_addresses() -> list[str]:
    """IPv4 addresses of the up interfaces (Linux SIOCGIFADDR); empty elsewhere."""
    try:
        import fcntl
        import struct
    except ImportError:
        return []
    addresses = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(probe.fileno(), 0x8915, request)  # SIOCGIFADDR
            except OSError:
                continue  # interface down or without an IPv4 address
            addresses.append(socket.inet_ntoa(reply[20:24]))
    return addresses


def _hostname_addresses() -> list[str]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return [str(info[4][0]) for info in infos]
