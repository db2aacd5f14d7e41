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
from tests.support.helpers import LONG_SECONDS, wait_for
from tests.support.manager import ManagerProc
from tests.support.stores import StoreFixture
from tests.support.stores.cluster import ClusterStore

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


def test_logs_follow_and_events_through_a_replica_outlive_the_primary_that_served_them(
    managers: Managers, docker_engines: list[DockerEngine]
) -> None:
    """The primary is SIGTERMed under a ``docker logs -f``, a ``docker events``, a ``docker wait`` and a ``docker
    attach`` relayed by the replica: they go on on the old primary until its --shutdown-timeout (4 s here) cuts
    them (it logs how many, and which kind), then the replica (the new primary) resumes the first three from where
    they were: every line and every event exactly once, in order, no client error; the attach ends there."""
    drain, after = 4.0, max(10.0, LONG_SECONDS)  # the streams are followed this long after the exit
    primary, replica = managers.start(2, "--shutdown-timeout", f"{drain:g}s")
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
            stop_making.wait(0.3)

    maker = threading.Thread(target=make_events, daemon=True)
    attach: Stream | None = None
    waiter = ""
    try:
        wait_for(lambda: len(logs.lines) >= 3, 10, "the first log lines")
        maker.start()
        wait_for(lambda: len(events.lines) >= 2, 10, "the first events")
        attach = Stream(_docker(replica, "attach", "--no-stdin", "--sig-proxy=false", cid_text))
        wait_for(lambda: len(attach.lines) >= 2, 10, "the attach to stream")
        waiter = docker_cli(f"tcp://{replica.addr}", "run", "-d", "--network", "none", IMAGE, "sh", "-c",
                            "sleep 8; exit 3").stdout.strip()  # fmt: skip
        waited = _docker(replica, "wait", waiter)
        time.sleep(1)  # lets the wait request reach the primary; the resume count below checks it did
        primary.signal(signal.SIGTERM)
        handover = time.monotonic()
        wait_for(lambda: replica.role() == "Primary", 10, "the replica to take over", poll=0.01)
        took = time.monotonic() - handover
        assert primary.proc.wait(drain + 10) == 0
        exited = time.monotonic()
        assert exited - handover > drain - 1, "the old primary did not serve its open streams until the timeout"
        wait_for(lambda: len(logs.lines) > 0 and logs.lines[-1][0] > exited + 1, 10, "log lines after the exit")
        assert attach.lines[-1][0] < exited + 0.5, "the attach (hijacked) outlived the old primary"
        out, err = waited.communicate(timeout=20)
        assert (waited.returncode, out.strip(), err) == (0, "3", ""), (waited.returncode, out, err)
        assert time.monotonic() > exited, "the wait ended before the old primary exited: not resumed"
        # both streams keep delivering after the old primary exited
        wait_for(lambda: time.monotonic() - exited > after, after + 5, f"{after:g} s after the exit", poll=0.1)
        stop_making.set()
        maker.join(30)
        # the stream also carries other creates (the waiter's): count only the events made here
        wait_for(lambda: sum(n.startswith("evt-") for _, n in events.lines) >= len(made), 10, "every event made")
        late_logs = [t for t, _ in logs.lines if t > exited + after - 2]
        late_events = [t for t, _ in events.lines if t > exited + after - 2]
        logs_err, events_err = logs.stop(), events.stop()
        assert logs_err == "" and events_err == "", (logs_err, events_err)
        n = _numbers(logs.lines, r"line (\d+)")
        assert n == list(range(len(n))), "a log line lost, duplicated or reordered"
        got = [name for _, name in events.lines if name.startswith("evt-")]
        assert got == made, "an event lost, duplicated or reordered"
        assert late_logs and late_events, "a stream stopped delivering after the old primary exited"
        cut = primary.logs()
        # the CLI's attach also waits for the container's exit (a wait of its own): 3 or 4 others
        assert re.search(r"--shutdown-timeout 4s passed: cutting \d open request\(s\): 1 hijacked \(attach/exec\), "
                         r"[34] other \(", cut), cut  # fmt: skip
        resumed = replica.logs()
        assert resumed.count("resuming GET ") == 2 and resumed.count("resuming POST ") >= 1, resumed
        print(f"graceful failover under two streams: handover {took * 1000:.0f} ms, old primary exited after "
              f"{exited - handover:.1f}s, streams followed {after:g}s more: {len(n)} log lines, {len(got)} events, "
              "none lost, repeated or reordered")  # fmt: skip
    finally:
        stop_making.set()
        logs.stop()
        events.stop()
        if attach is not None:
            attach.stop()
        if waiter:
            docker_cli(f"tcp://{replica.addr}", "rm", "-f", waiter, check=False)
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


class PsLoops:
    """``docker ps`` through each of ``managers``, back to back on a thread each; ``results``: (manager, seconds,
    exit status, stderr) per request."""

    def __init__(self, managers: list[ManagerProc]) -> None:
        self.results: list[tuple[str, float, int, str]] = []
        self._addrs = [m.addr for m in managers]
        self._done = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(m,), daemon=True) for m in managers]
        for t in self._threads:
            t.start()

    def _loop(self, m: ManagerProc) -> None:
        while not self._done.is_set() and len(self.results) < 4000:
            began = time.monotonic()
            # with a filter: forwarded to the primary (a plain ps a replica answers from its own view)
            r = docker_cli(f"tcp://{m.addr}", "ps", "-q", "--filter", "status=running", check=False, timeout=30)
            self.results.append((m.addr, time.monotonic() - began, r.returncode, r.stderr.strip()))

    def wait_more(self, n: int, what: str) -> None:
        """Wait until ``n`` more requests through every manager have ended."""
        base = {a: self._count(a) for a in self._addrs}
        wait_for(lambda: all(self._count(a) >= base[a] + n for a in base), 30, what)

    def _count(self, addr: str) -> int:
        return sum(1 for r in self.results if r[0] == addr)

    def stop(self) -> None:
        self._done.set()
        for t in self._threads:
            t.join(40)

    def failed(self) -> list[tuple[str, float, int, str]]:
        return [r for r in self.results if r[2] != 0]

    def slowest(self) -> float:
        return max(r[1] for r in self.results)


def test_docker_ps_and_logs_follow_through_a_replica_never_fail_while_the_primary_is_killed(
    managers: Managers,
) -> None:
    """SIGKILL of the primary: each ``docker ps`` through a replica is held until the next primary, and a ``docker
    logs -f`` through it is resumed there, every line once, in order."""
    primary, *replicas = managers.start(3, "--replication-ttl", "4s")
    replica = replicas[0]
    run = docker_cli(f"tcp://{replica.addr}", "run", "-d", "--network", "none", IMAGE, "sh", "-c", LOOP)
    cid = run.stdout.strip()
    logs = Stream(_docker(replica, "logs", "-f", cid))
    loops = PsLoops(replicas[:1])
    try:
        wait_for(lambda: len(loops.results) >= 3 and len(logs.lines) >= 3, 20, "a few docker ps and log lines")
        primary.signal(signal.SIGKILL)
        killed = time.monotonic()
        primary.proc.wait(10)
        wait_for(lambda: any(m.role() == "Primary" for m in replicas), 15, "a new primary")
        elected = time.monotonic() - killed
        loops.wait_more(3, "docker ps served by the new primary")
        wait_for(lambda: logs.lines[-1][0] > killed + elected + 2, 15, "log lines from the new primary")
    finally:
        loops.stop()
        logs_err = logs.stop()
        docker_cli(f"tcp://{replica.addr}", "rm", "-f", cid, check=False)
    results = loops.results
    assert not loops.failed(), loops.failed()
    slowest = loops.slowest()
    assert slowest > 1, "no docker ps was held across the failover: the test did not exercise it"
    assert slowest < 4 + 2 + 2, f"a docker ps took {slowest:.1f}s: held longer than the TTL + one election"
    assert logs_err == "", logs_err
    n = _numbers(logs.lines, r"line (\d+)")
    assert n == list(range(len(n))), "a log line lost, duplicated or reordered"
    print(f"crash failover with --replication-ttl 4s: new primary after {elected:.1f}s, "
          f"{len(results)} docker ps, none failed, slowest {slowest:.1f}s; logs -f: {len(n)} lines")  # fmt: skip


def test_docker_ps_through_each_replica_never_fails_while_the_store_pauses_or_restarts(
    managers: Managers, stores: dict[str, StoreFixture]
) -> None:
    """etcd SIGSTOPped, then killed and restarted, each time for 5 s: longer than the primary's renew deadline (it
    steps down: requests wait for the next primary), shorter than the replicas' wait (ttl + 2 s = 6 s). Requests
    held meanwhile go to whichever manager is primary once the store is back, none fails."""
    etcd = stores["etcd"]
    assert isinstance(etcd, ClusterStore)
    ttl, outage = 4.0, 5.0
    managers.start(3, "--replication-ttl", f"{ttl:g}s")
    replicas = [m for m in managers.all if m.role() == "Replica"]
    loops = PsLoops(replicas)
    took: dict[str, float] = {}
    leaders: list[ManagerProc] = []
    try:
        loops.wait_more(3, "a few docker ps through each replica")
        for fault in ("pause", "restart"):
            leader = next(m for m in managers.all if m.role() == "Primary")
            leaders.append(leader)
            began = time.monotonic()
            etcd.pause() if fault == "pause" else etcd.stop()
            try:
                wait_for(lambda m=leader: m.role() != "Primary", outage, f"a step-down ({fault})", poll=0.05)
                time.sleep(max(0.0, outage - (time.monotonic() - began)))  # the outage's length, not a verdict
            finally:
                etcd.resume() if fault == "pause" else etcd.start()
            back = time.monotonic()
            wait_for(lambda: sum(m.role() == "Primary" for m in managers.all) == 1, 15, f"a primary ({fault})")
            took[fault] = time.monotonic() - back
            loops.wait_more(3, f"docker ps through each replica after the {fault}")
    finally:
        loops.stop()
    assert not loops.failed(), loops.failed()
    assert loops.slowest() > 2, "no docker ps was held across the outage: the test did not exercise it"
    for leader in leaders:  # the step-down says why, and the outage is counted from the store's last answer
        text = leader.logs()
        assert re.search(r"Cluster leadership lost: renew deadline passed: the discovery store has not answered "
                         r"since \S+Z \([\d.]+s ago; renew deadline 2\.\d+s\)", text), text  # fmt: skip
    for m in managers.all:

        def outages(m: ManagerProc = m) -> list[float]:
            return [float(x) for x in re.findall(r"reachable again after ([\d.]+)s", m.logs())]

        wait_for(lambda: len(outages()) == 2, 10, f"{m.addr} to see the store back twice")
        assert all(outage <= x <= outage + 5 for x in outages()), (m.addr, outages())
    print(f"etcd paused, then restarted, {outage:g}s each, --replication-ttl {ttl:g}s: a primary "
          f"{took['pause']:.2f}s / {took['restart']:.2f}s after the store was back, {len(loops.results)} docker ps "
          f"through 2 replicas, none failed, slowest {loops.slowest():.1f}s")  # fmt: skip
