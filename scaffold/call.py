"""``gz call TARGET METHOD [JSON]``: one call through discovery and balancing, JSON in and out;
the messages come from server reflection or from ``--proto`` files (schema.py)."""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import json_format

import gz

from .errors import BadInput, Failed
from .reflection import Reflection, stream_of
from .schema import FoundMethod, Schema

# protobuf 26 renamed including_default_value_fields (and left fields with presence out of it)
_DEFAULTS = "always_print_fields_with_no_presence"
if _DEFAULTS not in inspect.signature(json_format.MessageToJson).parameters:
    _DEFAULTS = "including_default_value_fields"
_METADATA_KEY = re.compile(r"[0-9a-z_.-]+")  # fullmatch: "key\n" is no key
_ASCII_VALUE = re.compile(r"[\x20-\x7e]*")  # what gRPC sends as is; other bytes go in -bin
_NOT_SPACE = re.compile(r"\S")
_TOO_DEEP = "the request nests too deeply; no message needs that many levels"


def parse_requests(text: str, method: FoundMethod) -> list[Any]:
    """JSON -> request messages: one object; for a client-streaming method any number of objects
    one after another (as grpcurl reads them), or one array of them."""
    documents = _documents(text)
    streaming = method.descriptor.client_streaming
    if streaming and len(documents) == 1 and isinstance(documents[0], list):
        documents = documents[0]
    shapes_ok = all(isinstance(document, dict) for document in documents)
    if not shapes_ok or (not streaming and len(documents) != 1):
        form = "JSON objects, or an array of them" if streaming else "one JSON object"
        raise BadInput(f"{method.descriptor.full_name} takes {form}, e.g. '{{}}'")
    requests = []
    for document in documents:
        try:
            requests.append(json_format.ParseDict(document, method.request()))
        except json_format.ParseError as error:
            problem = " ".join(str(error).split())  # protobuf's message spans two lines
            raise BadInput(f"{method.request.DESCRIPTOR.full_name}: {problem}") from None
        except RecursionError:
            raise BadInput(_TOO_DEEP) from None
    return requests


def _documents(text: str) -> list[Any]:
    """The JSON documents in ``text``, one after another, whitespace between them or not."""
    decoder, documents = json.JSONDecoder(), []
    start = _NOT_SPACE.search(text)
    while start is not None:
        try:
            document, end = decoder.raw_decode(text, start.start())
        except json.JSONDecodeError as error:
            raise BadInput(f"the request is not JSON: {error}") from None
        except RecursionError:  # json nests by recursion: [[[[... deep enough ends it
            raise BadInput(_TOO_DEEP) from None
        documents.append(document)
        start = _NOT_SPACE.search(text, end)
    return documents


def to_json(message: Any, *, emit_defaults: bool = False, pretty: bool = False) -> str:
    """proto3 JSON: indented for a reply read on its own, one line for each of a stream."""
    defaults = {_DEFAULTS: True} if emit_defaults else {}
    return json_format.MessageToJson(message, indent=2 if pretty else None, **defaults)


def parse_header(text: str) -> tuple[str, str | bytes]:
    """``'Key: value'`` -> ``("key", "value")``; a ``-bin`` key's value is base64, as in grpcurl."""
    key, colon, value = text.partition(":")
    key, value = key.strip().lower(), value.strip()
    if not colon or not _METADATA_KEY.fullmatch(key) or key == "-bin":
        raise BadInput(f"header {text!r} is not 'KEY: VALUE' with a key of a-z, 0-9, - _ .")
    if not key.endswith("-bin"):
        if not _ASCII_VALUE.fullmatch(value):
            raise BadInput(
                f"header {key}: a value is printable ASCII; send other bytes base64-encoded "
                f"under a key ending -bin, e.g. {key}-bin"
            )
        return key, value
    try:  # standard or URL-safe alphabet, padding optional
        padded = value + "=" * (-len(value) % 4)
        return key, base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"header {key}: a -bin value is base64, not {value!r}") from None


def status_line(path: str, error: grpc.aio.AioRpcError) -> str:
    """The status of a failed call in one line: path, code name, message."""
    details = " ".join((error.details() or "").split())
    return f"{path}: {error.code().name}: {details}"


async def call(
    target: str | gz.Resolver,
    method_name: str,
    request_json: str,
    timeout: float,
    metadata: list[tuple[str, str | bytes]],
    emit: Callable[[str], None],
    settings: gz.ClientSettings | None = None,
    *,
    protos: Schema | None = None,
    emit_defaults: bool = False,
) -> None:
    """Call METHOD on TARGET and emit each reply: a single one indented, a stream one a line."""
    async with gz.connect(target, timeout=timeout, settings=settings) as channel:
        schema = protos or Reflection(channel, timeout, metadata)
        method = await schema.method(method_name)
        requests = parse_requests(request_json, method)
        pretty = not method.descriptor.server_streaming
        try:
            async for reply in _invoke(channel, method, requests, metadata, timeout):
                emit(to_json(reply, emit_defaults=emit_defaults, pretty=pretty))
        except grpc.aio.AioRpcError as error:
            raise Failed(status_line(method.path, error)) from None


def _invoke(
    channel: grpc.aio.Channel,
    method: FoundMethod,
    requests: list[Any],
    metadata: list[tuple[str, str | bytes]],
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
