"""Running the manager as an operator does: Swarm's flags, store-less engine lists, failures said once and visible.

Managers and join agents are real processes; the store is a real etcd (its own, so it can be killed), engines
that do not exist are free loopback ports, and an engine that "comes up" is a small HTTP server.
"""

from __future__ import annotations

import asyncio
import http.server
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmha.manager.cluster import Cluster
from tests.support.dockerd import docker_cli
from tests.support.helpers import wait_for
from tests.support.manager import ManagerProc, run_cli, swarmha_cmd
from tests.support.net import free_port
from tests.support.servers import etcd_cluster

pytestmark = pytest.mark.timeout(120)

# -- Swarm's flags: each accepted with Swarm's meaning or refused with the reason ---------------------------------

SWARM_MANAGE_FLAGS = [
    "--heartbeat", "30s",
    "--engine-refresh-min-interval", "1s",
    "--engine-refresh-max-interval", "2s",
    "--engine-failure-retry", "3",
    "--engine-refresh-retry", "3",
    "--cluster-driver", "swarm",
    "--refresh-on-node-filter",
    "--container-name-refresh-filter", "x",
    "--strategy", "binpack",
    "--replication-ttl", "20s",
    "-l", "warn",
]  # fmt: skip


def _serves(args: list[str], tmp_path: Path) -> str:
    """Start ``swarmha <args> manage -H 127.0.0.1:PORT nodes://...``; returns its log once /_ping answers."""
    port = free_port()
    log = tmp_path / f"m-{port}.log"
    cmd = [*args[: args.index("manage") + 1], "-H", f"127.0.0.1:{port}", *args[args.index("manage") + 1 :]]
    with open(log, "wb") as out:
        proc = subprocess.Popen(swarmha_cmd(*cmd, f"nodes://127.0.0.1:{free_port()}"), stdout=out, stderr=out)
    m = ManagerProc.__new__(ManagerProc)
    m.addr, m.proc, m.log = f"127.0.0.1:{port}", proc, log
    try:
        wait_for(lambda: m.get("/_ping")[0] == 200 or proc.poll() is not None, 20, "the manager to serve")
        assert proc.poll() is None, log.read_text()
    finally:
        m.stop()
    return log.read_text()


def test_every_swarm_manage_flag_is_accepted_together(tmp_path: Path) -> None:
    out = _serves(["--debug", "manage", *SWARM_MANAGE_FLAGS], tmp_path)
    assert "Listening for HTTP" not in out  # -l warn: the level given wins over --debug, as in Swarm


def test_global_flags_go_before_or_after_the_command(tmp_path: Path) -> None:
    assert "Listening for HTTP" in _serves(["-l", "info", "manage"], tmp_path)
    assert "Listening for HTTP" in _serves(["manage", "--log-level", "debug"], tmp_path)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["manage", "--api-enable-cors"], "CORS headers are not implemented"),
        (["manage", "--cors"], "CORS headers are not implemented"),
        (["manage", "-c", "mesos-experimental"], "the mesos driver is not implemented"),
        (["manage", "--cluster-opt", "swarm.overcommit=-1"], "swarm.overcommit should be larger than -1"),
        (["manage", "--cluster-opt", "swarm.createretry=x"], "swarm.createretry='x' is not an integer"),
        (["manage", "--cluster-opt", "mesos.address=1.2.3.4"], "mesos cluster driver is not implemented"),
        (["manage", "--discovery-opt", "kv.cacertfile=/ca.pem"], "etcd:// only"),
        (["manage", "--discovery-opt", "kv.path=other/path"], "put the prefix in the URL path"),
        (["manage", "--discovery-opt", "nosuch=1"], "--discovery-opt nosuch is unknown"),
        (["manage", "--engine-refresh-min-interval", "10s", "--engine-refresh-max-interval", "5s"], "cannot be less"),
        (["manage", "--engine-failure-retry", "0"], "should be a positive number"),
        (["manage", "-H", ":1", "-H", ":2"], "serves one listen address"),
        (["manage", "--replication"], "--advertise address must be provided when using --leader-election"),
        (["manage", "--replication", "--advertise", "1.2.3.4"], "--advertise should be of the form ip:port"),
        (["manage", "--replication-ttl=-5s"], "--replication-ttl should be a positive number"),
        (["manage", "--replication-ttl", "0s"], "--replication-ttl should be a positive number"),
        (["manage", "--replication", "--advertise", "127.0.0.1:1"], "Leader election is only supported with"),
        (["join", "--advertise", "127.0.0.1:2375", "--heartbeat", "500ms"], "should be at least one second"),
        (["join", "--advertise", "127.0.0.1:2375", "--delay=-1s"], "--delay should not be a negative number"),
        (["join", "--advertise", "127.0.0.1:2375", "--heartbeat", "60s"], "strictly superior to the heartbeat"),
        (["join", "--advertise", "nope"], "--advertise should be of the form ip:port or hostname:port"),
        (["-l", "verbose", "list"], "invalid choice"),
    ],
)
def test_a_swarm_flag_swarmha_cannot_honour_is_refused_naming_why(args: list[str], reason: str) -> None:
    url = "nodes://127.0.0.1:2375" if "127.0.0.1:1" in args or args[-1] == "list" else "memory://x"
    extra = ["--ttl", "30s"] if "--heartbeat" in args and "60s" in args else []
    result = run_cli(*args, *extra, url)
    assert result.returncode == 2, result
    assert reason in result.stderr, result.stderr


def test_version_and_list_print_as_swarm_did(tmp_path: Path) -> None:
    assert run_cli("--version").stdout.strip() == "swarmha version 0.1.0"
    listed = run_cli("list", "10.0.0.[1:3]:2375,node-a:2376").stdout.split()
    assert listed == ["10.0.0.1:2375", "10.0.0.2:2375", "10.0.0.3:2375", "node-a:2376"]
    f = tmp_path / "engines"
    f.write_text("# one engine a line\n127.0.0.1:2375\n\nnode-[08:10]:2375\n")
    assert run_cli("l", f"file://{f}").stdout.split() == [
        "127.0.0.1:2375",
        "node-08:2375",
        "node-09:2375",
        "node-10:2375",
    ]


def test_a_changed_engine_file_is_picked_up_without_a_restart(tmp_path: Path) -> None:
    f = tmp_path / "engines"
    dead = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    f.write_text(dead[0] + "\n")
    m = ManagerProc(f"file://{f}", tmp_path, replication=False)
    try:
        wait_for(lambda: m.status().get("Nodes") == "1", 20, "one node from the file")
        f.write_text("\n".join(dead) + "\n")
        wait_for(lambda: m.status().get("Nodes") == "3", 20, "three nodes after the file changed")
        f.unlink()  # unreadable: the last list stays, said once
        wait_for(lambda: "cannot read the engine list" in m.logs(), 20, "the warning")
        assert m.status().get("Nodes") == "3"
    finally:
        m.stop()
    assert m.logs().count("cannot read the engine list") == 1


# -- engines: errors that name the address and the OS error; join checks first -----------------------------------


def test_an_unhealthy_engine_error_names_its_address_and_the_os_error() -> None:
    addr = f"127.0.0.1:{free_port()}"

    async def refresh() -> str:
        cluster = Cluster(None, [addr])
        try:
            await cluster.refresh()
            return cluster.engines[0].error
        finally:
            await cluster.close()

    error = asyncio.run(refresh())
    assert error == f"cannot reach {addr}: [Errno 111] Connection refused"


class _Engine(http.server.BaseHTTPRequestHandler):
    """The two answers ``join`` checks: ``/_ping`` OK and ``/version`` with an ApiVersion."""

    protocol_version = "HTTP/1.1"
    answers = {"/_ping": b"OK", "/version": b'{"ApiVersion": "1.47", "Version": "27.0.0"}'}

    def do_GET(self) -> None:
        body = self.answers.get(self.path)
        self.send_response(200 if body is not None else 404)
        body = body if body is not None else b'{"message":"page not found"}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _NotAnEngine(_Engine):
    """An HTTP server that is not a Docker engine (as etcd's client port: 404 for ``/_ping``)."""

    answers: dict[str, bytes] = {}


def _serve(port: int, handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_join_registers_an_engine_only_once_it_answers_the_docker_api(tmp_path: Path) -> None:
    """Nothing listening, then an HTTP server that is not an engine: each warned about, not registered; then an
    engine (``/_ping`` OK, ``/version`` with an ApiVersion): registered."""
    url = f"sqlite://{tmp_path}/s.db"
    port = free_port()
    addr = f"127.0.0.1:{port}"
    log = tmp_path / "join.log"
    with open(log, "wb") as out:
        join = subprocess.Popen(
            swarmha_cmd("join", "--advertise", addr, "--heartbeat", "1s", "--ttl", "3s", url), stdout=out, stderr=out
        )
    server = None
    try:
        wait_for(lambda: "does not answer the Docker API" in log.read_text(), 15, "the warning")
        text = log.read_text()
        assert f"engine {addr} does not answer" in text and "[Errno 111] Connection refused" in text, text
        assert run_cli("list", url).stdout.split() == []  # not registered while nothing answers
        server = _serve(port, _NotAnEngine)
        wait_for(lambda: "/_ping answered 404" in log.read_text(), 15, "the warning about what answered")
        assert f"{addr} is not a Docker engine: GET /_ping answered 404" in log.read_text()
        assert run_cli("list", url).stdout.split() == []  # an HTTP server is not an engine
        server.shutdown()
        server.server_close()
        server = _serve(port, _Engine)
        wait_for(lambda: run_cli("list", url).stdout.split() == [addr], 20, "the registration once it answers")
    finally:
        join.send_signal(signal.SIGTERM)
        assert join.wait(15) == 0
        if server is not None:
            server.shutdown()
            server.server_close()


# -- a store outage under three managers --------------------------------------------------------------------------


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[object]:
    cluster = etcd_cluster(tmp_path / "etcd", 1)
    try:
        yield cluster
    finally:
        cluster.close()


def _store_line(m: ManagerProc) -> str:
    return m.status().get("Store", "")


def _docker_info(m: ManagerProc) -> str:
    return docker_cli(f"tcp://{m.addr}", "info", check=False, timeout=20).stdout


@pytest.mark.slow
def test_a_store_outage_is_said_once_shown_in_info_and_health_and_leadership_comes_back(
    etcd: object, tmp_path: Path
) -> None:
    from tests.support.servers import Cluster as Servers

    assert isinstance(etcd, Servers)
    url = f"etcd://{etcd.hosts}/ops"
    ttl = 3.0
    managers = [ManagerProc(url, tmp_path, "--replication-ttl", f"{ttl:g}s") for _ in range(3)]
    try:
        wait_for(lambda: sum(m.role() == "Primary" for m in managers) == 1, 20, "one primary")
        for m in managers:
            wait_for(lambda m=m: m.get("/health")[0] == 200, 10, f"{m.addr} healthy")
            assert _store_line(m) == "reachable"
        etcd.kill()
        for m in managers:
            wait_for(lambda m=m: m.get("/health")[0] == 503, 15, f"{m.addr}'s /health to say unhealthy")
            assert _store_line(m).startswith("unreachable for "), m.status()
        code, health = managers[0].get("/health")
        assert code == 503 and any("discovery store unreachable" in p for p in health["Problems"]), health
        assert "Store: unreachable for " in _docker_info(managers[0])
        time.sleep(2 * ttl)  # the outage lasts: what must not be logged again is the point
        etcd.start()
        back = time.monotonic()
        wait_for(lambda: sum(m.role() == "Primary" for m in managers) == 1, ttl + 1, "a primary within ttl + 1 s")
        took = time.monotonic() - back
        for m in managers:
            wait_for(lambda m=m: m.get("/health")[0] == 200, 10, f"{m.addr} healthy again")
        assert "Store: reachable" in _docker_info(managers[0])
    finally:
        for m in managers:
            m.stop()
    for m in managers:
        logs = m.logs()
        assert logs.count("WARN") == len(re.findall(r"WARN\[\d+\] Discovery store \S+ unreachable", logs)) == 1, logs
        assert len(re.findall(r"INFO\[\d+\] Discovery store \S+ reachable again after \d+\.\ds", logs)) == 1, logs
        assert "store error" not in logs and "Connecting to" not in logs
        # a manager that never led releases nothing when stopped
        assert "leadership released" not in logs or "Cluster leadership acquired" in logs, logs
    print(f"store outage: a primary {took:.2f}s after etcd came back (ttl {ttl:g}s)")


def test_a_manager_that_cannot_bind_says_why_and_releases_nothing(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = run_cli(
            "manage", "-H", f"127.0.0.1:{port}", "--replication", "--advertise", f"127.0.0.1:{port}",
            f"sqlite://{tmp_path}/s.db",
        )  # fmt: skip
    assert result.returncode == 1
    assert "cannot listen on" in result.stderr
    assert "leadership released" not in result.stderr
