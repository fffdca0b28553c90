"""gRPC's interop cases in every cell of servers (raw grpc.aio / gz, async / sync handlers) and
clients (raw grpc.aio / gz.connect()), with gz's default middleware and again with bearer
auth on. The raw x raw cells are the control: a case failing only where gz takes part is a gz
defect. See README.md."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc.aio import AioRpcError

import gz

from .cases import CASES, Case
from .grpc_testing import empty_pb2, test_pb2_grpc
from .service import AsyncTestService, GzAsyncTestService, GzSyncTestService, SyncTestService
from .wire import Wire

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "secret"
CASE_TIMEOUT = 10.0  # a case takes well under a second; a hang fails after this

SERVERS = {
    "raw": "raw-server",  # grpc.aio.server() with AsyncTestService
    "raw-sync": "raw-sync-server",  # grpc.aio.server() with SyncTestService
    "gz-async": "gz-async-server",  # a gz Service with AsyncTestService's handlers
    "gz-sync": "gz-sync-server",  # a gz Service with SyncTestService's handlers
}


@dataclass(frozen=True)
class Cell:
    server: str  # a key of SERVERS
    client: str  # "raw" (grpc.aio.insecure_channel) or "gz" (gz.connect)
    auth: bool = False  # bearer auth on: the server requires it, the client sends it

    def __str__(self) -> str:
        name = f"{SERVERS[self.server]} x {self.client}-client"
        return f"{name} +auth" if self.auth else name


PAIRS = [
    ("raw", "raw"),  # the control
    ("raw-sync", "raw"),  # the control of the sync handlers
    ("gz-async", "raw"),
    ("gz-sync", "raw"),
    ("raw", "gz"),
    ("gz-async", "gz"),
]
CELLS = [Cell(server, client, auth) for auth in (False, True) for server, client in PAIRS]


# -- servers -------------------------------------------------------------------------------


_BEHAVIOR_FIELDS = {  # (request_streaming, response_streaming): RpcMethodHandler field
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


class RequireBearer(grpc.aio.ServerInterceptor):
    """What gz's TokenAuth does, for the raw servers of the +auth cells: a call without
    ``authorization: Bearer <TOKEN>`` fails UNAUTHENTICATED, so a client that does not send the
    token fails there too."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata or ()
        if handler is None or ("authorization", f"Bearer {TOKEN}") in metadata:
            return handler
        if handler.response_streaming:

            async def reject_stream(request, context):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no bearer token")
                yield  # an async generator, as a streaming handler is

            behavior = reject_stream
        else:

            async def reject(request, context):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no bearer token")

            behavior = reject
        kind = (handler.request_streaming, handler.response_streaming)
        return handler._replace(**{_BEHAVIOR_FIELDS[kind]: behavior})


@dataclass
class Hosted:
    """A running server and the byte-counting relay in front of it (what clients dial)."""

    address: str
    wire: Wire
    stop: Any


async def start_server(kind: str, auth: bool) -> Hosted:
    if kind.startswith("gz"):
        service_class = GzAsyncTestService if kind == "gz-async" else GzSyncTestService
        settings = gz.ServerSettings(
            listen="127.0.0.1:0", shutdown_drain=0, shutdown_grace=1, name="interop",
            auth_tokens=[TOKEN] if auth else [],
        )  # fmt: skip
        service = service_class(settings)
        await service.server.start()
        address, stop = service.address, service.server.stop
    else:
        executor = ThreadPoolExecutor(thread_name_prefix="raw-interop")
        server = grpc.aio.server(
            migration_thread_pool=executor, interceptors=[RequireBearer()] if auth else None
        )
        servicer = AsyncTestService() if kind == "raw" else SyncTestService()
        test_pb2_grpc.add_TestServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        address = f"127.0.0.1:{port}"

        async def stop() -> None:
            await server.stop(None)
            executor.shutdown(wait=False, cancel_futures=True)

    wire = await Wire(address).start()
    return Hosted(address, wire, stop)


@dataclass
class Servers:
    """Each kind of server started once per module, on first use."""

    started: dict[tuple[str, bool], Hosted] = field(default_factory=dict)

    async def get(self, kind: str, auth: bool) -> Hosted:
        key = (kind, auth)
        if key not in self.started:
            self.started[key] = await start_server(kind, auth)
        return self.started[key]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def servers() -> AsyncIterator[Servers]:
    hosted = Servers()
    yield hosted
    for server in hosted.started.values():
        await server.wire.close()
        await server.stop()


# -- clients -------------------------------------------------------------------------------


class WithToken(grpc.aio.Channel):
    """The raw client of the +auth cells: a grpc.aio channel whose calls carry the bearer token
    after the call's own metadata. Not a grpc.aio interceptor: an intercepted grpc.aio call is
    another call object (cancelled() stays False until the interceptor task has ended, for
    one), and the control must be grpc.aio's own calls."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    def _wrap(self, multicallable: Any) -> Any:
        def call(*args: Any, metadata: Any = None, **kwargs: Any) -> Any:
            metadata = (*(metadata or ()), ("authorization", f"Bearer {TOKEN}"))
            return multicallable(*args, metadata=metadata, **kwargs)

        return call

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._channel.unary_unary(*args, **kwargs))

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._channel.unary_stream(*args, **kwargs))

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._channel.stream_unary(*args, **kwargs))

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._channel.stream_stream(*args, **kwargs))

    async def __aenter__(self) -> WithToken:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()


async def open_channel(cell: Cell, address: str) -> grpc.aio.Channel:
    if cell.client == "raw":
        channel = grpc.aio.insecure_channel(address)
        return WithToken(channel) if cell.auth else channel
    settings = gz.ClientSettings.from_env(auth_token=TOKEN if cell.auth else None)
    channel = gz.connect(f"direct:///{address}", settings=settings)
    # Calls then take the channel's steady path (a picker over a READY endpoint).
    await asyncio.wait_for(channel.channel_ready(), CASE_TIMEOUT)
    return channel


# -- the tests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "case"),
    [pytest.param(cell, CASES[name], id=f"{cell} / {name}") for cell in CELLS for name in CASES],
)
async def test_case(cell: Cell, case: Case, servers: Servers) -> None:
    hosted = await servers.get(cell.server, cell.auth)
    channel = await open_channel(cell, hosted.wire.address)
    try:
        await asyncio.wait_for(case(channel, hosted.wire), CASE_TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"{case.__name__} did not finish within {CASE_TIMEOUT}s") from None
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.close(), 5)


@pytest.mark.parametrize("kind", list(SERVERS), ids=list(SERVERS.values()))
async def test_auth_cells_require_the_token(kind: str, servers: Servers) -> None:
    """The +auth servers turn away a call without the token: the +auth cells pass only because
    their clients send it."""
    hosted = await servers.get(kind, auth=True)
    async with grpc.aio.insecure_channel(hosted.address) as channel:
        service = test_pb2_grpc.TestServiceStub(channel)
        with pytest.raises(AioRpcError) as error:
            await asyncio.wait_for(service.EmptyCall(empty_pb2.Empty()), CASE_TIMEOUT)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
