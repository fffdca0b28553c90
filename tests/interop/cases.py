"""gRPC's interop client cases (doc/interop-test-descriptions.md, "Client") as async functions
of a grpc.aio channel: each asserts what its description asserts, and raises AssertionError
(or the call's own error) when the server or the channel gets it wrong.

``wire`` is the byte-counting relay the channel goes through (wire.py): the compression cases
use it to see what grpc Python does not show, whether a message crossed compressed. Without it
they check everything else.

A status, metadata or cancel outcome a call owes is awaited for at most ``STATUS_TIMEOUT``
seconds: a finished call has it at once, so one that does not come is reported as a hang
instead of holding up the suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc.aio import AioRpcError

from .grpc_testing import empty_pb2, messages_pb2, test_pb2_grpc
from .service import ECHO_INITIAL_KEY, ECHO_TRAILING_KEY, payload
from .wire import Wire

STATUS_TIMEOUT = 3.0

T = TypeVar("T")
Case = Callable[[grpc.aio.Channel, Wire | None], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(function: Case) -> Case:
    CASES[function.__name__] = function
    return function


async def settled(awaitable: Awaitable[T], what: str) -> T:
    """``awaitable`` (a call's status, metadata, ...), failing if it hangs."""
    try:
        return await asyncio.wait_for(awaitable, STATUS_TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"{what} did not return within {STATUS_TIMEOUT}s") from None


async def expect_status(call: Any, code: grpc.StatusCode, details: str | None = None) -> None:
    """The call ended with ``code`` (and ``details``), as code() and details() report it."""
    got = await settled(call.code(), "call.code()")
    assert got == code, f"status {got}, expected {code}"
    if details is not None:
        got_details = await settled(call.details(), "call.details()")
        assert got_details == details, f"details {got_details!r}, expected {details!r}"


async def expect_error(awaitable: Awaitable[Any], code: grpc.StatusCode,
                       details: str | None = None) -> AioRpcError:  # fmt: skip
    """``awaitable`` raises AioRpcError with ``code`` (and ``details``)."""
    try:
        result = await awaitable
    except AioRpcError as error:
        assert error.code() == code, f"{error.code()} ({error.details()!r}), expected {code}"
        if details is not None:
            assert error.details() == details, f"{error.details()!r}, expected {details!r}"
        return error
    raise AssertionError(f"succeeded ({type(result).__name__}), expected {code}")


def check_payload(response: Any, size: int) -> None:
    """A COMPRESSABLE payload of ``size`` zeros."""
    got = len(response.payload.body)
    assert got == size, f"payload of {got} bytes, expected {size}"
    assert response.payload.type == messages_pb2.COMPRESSABLE
    assert response.payload.body == bytes(size), "payload is not all zeros"


def only(metadata: Any, key: str) -> list[Any]:
    """The values of ``key`` in ``metadata``."""
    return [value for k, value in (metadata or ()) if k == key]


def stub(channel: grpc.aio.Channel) -> test_pb2_grpc.TestServiceStub:
    return test_pb2_grpc.TestServiceStub(channel)


def wire_start(wire: Wire | None) -> Any:
    return wire.snapshot() if wire is not None else None


def compressed_up(wire: Wire | None, before: Any, size: int, compressed: bool) -> None:
    """What crossed from client to server since ``before`` holds ``size`` bytes of zeros
    compressed (far fewer bytes) or not (at least ``size``)."""
    if wire is not None:
        _check_compression(wire.since(before).up, size, compressed, "request")


def compressed_down(wire: Wire | None, before: Any, size: int, compressed: bool) -> None:
    if wire is not None:
        _check_compression(wire.since(before).down, size, compressed, "response")


def _check_compression(sent: int, size: int, compressed: bool, what: str) -> None:
    if compressed:
        assert sent < size // 2, f"{size} zero bytes took {sent} on the wire: {what} not compressed"
    else:
        assert sent >= size, f"{size} zero bytes took {sent} on the wire: {what} compressed"


LARGE_REQUEST, LARGE_RESPONSE = 271828, 314159
STREAM_SIZES = (31415, 9, 2653, 58979)  # response sizes of server_streaming and ping_pong
STREAM_PAYLOADS = (27182, 8, 1828, 45904)  # request sizes of client_streaming and ping_pong


def large_request(**fields: Any) -> messages_pb2.SimpleRequest:
    return messages_pb2.SimpleRequest(
        response_type=messages_pb2.COMPRESSABLE, response_size=LARGE_RESPONSE,
        payload=payload(LARGE_REQUEST), **fields,
    )  # fmt: skip


def output_request(*sizes: int, body: int = 0, **fields: Any) -> Any:
    return messages_pb2.StreamingOutputCallRequest(
        response_type=messages_pb2.COMPRESSABLE,
        response_parameters=[messages_pb2.ResponseParameters(size=s) for s in sizes],
        payload=payload(body) if body else None,
        **fields,
    )


def on(value: bool) -> messages_pb2.BoolValue:
    return messages_pb2.BoolValue(value=value)


# -- the cases ---------------------------------------------------------------------------------


@case
async def empty_unary(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    response = await stub(channel).EmptyCall(empty_pb2.Empty())
    assert isinstance(response, empty_pb2.Empty), type(response)
    assert response.ByteSize() == 0


@case
async def large_unary(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    check_payload(await stub(channel).UnaryCall(large_request()), LARGE_RESPONSE)


@case
async def client_compressed_unary(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    service = stub(channel)
    # The probe, an uncompressed request that says it is compressed: a server that can see a
    # message's compressed flag answers INVALID_ARGUMENT. A Python server cannot (grpc keeps the
    # flag from handlers), so ours answer normally; either way the request must have crossed
    # uncompressed.
    before = wire_start(wire)
    try:
        probe = await service.UnaryCall(large_request(expect_compressed=on(True)))
    except AioRpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    else:
        check_payload(probe, LARGE_RESPONSE)
    compressed_up(wire, before, LARGE_REQUEST, compressed=False)

    before = wire_start(wire)
    response = await service.UnaryCall(
        large_request(expect_compressed=on(True)), compression=grpc.Compression.Gzip
    )
    check_payload(response, LARGE_RESPONSE)
    compressed_up(wire, before, LARGE_REQUEST, compressed=True)

    before = wire_start(wire)
    check_payload(await service.UnaryCall(large_request(expect_compressed=on(False))),
                  LARGE_RESPONSE)  # fmt: skip
    compressed_up(wire, before, LARGE_REQUEST, compressed=False)


@case
async def server_compressed_unary(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    for compressed in (True, False):
        before = wire_start(wire)
        response = await stub(channel).UnaryCall(large_request(response_compressed=on(compressed)))
        check_payload(response, LARGE_RESPONSE)
        compressed_down(wire, before, LARGE_RESPONSE, compressed)


@case
async def client_streaming(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    async def requests():
        for size in STREAM_PAYLOADS:
            yield messages_pb2.StreamingInputCallRequest(payload=payload(size))

    response = await stub(channel).StreamingInputCall(requests())
    assert response.aggregated_payload_size == 74922, response.aggregated_payload_size


@case
async def client_compressed_streaming(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    service = stub(channel)

    def request(size: int, expect_compressed: bool) -> messages_pb2.StreamingInputCallRequest:
        return messages_pb2.StreamingInputCallRequest(
            payload=payload(size), expect_compressed=on(expect_compressed)
        )

    # The probe: as in client_compressed_unary, INVALID_ARGUMENT from a server that can see the
    # compressed flag, an answer from a Python server; the request crossed uncompressed.
    before = wire_start(wire)
    call = service.StreamingInputCall()
    await call.write(request(27182, True))
    await call.done_writing()
    try:
        probe = await call
    except AioRpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    else:
        assert probe.aggregated_payload_size == 27182, probe.aggregated_payload_size
    compressed_up(wire, before, 27182, compressed=False)

    # A Python client compresses a whole call or nothing of it (grpc.aio's write() has no
    # per-message flags), so the second message, which the description sends uncompressed,
    # is compressed too; the wire check covers the first: it must have crossed compressed.
    before = wire_start(wire)
    call = service.StreamingInputCall(compression=grpc.Compression.Gzip)
    await call.write(request(27182, True))
    await call.write(request(45904, False))
    await call.done_writing()
    response = await call
    assert response.aggregated_payload_size == 73086, response.aggregated_payload_size
    compressed_up(wire, before, 27182, compressed=True)


@case
async def server_streaming(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    call = stub(channel).StreamingOutputCall(output_request(*STREAM_SIZES))
    responses = [response async for response in call]
    assert [len(r.payload.body) for r in responses] == list(STREAM_SIZES)
    for response, size in zip(responses, STREAM_SIZES, strict=True):
        check_payload(response, size)
    await expect_status(call, grpc.StatusCode.OK)


@case
async def server_compressed_streaming(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    request = messages_pb2.StreamingOutputCallRequest(
        response_type=messages_pb2.COMPRESSABLE,
        response_parameters=[
            messages_pb2.ResponseParameters(size=31415, compressed=on(True)),
            messages_pb2.ResponseParameters(size=92653, compressed=on(False)),
        ],
    )
    before = wire_start(wire)
    call = stub(channel).StreamingOutputCall(request)
    responses = [response async for response in call]
    assert [len(r.payload.body) for r in responses] == [31415, 92653]
    check_payload(responses[0], 31415)
    check_payload(responses[1], 92653)
    await expect_status(call, grpc.StatusCode.OK)
    if wire is not None:
        # The second response uncompressed (at least its 92653 bytes), the first compressed
        # (far fewer than its 31415 bytes on top).
        down = wire.since(before).down
        assert 92653 <= down < 92653 + 31415 // 2, f"{down} bytes for 31415 compressed + 92653"


@case
async def ping_pong(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    call = stub(channel).FullDuplexCall()
    for size, body in zip(STREAM_SIZES, STREAM_PAYLOADS, strict=True):
        await call.write(output_request(size, body=body))
        response = await call.read()
        assert response is not grpc.aio.EOF, "the stream ended early"
        check_payload(response, size)
    await call.done_writing()
    await expect_status(call, grpc.StatusCode.OK)  # before reading to the end, as a client may
    assert await settled(call.read(), "read() after the status") is grpc.aio.EOF


@case
async def empty_stream(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    call = stub(channel).FullDuplexCall()
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF, "a response to no request"
    await expect_status(call, grpc.StatusCode.OK)


@case
async def cancel_after_begin(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    call = stub(channel).StreamingInputCall()
    assert call.cancel() is True, "cancel() of a call in progress returned False"
    assert call.cancelled(), "cancelled() is False right after cancel()"
    await expect_status(call, grpc.StatusCode.CANCELLED)
    try:
        await asyncio.wait_for(asyncio.shield(_outcome(call)), STATUS_TIMEOUT)
    except TimeoutError:
        raise AssertionError("awaiting the cancelled call hangs") from None
    assert call.done()


async def _outcome(call: Any) -> None:
    """Awaiting a cancelled call raises CancelledError (grpc.aio's way of saying CANCELLED)."""
    try:
        result = await call
    except asyncio.CancelledError:
        return
    raise AssertionError(f"the cancelled call returned {result!r}")


@case
async def cancel_after_first_response(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    call = stub(channel).FullDuplexCall()
    await call.write(output_request(31415, body=27182))
    response = await call.read()
    assert response is not grpc.aio.EOF, "no first response"
    check_payload(response, 31415)
    assert call.cancel() is True, "cancel() of a call in progress returned False"
    assert call.cancelled(), "cancelled() is False right after cancel()"
    await expect_status(call, grpc.StatusCode.CANCELLED)
    try:
        after = await settled(call.read(), "read() of a cancelled call")
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError(f"read() of a cancelled call returned {after!r}")


@case
async def timeout_on_sleeping_server(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    call = stub(channel).FullDuplexCall(timeout=0.001)

    async def write_and_wait() -> None:
        try:
            await call.write(output_request(body=27182))
        except AioRpcError as error:
            # grpc/grpc#36066: grpc.aio's write can race the call's end (here, its 1 ms
            # deadline) and fail INTERNAL "execute_batch", whatever the server; the call's own
            # status still decides, so read it.
            if "execute_batch" not in (error.debug_error_string() or ""):
                raise
        await call.read()

    await expect_error(write_and_wait(), grpc.StatusCode.DEADLINE_EXCEEDED)
    await expect_status(call, grpc.StatusCode.DEADLINE_EXCEEDED)


CUSTOM_METADATA = (
    (ECHO_INITIAL_KEY, "test_initial_metadata_value"),
    (ECHO_TRAILING_KEY, b"\xab\xab\xab"),
)


async def _echoed_metadata(call: Any, what: str) -> None:
    """Both echoes arrived: each exactly once, with the value sent."""
    initial = await settled(call.initial_metadata(), f"{what}: call.initial_metadata()")
    trailing = await settled(call.trailing_metadata(), f"{what}: call.trailing_metadata()")
    problems = [
        f"{part} metadata {metadata!r} lack {key}={value!r}"
        for part, metadata, key, value in (
            ("initial", initial, *CUSTOM_METADATA[0]),
            ("trailing", trailing, *CUSTOM_METADATA[1]),
        )
        if only(metadata, key) != [value]
    ]
    assert not problems, f"{what}: " + "; ".join(problems)


@case
async def custom_metadata(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    service = stub(channel)
    call = service.UnaryCall(large_request(), metadata=CUSTOM_METADATA)
    check_payload(await call, LARGE_RESPONSE)
    await _echoed_metadata(call, "UnaryCall")

    call = service.FullDuplexCall(metadata=CUSTOM_METADATA)
    await call.write(output_request(LARGE_RESPONSE, body=LARGE_REQUEST))
    await call.done_writing()
    response = await call.read()
    assert response is not grpc.aio.EOF, "no response"
    check_payload(response, LARGE_RESPONSE)
    await _echoed_metadata(call, "FullDuplexCall")  # the stream not read to its end
    await expect_status(call, grpc.StatusCode.OK)


TEST_STATUS = "test status message"
SPECIAL_STATUS = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"


def _echo_status(message: str) -> messages_pb2.EchoStatus:
    return messages_pb2.EchoStatus(code=grpc.StatusCode.UNKNOWN.value[0], message=message)


@case
async def status_code_and_message(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    service = stub(channel)
    call = service.UnaryCall(messages_pb2.SimpleRequest(response_status=_echo_status(TEST_STATUS)))
    await expect_error(call, grpc.StatusCode.UNKNOWN, TEST_STATUS)
    await expect_status(call, grpc.StatusCode.UNKNOWN, TEST_STATUS)

    call = service.FullDuplexCall()
    request = messages_pb2.StreamingOutputCallRequest(response_status=_echo_status(TEST_STATUS))
    await call.write(request)
    await call.done_writing()
    await expect_status(call, grpc.StatusCode.UNKNOWN, TEST_STATUS)


@case
async def special_status_message(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    request = messages_pb2.SimpleRequest(response_status=_echo_status(SPECIAL_STATUS))
    call = stub(channel).UnaryCall(request)
    await expect_error(call, grpc.StatusCode.UNKNOWN, SPECIAL_STATUS)
    await expect_status(call, grpc.StatusCode.UNKNOWN, SPECIAL_STATUS)


@case
async def unimplemented_method(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    call = stub(channel).UnimplementedCall(empty_pb2.Empty())
    await expect_error(call, grpc.StatusCode.UNIMPLEMENTED)
    await expect_status(call, grpc.StatusCode.UNIMPLEMENTED)


@case
async def unimplemented_service(channel: grpc.aio.Channel, wire: Wire | None = None) -> None:
    call = test_pb2_grpc.UnimplementedServiceStub(channel).UnimplementedCall(empty_pb2.Empty())
    await expect_error(call, grpc.StatusCode.UNIMPLEMENTED)
    await expect_status(call, grpc.StatusCode.UNIMPLEMENTED)
