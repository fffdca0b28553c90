"""One connection to an etcd cluster, shared by every resolver and registration of a process
that name the same endpoints and credentials.

Calls go to one endpoint at a time; when it does not answer, the next endpoint is tried (this
works with host names and TLS, which a grpc ``ipv4:`` round-robin target does not). Tokens of
an etcd with authentication are fetched on first use and again when etcd forgets them (a
restart). Errors come out as EtcdUnavailable (try again later), EtcdRefused (etcd said no:
fix the settings), Compacted or TooLarge (a watch must start again from a fresh read); any
other answer of etcd (NOT_FOUND, RESOURCE_EXHAUSTED, INTERNAL...) as the grpc.aio.AioRpcError
itself. The registration and resolver loops retry all but cancellation, so no error stops them
for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from etcd3aio import (
    EtcdConnectionError,
    EtcdPermissionDeniedError,
    EtcdTransientError,
    EtcdUnauthenticatedError,
    prefix_range_end,
)

# etcd3aio's own watch reconnects by itself from its last revision, which hides a compaction or a
# wiped cluster from us; gz drives the raw Watch stream so that it can re-read instead.
from etcd3aio._protobuf import WatchCreateRequest, WatchRequest, WatchStub
from etcd3aio.auth import AuthService
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService

from ...settings import EtcdSettings

log = logging.getLogger("gz.discovery.etcd")

T = TypeVar("T")

REQUEST_TIMEOUT = 3.0  # seconds for one unary call to one endpoint
MESSAGE_LIMIT = 4 * 1024 * 1024  # the largest answer taken from etcd (grpc's default)
PAGE_SIZE = 1000  # keys per read of a prefix; registry values are a few dozen bytes each
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ("grpc.keepalive_time_ms", 10_000),  # etcd allows pings every 5 s (--grpc-keepalive-min-time)
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # grpc's reconnect backoff grows to minutes; a restarted etcd must be found in about a second
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)
_CONNECTION_CODES = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)


_CALL_ERRORS = (
    grpc.aio.AioRpcError,
    EtcdConnectionError,
    EtcdPermissionDeniedError,
    EtcdTransientError,
    EtcdUnauthenticatedError,
    TimeoutError,
    OSError,
)


class EtcdUnavailable(Exception):
    """No endpoint answered; the message names them and why."""


class EtcdRefused(Exception):
    """etcd answered no (bad credentials, missing permission); the message says what to fix."""


class Compacted(Exception):
    """The revision a watch asked for is compacted away; read again and watch from there."""


class TooLarge(Exception):
    """A watch answer was over MESSAGE_LIMIT (a huge value was put); read again, skipping it."""


class LeaseLost(Exception):
    """etcd dropped the lease before the key was put on it; the registration grants a new one."""


@dataclass(slots=True)
class Snapshot:
    """A prefix as of one revision: the header of its first page, every key and value, and
    the keys whose value alone was over MESSAGE_LIMIT (read without their value)."""

    header: Any
    kvs: list[Any]
    too_large: list[bytes] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    """Where etcd is and how to log in: the key of a shared connection."""

    endpoints: tuple[str, ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: str | None = None
    cert: str | None = None
    keyfile: str | None = None

    @classmethod
    def from_settings(
        cls, settings: EtcdSettings, endpoints: tuple[str, ...] | None = None
    ) -> EtcdConfig:
        return cls(
            endpoints or tuple(settings.etcd_endpoints),
            settings.etcd_username,
            settings.etcd_password,
            settings.etcd_ca,
            settings.etcd_cert,
            settings.etcd_keyfile,
        )

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.ca is None and self.cert is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca),
            private_key=_read(self.keyfile),
            certificate_chain=_read(self.cert),
        )


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


class EtcdConnection:
    """A grpc.aio channel to one etcd endpoint at a time, with the services gz uses."""

    def __init__(self, config: EtcdConfig) -> None:
        self.config = config
        self.users = 0
        self._index = 0
        self._generation = 0  # bumps whenever the channel is replaced
        self._channel: grpc.aio.Channel | None = None
        self._token: str | None = None
        self._login = asyncio.Lock()

    @property
    def endpoint(self) -> str:
        return self.config.endpoints[self._index]

    # -- channel and login ---------------------------------------------------------------------
    def _open(self) -> None:
        credentials = self.config.credentials()
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(self.endpoint, _CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.secure_channel(self.endpoint, credentials, _CHANNEL_OPTIONS)
        # gz retries and fails over itself, so each call is one attempt
        self.kv = KVService(self._channel, max_attempts=1)
        self.lease = LeaseService(self._channel, max_attempts=1)
        self.auth = AuthService(self._channel, max_attempts=1)
        self.watch_stub = WatchStub(self._channel)
        self._token = None

    async def _ready(self) -> int:
        """Open the channel and log in if needed; returns the channel's generation."""
        if self._channel is None:
            self._open()
        if self.config.username and self._token is None:
            async with self._login:
                if self._token is None:
                    await self._log_in()
        return self._generation

    async def _log_in(self) -> None:
        user = self.config.username
        try:
            reply = await self.auth.authenticate(
                user or "", self.config.password or "", timeout=REQUEST_TIMEOUT
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in _CONNECTION_CODES:
                raise EtcdConnectionError(error.details() or error.code().name) from error
            raise EtcdRefused(
                f"etcd at {self.endpoint} rejected user {user!r}: {_reason(error)}; "
                "check GZ_ETCD_USERNAME and GZ_ETCD_PASSWORD"
            ) from None
        self._token = reply.token
        for service in (self.kv, self.lease, self.auth):
            service.set_token(reply.token)

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        return (("token", self._token),) if self._token else None

    async def _fail_over(self, generation: int) -> None:
        """Move to the next endpoint, unless another caller already replaced this channel."""
        if generation != self._generation or self._channel is None:
            return
        channel, self._channel = self._channel, None
        self._index = (self._index + 1) % len(self.config.endpoints)
        self._generation += 1
        await channel.close()

    # -- calls ---------------------------------------------------------------------------------
    async def run(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` against the current endpoint, failing over to the others."""
        problems: list[str] = []
        logged_in_again = False
        while len(problems) < len(self.config.endpoints):
            generation = -1
            try:
                generation = await self._ready()
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    return await call()
            except asyncio.CancelledError:
                if not _channel_closed_under_us():
                    raise
                problems.append(f"{self.endpoint}: the channel was replaced during the call")
            except _CALL_ERRORS as error:
                kind = _classify(error)
                if kind == "refused" or (kind == "token" and logged_in_again):
                    raise self.refusal(operation, error) from None
                if kind == "token":  # etcd restarted and forgot our token: log in again
                    self._token, logged_in_again = None, True
                elif kind == "unreachable":
                    problems.append(f"{self.endpoint}: {_reason(error)}")
                    await self._fail_over(generation)
                else:
                    raise
        raise EtcdUnavailable(f"etcd did not answer {operation} ({'; '.join(problems)})")

    def refusal(self, operation: str, error: BaseException) -> EtcdRefused:
        reason = _reason(error)
        if "user name is empty" in reason or not self.config.username:
            return EtcdRefused(
                f"etcd at {self.endpoint} requires a user for {operation}: "
                "set GZ_ETCD_USERNAME and GZ_ETCD_PASSWORD"
            )
        return EtcdRefused(
            f"etcd user {self.config.username!r} may not {operation} ({reason}): "
            "grant its role readwrite on the service key prefix"
        )

    async def get_prefix(self, prefix: bytes) -> Snapshot:
        """Every key under ``prefix``, read in pages of at most PAGE_SIZE keys, each page from
        the key after the last one read and at the revision of the first page, so that the
        pages make one consistent snapshot (Compacted if that revision goes meanwhile).

        A page is over MESSAGE_LIMIT only when it holds large values: it is read again with a
        quarter of the keys, down to one key. A key whose value alone is over the limit is
        read once more without its value (keys_only) and skipped, so a huge value costs a few
        extra reads and is reported like any bad value, never blocks the rest of the prefix."""
        operation = f"read {prefix.decode()!r}"
        end = prefix_range_end(prefix)
        start, revision, limit = prefix, 0, PAGE_SIZE
        snapshot: Snapshot | None = None
        while True:
            too_large = False
            try:
                page = await self.run(operation, self._range(start, end, revision, limit))
            except grpc.aio.AioRpcError as error:
                if not _over_limit(error):
                    if error.code() == grpc.StatusCode.OUT_OF_RANGE:  # revision compacted
                        raise Compacted(f"{operation}: {_reason(error)}") from None
                    raise
                if limit > 1:
                    limit = max(1, limit // 4)
                    continue
                page = await self.run(operation, self._range(start, end, revision, 1, True))
                too_large = True
            if snapshot is None:
                snapshot, revision = Snapshot(page.header, []), page.header.revision
            if too_large:
                snapshot.too_large.extend(kv.key for kv in page.kvs)
            else:
                snapshot.kvs.extend(page.kvs)
                limit = min(PAGE_SIZE, limit * 2)
            if not page.more or not page.kvs:
                return snapshot
            start = page.kvs[-1].key + b"\0"

    def _range(
        self, start: bytes, end: bytes, revision: int, limit: int, keys_only: bool = False
    ) -> Callable[[], Awaitable[Any]]:
        return lambda: self.kv.get(start, end, revision=revision, limit=limit,
                                   keys_only=keys_only, timeout=REQUEST_TIMEOUT)  # fmt: skip

    async def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[Any]:
        """Watch responses for the prefix from ``start_revision`` on, until an error ends them:
        Compacted, TooLarge, EtcdUnavailable or EtcdRefused. The caller reads again, then
        watches again."""
        generation = await self.run("connect", self._ready)
        create = WatchCreateRequest(
            key=prefix, range_end=prefix_range_end(prefix), start_revision=start_revision
        )
        # Written to, never half-closed (etcd ends a watch whose client half-closes). Not fed
        # by a request generator: grpc would consume it in a task of its own that waits
        # forever once the call has failed (cancel() is then a no-op), and is destroyed
        # pending with its generator when etcd goes away.
        stream = self.watch_stub.Watch(metadata=self.metadata())
        try:
            await _unless_replaced(stream.write(WatchRequest(create_request=create)))
            while (response := await _unless_replaced(stream.read())) is not grpc.aio.EOF:
                if response.compact_revision:
                    raise Compacted(f"revision {start_revision} is compacted")
                if response.canceled:
                    reason = response.cancel_reason or "no reason given"
                    if "permission denied" in reason or "auth" in reason:
                        raise self.refusal(f"watch {prefix.decode()!r}", Exception(reason))
                    raise EtcdUnavailable(f"etcd at {self.endpoint} ended the watch: {reason}")
                yield response
            raise EtcdUnavailable(f"etcd at {self.endpoint} closed the watch")
        except grpc.aio.AioRpcError as error:
            if _over_limit(error):
                raise TooLarge(f"a watch answer of etcd was over {_mb(MESSAGE_LIMIT)}") from None
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                self._token = None  # log in again before the next watch
            elif error.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise self.refusal(f"watch {prefix.decode()!r}", error) from None
            await self._fail_over(generation)
            raise EtcdUnavailable(f"etcd at {self.endpoint}: {_reason(error)}") from None
        finally:
            stream.cancel()

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()


def _channel_closed_under_us() -> bool:
    """True for a CancelledError that grpc raised because another caller's fail-over closed
    the shared channel, rather than because this task itself is being cancelled."""
    task = asyncio.current_task()
    return task is not None and not task.cancelling()


async def _unless_replaced(step: Awaitable[T]) -> T:
    """One step of a watch stream; UNAVAILABLE when the channel was closed under it."""
    try:
        return await step
    except asyncio.CancelledError:
        if not _channel_closed_under_us():
            raise
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details="the channel was replaced during the watch",
        ) from None


def _over_limit(error: grpc.aio.AioRpcError) -> bool:
    """grpc's own refusal of an answer over MESSAGE_LIMIT (etcd's RESOURCE_EXHAUSTED answers,
    such as too many requests, are not that)."""
    return error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (
        error.details() or ""
    )


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"


def _classify(error: BaseException) -> str:
    """unreachable (try the next endpoint), token (log in again), refused (fix the settings),
    or other (the caller handles it, e.g. a lease that is not found)."""
    if isinstance(error, (EtcdConnectionError, EtcdTransientError, TimeoutError, OSError)):
        return "unreachable"
    if isinstance(error, EtcdUnauthenticatedError):
        return "token"
    if isinstance(error, EtcdPermissionDeniedError):
        return "refused"
    code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
    if code in _CONNECTION_CODES:
        return "unreachable"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return "token"
    if code == grpc.StatusCode.PERMISSION_DENIED or "user name is empty" in _reason(error):
        return "refused"
    return "other"


# gz's own errors, whose messages already say what happened.
_GZ_ERRORS = (EtcdUnavailable, EtcdRefused, Compacted, TooLarge, LeaseLost)
# What etcd itself can answer; any other exception in a retry loop is a bug in gz or a library,
# still retried but logged with its traceback.
ETCD_ERRORS = (*_GZ_ERRORS, grpc.aio.AioRpcError)


def failure_kind(error: BaseException) -> str:
    """What kind of trouble ``error`` is, so that a retry loop reports each kind once rather
    than once per retry: the gRPC code for etcd's answers, else the exception's class."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    return type(error).__name__


def describe(error: BaseException) -> str:
    """One line for a log or a listener: gz's own errors as they are, others with their kind."""
    if isinstance(error, _GZ_ERRORS):
        return str(error)
    if isinstance(error, grpc.aio.AioRpcError):
        return f"etcd answered {error.code().name}: {_reason(error)}"
    return f"{type(error).__name__}: {_reason(error)}"


def _reason(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return error.details() or error.code().name
    if isinstance(error, TimeoutError):
        return f"no answer in {REQUEST_TIMEOUT:g}s"
    cause = error.__cause__
    if isinstance(cause, grpc.aio.AioRpcError):
        return cause.details() or cause.code().name
    return str(error) or type(error).__name__


# -- sharing ---------------------------------------------------------------------------------
_shared: dict[tuple[EtcdConfig, asyncio.AbstractEventLoop], EtcdConnection] = {}


def acquire(config: EtcdConfig) -> EtcdConnection:
    """The process's connection for ``config`` in this event loop; release() it when done."""
    key = (config, asyncio.get_running_loop())
    connection = _shared.get(key)
    if connection is None:
        connection = _shared[key] = EtcdConnection(config)
    connection.users += 1
    return connection


async def release(connection: EtcdConnection) -> None:
    connection.users -= 1
    if connection.users > 0:
        return
    _shared.pop((connection.config, asyncio.get_running_loop()), None)
    await connection.close()
