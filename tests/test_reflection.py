"""What the gRPC port tells without credentials: reflection can be switched off
(GZ_REFLECTION=false) and asks for the bearer token when GZ_AUTH_TOKENS is set; health answers
without one (probes have none)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import gz

from .support import health_status

TOKEN = "reflection-token"


async def list_services(address: str, token: str | None = None) -> list[str]:
    """The services reflection lists; AioRpcError when it refuses."""
    metadata = None if token is None else (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        call = stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=5)
        replies = [reply async for reply in call]
    return [service.name for service in replies[0].list_services_response.service]


async def refusal(address: str, token: str | None = None) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await list_services(address, token)
    return raised.value.code()


async def test_gz_reflection_false_switches_it_off(serve_greeter, monkeypatch):
    default = await serve_greeter()
    assert "greeter.v1.Greeter" in await list_services(default.address)
    switched_off = await serve_greeter(reflection=False)
    assert await refusal(switched_off.address) is grpc.StatusCode.UNIMPLEMENTED
    assert await health_status(switched_off.address) == health_pb2.HealthCheckResponse.SERVING
    monkeypatch.setenv("GZ_REFLECTION", "false")
    assert gz.ServerSettings.from_env().reflection is False


async def test_with_tokens_reflection_asks_for_one_and_health_does_not(serve_greeter):
    service = await serve_greeter(auth_tokens=[TOKEN])
    assert await refusal(service.address) is grpc.StatusCode.UNAUTHENTICATED
    assert await refusal(service.address, "wrong") is grpc.StatusCode.UNAUTHENTICATED
    assert "greeter.v1.Greeter" in await list_services(service.address, TOKEN)
    assert await health_status(service.address) == health_pb2.HealthCheckResponse.SERVING
    per_service = await health_status(service.address, "greeter.v1.Greeter")
    assert per_service == health_pb2.HealthCheckResponse.SERVING
