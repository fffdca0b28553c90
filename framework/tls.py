"""TLS credentials from GZ_TLS_CERT, GZ_TLS_KEY and GZ_TLS_CA (docs/security.md).

Server: GZ_TLS_CERT and GZ_TLS_KEY turn TLS on; GZ_TLS_CA as well makes it mutual TLS: only
clients with a certificate signed by that CA get in. Client: GZ_TLS_CA is the CA that must have
signed the server's certificate (the system roots without it); GZ_TLS_CERT and GZ_TLS_KEY are
the client certificate for mutual TLS.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from .settings import ClientSettings, MiddlewareSettings, ServerSettings


def _read(path: str | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def _key_pair(settings: MiddlewareSettings) -> tuple[bytes | None, bytes | None]:
    return _read(settings.tls_key), _read(settings.tls_cert)


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """The server's TLS credentials, or None for plaintext."""
    if settings.tls_cert is None:  # settings refuse GZ_TLS_CA alone on a server
        return None
    key, cert = _key_pair(settings)
    ca = _read(settings.tls_ca)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def client_uses_tls(settings: ClientSettings) -> bool:
    if settings.tls is not None:
        return settings.tls
    return settings.tls_ca is not None or settings.tls_cert is not None


def tls_options(settings: ClientSettings) -> list[tuple[str, str]]:
    """Channel options for GZ_TLS_SERVER_NAME: the name the server's certificate must carry."""
    if settings.tls_server_name:
        return [("grpc.ssl_target_name_override", settings.tls_server_name)]
    return []


def open_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    """A grpc.aio channel to one address: TLS with ``credentials``, plaintext without."""
    if credentials is None:
        return grpc.aio.insecure_channel(address, options, interceptors=interceptors)
    return grpc.aio.secure_channel(address, credentials, options, interceptors=interceptors)


def open_sync_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A grpc.Channel to one address (a sync client's calls), as open_channel() makes them."""
    if credentials is None:
        return grpc.insecure_channel(address, options)
    return grpc.secure_channel(address, credentials, options)


def endpoint_channel(address: str, settings: ClientSettings) -> grpc.aio.Channel:
    """A channel to one address, plaintext or TLS as the client settings say (gz health)."""
    return open_channel(address, channel_credentials(settings), tls_options(settings))


def channel_credentials(settings: ClientSettings) -> grpc.ChannelCredentials | None:
    """The client's TLS credentials, or None for plaintext."""
    if not client_uses_tls(settings):
        return None
    key, cert = _key_pair(settings)
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.tls_ca), private_key=key, certificate_chain=cert
    )
