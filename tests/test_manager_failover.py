"""What a client sees across a failover: streams that go on through a graceful one, requests held through a crash.

Real etcd (the session store), two real dockerd engines (tests/docker_engines.py), managers as processes, the
stock docker CLI as the client. Every client talks to a replica, so each request crosses replica → primary →
engine; the primary is then stopped (SIGTERM) or killed (SIGKILL) under it.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import swarmha
from tests.support.docker_engines import IMAGE, DockerEngine, docker_cli, docker_engines, registry
from tests.support.helpers import wait_for
from tests.support.manager import ManagerProc
from tests.support.stores import StoreFixture

__all__ = ["docker_engines", "registry"]  # the session fixtures, imported so pytest finds them

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(150)]

LOOP = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done"


class Managers:
    """Managers over one etcd prefix with both engines registered under docker/swarm/nodes/."""

    def __init__(self, url: str, engines: list[DockerEngine], tmp: Path) -> None:
        self.url, self.tmp = url, tmp
        self.discovery = swarmha.connect(url)
        self.session = self.discovery.session(600)
        for e in engines:
            self.discovery.put(f"docker/swarm/nodes/{e.addr}", e.addr, self.session)
        self.all: list[ManagerProc] = []

    def start(self, n: int, *extra: str) -> list[ManagerProc]:
        """``n`` managers; the first one leads; returns them once every one sees it and both engines healthy."""
        first = ManagerProc(self.url, self.tmp, *extra)
        self.all.append(first)
        wait_for(lambda: first.role() == "Primary", 20, "a primary")
        for _ in range(n - 1):
            self.all.append(ManagerProc(self.url, self.tmp, *extra))
        for m in self.all:
            wait_for(lambda m=m: _ready(m, first.addr), 20, f"{m.addr} to see the primary and both engines healthy")
        return list(self.all)

    def close(self) -> None:
        for m in self.all:
            m.stop()
        self.session.close()
        self.discovery.close()


def _ready(m: ManagerProc, primary: str) -> bool:
    code, info = m.get("/info")
    if code != 200:
        return False
    pairs = [(str(k).strip(), str(v)) for k, v in info["SystemStatus"]]
    healthy = sum(1 for k, v in pairs if k == "└ Status" and v == "Healthy")
    return dict(pairs).get("Primary") == primary and healthy == 2


@pytest.fixture
def managers(stores: dict[str, StoreFixture], docker_engines: list[DockerEngine], tmp_path: Path) -> Iterator[Managers]:
    m = Managers(stores["etcd"].url(), docker_engines, tmp_path)
    try:
        yield m
    finally:
        m.close()


def _docker(m: ManagerProc, *args: str, stdin: bool = False) -> subprocess.Popen[str]:
    """A docker CLI command through ``m``; ``stdin``: its stdin a pipe (line-buffered), else none."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "DOCKER_HOST": f"tcp://{m.addr}"}
    return subprocess.Popen(
        ["docker", *args], stdin=subprocess.PIPE if stdin else None, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, bufsize=1 if stdin else -1,
    )  # fmt: skip


class Stream:
    """A docker CLI stream whose stdout lines are stamped with their arrival time on a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[tuple[float, str]] = []
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
        self.ended.set()

    def stop(self) -> str:
        """Kill the client; returns what it wrote on stderr (an error it reported)."""
        alive = self.proc.poll() is None
        self.proc.kill()
        _, err = self.proc.communicate(timeout=10)
        self._thread.join(10)
        return ("" if alive else "(the client had exited) ") + err


def _numbers(lines: list[tuple[float, str]], pattern: str) -> list[int]:
    out = []
    for _, text in lines:
        m = re.fullmatch(pattern, text)
        assert m, f"unexpected line {text!r}"
        out.append(int(m.group(1)))
    return out


def test_logs_follow_and_events_through_a_replica_go_on_across_a_graceful_failover(
    managers: Managers, docker_engines: list[DockerEngine]
) -> None:
    primary, replica = managers.start(2)  # the default --shutdown-timeout (30s) lets open streams go on
    engine = docker_engines[0]
    cid = docker_cli(f"tcp://{replica.addr}", "run", "-d", "--network", "none", IMAGE, "sh", "-c", LOOP)
    cid_text = cid.stdout.strip()
    logs = Stream(_docker(replica, "logs", "-f", cid_text))
    events = Stream(
        _docker(replica, "events", "--filter", "type=container", "--filter", "event=create", "--format",
                "{{.Actor.Attributes.name}}")
    )  # fmt: skip
    made: list[str] = []
    stop_making = threading.Event()

    def make_events() -> None:  # straight on the engine: the event source must not depend on the failover
        i = 0
        while not stop_making.is_set() and i < 200:
            name = f"evt-{i}"
            engine.docker("create", "--name", name, "--network", "none", IMAGE, "true")
            made.append(name)
            i += 1
            stop_making.wait(0.4)

    maker = threading.Thread(target=make_events, daemon=True)
    try:
        wait_for(lambda: len(logs.lines) >= 3, 10, "the first log lines")
        maker.start()
        wait_for(lambda: len(events.lines) >= 2, 10, "the first events")
        primary.signal(signal.SIGTERM)
        handover = time.monotonic()
        wait_for(lambda: replica.role() == "Primary", 10, "the replica to take over", poll=0.01)
        took = time.monotonic() - handover
        # both streams keep delivering for 12 s after the handover
        wait_for(lambda: time.monotonic() - handover > 12, 15, "12 s after the handover", poll=0.1)
        assert primary.proc.poll() is None, "the old primary should still be serving the streams it has open"
        stop_making.set()
        maker.join(30)
        wait_for(lambda: len(events.lines) >= len(made), 10, "every event made to arrive")
        late_logs = [t for t, _ in logs.lines if t > handover + 10]
        late_events = [t for t, _ in events.lines if t > handover + 10]
        logs_err, events_err = logs.stop(), events.stop()
        assert logs_err == "" and events_err == "", (logs_err, events_err)
        n = _numbers(logs.lines, r"line (\d+)")
        assert n == list(range(len(n))), "a log line lost or duplicated"
        got = [name for _, name in events.lines if name.startswith("evt-")]
        assert got == made, "an event lost or duplicated"
        assert late_logs and late_events, "a stream stopped delivering before 10 s after the handover"
        # with its streams closed by their clients, the old primary exits cleanly
        assert primary.proc.wait(30) == 0
        print(f"graceful failover under two streams: handover {took * 1000:.0f} ms, {len(n)} log lines, "
              f"{len(got)} events, none lost or duplicated")  # fmt: skip
    finally:
        stop_making.set()
        logs.stop()
        events.stop()
        docker_cli(engine.host, "rm", "-f", *made, check=False)
        docker_cli(f"tcp://{replica.addr}", "rm", "-f", cid_text, check=False)


def test_exec_and_attach_through_a_replica_go_on_across_a_graceful_failover(managers: Managers) -> None:
    """The hijacked streams (``docker exec -i``, ``docker attach``), both directions: lines typed before and
    after the primary's graceful stop all come back, in order, through the connections opened before it."""
    primary, replica = managers.start(2)
    echo = "while read l; do echo {} $l; done"
    run = docker_cli(f"tcp://{replica.addr}", "run", "-d", "-i", "--network", "none", IMAGE, "sh", "-c",
                     echo.format("att"))  # fmt: skip
    cid = run.stdout.strip()
    execd = _docker(replica, "exec", "-i", cid, "sh", "-c", echo.format("exe"), stdin=True)
    attached = _docker(replica, "attach", "--sig-proxy=false", cid, stdin=True)
    streams = {"exe": (execd, Stream(execd)), "att": (attached, Stream(attached))}

    def send(i: int) -> None:
        for proc, _ in streams.values():
            assert proc.stdin is not None
            proc.stdin.write(f"{i}\n")
            proc.stdin.flush()

    def echoed(name: str) -> list[int]:
        return _numbers(streams[name][1].lines, rf"{name} (\d+)")

    try:
        for i in range(5):
            send(i)
        wait_for(lambda: all(len(echoed(n)) == 5 for n in streams), 15, "the first lines echoed on both streams")
        primary.signal(signal.SIGTERM)
        wait_for(lambda: replica.role() == "Primary", 10, "the replica to take over", poll=0.01)
        for i in range(5, 10):
            send(i)
        wait_for(lambda: all(len(echoed(n)) == 10 for n in streams), 15, "the lines typed after the handover")
        assert echoed("exe") == list(range(10)) and echoed("att") == list(range(10))
        assert primary.proc.poll() is None, "the old primary should still be serving the streams it has open"
        assert execd.stdin is not None
        execd.stdin.close()  # the exec's shell reads EOF and ends: the CLI exits 0 through the old primary
        execd.stdin = None  # closed: Stream.stop's communicate() must not flush it
        assert execd.wait(15) == 0, execd.stderr.read() if execd.stderr else ""
    finally:
        for _, stream in streams.values():
            stream.stop()
        docker_cli(f"tcp://{replica.addr}", "rm", "-f", cid, check=False)
    assert primary.proc.wait(30) == 0  # its last streams closed, the old primary exits cleanly


def test_docker_ps_through_a_replica_never_fails_while_the_primary_is_killed(managers: Managers) -> None:
    primary, *replicas = managers.start(3, "--replication-ttl", "4s")
    replica = replicas[0]
    results: list[tuple[float, int, str]] = []
    done = threading.Event()

    def loop() -> None:
        while not done.is_set() and len(results) < 2000:
            began = time.monotonic()
            # with a filter: forwarded to the primary (a plain ps the replica answers from its own view)
            r = docker_cli(f"tcp://{replica.addr}", "ps", "-q", "--filter", "status=running", check=False, timeout=30)
            results.append((time.monotonic() - began, r.returncode, r.stderr.strip()))

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        wait_for(lambda: len(results) >= 3, 20, "a few docker ps")
        primary.signal(signal.SIGKILL)
        killed = time.monotonic()
        primary.proc.wait(10)
        wait_for(lambda: any(m.role() == "Primary" for m in replicas), 15, "a new primary")
        elected = time.monotonic() - killed
        n = len(results)
        wait_for(lambda: len(results) >= n + 3, 20, "docker ps served by the new primary")
    finally:
        done.set()
        t.join(40)
    failed = [r for r in results if r[1] != 0]
    assert not failed, failed
    slowest = max(r[0] for r in results)
    assert slowest > 1, "no docker ps was held across the failover: the test did not exercise it"
    assert slowest < 4 + 2 + 2, f"a docker ps took {slowest:.1f}s: held longer than the TTL + one election"
    print(f"crash failover with --replication-ttl 4s: new primary after {elected:.1f}s, "
          f"{len(results)} docker ps, none failed, slowest {slowest:.1f}s")  # fmt: skip
