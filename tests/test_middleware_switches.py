"""Which middleware the defaults put in a chain, each switched off by its setting, and what an
absent middleware costs: nothing."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

import gz
from gz.middleware import Kind, Method, compose
from gz.middleware.auth import BearerToken, TokenAuth
from gz.middleware.calllog import CallLog
from gz.middleware.deadline import Deadline
from gz.middleware.defaults import client_middleware, server_middleware
from gz.middleware.handlers import wrap_method_handler
from gz.middleware.metrics import Metrics
from gz.middleware.recovery import Recovery
from gz.middleware.shedding import Shedding
from gz.middleware.tracing import Tracing, configure_tracing

from .support import DEFAULT_MIDDLEWARE_OFF, ROOT

SERVER_DEFAULTS = [Tracing, Metrics, CallLog, Deadline, Recovery]
CLIENT_DEFAULTS = [Tracing, Metrics, CallLog, Deadline]


def kinds(chain: list) -> list[type]:
    return [type(item) for item in chain]


def test_the_defaults_in_order_and_the_optional_ones_in_their_place():
    assert kinds(server_middleware(gz.ServerSettings())) == SERVER_DEFAULTS
    everything = gz.ServerSettings(max_concurrency=10, auth_tokens="a,b")
    assert kinds(server_middleware(everything)) == [
        Tracing, Metrics, CallLog, Deadline, Recovery, Shedding, TokenAuth,
    ]  # fmt: skip
    assert kinds(client_middleware(gz.ClientSettings())) == CLIENT_DEFAULTS
    with_token = gz.ClientSettings(auth_token="t")
    assert kinds(client_middleware(with_token)) == [
        Tracing, Metrics, CallLog, BearerToken, Deadline,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "middleware"),
    [("tracing", Tracing), ("metrics", Metrics), ("call_log", CallLog), ("deadline", Deadline)],
)
def test_each_default_is_absent_when_its_setting_is_off(setting, middleware, monkeypatch):
    monkeypatch.setenv(f"GZ_{setting.upper()}", "false")
    server = kinds(server_middleware(gz.ServerSettings.from_env()))
    client = kinds(client_middleware(gz.ClientSettings.from_env()))
    assert middleware not in server and middleware not in client
    assert len(server) == len(SERVER_DEFAULTS) - 1 and len(client) == len(CLIENT_DEFAULTS) - 1


def test_recovery_is_absent_when_off_and_shedding_when_no_limit_is_set():
    assert Recovery not in kinds(server_middleware(gz.ServerSettings(recovery=False)))
    assert Shedding in kinds(server_middleware(gz.ServerSettings(shed_cpu=90)))
    assert Shedding not in kinds(server_middleware(gz.ServerSettings()))


async def handler(request, context):
    return request


def test_with_everything_off_a_server_method_keeps_grpcs_own_handler():
    settings = gz.ServerSettings(**DEFAULT_MIDDLEWARE_OFF, recovery=False)
    original = grpc.unary_unary_rpc_method_handler(handler)
    with ThreadPoolExecutor(1) as executor:
        wrapped = wrap_method_handler(
            "/greeter.v1.Greeter/SayHello", original, server_middleware(settings), executor
        )
    assert wrapped is original


def test_tracing_without_a_tracer_provider_is_left_out_of_every_chain():
    method = Method("/greeter.v1.Greeter/SayHello", Kind.UNARY_UNARY, "client")
    assert compose([Tracing()], method, handler) is handler
    off = gz.ClientSettings(**DEFAULT_MIDDLEWARE_OFF)
    assert compose(client_middleware(off), method, handler) is handler


def test_an_unknown_otel_exporter_names_the_installed_ones(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkinn")
    with pytest.raises(gz.SettingsError, match=r"OTEL_TRACES_EXPORTER='zipkinn'.*console"):
        configure_tracing("svc")


def test_import_gz_loads_no_exporter_metrics_or_backend_library():
    code = (
        "import sys, gz; print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'opentelemetry', 'prometheus_client', 'kubernetes', 'etcd3aio', 'etcd3'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout  # fmt: skip
    assert out.strip() == "[]"


def test_consecutive_observers_run_as_one_layer_in_order():
    seen: list[str] = []

    class Note(gz.middleware.CallObserver):
        def __init__(self, name: str) -> None:
            self.name = name

        def begin(self, ctx):
            seen.append(f"begin {self.name}")
            return self.name

        def end(self, ctx, token, error):
            seen.append(f"end {token} {type(error).__name__ if error else 'ok'}")

    class Wrap(gz.Middleware):
        async def unary(self, ctx, request, call_next):
            seen.append("wrap")
            return await call_next(ctx, request)

    async def endpoint(ctx, request):
        if request == "fail":
            raise ValueError(request)
        return request

    method = Method("/s.S/M", Kind.UNARY_UNARY, "server")
    chain = compose([Note("a"), Note("b"), Wrap(), Note("c")], method, endpoint)
    layers = 0
    while isinstance(chain, functools.partial):
        layers, chain = layers + 1, chain.keywords["call_next"]
    assert layers == 3  # a and b share one layer; Wrap; c

    handler = compose([Note("a"), Note("b"), Wrap(), Note("c")], method, endpoint)
    assert asyncio.run(handler(None, "x")) == "x"
    assert seen == ["begin a", "begin b", "wrap", "begin c", "end c ok", "end b ok", "end a ok"]
    seen.clear()
    with pytest.raises(ValueError):
        asyncio.run(handler(None, "fail"))
    assert seen[-3:] == ["end c ValueError", "end b ValueError", "end a ValueError"]
