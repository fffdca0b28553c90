"""Differential tests of gz's client channel: every call kind, and every method of grpc.aio's call
object of that kind, played once through a raw grpc.aio channel and once through each
gz.connect() configuration, against the same raw grpc.aio server; the caller must see the
same results (values, metadata, statuses, exceptions) at the same times (within 100 ms).

gz configurations (tests/differential/client_scenarios.py): gz_default (connect(target), default
middleware and retries), gz_hot (default middleware off: unary calls on the hot path), gz_middleware
(a user middleware: every call through the chain and a ChainedCall), gz_cold (a fresh default
channel with a connection of its own per call: the call is made before the target is resolved and
connected, as a client that just started makes it).

Failing tests here are gz defects, not flakiness to retry: scenarios are checked to be
deterministic for raw grpc.aio (see client_scenarios), and a call that hangs fails in HANG seconds.

The scenarios of one call kind run all at once (each through raw and every gz configuration), the
first time a test of that kind asks for them, so that operations that hang (HANG seconds) cost
that long once per kind instead of once per test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from .client_scenarios import (
    ECHO,
    FAILING_REQUEST,
    GAP,
    GZ_CLIENTS,
    INIT,
    KINDS,
    RAISE,
    RECV,
    REQUEST_STREAMING,
    RESPONSE_STREAMING,
    SETTLE,
    TRAIL,
    Harness,
    Scenario,
    abort,
    report,
    send,
    sleep,
    status,
)

# -- plan ops -----------------------------------------------------------------------------------
AWAIT, ITER, ANEXT, READ = ("await",), ("iter",), ("anext",), ("read",)
DW = ("done_writing",)
CODE, DETAILS = ("code",), ("details",)
IM, TM = ("initial_metadata",), ("trailing_metadata",)
WFC = ("wait_for_connection",)
CANCEL, CANCELLED, DONE = ("cancel",), ("cancelled",), ("done",)
TR, CB = ("time_remaining",), ("callback",)


def W(payload: bytes) -> tuple[str, bytes]:
    return ("write", payload)


def S(seconds: float) -> tuple[str, float]:
    return ("sleep", seconds)


def BG(op: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    return ("bg", op)


def WITHIN(seconds: float, op: tuple[Any, ...]) -> tuple[str, float, tuple[Any, ...]]:
    """The caller gives ``op`` that long (asyncio.wait_for), then gives up."""
    return ("within", seconds, op)


A, B = W(b"a"), W(b"b")
P = 0.3  # the pause of the hand-written scripts: a server that sends, waits 300 ms, sends...
HOLD = sleep(1.0)

# -- hand-written scenarios: (kind, method) -> [(name, script, plan, options)] ------------------
UU_OK = (INIT, sleep(P), TRAIL)
UU_LATE = (sleep(P), TRAIL)  # no initial metadata before the response
UU_FAIL = (INIT, sleep(P), TRAIL, abort("PERMISSION_DENIED", "not yours"))
UU_STATUS = (INIT, sleep(P), TRAIL, status("NOT_FOUND", "no such thing"))
UU_RAISE = (sleep(P), RAISE)
UU_HOLD = (INIT, HOLD, TRAIL)

US_OK = (INIT, sleep(P), send("m1"), sleep(P), send("m2"), sleep(P), TRAIL)
US_LATE = (sleep(P), send("m1"), sleep(P), TRAIL)
US_FAIL = (INIT, sleep(P), send("m1"), sleep(P), TRAIL, abort("NOT_FOUND", "gone after one"))
US_EMPTY = (INIT, sleep(P), TRAIL)
US_BLANK = (INIT, sleep(P), send(""), sleep(P), send(""), TRAIL)  # two empty messages
US_EMPTY_FAIL = (INIT, sleep(P), TRAIL, abort("OUT_OF_RANGE", "nothing for you"))
US_HOLD = (INIT, sleep(P), send("m1"), HOLD, send("m2"), TRAIL)

SU_OK = (INIT, RECV, sleep(P), TRAIL)
SU_LATE = (RECV, sleep(P), TRAIL)
SU_FAIL = (INIT, RECV, sleep(P), TRAIL, abort("FAILED_PRECONDITION", "bad batch"))
SU_EARLY = (INIT, sleep(P), TRAIL)  # replies without reading the requests
SU_HOLD = (INIT, RECV, HOLD, TRAIL)

SS_ECHO = (INIT, ECHO, sleep(P), send("tail"), sleep(P), TRAIL)
SS_LATE = (ECHO, sleep(P), send("tail"), sleep(P), TRAIL)
SS_FAIL = (INIT, ECHO, sleep(P), send("tail"), sleep(P), TRAIL, abort("ABORTED", "stopped"))
SS_FIRST = (INIT, sleep(P), send("first"), ECHO, sleep(P), TRAIL)  # speaks before reading
SS_EMPTY = (INIT, RECV, sleep(P), TRAIL)  # no messages at all
SS_HOLD = (INIT, ECHO, HOLD, TRAIL)

T2 = {"timeout": 2.0}
DEADLINE = {"timeout": 0.5}
ITERATOR = {"iterator": (b"a", b"b")}
FAILING = {"iterator": (b"a", FAILING_REQUEST)}

CASES: dict[tuple[str, str], list[tuple[str, Any, Any, dict[str, Any]]]] = {
    # unary-unary
    ("unary_unary", "await"): [
        ("ok", UU_OK, [AWAIT, DONE, CANCELLED, AWAIT], {}),
        ("abort", UU_FAIL, [AWAIT, DONE, CANCELLED], {}),
        ("status", UU_STATUS, [AWAIT], {}),
        ("raise", UU_RAISE, [AWAIT], {}),
        ("late metadata", UU_LATE, [AWAIT], {}),
    ],
    ("unary_unary", "code"): [
        ("before await", UU_OK, [CODE, DETAILS, AWAIT], {}),
        ("failed", UU_FAIL, [CODE, DETAILS, AWAIT, CODE], {}),
    ],
    ("unary_unary", "details"): [
        ("status", UU_STATUS, [DETAILS, CODE, AWAIT], {}),
        ("raise", UU_RAISE, [DETAILS, AWAIT], {}),
    ],
    ("unary_unary", "initial_metadata"): [
        ("before await", UU_OK, [IM, AWAIT, IM], {}),
        ("late", UU_LATE, [IM, AWAIT], {}),
        ("failed", UU_FAIL, [IM, AWAIT], {}),
    ],
    ("unary_unary", "trailing_metadata"): [
        ("before await", UU_OK, [TM, AWAIT, TM], {}),
        ("failed", UU_FAIL, [TM, AWAIT], {}),
    ],
    ("unary_unary", "cancel"): [
        ("at once", UU_OK, [CANCEL, AWAIT, CODE, DETAILS, IM, TM, CANCEL], {}),
        ("midway", UU_HOLD, [S(0.15), CANCEL, AWAIT, CODE, DETAILS, TM], {}),
        ("while awaited", UU_HOLD, [BG(AWAIT), S(0.15), CANCEL, CODE], {}),
        ("after the end", UU_OK, [AWAIT, CANCEL, CANCELLED, CODE, DETAILS], {}),
        ("the caller gives up", UU_HOLD, [WITHIN(0.15, AWAIT), CANCELLED, DONE, CODE, DETAILS], {}),
    ],
    ("unary_unary", "cancelled"): [
        ("ok", UU_OK, [CANCELLED, AWAIT, CANCELLED], {}),
        ("failed", UU_FAIL, [AWAIT, CANCELLED], {}),
        ("cancelled", UU_HOLD, [S(0.15), CANCEL, CANCELLED, S(0.05), CANCELLED], {}),
    ],
    ("unary_unary", "done"): [
        ("ok", UU_OK, [DONE, S(0.15), DONE, AWAIT, DONE], {}),
        ("failed", UU_FAIL, [DONE, CODE, DONE], {}),
        ("cancelled", UU_HOLD, [CANCEL, DONE], {}),
    ],
    ("unary_unary", "add_done_callback"): [
        ("ok", UU_OK, [CB, AWAIT, CB], {}),
        ("failed, never awaited", UU_FAIL, [CB], {}),
        ("cancelled", UU_HOLD, [CB, S(0.15), CANCEL, CB], {}),
    ],
    ("unary_unary", "time_remaining"): [
        ("timeout", UU_OK, [TR, AWAIT, TR], T2),
        ("no timeout", UU_OK, [TR, AWAIT, TR], {}),
        ("timeout 0", UU_OK, [AWAIT, CODE, DETAILS], {"timeout": 0.0}),
        ("deadline exceeded", UU_HOLD, [TR, AWAIT, CODE, DETAILS, TR], DEADLINE),
    ],
    ("unary_unary", "wait_for_connection"): [
        ("ok", UU_OK, [WFC, AWAIT], {}),
        ("failed", UU_FAIL, [WFC, AWAIT], {}),
        ("cancelled", UU_HOLD, [CANCEL, WFC], {}),
    ],
    ("unary_unary", "timing"): [
        ("ok", UU_OK, [BG(IM), BG(CODE), BG(DETAILS), BG(TM), BG(WFC), AWAIT], {}),
        ("failed", UU_FAIL, [BG(IM), BG(CODE), BG(TM), AWAIT], {}),
        ("never awaited", UU_LATE, [BG(IM), BG(CODE), BG(TM)], {}),
    ],
    # unary-stream
    ("unary_stream", "async for"): [
        ("ok", US_OK, [ITER, DONE, ITER], {}),
        ("abort", US_FAIL, [ITER, ITER], {}),
        ("empty", US_EMPTY, [ITER], {}),
        ("late metadata", US_LATE, [ITER], {}),
        ("anext", US_OK, [ANEXT, ANEXT, ANEXT, ANEXT], {}),
        ("empty messages", US_BLANK, [ITER], {}),
    ],
    ("unary_stream", "read"): [
        ("ok", US_OK, [READ, READ, READ, READ], {}),
        ("abort", US_FAIL, [READ, READ, READ], {}),
        ("late metadata", US_LATE, [READ, READ, READ], {}),
        ("read, then async for: grpc.aio refuses to mix them", US_OK, [READ, ITER], {}),
        ("empty messages", US_BLANK, [READ, READ, READ], {}),
    ],
    ("unary_stream", "code"): [
        ("nothing to read", US_EMPTY, [CODE, DETAILS, TM, ITER], {}),
        ("failed, nothing to read", US_EMPTY_FAIL, [CODE, DETAILS, TM, ITER], {}),
        ("after reading", US_OK, [ITER, CODE, DETAILS], {}),
        ("failed", US_FAIL, [READ, READ, CODE, DETAILS], {}),
    ],
    ("unary_stream", "details"): [
        ("failed", US_FAIL, [ITER, DETAILS], {}),
        ("nothing to read", US_EMPTY, [DETAILS], {}),
    ],
    ("unary_stream", "initial_metadata"): [
        ("before reading", US_OK, [IM, READ, IM, READ, READ], {}),
        ("late", US_LATE, [IM, ITER], {}),
        ("failed", US_FAIL, [IM, ITER], {}),
    ],
    ("unary_stream", "trailing_metadata"): [
        ("after reading", US_OK, [ITER, TM], {}),
        ("failed", US_FAIL, [ITER, TM], {}),
        ("nothing to read", US_EMPTY, [TM, ITER], {}),
    ],
    ("unary_stream", "cancel"): [
        ("before reading", US_OK, [CANCEL, READ, CODE, DETAILS, IM, TM, READ], {}),
        ("after the first message", US_OK, [READ, CANCEL, READ, CODE, DETAILS, TM], {}),
        ("async for", US_OK, [ANEXT, CANCEL, ANEXT], {}),
        ("after the end", US_OK, [ITER, CANCEL, CANCELLED, CODE], {}),
        ("while reading", US_HOLD, [READ, BG(READ), S(0.1), CANCEL, CODE], {}),
        ("never read", US_HOLD, [S(0.15), CANCEL, CODE], {}),
        ("the reader gives up", US_HOLD, [READ, WITHIN(0.15, READ), CANCELLED, CODE, READ], {}),
        ("async for gives up", US_HOLD, [ANEXT, WITHIN(0.15, ANEXT), CANCELLED, CODE, ANEXT], {}),
    ],
    ("unary_stream", "cancelled"): [
        ("ok", US_OK, [CANCELLED, ITER, CANCELLED], {}),
        ("failed", US_FAIL, [ITER, CANCELLED], {}),
        ("cancelled", US_OK, [READ, CANCEL, CANCELLED], {}),
    ],
    ("unary_stream", "done"): [
        ("ok", US_OK, [DONE, READ, DONE, READ, READ, DONE], {}),
        ("failed", US_FAIL, [ITER, DONE], {}),
        ("nothing to read", US_EMPTY, [S(P + 0.15), DONE], {}),
    ],
    ("unary_stream", "add_done_callback"): [
        ("ok", US_OK, [CB, ITER, CB], {}),
        ("nothing to read", US_EMPTY, [CB], {}),
        ("cancelled", US_OK, [CB, READ, CANCEL], {}),
    ],
    ("unary_stream", "time_remaining"): [
        ("timeout", US_OK, [TR, ITER, TR], T2),
        ("no timeout", US_OK, [TR], {}),
        ("deadline exceeded", US_HOLD, [TR, ITER, CODE, DETAILS], DEADLINE),
        ("deadline passes, nothing read", US_HOLD, [S(0.7), DONE, CODE, READ, READ], DEADLINE),
    ],
    ("unary_stream", "wait_for_connection"): [
        ("ok", US_OK, [WFC, ITER], {}),
        ("failed", US_FAIL, [WFC, ITER], {}),
        ("cancelled", US_OK, [CANCEL, WFC], {}),
    ],
    ("unary_stream", "timing"): [
        ("ok", US_OK, [BG(IM), BG(CODE), BG(DETAILS), BG(TM), ITER], {}),
        ("failed", US_FAIL, [BG(IM), BG(CODE), BG(TM), ITER], {}),
        ("late metadata", US_LATE, [BG(IM), BG(CODE), READ, READ, READ], {}),
    ],
    # stream-unary
    ("stream_unary", "await"): [
        ("ok", SU_OK, [A, B, DW, AWAIT, AWAIT], {}),
        ("abort", SU_FAIL, [A, DW, AWAIT], {}),
        ("request iterator", SU_OK, [AWAIT], ITERATOR),
        ("the request iterator raises", SU_OK, [AWAIT, CODE, DETAILS, CANCELLED], FAILING),
        ("plain request iterator", SU_OK, [AWAIT], {**ITERATOR, "sync_iterator": True}),
        ("plain request iterator raises", SU_OK, [AWAIT, CODE], {**FAILING, "sync_iterator": True}),
        ("raise", (RECV, RAISE), [DW, AWAIT], {}),
        ("late metadata", SU_LATE, [A, DW, AWAIT], {}),
    ],
    ("stream_unary", "write"): [
        ("after done_writing", SU_OK, [A, DW, B, AWAIT], {}),
        ("request iterator", SU_OK, [A, AWAIT], ITERATOR),
        ("after the end", SU_EARLY, [A, AWAIT, B], {}),
        ("after cancel", SU_OK, [A, CANCEL, B, AWAIT], {}),
    ],
    ("stream_unary", "done_writing"): [
        ("twice, no writes", SU_OK, [DW, DW, AWAIT], {}),
        ("after the end", SU_OK, [A, DW, AWAIT, DW], {}),
        ("request iterator", SU_OK, [DW, AWAIT], ITERATOR),
        ("after cancel", SU_OK, [CANCEL, DW], {}),
    ],
    ("stream_unary", "code"): [
        ("ok", SU_OK, [A, DW, CODE, DETAILS, AWAIT], {}),
        ("failed", SU_FAIL, [A, DW, CODE, DETAILS, AWAIT], {}),
        ("server ends first", SU_EARLY, [CODE, DETAILS, AWAIT], {}),
    ],
    ("stream_unary", "details"): [
        ("failed", SU_FAIL, [A, DW, DETAILS, AWAIT], {}),
    ],
    ("stream_unary", "initial_metadata"): [
        ("before writing", SU_OK, [IM, A, DW, AWAIT], {}),
        ("late", SU_LATE, [A, DW, IM, AWAIT], {}),
        ("failed", SU_FAIL, [IM, A, DW, AWAIT], {}),
    ],
    ("stream_unary", "trailing_metadata"): [
        ("ok", SU_OK, [A, DW, TM, AWAIT], {}),
        ("failed", SU_FAIL, [A, DW, AWAIT, TM], {}),
    ],
    ("stream_unary", "cancel"): [
        ("before writing", SU_OK, [CANCEL, A, DW, AWAIT, CODE, DETAILS], {}),
        ("after a write", SU_OK, [A, CANCEL, AWAIT, CODE], {}),
        ("after done_writing", SU_OK, [A, DW, CANCEL, AWAIT, CODE, DETAILS, TM], {}),
        ("after the end", SU_OK, [A, DW, AWAIT, CANCEL, CODE], {}),
        ("while awaited", SU_HOLD, [A, DW, BG(AWAIT), S(0.1), CANCEL, CODE], {}),
        ("the caller gives up", SU_HOLD, [A, DW, WITHIN(0.15, AWAIT), CANCELLED, CODE], {}),
    ],
    ("stream_unary", "cancelled"): [
        ("ok", SU_OK, [CANCELLED, A, DW, AWAIT, CANCELLED], {}),
        ("cancelled", SU_OK, [A, CANCEL, CANCELLED], {}),
    ],
    ("stream_unary", "done"): [
        ("ok", SU_OK, [DONE, A, DW, DONE, AWAIT, DONE], {}),
        ("server ends first", SU_EARLY, [S(P + 0.15), DONE], {}),
    ],
    ("stream_unary", "add_done_callback"): [
        ("ok", SU_OK, [CB, A, DW, AWAIT, CB], {}),
        ("cancelled", SU_OK, [CB, CANCEL], {}),
        ("never awaited", SU_OK, [CB, A, DW], {}),
    ],
    ("stream_unary", "time_remaining"): [
        ("timeout", SU_OK, [TR, A, DW, AWAIT, TR], T2),
        ("no timeout", SU_OK, [TR], {}),
        ("deadline exceeded", SU_HOLD, [A, DW, AWAIT, CODE, DETAILS], DEADLINE),
    ],
    ("stream_unary", "wait_for_connection"): [
        ("ok", SU_OK, [WFC, A, DW, AWAIT], {}),
        ("cancelled", SU_OK, [A, CANCEL, WFC], {}),  # before anything is sent: raw hangs
    ],
    ("stream_unary", "timing"): [
        ("ok", SU_OK, [BG(IM), BG(CODE), BG(TM), A, S(P), B, DW, AWAIT], {}),
        ("failed", SU_FAIL, [BG(IM), BG(CODE), BG(DETAILS), A, S(P), DW, AWAIT], {}),
        ("never awaited", SU_LATE, [BG(IM), BG(CODE), BG(TM), A, DW], {}),
    ],
    # stream-stream
    ("stream_stream", "async for"): [
        ("ok", SS_ECHO, [A, B, DW, ITER], {}),
        ("abort", SS_FAIL, [A, DW, ITER], {}),
        ("server speaks first", SS_FIRST, [A, DW, ITER], {}),
        ("request iterator", SS_ECHO, [ITER], ITERATOR),
        ("the request iterator raises", SS_ECHO, [ITER, CODE, DETAILS, CANCELLED], FAILING),
        ("plain request iterator", SS_ECHO, [ITER], {**ITERATOR, "sync_iterator": True}),
        ("anext", SS_ECHO, [A, ANEXT, DW, ANEXT, ANEXT, ANEXT], {}),
    ],
    ("stream_stream", "read"): [
        ("ok", SS_ECHO, [A, READ, B, READ, DW, READ, READ, READ], {}),
        ("empty messages", SS_ECHO, [W(b""), READ, DW, READ, READ], {}),
        ("abort", SS_FAIL, [A, READ, DW, READ, READ, READ], {}),
        ("late metadata", SS_LATE, [A, READ, DW, READ, READ], {}),
    ],
    ("stream_stream", "write"): [
        ("after done_writing", SS_ECHO, [A, DW, B, ITER], {}),
        ("request iterator", SS_ECHO, [A, ITER], ITERATOR),
        ("after the end", SS_ECHO, [A, DW, ITER, B], {}),
        ("after cancel", SS_ECHO, [A, CANCEL, B], {}),
    ],
    ("stream_stream", "done_writing"): [
        ("before reading", SS_ECHO, [A, DW, ITER], {}),
        ("after reading", SS_ECHO, [A, READ, DW, READ, READ], {}),
        ("twice", SS_ECHO, [DW, DW, ITER], {}),
        ("request iterator", SS_ECHO, [DW, ITER], ITERATOR),
        ("after the end", SS_ECHO, [DW, ITER, DW], {}),
    ],
    ("stream_stream", "code"): [
        ("after reading", SS_ECHO, [A, DW, ITER, CODE, DETAILS], {}),
        ("failed", SS_FAIL, [A, READ, DW, READ, READ, CODE], {}),
        ("nothing to read", SS_EMPTY, [DW, CODE, ITER], {}),
    ],
    ("stream_stream", "details"): [
        ("failed", SS_FAIL, [A, DW, ITER, DETAILS], {}),
    ],
    ("stream_stream", "initial_metadata"): [
        ("before writing", SS_ECHO, [IM, A, READ, DW, READ, READ], {}),
        ("late", SS_LATE, [A, IM, READ, DW, READ, READ], {}),
        ("failed", SS_FAIL, [IM, DW, ITER], {}),
    ],
    ("stream_stream", "trailing_metadata"): [
        ("ok", SS_ECHO, [A, DW, ITER, TM], {}),
        ("failed", SS_FAIL, [DW, ITER, TM], {}),
    ],
    ("stream_stream", "cancel"): [
        ("before reading", SS_ECHO, [CANCEL, A, READ, CODE, DETAILS, TM], {}),
        ("after the first message", SS_ECHO, [A, READ, CANCEL, READ, CODE], {}),
        ("after done_writing", SS_ECHO, [A, DW, CANCEL, ITER, CODE], {}),
        ("after the end", SS_ECHO, [A, DW, ITER, CANCEL, CANCELLED, CODE], {}),
        ("while reading", SS_HOLD, [BG(READ), S(0.1), CANCEL, CODE], {}),
        ("the reader gives up", SS_HOLD, [A, READ, WITHIN(0.15, READ), CANCELLED, CODE], {}),
    ],
    ("stream_stream", "cancelled"): [
        ("ok", SS_ECHO, [CANCELLED, A, DW, ITER, CANCELLED], {}),
        ("cancelled", SS_ECHO, [A, READ, CANCEL, CANCELLED], {}),
    ],
    ("stream_stream", "done"): [
        ("ok", SS_ECHO, [DONE, A, READ, DONE, DW, READ, READ, DONE], {}),
        ("nothing to read", SS_EMPTY, [DW, S(P + 0.15), DONE], {}),
    ],
    ("stream_stream", "add_done_callback"): [
        ("ok", SS_ECHO, [CB, A, DW, ITER, CB], {}),
        ("cancelled", SS_ECHO, [CB, A, READ, CANCEL], {}),
        ("nothing to read", SS_EMPTY, [CB, DW], {}),
    ],
    ("stream_stream", "time_remaining"): [
        ("timeout", SS_ECHO, [TR, A, DW, ITER, TR], T2),
        ("no timeout", SS_ECHO, [TR], {}),
        ("deadline exceeded", SS_HOLD, [A, READ, READ, CODE, DETAILS], DEADLINE),
        ("deadline passes, nothing read", SS_HOLD, [A, S(0.7), DONE, CODE, READ, READ], DEADLINE),
    ],
    ("stream_stream", "wait_for_connection"): [
        ("ok", SS_ECHO, [WFC, A, DW, ITER], {}),
        ("cancelled", SS_ECHO, [A, CANCEL, WFC], {}),
    ],
    ("stream_stream", "timing"): [
        ("ok", SS_ECHO, [BG(IM), BG(CODE), BG(TM), A, READ, S(P), B, READ, DW, READ, READ], {}),
        ("failed", SS_FAIL, [BG(IM), BG(CODE), BG(TM), A, DW, ITER], {}),
        ("server speaks first", SS_FIRST, [BG(IM), BG(CODE), READ, A, READ, DW, READ, READ], {}),
    ],
}


def scenario_list(kind: str, method: str) -> list[Scenario]:
    return [
        Scenario(f"{kind} {method}: {name}", kind, tuple(script), tuple(plan), **options)
        for name, script, plan, options in CASES[kind, method]
    ]


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    made = Harness().start()
    try:
        yield made
    finally:
        made.close()


def results_of(harness: Harness, kind: str) -> dict[str, dict[str, list[str]]]:
    """The differences of every hand-written scenario of ``kind``, played all at once."""
    if kind not in harness.results:
        scenarios = [s for (k, method) in CASES if k == kind for s in scenario_list(k, method)]

        found = harness.run(harness.compare_many(scenarios))
        harness.results[kind] = {s.name: f for s, f in zip(scenarios, found, strict=True)}
    return harness.results[kind]


# -- every call kind x every method of its call object x every gz configuration -----------------
MATRIX = [
    pytest.param(kind, method, client, id=f"{kind}-{method.replace(' ', '_')}-{client}")
    for kind, method in CASES
    for client in GZ_CLIENTS
]


@pytest.mark.parametrize(("kind", "method", "client"), MATRIX)
def test_call_method(harness: Harness, kind: str, method: str, client: str) -> None:
    found = results_of(harness, kind)
    problems = [
        report(scenario, found[scenario.name][client])
        for scenario in scenario_list(kind, method)
        if found[scenario.name][client]
    ]
    assert not problems, f"{client} differs from raw grpc.aio:\n" + "\n".join(problems)


# -- generated orders ---------------------------------------------------------------------------
FAILURES = [
    status("NOT_FOUND", "no such thing"),
    abort("INVALID_ARGUMENT", "bad request"),
    abort("PERMISSION_DENIED", "not yours"),
    abort("FAILED_PRECONDITION", "not now"),
    RAISE,
]


_CONNECTING = frozenset(
    {"write", "wait_for_connection", "initial_metadata", "code", "details", "trailing_metadata",
     "read", "anext", "iter", "await"}
)  # fmt: skip


class _Model:
    """What the caller can do next without waiting forever on a raw grpc.aio call."""

    def __init__(self, kind: str, explicit_md: bool, mode: str, messages: int, iterator: bool):
        self.kind = kind
        self.explicit_md = explicit_md
        self.mode = mode  # stream_stream: "echo" or "recv"
        self.messages = messages  # scripted messages (after the requests for stream_stream)
        self.closed = kind not in REQUEST_STREAMING or iterator
        self.iterator = iterator
        self.cancelled = False
        self.connected = False  # the call's metadata went out: wait_for_connection() returns
        self.writes = 2 if iterator and mode == "echo" else 0  # the iterator's, echoed
        self.read = 0
        self.exhausted = False

    def total(self) -> int:
        """Messages the server sends, given the writes so far."""
        return self.messages + (self.writes if self.mode == "echo" else 0)

    def can_read(self) -> bool:
        if self.cancelled or self.exhausted or self.closed:
            return True
        return self.mode == "echo" and self.read < self.writes

    def can_wait_status(self) -> bool:
        if self.cancelled:
            return True
        if not self.closed:
            return False
        if self.kind not in RESPONSE_STREAMING:
            return True
        return self.exhausted or (self.read == 0 and self.total() == 0)

    def can_wait_initial_metadata(self) -> bool:
        return (
            self.cancelled
            or self.closed
            or self.explicit_md
            or (self.mode == "echo" and self.writes > 0)
        )

    def options(self, style: str) -> list[tuple[Any, ...]]:
        ops: list[tuple[Any, ...]] = [
            CANCEL, CANCELLED, DONE, TR, CB, BG(CODE), BG(DETAILS), BG(TM), BG(IM),
        ]  # fmt: skip
        # grpc.aio's wait_for_connection() on a call cancelled before its metadata went out
        # never returns (stream requests)
        if self.kind not in REQUEST_STREAMING or self.connected or not self.cancelled:
            ops.append(WFC)
        if self.can_wait_initial_metadata():
            ops.append(IM)
        if self.can_wait_status():
            ops += [CODE, DETAILS, TM]
        if self.kind in REQUEST_STREAMING:
            ops += [W(b"w%d" % self.writes), DW]
        if self.kind in RESPONSE_STREAMING:
            if self.can_read():
                ops.append(READ if style == "read" else ANEXT)
            if self.cancelled or self.closed:
                ops.append(ITER if style == "iter" else READ)
        elif self.cancelled or self.closed:
            ops.append(AWAIT)
        return ops

    def apply(self, op: tuple[Any, ...]) -> None:
        name = op[0]
        if not self.cancelled and name in _CONNECTING and not (name == "write" and self.closed):
            self.connected = True
        if name == "cancel":
            self.cancelled = True
        elif name == "write" and not (self.closed or self.cancelled):
            self.writes += 1
        elif name == "done_writing":
            self.closed = True
        elif name in ("read", "anext") and not self.cancelled:
            if self.read < self.total():
                self.read += 1
            else:
                self.exhausted = True
        elif name == "iter":
            self.exhausted = True

    def finish(self, style: str) -> list[tuple[Any, ...]]:
        """Ops that take the call to its end (nothing when it was cancelled)."""
        if self.cancelled:
            return []
        self.connected = True
        ops: list[tuple[Any, ...]] = []
        if not self.closed:
            ops.append(DW)
            self.closed = True
        if self.kind not in RESPONSE_STREAMING:
            ops.append(AWAIT)
        elif style == "iter":
            ops.append(ITER)
        else:
            ops += [READ] * (self.total() - self.read + 1)
        self.exhausted = True
        return ops


@st.composite
def generated(draw: st.DrawFn, kind: str) -> Scenario:
    explicit_md = draw(st.booleans())
    mode = draw(st.sampled_from(["echo", "recv"])) if kind == "stream_stream" else "recv"
    messages = draw(st.integers(0, 2)) if kind in RESPONSE_STREAMING else 0
    iterator = kind in REQUEST_STREAMING and draw(st.integers(0, 4)) == 0
    script: list[Any] = [INIT] if explicit_md else []
    if kind in REQUEST_STREAMING:
        script.append(ECHO if mode == "echo" else RECV)
    for number in range(messages):
        script += [sleep(GAP), send(f"m{number}")]
    script.append(sleep(GAP))
    if draw(st.booleans()):
        script.append(TRAIL)
    if draw(st.booleans()):
        script.append(draw(st.sampled_from(FAILURES)))
    model = _Model(kind, explicit_md, mode, messages, iterator)
    style = draw(st.sampled_from(["read", "iter"])) if kind in RESPONSE_STREAMING else "-"
    plan: list[Any] = []
    for _ in range(draw(st.integers(0, 7))):
        op = draw(st.sampled_from(model.options(style)))
        model.apply(op)
        plan.append(op)
    if draw(st.integers(0, 3)) == 0:
        # The caller gives up waiting (cancelling the call) unless an answer is there already:
        # what comes after is safe either way.
        waited = AWAIT if kind not in RESPONSE_STREAMING else READ if style == "read" else ANEXT
        plan.append(WITHIN(SETTLE, waited))
        model.connected = True
    plan += model.finish(style)
    finals = [CODE, DETAILS, IM, TM, CANCEL, CANCELLED, DONE, CB]
    if WFC in model.options(style):
        finals.append(WFC)
    if kind in REQUEST_STREAMING:
        finals += [W(b"late"), DW]
    finals.append(AWAIT if kind not in RESPONSE_STREAMING else READ if style == "read" else ITER)
    plan += draw(st.lists(st.sampled_from(finals), max_size=4))
    return Scenario(
        f"generated {kind}",
        kind,
        tuple(script),
        tuple(plan),
        iterator=(b"i0", b"i1") if iterator else None,
        timeout=draw(st.sampled_from([None, 5.0])),
    )


@pytest.mark.parametrize("kind", KINDS)
@settings(
    max_examples=25,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples on every run: a failure stays a failure
    phases=[Phase.generate],  # no shrinking: a hanging example costs seconds each time
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_generated_orders(harness: Harness, kind: str, data: st.DataObject) -> None:
    """Reads before and after code(), status and metadata asked before reading, cancel at any
    point, done_writing before or after reading, servers that fail after some messages: raw and
    every gz configuration, at the same time, in each example."""
    scenario = data.draw(generated(kind))
    found = harness.run(harness.compare(scenario))
    problems = [f"{client}: " + report(scenario, f) for client, f in found.items() if f]
    assert not problems, "\n".join(problems)
