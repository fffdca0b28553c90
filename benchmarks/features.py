"""What the framework offers right now. The benchmarks run before and after the balancing and
middleware work lands; a part that is not there yet is reported as "not available", not a crash."""

from __future__ import annotations

import grpc

import gz
from gz.balancing.calls import ChainedCall

from .harness import unary

# Client settings that switch the default middleware off, each used only if the framework has it.
MIDDLEWARE_OFF = {"tracing": False, "metrics": False, "call_log": False, "deadline": False,
                  "retry": False, "retry_max_attempts": 1}  # fmt: skip
# Server environment that switches the default server middleware off.
SERVER_MIDDLEWARE_OFF = {f"GZ_{name}": "false" for name in
                         ("TRACING", "METRICS", "CALL_LOG", "DEADLINE", "RECOVERY")}  # fmt: skip


def client_settings(**wanted: object) -> gz.ClientSettings | None:
    """Client settings from the environment with ``wanted`` on top of it; None when the
    framework has none of the wanted fields (the feature is not there yet)."""
    fields = gz.ClientSettings.model_fields
    known = {name: value for name, value in wanted.items() if name in fields}
    return gz.ClientSettings.from_env(**known) if known or not wanted else None


def settings_without_middleware() -> gz.ClientSettings:
    """Client settings with every default middleware the framework knows switched off."""
    return client_settings(**MIDDLEWARE_OFF) or gz.ClientSettings.from_env()


def balancer_missing(name: str) -> str | None:
    """None when ``connect(balancer=name)`` works, else why it does not."""
    try:
        gz.connect("direct:///127.0.0.1:1", balancer=name)
    except ValueError as error:
        return f"{name}: not available ({error})"
    return None


async def takes_hot_path(channel: grpc.aio.Channel) -> bool:
    """True when a unary call skips the middleware chain: it returns grpc's own call object, or
    the thin UnaryAttempts wrapper of the retry path. The first call waits for resolution
    through the chain anyway, so the second one tells."""
    make_call = unary(channel)
    await make_call()
    call = make_call()
    await call
    return not isinstance(call, ChainedCall)


class PassThrough(gz.Middleware):
    """A middleware that does nothing but override both hooks: the cost of the chain itself."""

    async def unary(self, ctx, request, call_next):
        return await call_next(ctx, request)

    async def stream(self, ctx, request, call_next):
        async for response in call_next(ctx, request):
            yield response
