"""Engines that fail, as Swarm classic showed and handled them, through the stock docker CLI.

node-1 is a real engine; node-2 is the other real engine reached through a loopback TCP proxy, so closing the
proxy is node-2 going down for the managers (the session's engines themselves are left alone). A third address,
a second proxy to node-2, carries node-2's engine ID: an engine sharing another's ``key.json``.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.docker_cluster import Cluster, cli, healthy_count
from tests.support.docker_engines import IMAGE, DockerEngine, docker_engines, registry
from tests.support.fault.proxy import FaultProxy
from tests.support.helpers import wait_for
from tests.support.manager import ManagerProc

__all__ = ["docker_engines", "registry"]  # the fixtures, imported so pytest finds them

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(180)]


def _proxy(e: DockerEngine) -> FaultProxy:
    host, _, port = e.addr.rpartition(":")
    return FaultProxy((host, int(port)))


def _info(m: ManagerProc) -> list[tuple[str, str]]:
    code, info = m.get("/info")
    assert code == 200, info
    return [(str(k).strip(), str(v)) for k, v in info["SystemStatus"]]


def _errors(pairs: list[tuple[str, str]]) -> list[str]:
    """The engines' errors in ``docker info``'s pairs (an engine without one shows "(none)")."""
    return [v for k, v in pairs if k == "└ Error" and v != "(none)"]


def test_an_engine_sharing_another_engines_id_is_refused_and_said(
    docker_engines: list[DockerEngine], tmp_path: Path
) -> None:
    first, second = _proxy(docker_engines[1]), _proxy(docker_engines[1])
    c = Cluster([docker_engines[0]], tmp_path)
    try:
        for p in (first, second):
            c.discovery.put(f"docker/swarm/nodes/{p.address}", p.address, c.session)
        m = ManagerProc(c.url, tmp_path, replication=False)
        c.managers.append(m)
        wait_for(lambda: healthy_count(m) == 2, 20, "node-1 and one copy of node-2 healthy")
        # the second copy is read on its own (new engines every heartbeat): on a busy machine it may still be
        # unread, without its error, when the first copy is already healthy
        wait_for(lambda: len(_errors(_info(m))) >= 1, 20, "the second copy of node-2 refused with an error", poll=0.05)
        pairs = _info(m)
        errors = _errors(pairs)
        assert len(errors) == 1, pairs
        assert healthy_count(m) == 2  # still: the refused copy took nothing from the first
        assert re.fullmatch(
            rf"ID duplicated\. \S+ shared by this node ({first.address}|{second.address}) and another node "
            rf"({first.address}|{second.address})",
            errors[0],
        ), errors
        assert [v for k, v in pairs if k == "└ Status"].count("Pending") == 1  # kept pending, as Swarm kept it
        assert "ID duplicated." in m.logs()
    finally:
        c.close()
        first.close()
        second.close()


@pytest.fixture
def half_proxied(docker_engines: list[DockerEngine], tmp_path: Path) -> Iterator[tuple[Cluster, FaultProxy]]:
    """node-1 direct, node-2 through a proxy (closed by the test to take node-2 down)."""
    proxy = _proxy(docker_engines[1])
    c = Cluster([docker_engines[0]], tmp_path)
    c.discovery.put(f"docker/swarm/nodes/{proxy.address}", proxy.address, c.session)
    c.engines = [docker_engines[0], docker_engines[1]]  # what start_* wait for: two engines
    try:
        yield c, proxy
    finally:
        c.close()
        proxy.close()


def _count(m: ManagerProc, node: str) -> int:
    return len(cli(m, "ps", "-aq", "--filter", f"node={node}").stdout.split())


def test_a_failing_node_is_avoided_and_a_create_retried_elsewhere(half_proxied: tuple[Cluster, FaultProxy]) -> None:
    """Swarm's nodehealth: with refreshes far apart and 20 failures allowed, node-2 still shows healthy when it
    dies. A create placed there fails naming the engine endpoint, and the next one avoids it; with
    ``swarm.createretry=1`` the first one already succeeds on node-1. A manager refreshing every second marks
    node-2 Unhealthy with its error; its containers (also one created just before) show as "Host Down" in ``ps -a``
    and their logs are refused naming the node."""
    c, proxy = half_proxied
    slow = ("--engine-refresh-min-interval", "60s", "--engine-refresh-max-interval", "60s")
    watching = c.start_single("--engine-failure-retry", "1")
    on2 = cli(
        watching, "run", "-d", "--network", "none", "-e", "constraint:node==node-2", IMAGE, "sleep", "300", check=False
    )
    assert on2.returncode == 0, on2.stderr
    cid = on2.stdout.strip()
    # node-1 holds more containers than node-2, so spread places the next container on node-2 first
    for _ in range(_count(watching, "node-2") - _count(watching, "node-1") + 1):
        cli(watching, "create", "--network", "none", "-e", "constraint:node==node-1", IMAGE, "true")
    wait_for(lambda: cid in cli(watching, "ps", "-q", "--no-trunc").stdout, 20, "the node-2 container listed")
    plain = c.start_single(*slow, "--engine-failure-retry", "20")  # their one refresh sees the containers
    retrying = c.start_single(*slow, "--engine-failure-retry", "20", "-cluster-opt", "swarm.createretry=1")
    # created a moment before node-2 dies (no refresh listed it yet): still shown, as the engine listed it
    late = cli(watching, "create", "--network", "none", "-e", "constraint:node==node-2", IMAGE, "true").stdout.strip()
    proxy.close()  # node-2 is down

    failed = cli(plain, "create", "--network", "none", IMAGE, "true", check=False)
    assert failed.returncode != 0
    assert "Cannot connect to the docker engine endpoint" in failed.stderr
    avoided = cli(plain, "create", "--network", "none", IMAGE, "true", check=False)
    assert avoided.returncode == 0, avoided.stderr
    retried = cli(retrying, "create", "--network", "none", IMAGE, "true", check=False)
    assert retried.returncode == 0, retried.stderr
    assert "retrying on another engine" in retrying.logs()
    for m, ident in ((plain, avoided.stdout.strip()), (retrying, retried.stdout.strip())):
        node = cli(m, "inspect", "-f", "{{.Node.Name}}", ident).stdout.strip()
        assert node == "node-1"

    wait_for(lambda: ("└ Status", "Unhealthy") in _info(watching), 20, "node-2 unhealthy")
    # its error: the connection refused (the first failure may be the kept-alive connection's end instead)
    wait_for(lambda: any(k == "└ Error" and "cannot reach" in v for k, v in _info(watching)), 10, "the error")
    ps = cli(watching, "ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Status}}").stdout
    assert f"{cid} Host Down" in ps and f"{late} Host Down" in ps
    assert cid not in cli(watching, "ps", "-q", "--no-trunc").stdout  # without -a: not listed, as in Swarm
    logs = cli(watching, "logs", cid, check=False)
    assert logs.returncode != 0
    assert f"Container {cid} running on unhealthy node node-2" in logs.stderr


class _SlowToRefuse(http.server.BaseHTTPRequestHandler):
    """An engine whose volume driver takes seconds to refuse a create (dockerd answers only once it said no)."""

    protocol_version = "HTTP/1.1"
    delay = 6.5

    def _json(self, status: int, body: object) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        path = self.path.partition("?")[0].removeprefix("/v1.41")
        answers: dict[str, object] = {
            "/info": {"ID": "SLOW:ENGINE", "Name": "slow", "NCPU": 1, "MemTotal": 1 << 30, "Labels": []},
            "/version": {"ApiVersion": "1.41", "MinAPIVersion": "1.12", "Version": "20.10.0"},
            "/containers/json": [],
            "/images/json": [],
        }
        if path in answers:
            self._json(200, answers[path])
        else:
            self._json(404, {"message": f"no {path}"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(self.delay)
        self._json(400, {"message": "error looking up volume plugin slow: plugin not found"})

    def log_message(self, *args: object) -> None:
        pass


def test_a_create_the_engine_takes_long_to_refuse_gets_the_engines_own_answer(tmp_path: Path) -> None:
    """No relay limit of a few seconds on a create: the engine's 400 comes back, not a 502."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowToRefuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    m = ManagerProc(f"nodes://127.0.0.1:{server.server_port}", tmp_path, replication=False)
    try:
        wait_for(lambda: healthy_count(m) == 1, 20, "the slow engine healthy")
        body = json.dumps({"Image": "busybox", "HostConfig": {"VolumeDriver": "slow"}}).encode()
        req = urllib.request.Request(
            m.url("/v1.41/containers/create"), data=body, headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=30)
        assert refused.value.code == 400
        assert "plugin not found" in json.loads(refused.value.read())["message"]
    finally:
        m.stop()
        server.shutdown()
