"""``gz health TARGET``: grpc.health.v1 Check on every endpoint; usable as a probe."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gz import ClientSettings
from gz.discovery import Endpoint
from gz.tls import endpoint_channel

STATUS_NAMES = health_pb2.HealthCheckResponse.ServingStatus.Name


async def check(endpoint: Endpoint, service: str, timeout: float, settings: ClientSettings) -> str:
    """SERVING, NOT_SERVING, SERVICE_UNKNOWN, ... or the gRPC error code of a failed check.
    The channel is plaintext or TLS as the GZ_TLS_* client settings say."""
    async with endpoint_channel(endpoint.address, settings) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"  # the server does not know this service name
            return error.code().name
    return STATUS_NAMES(reply.status)


async def check_all(
    endpoints: frozenset[Endpoint], service: str, timeout: float, settings: ClientSettings
) -> dict[str, str]:
    """address -> status, checked concurrently."""
    ordered = sorted(endpoints)
    statuses = await asyncio.gather(*(check(e, service, timeout, settings) for e in ordered))
    return {endpoint.address: status for endpoint, status in zip(ordered, statuses, strict=True)}
