"""Redis-specific behaviour against real ``redis-server`` processes: server-side expiry, tokens across restarts and
lost data, the poll fallback, errors that name the bad part, the connection budget, and a Sentinel failover.

The election contract itself runs on Redis in tests/test_contract.py; this file pins what only Redis has.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import swarmha
from swarmha.errors import DiscoveryError, DiscoveryUnavailable, InvalidDiscoveryURL
from tests.support.fault.proxy import FaultProxy
from tests.support.helpers import wait_for
from tests.support.net import free_ports
from tests.support.stores import fresh_prefix
from tests.support.stores.redis import RedisServer

KEY = "svc/leader"


def url_of(server: RedisServer, userinfo: str = "", **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"timeout": "2", **params}.items())
    return f"redis://{userinfo}{server.address}/{fresh_prefix('redis')}?{query}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path_factory.mktemp("redis-plain")).start()
    yield s
    s.close()


def raw(server: RedisServer, **kwargs: object) -> redis.Redis:
    return redis.Redis(port=server.port, decode_responses=True, protocol=2, **kwargs)  # type: ignore[arg-type]


def test_url_forms_and_options_are_checked() -> None:
    with pytest.raises(InvalidDiscoveryURL, match="unknown option"):
        swarmha.connect("redis://127.0.0.1/p?bogus=1")
    with pytest.raises(InvalidDiscoveryURL, match="db must be"):
        swarmha.connect("redis://127.0.0.1/p?db=x")
    with pytest.raises(InvalidDiscoveryURL, match="one server"):
        swarmha.connect("redis://h1,h2/p")
    with pytest.raises(InvalidDiscoveryURL, match="use rediss://"):
        swarmha.connect("redis://127.0.0.1/p?ca=/etc/ssl/x.pem")
    with pytest.raises(InvalidDiscoveryURL, match="cert and key go together"):
        swarmha.connect("rediss://127.0.0.1/p?cert=/etc/hostname")
    with pytest.raises(InvalidDiscoveryURL, match="cannot read ca="):
        swarmha.connect("rediss://127.0.0.1/p?ca=/no/such/ca.pem")
    with pytest.raises(InvalidDiscoveryURL, match="events must be"):
        swarmha.connect("redis://127.0.0.1/p?events=maybe")
    with pytest.raises(InvalidDiscoveryURL, match="names no service"):
        swarmha.connect("redis+sentinel://127.0.0.1:26379")
    with pytest.raises(InvalidDiscoveryURL, match="unknown option"):
        swarmha.connect("redis+sentinel://127.0.0.1/svc/p?ca=x")
    d = swarmha.connect("redis+sentinel://u:pw@s1,s2:26380/mysvc/app/jobs?sentinel_password=x")
    try:
        target = d.target  # type: ignore[attr-defined]
        assert (target.service, target.prefix) == ("mysvc", "app/jobs")
        assert target.sentinels == (("s1", 26379), ("s2", 26380))
        assert "pw" not in repr(d.url) and "pw" not in str(d.url)
    finally:
        d.close()


def test_a_session_expires_on_the_server_with_no_client_left(server: RedisServer) -> None:
    """The holder's Discovery goes away without closing its session: the server expires it (PX) and the key is
    absent from then on, for a reader that never saw the holder renew."""
    url = url_of(server)
    holder = swarmha.connect(url)
    session = holder.session(1.0)
    record = holder.create(KEY, "gone", session)
    assert record is not None
    created = time.monotonic()
    holder.close()  # no close of the session: nobody will renew it
    reader = swarmha.connect(url)
    try:
        assert reader.get(KEY) == record
        with reader.watch(KEY, record) as watch:
            assert watch.wait(5.0) is True
        took = time.monotonic() - created
        assert reader.get(KEY) is None
        assert took < 1.0 + 0.5, f"the key outlived its session by {took - 1.0:.2f}s"
    finally:
        reader.close()


def test_keys_it_creates_are_a_hash_a_session_key_and_a_counter(server: RedisServer) -> None:
    url = url_of(server)
    prefix = url.split("/")[3].split("?")[0]
    d = swarmha.connect(url)
    try:
        session = d.session(30.0)
        record = d.create(KEY, "n1", session)
        assert record is not None
        r = raw(server)
        assert r.hgetall(f"{prefix}/{KEY}") == {"value": "n1", "token": str(record.token), "session": session.id}
        assert 0 < r.pttl(f"{prefix}//session/{session.id}") <= 30_000
        assert r.get(f"{prefix}//token/{prefix}/{KEY}") == str(record.token)
        session.close()
        assert r.exists(f"{prefix}/{KEY}", f"{prefix}//session/{session.id}") == 0
        assert r.get(f"{prefix}//token/{prefix}/{KEY}") == str(record.token)  # the counter stays
    finally:
        d.close()


def test_tokens_increase_across_a_restart_and_across_lost_data(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r").start()
    try:
        url = url_of(server)
        tokens = []
        for lose in ("restart", "flush", None):
            d = swarmha.connect(url)
            try:
                record = d.create(KEY, "n", d.session(30.0))
                assert record is not None
                tokens.append(record.token)
                assert d.delete(KEY, record.token)
            finally:
                d.close()
            if lose == "restart":
                server.kill()
                server.start()
            elif lose == "flush":  # the counters are gone too: the server clock keeps tokens ahead
                raw(server).flushall()
        assert tokens == sorted(set(tokens)), tokens
    finally:
        server.close()


def test_watches_poll_where_config_is_refused(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", extra=['rename-command CONFIG ""']).start()
    try:
        url = url_of(server, poll="0.2")
        a, b = swarmha.connect(url), swarmha.connect(url)
        try:
            c1 = swarmha.Candidate(a, KEY, node="one", ttl=30.0).start()
            wait_for(lambda: c1.is_leader, 10.0, "a leader")
            c2 = swarmha.Candidate(b, KEY, node="two", ttl=30.0).start()
            time.sleep(0.3)  # c2 is waiting now, by polling
            start = time.monotonic()
            c1.stop()
            wait_for(lambda: c2.is_leader, 5.0, "the waiting candidate, polling, to take over")
            took = time.monotonic() - start
            assert took < 0.2 + 0.5, f"handover took {took:.2f}s with poll=0.2"
            c2.stop()
        finally:
            a.close()
            b.close()
    finally:
        server.close()


def test_a_server_without_scripting_is_named_as_such(tmp_path: Path) -> None:
    extra = ['rename-command EVAL ""', 'rename-command EVALSHA ""', 'rename-command SCRIPT ""']
    server = RedisServer(tmp_path / "r", extra=extra).start()
    try:
        d = swarmha.connect(url_of(server))
        try:
            with pytest.raises(DiscoveryError, match="no script support") as info:
                d.session(5.0)
            assert not isinstance(info.value, DiscoveryUnavailable)
        finally:
            d.close()
    finally:
        server.close()


def test_a_wrong_password_and_an_unreachable_server_are_told_apart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", extra=["requirepass s3cret"]).start()
    try:
        for userinfo in ("", ":wrong@"):
            d = swarmha.connect(url_of(server, userinfo))
            try:
                with pytest.raises(DiscoveryError, match="refused the URL's credentials") as info:
                    d.session(5.0)
                assert not isinstance(info.value, DiscoveryUnavailable)
                assert "wrong" not in str(info.value)
            finally:
                d.close()
        d = swarmha.connect(url_of(server, ":s3cret@"))
        try:
            assert d.create(KEY, "n", d.session(5.0)) is not None
        finally:
            d.close()
    finally:
        server.close()
    (port,) = free_ports(1)
    d = swarmha.connect(f"redis://127.0.0.1:{port}/p?timeout=1")
    try:
        with pytest.raises(DiscoveryUnavailable, match=f"127.0.0.1:{port}"):
            d.session(5.0)
    finally:
        d.close()


def test_a_read_only_replica_as_the_target_is_refused(server: RedisServer, tmp_path: Path) -> None:
    replica = RedisServer(tmp_path / "replica", extra=[f"replicaof 127.0.0.1 {server.port}"]).start()
    try:
        d = swarmha.connect(url_of(replica))
        try:
            with pytest.raises(DiscoveryError, match="read-only replica") as info:
                d.session(5.0)
            assert "redis+sentinel://" in str(info.value)
        finally:
            d.close()
    finally:
        replica.close()


def test_a_discovery_uses_two_connections_and_one_thread_however_many_keys(server: RedisServer) -> None:
    url = url_of(server)
    d = swarmha.connect(url)
    rival = swarmha.connect(url)
    before = {t.ident for t in threading.enumerate()}
    try:
        lease = swarmha.Lease(d, ttl=30.0)
        held = [swarmha.Candidate(d, f"k/{i}", node="a", lease=lease).start() for i in range(60)]
        wait_for(lambda: all(c.is_leader for c in held), 20.0, "every key led through the lease")
        waiting = [swarmha.Candidate(rival, f"k/{i}", node="b", ttl=30.0).start() for i in range(60)]
        followers = [swarmha.Follower(d, f"k/{i}").start() for i in range(60)]
        wait_for(lambda: all(f.leader is not None for f in followers), 20.0, "every follower to see its leader")
        names = [c for c in raw(server).client_list() if c.get("name") == "swarmha"]
        assert len(names) <= 4, names  # two Discoveries, two connections each
        pubsub = [c for c in names if int(c.get("psub", 0)) > 0]
        assert len(pubsub) == 2, pubsub
        extra = [t.name for t in threading.enumerate() if t.ident not in before and t.name.startswith("swarmha-redis")]
        assert len(extra) <= 2, extra  # one hub thread per Discovery
        # a handover still works at this size: the lease's keys go, the rival's candidates take them
        for c in held:
            c.stop()
        wait_for(lambda: all(c.is_leader for c in waiting), 20.0, "every key led by the rival")
        for c in [*waiting, *followers]:
            c.stop()
        lease.close()
    finally:
        d.close()
        rival.close()


@pytest.mark.slow
def test_a_sentinel_failover_moves_leadership_to_the_new_primary_with_a_higher_token(tmp_path: Path) -> None:
    primary = RedisServer(tmp_path / "primary").start()
    replica = RedisServer(tmp_path / "replica", extra=[f"replicaof 127.0.0.1 {primary.port}"]).start()
    sentinel = RedisServer(
        tmp_path / "sentinel",
        extra=[
            f"sentinel monitor svc 127.0.0.1 {primary.port} 1",
            "sentinel down-after-milliseconds svc 500",
            "sentinel failover-timeout svc 2000",
        ],
        sentinel=True,
    ).start()
    try:
        replicas = lambda: raw(sentinel).execute_command("SENTINEL", "REPLICAS", "svc")  # noqa: E731
        wait_for(replicas, 15.0, "the sentinel to see the replica")
        d = swarmha.connect(f"redis+sentinel://{sentinel.address}/svc/{fresh_prefix('sentinel')}?timeout=1")
        try:
            c = swarmha.Candidate(d, KEY, node="n", ttl=3.0).start()
            wait_for(lambda: c.is_leader, 10.0, "a leader on the primary")
            first = c.term
            assert first is not None
            primary.kill()
            wait_for(lambda: c.term is not None and c.term != first, 30.0, "a new term on the promoted replica")
            assert c.term is not None and c.term.token > first.token
            c.stop()
        finally:
            d.close()
    finally:
        for s in (sentinel, replica, primary):
            s.close()


def test_without_redis_py_the_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import swarmha\n"
        "try:\n"
        "    swarmha.connect('redis+sentinel://h/svc/p')\n"
        "except swarmha.errors.BackendNotInstalled as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "pip install 'swarmha[redis]'" in out, out


def test_rediss_talks_tls_and_verifies_the_server(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [*request, "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    (port,) = free_ports(1)
    extra = ["port 0", f"tls-port {port}", f"tls-cert-file {cert}", f"tls-key-file {key}", "tls-auth-clients no"]
    server = RedisServer(tmp_path / "r", port=port, extra=extra, tls=True).start()
    try:
        d = swarmha.connect(f"rediss://127.0.0.1:{port}/{fresh_prefix('tls')}?ca={cert}&timeout=2")
        try:
            c = swarmha.Candidate(d, KEY, node="n", ttl=5.0).start()
            wait_for(lambda: c.is_leader, 10.0, "a leader over TLS")
            c.stop()
        finally:
            d.close()
        unverified = swarmha.connect(f"rediss://127.0.0.1:{port}/p?timeout=2")  # the system roots: not this cert
        try:
            with pytest.raises(DiscoveryUnavailable, match="certificate"):
                unverified.session(5.0)
        finally:
            unverified.close()
    finally:
        server.close()


def test_a_silent_pubsub_connection_is_noticed_and_wakes_the_watches(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link that goes silent without a reset (a partition, a NAT that forgot the flow): the hub's PING after a
    quiet spell gets no answer within the timeout, so it reconnects and wakes every watch to read again."""
    from swarmha.discovery.redis import _watch

    monkeypatch.setattr(_watch, "PING_IDLE", 0.3)
    proxy = FaultProxy(("127.0.0.1", server.port))
    d = swarmha.connect(f"redis://{proxy.address}/{fresh_prefix('silent')}?timeout=1")
    try:
        record = d.create(KEY, "n", d.session(30.0))
        with d.watch(KEY, record) as watch:
            assert watch.wait(0.5) is False  # quiet, answered PINGs: nothing happens
            proxy.set_mode("blackhole")
            start = time.monotonic()
            assert watch.wait(10.0) is True
            assert time.monotonic() - start < 0.3 + 1.0 + 1.5
            proxy.set_mode("pass")
    finally:
        proxy.set_mode("pass")
        d.close()
        proxy.close()
