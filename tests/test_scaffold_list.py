"""gz call, gz list and gz describe as a grpcurl replacement: host:port targets, reflection or
--proto, metadata, stdin, default values, streams as JSON lines and how a bare method is found.

The servers are processes: tests.echo.server (Echo and Mirror, reflection on) and the greeter
with GZ_REFLECTION=false, which only --proto can describe.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from gz.scaffold.endpoints import resolver_for

from .support import ROOT, ServerProcess, run_gz

GREETER_PROTO = str(ROOT / "examples" / "greeter" / "greeter.proto")


@pytest.fixture(scope="module")
def echo():
    server = ServerProcess("-m", "tests.echo.server", GZ_NAME="echo").start()
    try:
        asyncio.run(server.wait_serving())
        yield server.address
    finally:
        server.kill()


@pytest.fixture(scope="module")
def no_reflection():
    server = ServerProcess(GZ_REFLECTION="false").start()
    try:
        asyncio.run(server.wait_serving())
        yield server.address
    finally:
        server.kill()


def ok(*args: str, stdin: str | None = None) -> str:
    code, out, err = run_gz(*args, stdin=stdin)
    assert code == 0, err
    return out


def bad(code: int, *args: str, stdin: str | None = None) -> str:
    """The one gz: line of a command that exits ``code``."""
    got, _, err = run_gz(*args, stdin=stdin)
    assert got == code and err.startswith("gz: ") and err.count("\n") == 1, (got, err)
    return err


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("127.0.0.1:8080", "direct:///127.0.0.1:8080"),
        ("[::1]:8080", "direct:///[::1]:8080"),
        ("greeter-0.greeter:8080", "direct:///greeter-0.greeter:8080"),
        ("direct:///127.0.0.1:8080", "direct:///127.0.0.1:8080"),
    ],
)
def test_host_port_is_a_direct_target(text, target):
    assert resolver_for(text).target == target


def test_a_bare_name_keeps_its_meaning(monkeypatch):
    monkeypatch.setenv("GZ_TARGET_GREETER", "direct:///10.0.0.7:8080")
    assert resolver_for("greeter").target == "direct:///10.0.0.7:8080"
    monkeypatch.delenv("GZ_TARGET_GREETER")
    monkeypatch.delenv("GZ_DISCOVERY", raising=False)
    assert "GZ_TARGET_GREETER" in bad(2, "resolve", "greeter")


def test_list_services_and_methods(echo):
    assert ok("list", echo).splitlines() == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "gz.test.echo.v1.Echo",
        "gz.test.echo.v1.Mirror",
    ]
    assert ok("list", echo, "gz.test.echo.v1.Echo").splitlines() == [
        "gz.test.echo.v1.Echo.Headers",
        "gz.test.echo.v1.Echo.Watch",
    ]
    assert ok("list", echo, "Mirror") == "gz.test.echo.v1.Mirror.Headers\n"
    assert "no service is named 'Nope'" in bad(2, "list", echo, "Nope")


def test_describe_a_service_a_method_and_messages(echo):
    assert ok("describe", echo, "gz.test.echo.v1.Echo") == (
        "gz.test.echo.v1.Echo is a service:\n"
        "service Echo {\n"
        "  rpc Headers ( .gz.test.echo.v1.Nothing ) returns ( .gz.test.echo.v1.Received );\n"
        "  rpc Watch ( .gz.test.echo.v1.WatchRequest ) returns ( stream .gz.test.echo.v1.Event );\n"
        "}\n"
    )
    assert ok("describe", echo, "gz.test.echo.v1.Echo/Watch") == (
        "gz.test.echo.v1.Echo.Watch is a method:\n"
        "rpc Watch ( .gz.test.echo.v1.WatchRequest ) returns ( stream .gz.test.echo.v1.Event );\n"
    )
    assert ok("describe", echo, "gz.test.echo.v1.Event") == (
        "gz.test.echo.v1.Event is a message:\n"
        "message Event {\n"
        "  enum Kind {\n"
        "    KIND_UNSPECIFIED = 0;\n"
        "    KIND_LAST = 1;\n"
        "  }\n"
        "  int32 seq = 1;\n"
        "  string note = 2;\n"
        "  .gz.test.echo.v1.Event.Kind kind = 3;\n"
        "  oneof detail {\n"
        "    string text = 4;\n"
        "    int64 number = 5;\n"
        "  }\n"
        "  optional string tag = 6;\n"
        "  repeated .gz.test.echo.v1.Nothing extras = 7;\n"
        "}\n"
    )
    assert "map<string, bytes> binary = 2;" in ok("describe", echo, "gz.test.echo.v1.Received")
    assert ok("describe", echo, "gz.test.echo.v1.Event.Kind").startswith(
        "gz.test.echo.v1.Event.Kind is an enum:\nenum Kind {\n"
    )
    assert "no service, method, message or enum" in bad(2, "describe", echo, "gz.test.Nope")


def test_headers_reach_the_server(echo):
    out = ok(
        "call", echo, "Echo/Headers", "-H", "X-Request-Tag: a b", "-H", "blob-bin: _-8"
    )  # a -bin value is base64, URL-safe and unpadded too
    received = json.loads(out)
    assert received["text"]["x-request-tag"] == "a b"
    assert received["binary"]["blob-bin"] == "/+8="  # the same bytes, as proto3 JSON says them
    assert "base64" in bad(2, "call", echo, "Echo/Headers", "-H", "blob-bin: !!")
    assert "is not 'KEY: VALUE'" in bad(2, "call", echo, "Echo/Headers", "-H", "no colon")


def test_a_stream_is_one_json_line_per_reply_and_one_reply_is_indented(echo):
    out = ok("call", echo, "Echo/Watch", '{"count": 3}')
    assert [json.loads(line) for line in out.splitlines()] == [
        {"seq": 1},
        {"seq": 2},
        {"seq": 3, "kind": "KIND_LAST"},
    ]
    out = ok("call", echo, "gz.test.echo.v1.Mirror/Headers")
    assert out == json.dumps(json.loads(out), indent=2) + "\n" and out.count("\n") > 1


def test_emit_defaults(echo):
    plain = ok("call", echo, "Echo/Watch", '{"count": 2}')
    assert json.loads(plain.splitlines()[0]) == {"seq": 1}
    out = ok("call", echo, "Echo/Watch", '{"count": 2}', "--emit-defaults")
    first, last = (json.loads(line) for line in out.splitlines())
    assert first == {"seq": 1, "note": "", "kind": "KIND_UNSPECIFIED", "extras": []}
    assert last == {"seq": 2, "note": "", "kind": "KIND_LAST", "extras": []}  # no tag: presence


def test_request_from_stdin_or_d(echo):
    out = ok("call", echo, "Echo/Watch", "-d", "@", stdin='{"count": 2}')
    assert len(out.splitlines()) == 2
    assert len(ok("call", echo, "Echo/Watch", "-d", '{"count": 1}').splitlines()) == 1
    assert "give the request once" in bad(2, "call", echo, "Echo/Watch", "{}", "-d", "{}")
    assert "-d @ < req.json" in bad(2, "call", echo, "Echo/Watch", "-d", "@req.json")
    assert "takes one JSON object" in bad(2, "call", echo, "Echo/Watch", "-d", "@", stdin="{} {}")


def test_a_bare_method_prefers_the_users_services(echo):
    # grpc.health.v1.Health has a Watch too: the user's is meant
    assert json.loads(ok("call", echo, "Watch", '{"count": 1}')) == {"seq": 1, "kind": "KIND_LAST"}
    # no user service has Check: the health one answers
    assert json.loads(ok("call", echo, "Check")) == {"status": "SERVING"}
    err = bad(2, "call", echo, "Headers")
    assert "gz.test.echo.v1.Echo/Headers" in err and "gz.test.echo.v1.Mirror/Headers" in err


def test_proto_files_stand_in_for_reflection(no_reflection):
    assert "--proto" in bad(1, "call", no_reflection, "SayHello")
    proto = ("--proto", GREETER_PROTO)
    reply = json.loads(ok("call", no_reflection, "SayHello", '{"name": "x"}', *proto))
    assert reply == {"message": "Hello, x!", "servedBy": no_reflection}
    # several requests, one JSON document after another, to a bidirectional stream
    out = ok(
        "call", no_reflection, "BidiHello", "-d", "@", *proto, stdin='{"name": "a"}\n{"name": "b"}'
    )
    assert [json.loads(line)["message"] for line in out.splitlines()] == ["Hello, a!", "Hello, b!"]
    assert ok("list", no_reflection, *proto) == "greeter.v1.Greeter\n"
    assert ok("list", no_reflection, "greeter.v1.Greeter", *proto).splitlines() == [
        "greeter.v1.Greeter.SayHello",
        "greeter.v1.Greeter.LotsOfReplies",
        "greeter.v1.Greeter.LotsOfGreetings",
        "greeter.v1.Greeter.BidiHello",
    ]
    assert ok("describe", no_reflection, "greeter.v1.HelloReply", *proto) == (
        "greeter.v1.HelloReply is a message:\n"
        "message HelloReply {\n"
        "  string message = 1;\n"
        "  string served_by = 2;\n"
        "}\n"
    )
    # the name relative to an import directory, as protoc and grpcurl take it
    by_import = ("--proto", "greeter.proto", "-I", str(ROOT / "examples" / "greeter"))
    assert json.loads(ok("call", no_reflection, "SayHello", *by_import))["message"] == "Hello, !"


def test_bad_proto_options_exit_2(tmp_path):
    assert "no such file" in bad(2, "list", "127.0.0.1:1", "--proto", str(tmp_path / "x.proto"))
    assert "give --proto FILE too" in bad(2, "list", "127.0.0.1:1", "-I", str(tmp_path))
    broken = tmp_path / "broken.proto"
    broken.write_text('syntax = "proto3";\nmessage {\n')
    assert "broken.proto" in bad(2, "describe", "127.0.0.1:1", "--proto", str(broken))
