"""The RPCs a service class leaves to its generated base: found without calling anything, and
named in one warning when the server starts."""

from __future__ import annotations

import logging

import grpc
import pytest

import gz
from examples.greeter import greeter_pb2, greeter_pb2_grpc
from examples.greeter.server import Greeter
from gz.servicers import generated_bases, unimplemented

from .support import start_greeter


class WithoutBidi(Greeter):
    """The greeter before BidiHello was added to its proto: it still inherits grpc's stub."""

    BidiHello = greeter_pb2_grpc.GreeterServicer.BidiHello


class Bare(gz.Service, greeter_pb2_grpc.GreeterServicer):
    pass


def test_unimplemented_names_each_rpc_still_inherited_from_the_generated_base():
    assert unimplemented(Greeter) == []
    assert unimplemented(WithoutBidi) == ["greeter.v1.Greeter/BidiHello"]
    assert unimplemented(Bare) == [
        "greeter.v1.Greeter/SayHello",
        "greeter.v1.Greeter/LotsOfReplies",
        "greeter.v1.Greeter/LotsOfGreetings",
        "greeter.v1.Greeter/BidiHello",
    ]
    assert [base for base, _ in generated_bases(WithoutBidi)] == [greeter_pb2_grpc.GreeterServicer]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("gz") and record.levelno == logging.WARNING
        if "does not implement" in record.getMessage()
    ]


async def test_start_up_warns_once_listing_the_rpcs_the_class_does_not_implement(caplog):
    caplog.set_level(logging.INFO, logger="gz")
    service = await start_greeter(WithoutBidi)
    try:
        assert _warnings(caplog) == [
            "WithoutBidi does not implement greeter.v1.Greeter/BidiHello: they answer "
            "UNIMPLEMENTED; gz gen --add-handlers writes stubs"
        ]
        async with grpc.aio.insecure_channel(service.address) as channel:
            bidi = channel.stream_stream(
                "/greeter.v1.Greeter/BidiHello",
                request_serializer=greeter_pb2.HelloRequest.SerializeToString,
                response_deserializer=greeter_pb2.HelloReply.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await bidi(iter([greeter_pb2.HelloRequest(name="x")]), timeout=5).read()
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await service.server.stop()
    assert len(_warnings(caplog)) == 1  # at start-up only, not per call


async def test_a_complete_class_starts_without_that_warning(caplog):
    caplog.set_level(logging.INFO, logger="gz")
    service = await start_greeter(Greeter)
    await service.server.stop()
    assert _warnings(caplog) == []
