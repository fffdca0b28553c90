"""Bearer tokens in the ``authorization`` metadata: checked by servers, sent by clients.

Send tokens over TLS only (docs/security.md): on a plaintext connection anyone on the path can
read them. Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from .chain import CallContext, CallObserver, Method, Middleware

TokenCheck = Callable[[str], bool | Awaitable[bool]]
"""Given the token of a call, True to let it through; may be ``async``."""


class TokenAuth(Middleware):
    """Server: UNAUTHENTICATED unless the call carries ``authorization: Bearer <token>`` with a
    token in ``tokens`` or one that ``check`` accepts. Health is never covered (probes have no
    token); the server puts reflection behind the TokenAuth of its chain too."""

    def __init__(self, tokens: Iterable[str] = (), *, check: TokenCheck | None = None) -> None:
        tokens = tuple(tokens)
        if any(not token.strip() for token in tokens):
            raise ValueError("TokenAuth: an empty token can never be sent; remove it")
        # digests: every comparison is of 32 bytes, so its time says nothing of the lengths
        self._tokens = tuple(_digest(token.strip()) for token in tokens)
        self._check = check
        if not self._tokens and check is None:
            raise ValueError("TokenAuth needs tokens (GZ_AUTH_TOKENS) or a check function")

    def applies_to(self, method: Method) -> bool:
        return method.side == "server"

    async def _accepts(self, token: str) -> bool:
        presented = _digest(token)
        matched = False
        for known in self._tokens:  # every one, not up to the first match: timing tells nothing
            matched |= hmac.compare_digest(presented, known)
        if matched:
            return True
        if self._check is None:
            return False
        verdict = self._check(token)
        return bool(await verdict) if inspect.isawaitable(verdict) else bool(verdict)

    async def _authenticate(self, ctx: CallContext) -> None:
        header = next((v for k, v in ctx.metadata if k == "authorization"), None)
        scheme, _, token = header.partition(" ") if isinstance(header, str) else ("", "", "")
        if scheme.lower() != "bearer" or not token:
            problem = "missing credentials: send metadata 'authorization: Bearer <token>'"
        elif not await self._accepts(token.strip()):
            problem = "invalid token"
        else:
            return
        assert ctx.servicer_context is not None
        await ctx.servicer_context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)

    async def unary(self, ctx: CallContext, request: Any, call_next: Any) -> Any:
        await self._authenticate(ctx)
        return await call_next(ctx, request)

    async def stream(self, ctx: CallContext, request: Any, call_next: Any) -> Any:
        await self._authenticate(ctx)
        async for response in call_next(ctx, request):
            yield response


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class BearerToken(CallObserver):
    """Client: adds ``authorization: Bearer <token>`` to every call (as an observer, so unary
    calls keep the channel's fast path)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def applies_to(self, method: Method) -> bool:
        return method.side == "client"

    def begin(self, ctx: CallContext) -> None:
        ctx.metadata.append(self._header)
