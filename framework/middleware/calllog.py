"""The call log: one structured line per failed or slow call, never the request or response.

Fields: side, method, peer, code, duration_ms, and error_id when there is one. With
GZ_LOG_FORMAT=json each is a JSON field; in text they follow the message as key=value. The line is
written with the call's span current, so it carries trace_id and span_id as every line does.
"""

from __future__ import annotations

import logging

import grpc

from .chain import CallContext, CallObserver
from .outcome import OK, call_code
from .tracing import call_span_current

log = logging.getLogger("gz.call")
# A library convention: in a process that has not set up logging (a command-line client), the
# call log stays silent instead of reaching stderr through logging's last-resort handler.
log.addHandler(logging.NullHandler())

# Codes that mean the service itself failed; the rest are the caller's problem or a normal "no".
SERVICE_FAULTS = frozenset(
    {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}
)


class CallLog(CallObserver):
    """Logs calls that end with a code other than OK, or that take ``slow`` seconds or more."""

    def __init__(self, slow: float = 0.5) -> None:
        self.slow = slow

    def end(self, ctx: CallContext, token: None, error: BaseException | None) -> None:
        duration = ctx.elapsed()
        code = call_code(ctx, error)
        if code is OK and duration < self.slow:
            return
        fields = {
            "side": ctx.method.side,
            "method": ctx.method.full_name,
            "peer": ctx.peer,
            "code": code.name,
            "duration_ms": round(duration * 1000, 3),
        }
        error_id = ctx.state.get("error_id")
        if error_id is not None:
            fields["error_id"] = error_id
        what = "slow call" if code is OK else "call failed"
        level = logging.ERROR if code in SERVICE_FAULTS else logging.WARNING
        details = " ".join(f"{key}={value}" for key, value in fields.items())
        with call_span_current(ctx):
            log.log(level, "%s %s", what, details, extra=fields)
