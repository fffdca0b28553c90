"""``gz call TARGET METHOD [JSON]``: one call through discovery and balancing, JSON in and out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import json_format

import gz

from .errors import BadInput, Failed
from .reflection import FoundMethod, Reflection, stream_of


def parse_requests(text: str, method: FoundMethod) -> list[Any]:
    """JSON -> request messages: one object, or for a client-streaming method an array too."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadInput(f"the request is not JSON: {error}") from None
    streaming = method.descriptor.client_streaming
    items = value if isinstance(value, list) and streaming else [value]
    requests = []
    for item in items:
        if not isinstance(item, dict):
            form = "an object, or an array of objects" if streaming else "one JSON object"
            raise BadInput(f"{method.descriptor.full_name} takes {form}, e.g. '{{}}'")
        try:
            requests.append(json_format.ParseDict(item, method.request()))
        except json_format.ParseError as error:
            problem = " ".join(str(error).split())  # protobuf's message spans two lines
            raise BadInput(f"{method.request.DESCRIPTOR.full_name}: {problem}") from None
    return requests


def to_json(message: Any) -> str:
    return json_format.MessageToJson(message, indent=None)


async def call(
    target: str | gz.Resolver,
    method_name: str,
    request_json: str,
    timeout: float,
    metadata: list[tuple[str, str]],
    emit: Callable[[str], None],
    settings: gz.ClientSettings | None = None,
) -> None:
    """Call METHOD on TARGET and emit each reply as a JSON line."""
    async with gz.connect(target, timeout=timeout, settings=settings) as channel:
        method = await Reflection(channel, timeout).method(method_name)
        requests = parse_requests(request_json, method)
        try:
            async for reply in _invoke(channel, method, requests, metadata, timeout):
                emit(to_json(reply))
        except grpc.aio.AioRpcError as error:
            raise Failed(f"{method.path}: {error.code().name}: {error.details()}") from None


def _invoke(
    channel: grpc.aio.Channel,
    method: FoundMethod,
    requests: list[Any],
    metadata: list[tuple[str, str]],
    timeout: float,
) -> AsyncIterator[Any]:
    kinds = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    streaming_in = method.descriptor.client_streaming
    streaming_out = method.descriptor.server_streaming
    multicallable = kinds[streaming_in, streaming_out](
        method.path,
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=method.reply.FromString,
    )
    argument = stream_of(requests) if streaming_in else requests[0]
    result = multicallable(argument, metadata=metadata or None, timeout=timeout)
    return _replies(result, streaming_out)


async def _replies(result: Any, streaming: bool) -> AsyncIterator[Any]:
    if streaming:
        async for reply in result:
            yield reply
    else:
        yield await result
