"""GZ_REGISTRY=etcd: the server puts ``KEY/<lease id>`` = ``host:port`` on a lease and keeps it.

The format is go-zero's, so go-zero clients find gz servers and the other way round. Every put
names a lease, so no key outlives its server. The lease is kept alive every TTL/3; when etcd
says it is gone (a wiped etcd, a partition longer than the TTL) a new lease and key are made,
and a key deleted by hand is put again. If etcd is down at start-up the server serves anyway
and registers once etcd answers. Any failure, even one etcd is not expected to give, is logged
once per kind and retried with backoff, and one line says when etcd answers again:
registration never stops while the server runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc

from ...backoff import Backoff
from .connection import (
    ETCD_ERRORS,
    REQUEST_TIMEOUT,
    EtcdConfig,
    LeaseLost,
    acquire,
    describe,
    failure_kind,
    release,
)

log = logging.getLogger("gz.discovery.etcd")

FIRST_REGISTRATION_WAIT = 3.0  # seconds start-up waits before going on without etcd


class EtcdRegistration:
    def __init__(self, config: EtcdConfig, key: str, ttl: int) -> None:
        self.config = config
        self.key = key.rstrip("/")
        self.ttl = ttl
        self.address = ""
        self.lease: int | None = None
        self._registered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._etcd: Any = None
        self._failing: str | None = None  # the kind of error already reported

    @property
    def full_key(self) -> str:
        return f"{self.key}/{self.lease}"

    async def register(self, address: str) -> None:
        self.address = address
        self._etcd = acquire(self.config)
        self._task = asyncio.get_running_loop().create_task(self._keep_registered())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._registered.wait()), FIRST_REGISTRATION_WAIT)
        if not self._registered.is_set():
            log.warning(
                "etcd (%s) has not answered yet: serving %s unregistered and registering it "
                "in the background", ",".join(self.config.endpoints), address,
            )  # fmt: skip

    async def deregister(self) -> None:
        """Revoke the lease: the key disappears at once and clients stop calling. Bounded in
        time, so that an unreachable etcd cannot hold up the drain."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # unlike await, never raises the loop's own error
            if not task.cancelled() and task.exception() is not None:
                log.warning("the etcd registration loop of %s had stopped: %s", self.address,
                            describe(task.exception()))  # fmt: skip
        lease, self.lease = self.lease, None
        try:
            if lease is not None:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await self._etcd.run("revoke the lease", lambda: self._etcd.lease.revoke(
                        lease, timeout=REQUEST_TIMEOUT))  # fmt: skip
                log.info("deregistered %s/%d (%s)", self.key, lease, self.address)
        except Exception as error:  # the drain goes on whatever etcd says
            if _lease_not_found(error):
                log.info("deregistered %s/%d (%s): etcd had already dropped the lease",
                         self.key, lease, self.address)  # fmt: skip
            else:
                log.warning("could not revoke the lease of %s/%d (%s); etcd drops it within %ds",
                            self.key, lease, describe(error), self.ttl)  # fmt: skip
        finally:
            if self._etcd is not None:
                await release(self._etcd)
                self._etcd = None

    # -- the loop ------------------------------------------------------------------------------
    async def _keep_registered(self) -> None:
        backoff = Backoff(first=0.1, cap=1.0)  # a restarted etcd must see us again within TTL+1s
        while True:
            try:
                if self.lease is None:
                    await self._register_anew()  # which logs that it registered
                else:
                    await asyncio.sleep(max(0.5, self.ttl / 3))
                    kept = self.lease
                    await self._renew()  # which logs when it had to register anew
                    if self._failing is not None and self.lease == kept:
                        log.info("etcd registration of %s: etcd answers again (registered as "
                                 "%s)", self.address, self.full_key)  # fmt: skip
                backoff.reset()
                self._failing = None
            except Exception as error:  # any failure is transient: only a cancel ends the loop
                self._report(error)
                await backoff.sleep()

    async def _register_anew(self) -> None:
        etcd = self._etcd
        grant = await etcd.run("grant a lease", lambda: etcd.lease.grant(
            self.ttl, timeout=REQUEST_TIMEOUT))  # fmt: skip
        self.lease = grant.ID
        await self._put()  # LeaseLost if the lease expired meanwhile: the loop starts over
        self._registered.set()
        log.info("registered %s = %s in etcd (lease ttl %ds)", self.full_key, self.address,
                 grant.TTL)  # fmt: skip

    async def _put(self) -> None:
        etcd, lease = self._etcd, self.lease
        try:
            await etcd.run(f"put {self.full_key}", lambda: etcd.kv.put(
                self.full_key, self.address, lease=lease, timeout=REQUEST_TIMEOUT))  # fmt: skip
        except grpc.aio.AioRpcError as error:
            if not _lease_not_found(error):
                raise
            self.lease = None  # expired between grant and put (or a put again): start over
            raise LeaseLost(
                f"etcd dropped lease {lease} before {self.key}/{lease} was put on it; "
                "granting a new lease"
            ) from None

    async def _renew(self) -> None:
        if await self._keep_alive() <= 0:
            log.warning(
                "the etcd lease of %s is gone (etcd lost its data or the lease expired): "
                "registering %s again", self.full_key, self.address,
            )  # fmt: skip
            self.lease = None
            await self._register_anew()
            return
        etcd, key = self._etcd, self.full_key
        reply = await etcd.run(f"read {key}", lambda: etcd.kv.get(key, timeout=REQUEST_TIMEOUT))
        if not reply.kvs:
            log.warning("%s was deleted while its lease lives: putting it again", key)
            await self._put()

    async def _keep_alive(self) -> int:
        """The lease's TTL after one keepalive; 0 when etcd no longer knows the lease."""
        etcd, lease = self._etcd, self.lease

        async def once() -> int:
            stream = etcd.lease.keep_alive(lease)
            try:
                async for reply in stream:
                    return int(reply.TTL)
                return 0
            finally:
                stream.cancel()

        return await etcd.run("keep the lease alive", once)

    def _report(self, error: Exception) -> None:
        """One warning when a kind of trouble starts, not one per retry. Errors that are not
        etcd's (a bug) carry their traceback, once."""
        kind = failure_kind(error)
        if kind == self._failing:
            return
        self._failing = kind
        state = f"still registered as {self.full_key}" if self.lease else "not registered"
        log.warning("etcd registration of %s: %s (%s; retrying)", self.address, describe(error),
                    state, exc_info=None if isinstance(error, ETCD_ERRORS) else error)  # fmt: skip


def _lease_not_found(error: BaseException) -> bool:
    """etcd's "requested lease not found": the lease expired or was revoked."""
    return isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.NOT_FOUND
