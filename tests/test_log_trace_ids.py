"""Every log line written while a span is current carries its trace_id and span_id: the user's own
lines in async and sync handlers of every kind, the recovery line and the call log, in gz's JSON
and text formats (configure_logging, as a server sets it up), and no ids without a span."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from examples.greeter import greeter_pb2, greeter_pb2_grpc
from examples.greeter.server import Greeter
from gz.logs import configure_logging
from gz.middleware.tracing import Tracing

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))

user = logging.getLogger("user")
Request = greeter_pb2.HelloRequest


class LoggingGreeter(Greeter):
    """Each handler logs a line of its own, as application code does; async and sync (in the
    server's thread pool), unary and streaming."""

    middleware = (Tracing(PROVIDER),)  # inside recovery and the call log: ended when they write

    async def SayHello(self, request, context):
        if request.name == "raise":
            raise RuntimeError("a bug")
        user.info("SayHello")
        return self.reply("hello")

    def LotsOfReplies(self, request, context):  # a sync generator
        user.info("LotsOfReplies")
        yield self.reply("one")

    def LotsOfGreetings(self, request_iterator, context):  # sync, unary response
        names = [r.name for r in request_iterator]
        user.info("LotsOfGreetings")
        return self.reply(", ".join(names))

    async def BidiHello(self, request_iterator, context):  # an async generator
        async for request in request_iterator:
            user.info("BidiHello")
            yield self.reply(request.name)


@contextlib.contextmanager
def gz_logging(fmt: str) -> Iterator[None]:
    """gz's own set-up (to the captured stderr); the root logger's handlers are put back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("INFO", fmt)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


TEXT = re.compile(
    r"^\S+ \S+ [A-Z]+ (?P<logger>\S+): (?P<message>.*?)"
    r"(?: trace_id=(?P<trace_id>[0-9a-f]{32}) span_id=(?P<span_id>[0-9a-f]{16}))?$"
)


def parse(fmt: str, stderr: str) -> list[dict]:
    """The lines as dicts with logger, message, trace_id and span_id (None when absent)."""
    if fmt == "json":
        lines = [json.loads(line) for line in stderr.splitlines()]
    else:  # a stack trace's lines follow its record's line and match nothing
        lines = [m.groupdict() for m in map(TEXT.match, stderr.splitlines()) if m]
    keys = ("logger", "message", "trace_id", "span_id")
    return [{key: line.get(key) for key in keys} for line in lines]


def ids(span) -> tuple[str, str]:
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_lines_written_in_a_call_carry_its_server_spans_ids(fmt, serve_greeter, capsys):
    service = await serve_greeter(LoggingGreeter, tracing=False)
    EXPORTER.clear()
    with gz_logging(fmt):
        user.info("outside any span")
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = greeter_pb2_grpc.GreeterStub(channel)
            await stub.SayHello(Request(name="x"))
            assert len([r async for r in stub.LotsOfReplies(Request(name="x"))]) == 1
            await stub.LotsOfGreetings(iter([Request(name="a"), Request(name="b")]))
            assert len([r async for r in stub.BidiHello(iter([Request(name="a")]))]) == 1
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.SayHello(Request(name="raise"))
        assert raised.value.code() is grpc.StatusCode.INTERNAL
        await service.server.stop()  # its handlers are done, and so are their call log lines
        lines = parse(fmt, capsys.readouterr().err)

    spans = {ids(s): s for s in EXPORTER.get_finished_spans()}
    assert {s.kind for s in spans.values()} == {SpanKind.SERVER}

    def span_of(line: dict):
        return spans[line["trace_id"], line["span_id"]]

    user_lines = {line["message"]: line for line in lines if line["logger"] == "user"}
    assert user_lines.pop("outside any span")["trace_id"] is None
    for method, line in user_lines.items():
        assert span_of(line).name == f"greeter.v1.Greeter/{method}"
    assert len(user_lines) == 4

    (recovery,) = [line for line in lines if line["logger"] == "gz.recovery"]
    (call_line,) = [line for line in lines if line["logger"] == "gz.call"]
    failed = span_of(recovery)
    assert failed.name == "greeter.v1.Greeter/SayHello"
    assert failed is not span_of(user_lines["SayHello"])
    assert span_of(call_line) is failed
    assert "error id" in recovery["message"] and "code=INTERNAL" in call_line["message"]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_line_outside_any_span_has_no_ids(fmt, capsys):
    with gz_logging(fmt):
        user.warning("no span")
    (line,) = parse(fmt, capsys.readouterr().err)
    assert (line["message"], line["trace_id"], line["span_id"]) == ("no span", None, None)


def test_in_text_the_ids_follow_the_message_before_the_stack_trace(capsys):
    with gz_logging("text"), PROVIDER.get_tracer("test").start_as_current_span("s") as span:
        try:
            raise ValueError("boom")
        except ValueError:
            user.exception("failed")
    first, *rest = capsys.readouterr().err.splitlines()
    trace_id, span_id = ids(span)
    assert first.endswith(f" user: failed trace_id={trace_id} span_id={span_id}")
    assert rest[0] == "Traceback (most recent call last):"
