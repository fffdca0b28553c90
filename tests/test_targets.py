"""Targets: generated valid ones round-trip through the direct and dns builders, generated
malformed ones raise a TargetError quoting the text and showing the right form; bare names."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gz.discovery import (
    FORMS,
    Endpoint,
    ManualResolver,
    Resolver,
    TargetError,
    build_resolver,
    expand_bare_name,
)
from gz.discovery.dns import DnsResolver
from gz.discovery.etcd import EtcdResolver
from gz.settings import ClientSettings

from .support import Recorder

# Parsing is pure and fast; a few dozen examples per property keep the suite quick.
examples = settings(max_examples=40, deadline=None)


@pytest.fixture(autouse=True, scope="module")
def no_gz_environment() -> Iterator[None]:
    """Bare-name expansion reads GZ_TARGET_* and GZ_DISCOVERY: start from neither."""
    with pytest.MonkeyPatch.context() as patch:
        for name in os.environ:
            if name.startswith("GZ_"):
                patch.delenv(name)
        yield


# -- generated pieces -------------------------------------------------------------------------
label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?\Z")
hostname = st.lists(label, min_size=1, max_size=3).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
port = st.integers(min_value=1, max_value=65535)


@st.composite
def endpoints(draw: st.DrawFn) -> tuple[Endpoint, str]:
    """An endpoint and how a target writes it (IPv6 in brackets)."""
    host = draw(st.one_of(hostname, ipv4, ipv6))
    number = draw(port)
    text = f"[{host}]:{number}" if ":" in host else f"{host}:{number}"
    return Endpoint(host, number), text


@st.composite
def durations(draw: st.DrawFn) -> tuple[str, float]:
    """A refresh as a target writes it, and its value in seconds (at least the 0.1 s floor)."""
    unit = draw(st.sampled_from(["", "ms", "s", "m"]))
    if unit == "ms":
        number = draw(st.integers(min_value=100, max_value=60_000))
        return f"{number}ms", number / 1000
    if unit == "m":
        number = draw(st.integers(min_value=1, max_value=60))
        return f"{number}m", number * 60.0
    tenths = draw(st.integers(min_value=1, max_value=3000))
    return f"{tenths / 10:g}{unit}", tenths / 10


def resolved(resolver: Resolver) -> frozenset[Endpoint]:
    """The first endpoint set the resolver pushes; an error before it fails the test."""

    async def first_update() -> frozenset[Endpoint]:
        recorder = Recorder()
        watching = asyncio.ensure_future(resolver.watch(recorder))
        try:
            await recorder.wait_for(lambda: bool(recorder.updates or recorder.errors), 10)
        finally:
            watching.cancel()
        assert recorder.updates, recorder.errors[0]
        return recorder.updates[0]

    return asyncio.run(first_update())


def assert_explains(text: str, error: TargetError) -> None:
    """The message quotes the target and shows at least one right form, on one line."""
    message = str(error)
    assert isinstance(error, ValueError)
    assert repr(text) in message
    assert any(form in message for form in FORMS.values()), message


# -- valid targets round-trip -----------------------------------------------------------------
@examples
@given(st.lists(endpoints(), min_size=1, max_size=5), st.sampled_from(["direct", "DIRECT"]))
def test_direct_lists_round_trip(items: list[tuple[Endpoint, str]], scheme: str):
    text = f"{scheme}:///" + ",".join(written for _, written in items)
    resolver = build_resolver(text)
    assert isinstance(resolver, ManualResolver)
    assert resolver.target == text
    assert resolved(resolver) == {endpoint for endpoint, _ in items}
    for endpoint, written in items:
        assert endpoint.address == written


@examples
@given(endpoints(), st.one_of(st.none(), durations()))
def test_dns_targets_round_trip(item: tuple[Endpoint, str], refresh: tuple[str, float] | None):
    endpoint, written = item
    text = f"dns:///{written}" + (f"?refresh={refresh[0]}" if refresh else "")
    resolver = build_resolver(text)
    assert isinstance(resolver, DnsResolver)
    assert (resolver.host, resolver.port, resolver.target) == (endpoint.host, endpoint.port, text)
    assert resolver.refresh == pytest.approx(refresh[1] if refresh else 10.0)


# -- malformed targets ------------------------------------------------------------------------
endpoint_texts = endpoints().map(lambda item: item[1])
direct_targets = st.lists(endpoint_texts, min_size=1, max_size=3).map(
    lambda texts: "direct:///" + ",".join(texts)
)
valid_targets = st.one_of(direct_targets, endpoint_texts.map(lambda text: f"dns:///{text}"))


@st.composite
def without_scheme(draw: st.DrawFn) -> str:
    texts = draw(st.lists(endpoint_texts, min_size=1, max_size=3))
    prefix = draw(st.sampled_from(["", "//", "///", "direct:", "direct:/", "dns//"]))
    return prefix + ",".join(texts)


@st.composite
def unknown_scheme(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "grpc", "unix", "ipv4", "consul", "xds", "dnss"]))
    return f"{scheme}:///{draw(endpoint_texts)}"


@st.composite
def empty_endpoint(draw: st.DrawFn) -> str:
    texts = draw(st.lists(endpoint_texts, max_size=3))
    texts.insert(draw(st.integers(min_value=0, max_value=len(texts))), "")
    scheme = draw(st.sampled_from(["direct", "dns"]))
    return f"{scheme}:///" + ",".join(texts)


@st.composite
def bad_port(draw: st.DrawFn) -> str:
    host = draw(st.one_of(hostname, ipv4, ipv6.map(lambda h: f"[{h}]")))
    number = draw(
        st.one_of(
            st.sampled_from(["", "http", "0x50", "-1", "+80", "8o8o", "80a", "1e3", "80.0"]),
            st.integers(min_value=65536, max_value=10**9).map(str),
        )
    )
    return f"{draw(st.sampled_from(['direct', 'dns']))}:///{host}:{number}"


@st.composite
def stray_whitespace(draw: st.DrawFn) -> str:
    """A space, tab or newline anywhere after the scheme but before the last character."""
    text = draw(valid_targets)
    start = text.index("://") + 3
    where = draw(st.integers(min_value=start, max_value=len(text) - 1))
    return text[:where] + draw(st.sampled_from([" ", "  ", "\t", "\n"])) + text[where:]


@st.composite
def stray_comma(draw: st.DrawFn) -> str:
    text = draw(st.lists(endpoint_texts, min_size=1, max_size=3).map(",".join))
    commas = draw(st.sampled_from([",", ",,"]))
    return draw(st.sampled_from([f"direct:///{commas}{text}", f"direct:///{text}{commas}",
                                 f"dns:///{text},"]))  # fmt: skip


@st.composite
def unknown_parameter(draw: st.DrawFn) -> str:
    name = draw(st.from_regex(r"\A[a-z]{1,8}\Z").filter(lambda n: n != "refresh"))
    value = draw(st.from_regex(r"\A[a-z0-9]{1,5}\Z"))
    return f"{draw(valid_targets)}?{name}={value}"


unbracketed_ipv6 = st.tuples(st.ip_addresses(v=6).map(str), port).map(
    lambda item: f"direct:///{item[0]}:{item[1]}"
)
other_dns_mistakes = st.one_of(
    hostname.map(lambda name: f"dns:///{name}"),  # no port
    endpoint_texts.map(lambda text: f"dns://8.8.8.8/{text}"),  # gz uses the system resolver
    endpoint_texts.map(lambda text: f"dns:///{text}?refresh=soon"),
    endpoint_texts.map(lambda text: f"dns:///{text}?refresh=50ms"),  # below the floor
    endpoint_texts.map(lambda text: f"dns:///{text}?refresh="),
    endpoint_texts.map(lambda text: f"dns:///{text}?refresh=1s&refresh=2s"),
    endpoint_texts.map(lambda text: f"direct://authority/{text}"),
    st.sampled_from(["direct:///", "dns:///", "direct://", "dns:", ""]),
)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        without_scheme(), unknown_scheme(), empty_endpoint(), bad_port(), stray_whitespace(),
        stray_comma(), unknown_parameter(), unbracketed_ipv6, other_dns_mistakes,
    )
)  # fmt: skip
def test_malformed_targets_are_explained(text: str):
    with pytest.raises(TargetError) as raised:
        build_resolver(text)
    assert_explains(text, raised.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("10.0.0.7:8080,10.0.0.8:8080", "no scheme"),
        ("http://10.0.0.7:8080", "unknown scheme 'http'"),
        ("direct:///", "nothing after the authority"),
        ("direct:///10.0.0.7:8080,", "'' is not host:port"),
        ("direct:///10.0.0.7:99999", "'10.0.0.7:99999' is not host:port"),
        ("direct:///10.0.0.7:\u0668\u0660", "is not host:port"),  # 80 in Arabic-Indic digits
        ("direct:///10.0.0.7:8080, 10.0.0.8:8080", "whitespace"),
        ("dns:///greeter:8080?retries=3", "unknown parameter 'retries'"),
        ("direct:///::1:8080", "put an IPv6 address in brackets"),
    ],
)
def test_the_message_says_what_is_wrong(text: str, problem: str):
    with pytest.raises(TargetError) as raised:
        build_resolver(text)
    assert problem in str(raised.value)
    assert_explains(text, raised.value)


def test_outer_whitespace_is_forgiven():
    """A trailing newline in an environment variable is not worth an error."""
    resolver = build_resolver(" direct:///127.0.0.1:8080\n")
    assert resolved(resolver) == {Endpoint("127.0.0.1", 8080)}


# -- bare names -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "discovery", "expected"),
    [
        ("greeter", "etcd", "etcd:///greeter"),
        ("greeter", "dns", "dns:///greeter:8080"),
        ("greeter:9000", "dns", "dns:///greeter:9000"),
        ("greeter", "k8s", "k8s:///greeter:grpc"),
        ("greeter:http2", "k8s", "k8s:///greeter:http2"),
    ],
)
def test_gz_discovery_builds_a_target_from_a_bare_name(name, discovery, expected):
    assert expand_bare_name(name, {"GZ_DISCOVERY": discovery}) == expected


def test_gz_target_of_the_name_wins_over_gz_discovery():
    env = {"GZ_TARGET_GREETER_API": "direct:///10.0.0.7:8080", "GZ_DISCOVERY": "etcd"}
    assert expand_bare_name("greeter-api", env) == "direct:///10.0.0.7:8080"
    assert expand_bare_name("greeter.api", env) == "direct:///10.0.0.7:8080"
    assert expand_bare_name("other", env) == "etcd:///other"


def test_a_full_target_is_never_expanded():
    env = {"GZ_DISCOVERY": "etcd"}
    assert expand_bare_name("dns:///greeter:8080", env) == "dns:///greeter:8080"


async def test_bare_names_through_build_resolver(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GZ_TARGET_GREETER", "direct:///127.0.0.1:8080,127.0.0.1:8081")
    monkeypatch.setenv("GZ_DISCOVERY", "dns")
    listed = build_resolver("greeter")
    assert isinstance(listed, ManualResolver)
    assert listed.target == "direct:///127.0.0.1:8080,127.0.0.1:8081"
    looked_up = build_resolver("billing:9000")
    assert isinstance(looked_up, DnsResolver)
    assert (looked_up.host, looked_up.port, looked_up.target) == (
        "billing", 9000, "dns:///billing:9000",
    )  # fmt: skip


@pytest.mark.parametrize("target", [None, 5, b"direct:///127.0.0.1:8080"])
def test_a_target_that_is_not_a_string_is_a_target_error(target):
    with pytest.raises(TargetError, match="a target is a str, not"):
        build_resolver(target)


def test_settings_given_to_build_resolver_win_over_the_environment(monkeypatch):
    """connect(settings=...) hands its settings on: GZ_DISCOVERY and GZ_ETCD_* come from them."""
    monkeypatch.setenv("GZ_DISCOVERY", "dns")
    monkeypatch.setenv("GZ_ETCD_ENDPOINTS", "10.9.9.9:2379")
    settings = ClientSettings(discovery="etcd", etcd_endpoints=["127.0.0.1:23790"])
    resolver = build_resolver("greeter", settings)
    assert isinstance(resolver, EtcdResolver)
    assert resolver.target == "etcd:///greeter"
    assert resolver.config.endpoints == ("127.0.0.1:23790",)
    # the endpoints of an etcd://h:p/KEY target still win over both
    written = build_resolver("etcd://127.0.0.1:1/greeter", settings)
    assert written.config.endpoints == ("127.0.0.1:1",)


@pytest.mark.parametrize("discovery", [None, "", "consul"])
def test_a_bare_name_without_a_way_to_find_it_names_the_variables(discovery):
    env = {} if discovery is None else {"GZ_DISCOVERY": discovery}
    with pytest.raises(TargetError) as raised:
        expand_bare_name("greeter-api", env)
    message = str(raised.value)
    assert "GZ_TARGET_GREETER_API" in message
    assert "GZ_DISCOVERY" in message
    if discovery:
        assert repr(discovery) in message
    assert_explains("greeter-api", raised.value)


def test_a_malformed_gz_target_is_quoted():
    env = {"GZ_TARGET_GREETER": "direct:///greeter"}
    with pytest.raises(TargetError) as raised:
        build_resolver(expand_bare_name("greeter", env))
    assert_explains("direct:///greeter", raised.value)
