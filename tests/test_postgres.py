"""What the postgresql:// backend promises beyond the contract suite: expiry by the server's clock with no client
alive, tokens that survive a server restart, tables created once by racing processes, errors that name the bad
part, no writes through a read-only standby, and two connections per Discovery however many keys."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import swarmha
from swarmha.discovery.postgres import SQL_FILE
from swarmha.discovery.postgres._sql import schema_sql
from swarmha.errors import DiscoveryError, DiscoveryUnavailable, InvalidDiscoveryURL
from tests.support.helpers import wait_for
from tests.support.net import free_port
from tests.support.stores import StoreFixture
from tests.support.stores.postgres import BIN, DATABASE, PostgresServer, _as_postgres

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server(stores: dict[str, StoreFixture]) -> Iterator[PostgresServer]:
    fixture = stores["postgres"]
    server: PostgresServer = fixture.server  # type: ignore[attr-defined]
    yield server
    server.start()


def _url(server: PostgresServer, **params: str) -> str:
    return server.url(prefix=f"p-{uuid.uuid4().hex[:8]}", timeout="2", **params)


def test_the_shipped_sql_file_is_the_schema_the_backend_creates() -> None:
    assert SQL_FILE.read_text() == schema_sql("public")


def test_a_session_nobody_renews_expires_by_the_servers_clock_with_no_client_alive(server: PostgresServer) -> None:
    url = _url(server)
    code = (
        "import swarmha, os\n"
        f"d = swarmha.connect({url!r})\n"
        "r = d.create('svc/leader', 'gone', d.session(1.0))\n"
        "print(r.token, flush=True)\n"
        "os._exit(0)\n"  # no close, no release: the session is left to the server's clock
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    token = int(out.stdout.split()[0])
    d = swarmha.connect(url)
    try:
        took = wait_for(lambda: d.get("svc/leader") is None, 5.0, "the dead client's key to expire")
        assert took < 2.0
        record = d.create("svc/leader", "next", d.session(5.0))
        assert record is not None and record.token > token
    finally:
        d.close()


def test_tokens_keep_increasing_across_a_server_restart(server: PostgresServer) -> None:
    url = _url(server)
    d = swarmha.connect(url)
    try:
        first = d.create("svc/leader", "a", d.session(30.0))
        assert first is not None
        server.stop()
        with pytest.raises(DiscoveryUnavailable):
            d.get("svc/leader")
        server.start()
        session = wait_for_value(lambda: d.session(30.0))
        assert d.delete("svc/leader", first.token)
        second = d.create("svc/leader", "b", session)
        assert second is not None and second.token > first.token
    finally:
        d.close()


def wait_for_value(fn, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except DiscoveryUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.slow
def test_processes_racing_to_create_the_tables_all_succeed(server: PostgresServer) -> None:
    url = _url(server, schema=f"race_{uuid.uuid4().hex[:8]}")
    code = (
        "import swarmha, sys\n"
        "d = swarmha.connect(sys.argv[1])\n"
        "s = d.session(5.0)\n"
        "d.put('reg/' + sys.argv[2], 'up', s)\n"
        "print(len(d.list('reg')))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(5)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, [e.decode()[-500:] for _, e in results]


def test_a_wrong_password_names_the_user(server: PostgresServer) -> None:
    d = swarmha.connect(server.url(password="wrong", prefix="p", timeout="2"))
    try:
        with pytest.raises(DiscoveryError, match="refused the password of user 'swarmha'") as info:
            d.get("k")
        assert "wrong" not in str(info.value)
    finally:
        d.close()


def test_a_missing_database_is_named(server: PostgresServer) -> None:
    d = swarmha.connect(server.url(database="nosuchdb", prefix="p", timeout="2"))
    try:
        with pytest.raises(DiscoveryError, match="database 'nosuchdb' does not exist"):
            d.get("k")
    finally:
        d.close()


def test_an_option_libpq_does_not_know_is_refused_by_name(server: PostgresServer) -> None:
    with pytest.raises(InvalidDiscoveryURL, match="sslmoed"):
        swarmha.connect(server.url(sslmoed="require"))


def test_a_role_that_may_not_create_the_tables_is_told_the_sql_file_and_works_once_it_ran(
    server: PostgresServer,
) -> None:
    role, schema = f"app_{uuid.uuid4().hex[:8]}", f"s_{uuid.uuid4().hex[:8]}"
    server.psql(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    d = swarmha.connect(server.url(user=role, password="pw", schema=schema, prefix="p", timeout="2"))
    try:
        with pytest.raises(DiscoveryError, match=r"swarmha-postgres\.sql") as info:
            d.get("k")
        assert "may not create" in str(info.value)
        # the DBA runs the file (for another schema: with the name replaced, as its header says) and grants
        server.psql(f"CREATE SCHEMA {schema}", database=DATABASE)
        server.psql(schema_sql(schema), database=DATABASE)
        server.psql(
            f"GRANT USAGE ON SCHEMA {schema} TO {role}; "
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}; "
            f"GRANT USAGE ON SEQUENCE {schema}.swarmha_token TO {role}; "
            f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {role}",
            database=DATABASE,
        )
        record = d.create("svc/leader", "a", d.session(5.0))
        assert record is not None and d.get("svc/leader") == record
    finally:
        d.close()


@pytest.fixture(scope="module")
def standby(stores: dict[str, StoreFixture]) -> Iterator[PostgresServer]:
    """A streaming-replication standby of the session's postgres server (read-only, hot standby)."""
    primary: PostgresServer = stores["postgres"].server  # type: ignore[attr-defined]
    replica = PostgresServer.__new__(PostgresServer)
    replica.dir = primary.dir.parent / f"swarmha-pg-standby-{uuid.uuid4().hex[:6]}"
    replica.dir.mkdir(mode=0o700)
    import shutil

    shutil.chown(replica.dir, "postgres", "postgres")
    replica.data = replica.dir / "data"
    replica.port = free_port()
    replica.settings = dict(primary.settings)
    _as_postgres(
        str(BIN / "pg_basebackup"), "-D", str(replica.data), "-R", "-h", str(primary.dir), "-p", str(primary.port),
        "-U", "postgres",
    )  # fmt: skip
    replica.start()
    yield replica
    replica.close()


@pytest.mark.slow
def test_a_read_only_standby_as_the_only_host_is_refused_and_skipped_beside_the_primary(
    server: PostgresServer, standby: PostgresServer
) -> None:
    d = swarmha.connect(standby.url(prefix="p", timeout="2"))
    try:
        with pytest.raises(DiscoveryUnavailable, match="read-only standby"):
            d.session(5.0)
    finally:
        d.close()
    both = f"postgresql://swarmha:swarmha-pw@{standby.address},{server.address}/{DATABASE}?prefix=p&timeout=2"
    d = swarmha.connect(both)
    try:
        assert d.create("svc/leader", "a", d.session(5.0)) is not None  # written on the primary
    finally:
        d.close()


def test_a_discovery_uses_two_connections_however_many_keys(server: PostgresServer) -> None:
    name = f"conns{uuid.uuid4().hex[:8]}"
    d = swarmha.connect(_url(server, application_name=name))
    count = f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{name}'"
    try:
        lease = swarmha.Lease(d, ttl=10.0)
        candidates = [swarmha.Candidate(d, f"k/{i}", node="n", ttl=10.0, lease=lease).start() for i in range(100)]
        followers = [swarmha.Follower(d, f"k/{i}").start() for i in range(100)]
        wait_for(lambda: all(c.is_leader for c in candidates), 20.0, "every key led")
        assert int(server.psql(count).strip()) <= 2
        for c in candidates:
            c.stop()
        for f in followers:
            f.stop()
        lease.close()
    finally:
        d.close()
    wait_for(lambda: int(server.psql(count).strip()) == 0, 5.0, "the connections to close")


def test_behind_pgbouncer_watches_poll_instead_of_listening(stores: dict[str, StoreFixture]) -> None:
    d = swarmha.connect(stores["pgbouncer"].url())
    try:
        session = d.session(30.0)
        record = d.create("svc/leader", "a", session)
        assert record is not None
        with d.watch("svc/leader", record) as watch:
            d.release("svc/leader", record.token, session)
            assert watch.wait(5.0)
        assert d._feed.listening is False  # type: ignore[attr-defined]
    finally:
        d.close()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_the_manager_elects_its_primary_in_postgres_with_swarms_key_layout(
    server: PostgresServer, tmp_path: Path
) -> None:
    from tests.support.manager import ManagerProc

    url = _url(server)
    first = ManagerProc(url, tmp_path, "--replication-ttl", "2s", "--primary-wait", "1s")
    second = None
    try:
        wait_for(lambda: first.role() == "Primary", 15, "the first manager to become primary")
        second = ManagerProc(url, tmp_path, "--replication-ttl", "2s", "--primary-wait", "1s")
        wait_for(lambda: second.status().get("Primary") == first.addr, 15, "the replica to see the primary")
        d = swarmha.connect(url)
        try:
            leader = d.get("docker/swarm/leader")
            assert leader is not None and leader.value == first.addr
        finally:
            d.close()
        first.signal(signal.SIGTERM)
        wait_for(lambda: second.role() == "Primary", 5, "the replica to take over", poll=0.005)
        assert first.proc.wait(10) == 0
    finally:
        for m in (first, second):
            if m is not None:
                m.stop()


def test_an_older_schema_is_brought_up_to_date_on_first_use(server: PostgresServer) -> None:
    schema = f"old_{uuid.uuid4().hex[:8]}"
    server.psql(
        f"CREATE SCHEMA {schema} AUTHORIZATION swarmha; "
        f"CREATE FUNCTION {schema}.swarmha_schema_version() RETURNS integer LANGUAGE sql AS 'SELECT 1'; "
        f"ALTER FUNCTION {schema}.swarmha_schema_version() OWNER TO swarmha",
        database=DATABASE,
    )
    d = swarmha.connect(_url(server, schema=schema))
    try:
        assert d.create("svc/leader", "a", d.session(5.0)) is not None
    finally:
        d.close()
