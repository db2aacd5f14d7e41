"""Discovery URL parsing (property-based) and bad input: clear ValueError subclasses naming the bad part."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import swarmha
from swarmha.discovery import parse_url, register, schemes
from swarmha.discovery.memory import MemoryDiscovery
from swarmha.errors import ConfigurationError, InvalidDiscoveryURL, UnknownBackend

hostnames = st.from_regex(r"[a-z][a-z0-9-]{0,15}(\.[a-z][a-z0-9-]{0,15}){0,2}", fullmatch=True)
ports = st.one_of(st.none(), st.integers(1, 65535))
segments = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=12)


@given(
    scheme=st.sampled_from(["etcd", "zk", "consul"]),
    hosts=st.lists(st.tuples(hostnames, ports), min_size=1, max_size=4),
    path=st.lists(segments, max_size=3),
)
def test_swarm_style_urls_round_trip(scheme: str, hosts: list[tuple[str, int | None]], path: list[str]) -> None:
    netloc = ",".join(h if p is None else f"{h}:{p}" for h, p in hosts)
    url = f"{scheme}://{netloc}/{'/'.join(path)}"
    parsed = parse_url(url)
    assert parsed.scheme == scheme
    assert parsed.hosts == tuple(hosts)
    assert parsed.path == "/".join(path)
    assert parsed.endpoints(2379) == [(h, 2379 if p is None else p) for h, p in hosts]


@given(port=st.one_of(st.integers(max_value=0), st.integers(min_value=65536)))
def test_out_of_range_ports_are_named(port: int) -> None:
    with pytest.raises(InvalidDiscoveryURL, match="invalid port"):
        parse_url(f"etcd://h1:{port}/p")


@given(st.text(max_size=40))
def test_parse_url_never_raises_anything_but_invalid_url(text: str) -> None:
    try:
        parse_url(text)
    except InvalidDiscoveryURL as e:
        assert "discovery URL" in str(e)


def test_ipv6_user_password_and_params() -> None:
    parsed = parse_url("etcd://user:s3cret@[::1]:2379,h2/nodes?timeout=2")
    assert parsed.hosts == (("[::1]", 2379), ("h2", None))
    assert parsed.endpoints(2379) == [("::1", 2379), ("h2", 2379)]
    assert (parsed.username, parsed.password, parsed.params) == ("user", "s3cret", {"timeout": "2"})
    assert "s3cret" not in str(parsed) and "s3cret" not in repr(parsed)


@pytest.mark.parametrize(
    ("url", "part"),
    [
        ("etcd//h1:2379/p", "no scheme"),
        ("1etcd://h1/p", "invalid scheme"),
        ("etcd://h1,,h2/p", "empty host"),
        ("etcd://h1:abc/p", "invalid port 'abc'"),
        ("etcd://h1:/p", "invalid port ''"),
        ("etcd://bad host/p", "invalid host 'bad host'"),
        ("nosuch://h1/p", "unknown scheme 'nosuch'"),
        ("sqlite://", "names no file"),
        ("sqlite:///no/such/dir/x.db", "does not exist"),
        ("sqlite:///tmp/x.db?poll=-1", "poll must be a duration > 0 .*, not '-1'"),
        ("sqlite:///tmp/x.db?timeout=soon", "timeout must be a duration > 0 .*, not 'soon'"),
        ("etcd://h1/p?timeout=0s", "timeout must be a duration > 0 .*, not '0s'"),
        ("zk://h1/p?timeout=5x", "timeout must be a duration > 0 .*, not '5x'"),
        ("consul://h1/p?session_ttl_min=inf", "session_ttl_min must be a duration > 0 .*, not 'inf'"),
        ("sqlite:///tmp/x.db?prefx=a", "unknown option.*prefx.*known: poll, prefix, timeout"),
        ("memory://a,b/p", "must name one store"),
    ],
)
def test_bad_urls_raise_value_errors_naming_the_bad_part(url: str, part: str) -> None:
    with pytest.raises(ValueError, match=part.replace("(", r"\(")) as info:
        swarmha.connect(url)
    assert isinstance(info.value, InvalidDiscoveryURL)


@pytest.mark.parametrize(
    ("text", "seconds"), [("2.5", 2.5), ("500ms", 0.5), ("10s", 10.0), ("1m30s", 90.0), (" 1h ", 3600.0)]
)
def test_every_url_takes_the_flags_durations(text: str, seconds: float, tmp_path: Path) -> None:
    # one syntax for a duration everywhere: the manager's flags, and every backend's URL options
    assert parse_url(f"etcd://h1/p?timeout={text}").seconds("timeout", 1.0) == seconds
    assert parse_url("etcd://h1/p").seconds("timeout", 1.0) == 1.0
    with swarmha.connect(f"sqlite://{tmp_path}/d.db?timeout={text}") as d:
        assert d._timeout == seconds  # type: ignore[attr-defined]


def test_unknown_scheme_lists_known_ones() -> None:
    with pytest.raises(UnknownBackend, match=r"known: .*sqlite"):
        swarmha.connect("nosuch://h/p")


def test_third_party_backends_register_a_scheme() -> None:
    register("altmem", MemoryDiscovery)
    assert "altmem" in schemes()
    d = swarmha.connect("altmem://store-x/prefix")
    assert isinstance(d, MemoryDiscovery)


@pytest.mark.parametrize(
    ("kwargs", "part"),
    [
        ({"ttl": 0}, "ttl must be a positive number"),
        ({"ttl": -1.0}, "ttl must be a positive number"),
        ({"ttl": float("nan")}, "ttl must be a positive number"),
        ({"ttl": "ten"}, "ttl must be a number"),
        ({"ttl": 9.0, "renew_deadline": 9.0}, "must be shorter than ttl"),
        ({"ttl": 9.0, "renew_deadline": 2.0}, "must be longer than the renew period"),
        ({"node": ""}, "node must be a non-empty string"),
        ({"key": "/abs"}, "invalid key '/abs'"),
        ({"key": "a//b"}, "invalid key"),
    ],
)
def test_bad_candidate_arguments_raise_configuration_errors(kwargs: dict[str, object], part: str) -> None:
    args: dict[str, object] = {"key": "svc/leader", "node": "n1", "ttl": 10.0} | kwargs
    d = swarmha.connect("memory://bad-input")
    with pytest.raises(ConfigurationError, match=part):
        swarmha.Candidate(d, **args)  # type: ignore[arg-type]


def test_stop_is_idempotent_and_works_before_start() -> None:
    d = swarmha.connect("memory://idempotent")
    c = swarmha.Candidate(d, "k", node="n", ttl=5.0)
    c.stop()
    c.stop()
    assert list(c.run_for_election()) == []
    assert not c.is_leader and c.term is None
