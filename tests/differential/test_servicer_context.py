"""A gz server must behave exactly like a raw grpc.aio server hosting the same servicer.

Every test runs the same handler script (server_scenarios.py) once in a raw ``grpc.aio.server()``
and once in a gz Service (default middleware on), calls both with the same raw grpc.aio client,
and asserts the same outcome on both sides: on the client the status code, details, initial and
trailing metadata, the messages, and when each arrived (within TOLERANCE of raw); in the handler
what every ServicerContext method returned or raised, how the handler ended, which done
callbacks ran. Handlers of every style: ``async def``, async generators, context.read()/write(),
plain ``def``, sync generators (grpc gives those its own _SyncServicerContext), for all four call
kinds, plus the generated servicer base's unimplemented methods.

The one deliberate difference: an unexpected exception (no code set on the context) ends the call
with INTERNAL ``internal error (error id <16 hex>)`` in gz where grpc.aio sends UNKNOWN
``Unexpected <class ...>: ...``; assert_same() checks exactly that and nothing else differs.

Masked because raw grpc.aio varies on its own: the client's port in peer(), numbers of seconds
(time_remaining(), arrival times: within TOLERANCE), the two details grpc's client gives a
deadline, and the context class named by a missing method's AttributeError (compared exactly
by test_missing_sync_context_method_details). Where grpc.aio races itself (a sync generator's
next step against the loop's write, a server ending a call the client still writes to) the
scripts leave the race no room: see SYNC_WRITE_PAUSE and RequestsSent in server_scenarios.py.
"""

from __future__ import annotations

import difflib
import logging
import pprint
import re
import string
from typing import Any

import grpc
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from gz.middleware.chain import Kind, Method

from .server_scenarios import (
    ASYNC_STYLES,
    GETTERS,
    IMPLEMENTED,
    SERVICE,
    STYLES,
    SYNC_STYLES,
    UNIMPLEMENTED,
    Call,
    Outcome,
    Script,
    Servers,
    call_both,
)

Code = grpc.StatusCode
TOLERANCE = 0.1  # seconds: how much later (or earlier) than raw gz may deliver anything

UNEXPECTED = re.compile(r"Unexpected <class '[\w.]+'>: .*", re.DOTALL)  # grpc.aio's details
GZ_INTERNAL = re.compile(r"internal error \(error id [0-9a-f]{16}\)")  # gz's, instead

MD = (("x-first", "one"), ("x-second", "two"))
TRAILING = (("x-trailer", "t"), ("x-trailer-bin", b"\x00\xff"))
STATUS_DETAILS = (("grpc-status-details-bin", b"\x08\x07\x12\x06denied"),)  # a google.rpc.Status
EXIT_GETTERS = ("cancelled", "done", "code", "details", "trailing_metadata", "time_remaining")


# grpc.aio's own: its request iterator of a handler that never iterates it (context.read() style).
pytestmark = pytest.mark.filterwarnings(
    "ignore:coroutine '_MessageReceiver._async_message_receiver' was never awaited"
)


@pytest.fixture(scope="module")
def servers():
    # The handlers raise and abort on purpose; the logs of that (grpc's, gz's recovery and
    # call log) would bury a failure's report. Both servers log the same way anyway.
    quiet = [logging.getLogger(name) for name in ("gz", "grpc._cython.cygrpc")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    both = Servers()
    try:
        yield both
    finally:
        both.close()
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


# -- comparing ----------------------------------------------------------------------------------


# What grpc.aio sends when a missing context method's AttributeError escapes a handler that
# set a code: the message names the context's class. Masked in general comparisons (a gz
# context class of its own may be named otherwise); test_missing_sync_context_method_details
# compares it exactly.
_MISSING_ATTRIBUTE = re.compile(r"'[\w.]+' object has no attribute")


# grpc's client says either, for the same server, as its own timer or the server's reset of
# the stream comes first: measured on raw grpc.aio against itself.
_DEADLINE_DETAILS = {"Deadline Exceeded", "Stream removed (Deadline Exceeded)"}


def _client_view(outcome: Outcome) -> dict[str, Any]:
    details = _MISSING_ATTRIBUTE.sub("'<context>' object has no attribute", outcome.details)
    if outcome.code == "DEADLINE_EXCEEDED" and details in _DEADLINE_DETAILS:
        details = "Deadline Exceeded"
    return {
        "code": outcome.code,
        "details": details,
        "initial_metadata": outcome.initial_metadata,
        "trailing_metadata": outcome.trailing_metadata,
        "messages": outcome.messages,
        "events": tuple(sorted(event for event, _ in outcome.timeline)),
    }


def _split_floats(value: Any, floats: list[float]) -> Any:
    """``value`` with every ("float", x) replaced by "<float>"; the x appended to ``floats``."""
    if isinstance(value, tuple):
        if len(value) == 2 and value[0] == "float" and isinstance(value[1], float):
            floats.append(value[1])
            return "<float>"
        return tuple(_split_floats(item, floats) for item in value)
    return value


def _explain(raw: Any, gz: Any) -> str:
    """A line diff of two observations, raw first ("-") and gz second ("+")."""
    raw_lines = pprint.pformat(raw, width=100).splitlines()
    gz_lines = pprint.pformat(gz, width=100).splitlines()
    diff = difflib.unified_diff(raw_lines, gz_lines, "raw grpc.aio", "gz", lineterm="", n=2)
    return "\n".join(diff)


def is_known_difference(raw: Outcome) -> bool:
    """grpc.aio's answer to an exception escaping a handler that set no code."""
    return raw.code == "UNKNOWN" and UNEXPECTED.fullmatch(raw.details) is not None


def assert_same(results: dict[str, tuple[Outcome, Any]]) -> None:
    (raw, raw_seen), (gz, gz_seen) = results["raw"], results["gz"]
    raw_view, gz_view = _client_view(raw), _client_view(gz)
    if is_known_difference(raw):
        # The one deliberate difference: INTERNAL with an error id instead of UNKNOWN.
        assert (gz.code, GZ_INTERNAL.fullmatch(gz.details) is not None) == ("INTERNAL", True), (
            f"an unexpected exception: grpc.aio says {raw.code} {raw.details!r}, gz must say"
            f" INTERNAL 'internal error (error id <16 hex>)', not {gz.code} {gz.details!r}"
        )
        raw_view["code"] = gz_view["code"] = raw_view["details"] = gz_view["details"] = "<masked>"
    assert gz_view == raw_view, "the client saw something else from gz than from raw grpc.aio\n" + (
        _explain(raw_view, gz_view)
    )
    late = {
        event: (raw_at, gz_at)
        for (event, raw_at), (_, gz_at) in zip(
            sorted(raw.timeline), sorted(gz.timeline), strict=True
        )
        if abs(gz_at - raw_at) > TOLERANCE
    }
    assert not late, f"(raw, gz) seconds after the call started, more than {TOLERANCE}s apart"
    raw_floats: list[float] = []
    gz_floats: list[float] = []
    raw_handler = _split_floats(raw_seen, raw_floats)
    gz_handler = _split_floats(gz_seen, gz_floats)
    assert gz_handler == raw_handler, "the handler observed something else in gz than in raw\n" + (
        _explain(raw_handler, gz_handler)
    )
    assert all(abs(a - b) <= TOLERANCE for a, b in zip(raw_floats, gz_floats, strict=True)), (
        raw_floats,
        gz_floats,
    )


def differential(
    servers: Servers, method: str, script: Script, how: Call | None = None
) -> dict[str, tuple[Outcome, Any]]:
    results = servers.run(call_both(servers, method, script, how), timeout=60)
    assert_same(results)
    return results


# -- scenarios: the same script in every handler style ------------------------------------------


def _io(method: str, reads: int = 2, writes: int = 2) -> tuple[tuple[Any, ...], ...]:
    """Read some requests (request streams) and write some responses (response streams)."""
    style = STYLES[method]
    ops: list[tuple[Any, ...]] = []
    if style.request_streaming:
        ops.append(("read", reads))
    if style.response_streaming:
        ops.append(("write", writes))
    return tuple(ops)


def _surface(method: str) -> Script:
    getters = tuple(("call", name) for name in GETTERS)
    return Script((("surface",), *getters), on_exit=EXIT_GETTERS)


def _set_everything_then_return(method: str) -> Script:
    return Script(
        (
            ("initial", MD),
            *_io(method),
            ("trailing", TRAILING),
            ("code", Code.NOT_FOUND),
            ("details", "no such thing"),
            ("call", "code"),
            ("call", "details"),
            ("call", "trailing_metadata"),
        ),
        on_exit=EXIT_GETTERS,
    )


def _initial_metadata_long_before_the_rest(method: str) -> Script:
    """When each part arrives: metadata at once, a message 0.15 s later, the status after
    another 0.15 s (the timeline comparison sees metadata held back until the reply)."""
    messages = (("write", 1),) if STYLES[method].response_streaming else ()
    return Script(
        (("initial", MD), ("sleep", 0.15), *messages, ("sleep", 0.15), ("trailing", TRAILING))
    )


def _code_only_then_return(method: str) -> Script:
    return Script((*_io(method), ("code", Code.FAILED_PRECONDITION)))


def _details_only_then_return(method: str) -> Script:
    return Script((*_io(method), ("details", "details without a code")))


def _abort(method: str) -> Script:
    return Script(
        (("initial", MD), *_io(method), ("abort", Code.PERMISSION_DENIED, "denied", None)),
        on_exit=EXIT_GETTERS,
    )


def _abort_with_trailing_metadata(method: str) -> Script:
    return Script((*_io(method), ("abort", Code.NOT_FOUND, "gone", TRAILING)))


def _set_trailing_metadata_then_abort(method: str) -> Script:
    return Script((("trailing", TRAILING), *_io(method), ("abort", Code.ABORTED, "conflict", None)))


def _set_details_then_abort_without_details(method: str) -> Script:
    return Script(
        (("details", "preset details"), *_io(method), ("abort", Code.UNAVAILABLE, "", None))
    )


def _set_code_then_abort(method: str) -> Script:
    return Script(
        (("code", Code.NOT_FOUND), ("abort", Code.ALREADY_EXISTS, "exists", None)),
        on_exit=EXIT_GETTERS,
    )


def _abort_with_status(method: str) -> Script:
    status = ("abort_status", Code.PERMISSION_DENIED, "denied", STATUS_DETAILS)
    return Script((("initial", MD), *_io(method), status), on_exit=EXIT_GETTERS)


def _abort_with_status_without_trailing_metadata(method: str) -> Script:
    return Script(
        (("trailing", TRAILING), ("abort_status", Code.RESOURCE_EXHAUSTED, "slow down", ()))
    )


def _raise_after_set_code_and_details(method: str) -> Script:
    return Script(
        (
            ("trailing", TRAILING),
            ("code", Code.NOT_FOUND),
            ("details", "set before the raise"),
            *_io(method),
            ("raise", "boom"),
        ),
        on_exit=EXIT_GETTERS,
    )


def _raise_after_set_code_internal(method: str) -> Script:
    return Script((("code", Code.INTERNAL), ("raise", "boom")))


def _raise_after_set_details_only(method: str) -> Script:
    return Script((("details", "set before the raise"), *_io(method), ("raise", "boom")))


def _send_initial_metadata_twice(method: str) -> Script:
    return Script((("initial", MD), ("initial", (("x-again", "2"),)), *_io(method)))


def _send_initial_metadata_after_messages(method: str) -> Script:
    return Script(
        (("write", 1), ("initial", MD), ("write", 1), ("trailing", TRAILING)),
    )


def _compression(method: str) -> Script:
    return Script(
        (
            ("compression", grpc.Compression.Gzip),
            ("call", "disable_next_message_compression"),
            ("initial", MD),
            *_io(method),
            ("compression", grpc.Compression.Deflate),  # too late: metadata went out
        )
    )


def _done_callbacks(method: str) -> Script:
    return Script((("callback",), *_io(method), ("callback",)), on_exit=EXIT_GETTERS)


def _done_callbacks_then_abort(method: str) -> Script:
    return Script((("callback",), *_io(method), ("abort", Code.NOT_FOUND, "gone", None)))


def _done_callbacks_then_raise(method: str) -> Script:
    return Script((("callback",), ("code", Code.DATA_LOSS), ("raise", "boom")))


def _read_past_the_end(method: str) -> Script:
    return Script((("read", 5), *_io(method, reads=0)))


SCENARIOS = {
    "context_methods_and_getters": _surface,
    "set_everything_then_return": _set_everything_then_return,
    "initial_metadata_long_before_the_rest": _initial_metadata_long_before_the_rest,
    "code_only_then_return": _code_only_then_return,
    "details_only_then_return": _details_only_then_return,
    "abort": _abort,
    "abort_with_trailing_metadata": _abort_with_trailing_metadata,
    "set_trailing_metadata_then_abort": _set_trailing_metadata_then_abort,
    "set_details_then_abort_without_details": _set_details_then_abort_without_details,
    "set_code_then_abort": _set_code_then_abort,
    "abort_with_status": _abort_with_status,
    "abort_with_status_without_trailing_metadata": _abort_with_status_without_trailing_metadata,
    "raise_after_set_code_and_details": _raise_after_set_code_and_details,
    "raise_after_set_code_internal": _raise_after_set_code_internal,
    "raise_after_set_details_only": _raise_after_set_details_only,
    "send_initial_metadata_twice": _send_initial_metadata_twice,
    "send_initial_metadata_after_messages": _send_initial_metadata_after_messages,
    "compression": _compression,
    "done_callbacks": _done_callbacks,
    "done_callbacks_then_abort": _done_callbacks_then_abort,
    "done_callbacks_then_raise": _done_callbacks_then_raise,
    "read_past_the_end": _read_past_the_end,
}
_ONLY = {  # scenarios that make sense for some call kinds only
    "send_initial_metadata_after_messages": lambda style: style.response_streaming,
    "read_past_the_end": lambda style: style.request_streaming,
}
CASES = [
    pytest.param(scenario, method, id=f"{scenario}-{method}")
    for scenario in SCENARIOS
    for method in IMPLEMENTED
    if _ONLY.get(scenario, lambda style: True)(STYLES[method])
]


@pytest.mark.parametrize(("scenario", "method"), CASES)
def test_scenario(servers, scenario, method):
    differential(servers, method, SCENARIOS[scenario](method))


@pytest.mark.parametrize("method", IMPLEMENTED)
def test_unexpected_exception_is_the_one_known_difference(servers, method):
    script = Script(
        (("initial", MD), ("trailing", TRAILING), *_io(method), ("raise", "boom")),
        on_exit=EXIT_GETTERS,
    )
    results = differential(servers, method, script)
    raw, gz = results["raw"][0], results["gz"][0]
    assert (raw.code, raw.details) == ("UNKNOWN", "Unexpected <class 'ValueError'>: boom")
    assert gz.code == "INTERNAL"
    assert GZ_INTERNAL.fullmatch(gz.details), gz.details
    assert gz.trailing_metadata == raw.trailing_metadata == TRAILING
    assert gz.initial_metadata == raw.initial_metadata == MD


@pytest.mark.parametrize("method", SYNC_STYLES)
def test_missing_sync_context_method_details(servers, method):
    """grpc's _SyncServicerContext has no abort_with_status(): the AttributeError escapes with
    the code set before, and its message (naming the context class) becomes the details."""
    script = Script((("code", Code.NOT_FOUND), ("abort_status", Code.ABORTED, "x", ())))
    results = differential(servers, method, script)
    raw, gz = results["raw"][0], results["gz"][0]
    assert raw.details == (
        "Unexpected <class 'AttributeError'>: 'grpc._cython.cygrpc._SyncServicerContext' object"
        " has no attribute 'abort_with_status'"
    )
    assert (gz.code, gz.details) == (raw.code, raw.details)


def test_sync_handler_returning_a_list_of_responses(servers):
    """A plain def may return its responses as any iterable, a list too: grpc.aio iterates it
    (its own comment asks for a generator, its code takes any iterable)."""
    script = Script((("trailing", TRAILING), ("write", 3)))
    results = differential(servers, "ServerStreamSyncList", script)
    assert results["raw"][0].messages == (("m0", 0), ("m1", 1), ("m2", 2))


def test_sync_stream_handler_returning_none(servers):
    """A plain def of a response stream that returns None: grpc.aio fails iterating it (an
    unexpected TypeError, so gz's INTERNAL with an error id is the answer to expect)."""
    script = Script((("trailing", TRAILING),), return_none=True)
    results = differential(servers, "ServerStreamSyncList", script)
    raw = results["raw"][0]
    assert (raw.code, raw.details) == (
        "UNKNOWN",
        "Unexpected <class 'TypeError'>: 'NoneType' object is not iterable",
    )


def test_async_stream_handler_returning_an_async_generator(servers):
    """An ``async def`` of a response stream is grpc.aio's reader/writer style: what it returns
    is ignored, an async generator too (the client gets no message)."""
    script = Script((("trailing", TRAILING), ("write", 2)))
    results = differential(servers, "ServerStreamAsyncReturning", script)
    assert results["raw"][0].messages == ()


@pytest.mark.parametrize("method", UNIMPLEMENTED)
def test_method_the_servicer_does_not_implement(servers, method):
    """The generated base: set_code(UNIMPLEMENTED), set_details, raise NotImplementedError."""
    results = differential(servers, method, Script())
    assert results["gz"][0].code == results["raw"][0].code


def _cancelled_mid_call(method: str) -> tuple[Script, Call]:
    """The client cancels after the first message (a response stream) or after 0.1 s while
    the handler sleeps."""
    if STYLES[method].response_streaming:
        how = Call(cancel_after_messages=1)
        ops = (("callback",), ("write", 1), ("sleep", 0.3), ("write", 1), ("code", Code.NOT_FOUND))
    else:
        how = Call(cancel_after=0.1)
        ops = (("callback",), ("sleep", 0.3), ("call", "time_remaining"), ("code", Code.NOT_FOUND))
    return Script(ops, on_exit=EXIT_GETTERS), how


# A sync generator whose client cancelled: grpc.aio runs it on to its end in a worker thread that
# then blocks for good on a queue nobody reads; gz closes it (GeneratorExit at its yield). The one
# deliberate difference on the server besides recovery (docs/compatibility.md).
SYNC_GENERATORS = [m for m in IMPLEMENTED if STYLES[m].response_streaming and "Sync" in m]


@pytest.mark.parametrize("method", [m for m in IMPLEMENTED if m not in SYNC_GENERATORS])
def test_client_cancels_mid_call(servers, method):
    """The handler's done callbacks and exit observe the cancellation, as in grpc.aio."""
    script, how = _cancelled_mid_call(method)
    results = differential(servers, method, script, how)
    assert results["raw"][0].code == "CANCELLED"


@pytest.mark.parametrize("method", SYNC_GENERATORS)
def test_a_sync_generator_whose_client_cancelled_is_closed(servers, method):
    script, how = _cancelled_mid_call(method)
    results = servers.run(call_both(servers, method, script, how), timeout=60)
    assert results["raw"][0].code == results["gz"][0].code == "CANCELLED"
    entries, _callbacks, ended = results["gz"][1]
    assert ended
    assert ("end", "closed") in entries


@pytest.mark.parametrize("method", IMPLEMENTED)
def test_deadline_expires_while_the_handler_sleeps(servers, method):
    ops = (
        ("call", "time_remaining"),
        ("callback",),
        *_io(method, reads=1, writes=1),
        ("sleep", 0.4),
        ("call", "time_remaining"),
        ("code", Code.NOT_FOUND),
    )
    how = Call(timeout=0.2)
    results = differential(servers, method, Script(ops, on_exit=EXIT_GETTERS), how)
    assert results["raw"][0].code == "DEADLINE_EXCEEDED"


def test_gz_serves_with_its_default_middleware(servers):
    """What the comparisons are worth: gz's calls went through its whole default chain."""
    from gz.middleware.metrics import collector

    differential(servers, "UnaryAsync", Script())
    assert servers.gz.servicer.server._default_middleware
    stats = collector().stats(Method(f"/{SERVICE}/UnaryAsync", Kind.UNARY_UNARY, "server"))
    assert stats.started > 0  # metrics
    if servers.spans is not None:  # tracing (with the OpenTelemetry SDK installed)
        names = {span.name for span in servers.spans.get_finished_spans()}
        assert f"{SERVICE}/UnaryAsync" in names


def test_the_comparison_itself():
    """assert_same() passes equal outcomes, the known difference, floats within TOLERANCE; and
    fails on anything arriving later than TOLERANCE, or another answer to an exception."""

    def outcome(code="OK", details="", initial_at=0.01, status_at=0.02) -> Outcome:
        timeline = (("initial metadata", initial_at), ("status", status_at))
        return Outcome(code, details, MD, (), (), timeline)

    seen = ((("start", "x"), (0, "call", "returned", ("float", 4.99))), (), True)
    near = ((("start", "x"), (0, "call", "returned", ("float", 4.95))), (), True)
    far = ((("start", "x"), (0, "call", "returned", ("float", 4.8))), (), True)
    assert_same({"raw": (outcome(), seen), "gz": (outcome(status_at=0.1), near)})
    unexpected = outcome("UNKNOWN", "Unexpected <class 'ValueError'>: boom")
    internal = outcome("INTERNAL", "internal error (error id 0123456789abcdef)")
    assert_same({"raw": (unexpected, None), "gz": (internal, None)})
    for raw, gz in [
        ((outcome(), seen), (outcome(initial_at=0.2), seen)),  # metadata held back
        ((outcome(), seen), (outcome(), ((("start", "x"),), (), True))),  # an observation less
        ((outcome(), seen), (outcome(), far)),  # time_remaining() 0.19 s apart
        ((unexpected, None), (unexpected, None)),  # gz must not say UNKNOWN
        ((unexpected, None), (outcome("INTERNAL", "boom"), None)),
    ]:
        with pytest.raises(AssertionError):
            assert_same({"raw": raw, "gz": gz})


def test_the_styles_cover_every_handler_kind():
    """Sanity of the matrix: both context flavours, all four call kinds each."""
    kinds = {(STYLES[m].kind, STYLES[m].sync) for m in IMPLEMENTED}
    assert kinds == {(kind, sync) for kind in {s.kind for s in STYLES.values()}
                     for sync in (False, True)}  # fmt: skip
    assert len(ASYNC_STYLES) == 7 and len(SYNC_STYLES) == 4


# -- hypothesis: context operations in any order ------------------------------------------------

CODES = [
    Code.CANCELLED,
    Code.INVALID_ARGUMENT,
    Code.DEADLINE_EXCEEDED,
    Code.NOT_FOUND,
    Code.ALREADY_EXISTS,
    Code.PERMISSION_DENIED,
    Code.RESOURCE_EXHAUSTED,
    Code.FAILED_PRECONDITION,
    Code.ABORTED,
    Code.OUT_OF_RANGE,
    Code.INTERNAL,
    Code.UNAVAILABLE,
    Code.DATA_LOSS,
    Code.UNAUTHENTICATED,
]  # fmt: skip  (not OK or UNKNOWN: "no code set" must stay unambiguous for the known difference)
_TEXT = st.text(alphabet="abz é!-", max_size=6)
_VALUE = st.text(alphabet=string.ascii_lowercase[:3] + "019-_.", min_size=1, max_size=4)
_METADATA = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["x-a", "x-b"]), _VALUE),
        st.tuples(st.just("x-c-bin"), st.binary(max_size=3)),
    ),
    max_size=3,
).map(tuple)


@st.composite
def scripts(draw: st.DrawFn, method: str) -> Script:
    """Up to six context operations in any order, then maybe one that ends the call."""
    style = STYLES[method]
    step = [
        st.tuples(st.just("initial"), _METADATA),
        st.tuples(st.just("trailing"), _METADATA),
        st.tuples(st.just("code"), st.sampled_from(CODES)),
        st.tuples(st.just("details"), _TEXT),
        st.tuples(st.just("call"), st.sampled_from(GETTERS)),
        st.just(("callback",)),
        st.tuples(st.just("compression"), st.sampled_from(list(grpc.Compression))),
        st.just(("sleep", 0.03)),
    ]
    if style.response_streaming:
        step.append(st.tuples(st.just("write"), st.integers(1, 3)))
    if style.request_streaming:
        step.append(st.tuples(st.just("read"), st.integers(1, 2)))
    ending = st.one_of(
        st.none(),
        st.tuples(st.just("abort"), st.sampled_from(CODES), _TEXT, st.one_of(st.none(), _METADATA)),
        st.tuples(st.just("abort_status"), st.sampled_from(CODES), _TEXT, _METADATA),
        st.tuples(st.just("raise"), _TEXT),
    )
    ops = tuple(draw(st.lists(st.one_of(step), max_size=6)))
    end = draw(ending)
    return Script(ops + ((end,) if end else ()), on_exit=EXIT_GETTERS)


@pytest.mark.parametrize("method", IMPLEMENTED)
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure stays a failure
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: scripts are short, shrinking slow
)
@given(data=st.data())
def test_any_order_of_context_operations(servers, method, data):
    script = data.draw(scripts(method), label="script")
    differential(servers, method, script)
