"""Bearer tokens, TLS and mutual TLS with certificates made by trustme (the pki fixture)."""

from __future__ import annotations

import logging

import grpc
import pytest

import gz
from examples.greeter.server import Greeter
from gz.middleware.auth import TokenAuth

from .support import health_status, say_hello

TOKEN = "s3cret-token-value"


@pytest.fixture
async def guarded(serve_greeter):
    return await serve_greeter(auth_tokens=[TOKEN, "another"])


async def call_code(address: str, **client_settings: object) -> grpc.StatusCode:
    """The status of one SayHello through connect() with these client settings."""
    settings = gz.ClientSettings(**client_settings)
    async with gz.connect(f"direct:///{address}", settings=settings, retry=False) as channel:
        try:
            await say_hello(channel)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK


async def test_a_good_token_passes_a_wrong_or_missing_one_is_unauthenticated(guarded, caplog):
    caplog.set_level(logging.INFO)
    assert await call_code(guarded.address, auth_token=TOKEN) is grpc.StatusCode.OK
    assert await call_code(guarded.address, auth_token="another") is grpc.StatusCode.OK
    assert await call_code(guarded.address, auth_token="wrong") is grpc.StatusCode.UNAUTHENTICATED
    assert await call_code(guarded.address) is grpc.StatusCode.UNAUTHENTICATED
    async with grpc.aio.insecure_channel(guarded.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await say_hello(channel)
        assert "authorization: Bearer <token>" in raised.value.details()
    # Health checks (Kubernetes probes, gz clients' health watch) need no token.
    assert await health_status(guarded.address) == 1
    assert TOKEN not in caplog.text and "wrong" not in caplog.text


async def test_a_check_function_may_be_async_and_decides(serve_greeter):
    async def check(token: str) -> bool:
        return token.startswith("team-")

    class Checked(Greeter):
        middleware = (TokenAuth(check=check),)

    service = await serve_greeter(Checked)
    assert await call_code(service.address, auth_token="team-a") is grpc.StatusCode.OK
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    assert await call_code(service.address, auth_token="other") is unauthenticated


def test_token_auth_without_tokens_or_check_says_what_to_configure():
    with pytest.raises(ValueError, match="GZ_AUTH_TOKENS"):
        TokenAuth()


async def test_tls_the_client_verifies_the_server_against_its_ca(serve_greeter, pki):
    service = await serve_greeter(tls_cert=pki["server_cert"], tls_key=pki["server_key"])
    address = service.address
    assert await call_code(address, tls_ca=pki["ca"]) is grpc.StatusCode.OK
    assert await call_code(address, tls_ca=pki["other_ca"]) is grpc.StatusCode.UNAVAILABLE
    assert await call_code(address) is grpc.StatusCode.UNAVAILABLE  # plaintext


async def test_mtls_the_server_accepts_only_clients_with_a_certificate_from_its_ca(
    serve_greeter, pki
):
    service = await serve_greeter(
        tls_cert=pki["server_cert"], tls_key=pki["server_key"], tls_ca=pki["ca"]
    )
    address, ca = service.address, pki["ca"]
    ok = await call_code(address, tls_ca=ca, tls_cert=pki["client_cert"],
                         tls_key=pki["client_key"])  # fmt: skip
    assert ok is grpc.StatusCode.OK
    assert await call_code(address, tls_ca=ca) is grpc.StatusCode.UNAVAILABLE  # no cert
    stranger = await call_code(address, tls_ca=ca, tls_cert=pki["stranger_cert"],
                               tls_key=pki["stranger_key"])  # fmt: skip
    assert stranger is grpc.StatusCode.UNAVAILABLE


def test_a_server_ca_without_a_server_certificate_is_a_bad_setting(pki, monkeypatch):
    monkeypatch.setenv("GZ_TLS_CA", pki["ca"])
    with pytest.raises(gz.SettingsError, match="set GZ_TLS_CERT and GZ_TLS_KEY too"):
        gz.ServerSettings.from_env()
    gz.ClientSettings.from_env()  # a client with only a CA is fine: it verifies servers
