"""Binding GZ_LISTEN with grpc, and saying in one line why it failed.

grpc's core logs why a port cannot be added (``E... add_port.cc ...``) straight to file
descriptor 2, then raises a bare RuntimeError. Checking the address with a socket of our own
first would race with other processes and resolve host names differently from grpc, so instead
fd 2 goes to a temporary file for the length of the call: on success what grpc wrote is passed
on unchanged; on failure grpc's reason goes into gz's one line and its log lines are dropped
(anything else written meanwhile is passed on).
"""

from __future__ import annotations

import re

import grpc

from .settings import ServerSettings, SettingsError
from .stderr import held_stderr, write_stderr

_GRPC_LOG_LINE = re.compile(r"^[EWIDF]\d{4} [\d:.]+ +\d+ \S+:\d+\] (.*)$")  # E1201 23:03:38...
# What grpc's add_port.cc says about a failed bind, and what gz says instead.
_BIND_PROBLEMS = {
    "Address already in use": "another process listens there",
    "Cannot assign requested address": "the host is not an address of this machine",
    "Permission denied": "permission denied (ports below 1024 need privileges)",
    "address lookup failed": "the host name does not resolve",
}


def add_port(
    server: grpc.aio.Server,
    settings: ServerSettings,
    credentials: grpc.ServerCredentials | None,
    worker_address: str | None = None,
) -> int:
    """Bind GZ_LISTEN (or a worker's own address); the bound port. OSError naming the variable
    and why when grpc cannot bind, SettingsError naming GZ_TLS_CERT/KEY when grpc refuses them."""
    listen = worker_address or settings.listen
    culprit = (
        f"{listen} (a worker's own port: GZ_WORKER_PORT)"
        if worker_address
        else f"GZ_LISTEN={listen}"
    )
    with held_stderr() as held:
        try:
            port = (
                server.add_insecure_port(listen)
                if credentials is None
                else server.add_secure_port(listen, credentials)
            )
        except RuntimeError:
            port = None
    if port is not None:
        write_stderr(held.text)
        return port
    grpc_says, others = _grpc_log_lines(held.text)
    write_stderr(others)
    if credentials is not None and any("secure server" in line for line in grpc_says):
        raise SettingsError(
            f"GZ_TLS_CERT={settings.tls_cert!r} and GZ_TLS_KEY={settings.tls_key!r}: grpc cannot "
            f"serve TLS with them ({grpc_says[0]})"
        )
    reason = next(
        (problem for text, problem in _BIND_PROBLEMS.items() for line in grpc_says if text in line),
        None,
    )
    if reason is None:
        reason = "another process listens there, or the host is not an address of this machine"
        if grpc_says:
            reason += f" (grpc: {grpc_says[-1]})"
    raise OSError(f"cannot listen on {culprit}: {reason}")


def _grpc_log_lines(text: str) -> tuple[list[str], str]:
    """The messages of grpc's log lines in ``text``, and the rest of it."""
    messages, others = [], []
    for line in text.splitlines(keepends=True):
        match = _GRPC_LOG_LINE.match(line.rstrip("\n"))
        if match:
            messages.append(match.group(1))
        else:
            others.append(line)
    return messages, "".join(others)
