"""Real etcd and ZooKeeper servers for the tests: single members and 3-member clusters on loopback ports.

Servers run as child processes of the test session with their data under a pytest temp dir:

* etcd 3.4 from Debian ``etcd-server`` (``/usr/bin/etcd``, override with ``$SWARMHA_ETCD``);
* ZooKeeper 3.8 from Debian ``zookeeper``, run as ``java -cp /usr/share/java/zookeeper.jar
  org.apache.zookeeper.server.quorum.QuorumPeerMain zoo.cfg`` (what ``zkServer.sh start-foreground`` does,
  without the wrapper; the jar's manifest carries the rest of the classpath). ``$SWARMHA_ZK_JAR`` and
  ``$JAVA`` override the jar and the java binary.

Every start waits for readiness by polling with a bounded deadline; ``kill()`` SIGKILLs the process (a crash)
and ``start()`` brings the member back on the same ports with the same data. Tuning for tests: etcd keeps its
default 100 ms heartbeat / 1 s election timeout; ZooKeeper runs with ``tickTime=200`` and
``minSessionTimeout=400`` so sessions as short as the tests' TTLs are granted (the defaults would round a 1 s
session up to 2 x tickTime = 4 s).

A member that answers ``ready()`` may still commit nothing: a ZooKeeper 3.8 ensemble stopped (SIGSTOP) as a whole
has reported a leader and two followers and committed no new session for seconds to over a minute after
SIGCONT, with or without
swarmha's clients (plain kazoo clients holding 1.5 s sessions are enough). :meth:`Cluster.await_commits` is how
the fault harness tells when a store-wide fault is over for the clients: writes committed again.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tests.support.net import free_ports

__all__ = ["Cluster", "EtcdMember", "ZkMember", "etcd_cluster", "zk_cluster"]

ETCD = os.environ.get("SWARMHA_ETCD", "/usr/bin/etcd")
ZK_JAR = os.environ.get("SWARMHA_ZK_JAR", "/usr/share/java/zookeeper.jar")
JAVA = os.environ.get("JAVA", shutil.which("java") or "/usr/bin/java")

READY_TIMEOUT = 30.0


class _Member:
    """One server process: start/kill/stop with readiness polling. Subclasses say how to run and probe it."""

    kind = "server"

    def __init__(self, name: str, workdir: Path, client_port: int) -> None:
        self.name = name
        self.workdir = workdir
        self.client_port = client_port
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        """True when the member serves client requests (one quick probe, never blocks long)."""
        raise NotImplementedError

    def commits(self, timeout: float) -> bool:
        """True when one write sent through this member is committed within ``timeout`` s (never raises)."""
        raise NotImplementedError

    def spawn(self) -> None:
        """Start the process without waiting (several cluster members must start together)."""
        if self.running:
            return
        log = open(self.workdir / "server.log", "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir
            )
        finally:
            log.close()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} {self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} {self.name} not ready within {timeout}s: {self.log_tail()}")

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def kill(self) -> None:
        """SIGKILL the member (a crash); data stays for a later start()."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.workdir / "server.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class EtcdMember(_Member):
    kind = "etcd"

    def __init__(
        self,
        name: str,
        workdir: Path,
        client_port: int,
        peer_port: int,
        initial_cluster: str,
        extra: Sequence[str] = (),
    ) -> None:
        super().__init__(name, workdir, client_port)
        self.peer_port = peer_port
        self.initial_cluster = initial_cluster
        self.extra = list(extra)

    def command(self) -> list[str]:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            ETCD,
            f"--name={self.name}",
            f"--data-dir={self.workdir / 'data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token=swarmha-{os.getpid()}",
            "--log-level=warn",
            "--logger=zap",
            "--enable-pprof=false",
            *self.extra,
        ]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.client_port}/health", timeout=0.5) as r:
                return b'"true"' in r.read()
        except OSError:
            return False

    def commits(self, timeout: float) -> bool:
        """A put through the v3 JSON gateway (raft commits it on the cluster's leader)."""
        key = base64.b64encode(b"swarmha-commit-probe").decode()
        body = json.dumps({"key": key, "value": ""}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.client_port}/v3/kv/put", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return b'"header"' in r.read()
        except OSError:
            return False


class ZkMember(_Member):
    kind = "zookeeper"

    def __init__(
        self, name: str, workdir: Path, client_port: int, myid: int, servers: Sequence[str], extra: Sequence[str] = ()
    ) -> None:
        super().__init__(name, workdir, client_port)
        self.myid = myid
        data = workdir / "data"
        data.mkdir(exist_ok=True)
        lines = [
            "tickTime=200",
            "initLimit=20",
            "syncLimit=10",
            f"dataDir={data}",
            f"clientPort={client_port}",
            "clientPortAddress=127.0.0.1",
            "admin.enableServer=false",
            "4lw.commands.whitelist=srvr,ruok",
            "minSessionTimeout=400",
            "maxSessionTimeout=60000",
            "forceSync=no",
            *servers,
            *extra,
        ]
        if servers:
            (data / "myid").write_text(f"{myid}\n")
        (workdir / "zoo.cfg").write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [
            JAVA,
            "-Xmx128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Dzookeeper.admin.enableServer=false",
            "-Dzookeeper.jmx.log4j.disable=true",
            "-cp",
            ZK_JAR,
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            str(self.workdir / "zoo.cfg"),
        ]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.client_port), timeout=0.5) as s:
                s.sendall(b"srvr")
                s.settimeout(0.5)
                chunks = []
                while chunk := s.recv(4096):
                    chunks.append(chunk)
        except OSError:
            return False
        return b"Mode: " in b"".join(chunks)

    def commits(self, timeout: float) -> bool:
        """A new session through this member: ZooKeeper commits every session it creates through its quorum.

        The handshake is written by hand (one ConnectRequest; the socket is closed after the answer, so the
        session expires after ``minSessionTimeout``) because kazoo's ``stop()`` sends a close and waits for its
        answer: in a stalled ensemble that wait blocked the fault harness for over a minute."""
        request = struct.pack("!iqiqi", 0, 0, 400, 0, 16) + bytes(16) + b"\0"  # version, zxid, ms, id, password
        deadline = time.monotonic() + timeout
        try:
            with socket.create_connection(("127.0.0.1", self.client_port), timeout=timeout) as s:
                s.sendall(struct.pack("!i", len(request)) + request)
                answer = b""
                while len(answer) < 20:  # length, protocol version, timeout, session id
                    s.settimeout(max(0.001, deadline - time.monotonic()))
                    chunk = s.recv(64)
                    if not chunk:
                        return False
                    answer += chunk
        except OSError:
            return False
        _, _, granted, session = struct.unpack("!iiiq", answer[:20])
        return bool(granted > 0 and session != 0)


class Cluster:
    """A running set of members (1 or 3) of one kind; ``hosts`` is the ``h:p,h:p`` part of a URL."""

    def __init__(self, members: Sequence[_Member]) -> None:
        self.members = list(members)

    @property
    def hosts(self) -> str:
        return ",".join(m.address for m in self.members)

    def start(self) -> None:
        """Start every member not running and wait until all serve."""
        for m in self.members:
            m.spawn()
        for m in self.members:
            m.wait_ready()

    def kill(self, index: int | None = None) -> None:
        """SIGKILL one member (``index``) or all of them."""
        for i, m in enumerate(self.members):
            if index is None or i == index:
                m.kill()

    def restart(self, index: int) -> None:
        self.members[index].start()

    def pause(self, index: int | None = None) -> None:
        """SIGSTOP one member (``index``) or all of them: connections stay open and requests get no answer."""
        self._signal(signal.SIGSTOP, index)

    def resume(self, index: int | None = None) -> None:
        """SIGCONT what :meth:`pause` stopped."""
        self._signal(signal.SIGCONT, index)

    def await_commits(self, limit: float = 60.0, attempt: float = 0.5, settle: float = 1.0) -> float | None:
        """When the cluster serves writes again (after a pause or a restart): the ``time.monotonic()`` at which a
        write was sent that was committed, and so was another sent ``settle`` s later; None if there was none
        within ``limit`` s. Members are tried in turn, ``attempt`` s each.

        One commit is not enough: a ZooKeeper ensemble continued after a pause committed a session within
        milliseconds of SIGCONT and then none for over a minute. The answer is within about one ``attempt`` of when
        the cluster served again (a write lost in a stall is tried again only after ``attempt``)."""
        end = time.monotonic() + limit
        first: float | None = None  # the sending of a commit not yet confirmed by a second one
        for member in itertools.cycle(self.members):
            sent = time.monotonic()
            if sent >= end or not any(m.running for m in self.members):
                return None
            if first is not None and sent < first + settle:
                time.sleep(min(first + settle, end) - sent)
                continue
            if member.running and member.commits(min(attempt, end - sent)):
                if first is not None:
                    return first
                first = sent
            else:
                first = None
        return None

    def _signal(self, sig: int, index: int | None) -> None:
        for i, m in enumerate(self.members):
            if (index is None or i == index) and m.proc is not None and m.proc.poll() is None:
                m.proc.send_signal(sig)

    def close(self) -> None:
        """Kill every member and delete its data."""
        self.kill()
        for m in self.members:
            shutil.rmtree(m.workdir, ignore_errors=True)


def _started(cluster: Cluster) -> Cluster:
    """Start every member of ``cluster``; on failure stop those that did start, then re-raise."""
    try:
        cluster.start()
    except BaseException:
        cluster.close()
        raise
    return cluster


def etcd_cluster(workdir: Path, size: int = 1, extra: Sequence[str] = ()) -> Cluster:
    """Start an etcd cluster of ``size`` members under ``workdir``; returns once every member is healthy.

    ``extra``: more etcd flags for every member (a later flag wins), e.g. a shorter election timeout.
    """
    ports = free_ports(2 * size)
    names = [f"m{i}" for i in range(size)]
    initial = ",".join(f"{n}=http://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names))
    members = [EtcdMember(n, workdir / n, ports[2 * i], ports[2 * i + 1], initial, extra) for i, n in enumerate(names)]
    return _started(Cluster(members))


def zk_cluster(workdir: Path, size: int = 1, extra: Sequence[str] = ()) -> Cluster:
    """Start a ZooKeeper ensemble of ``size`` members under ``workdir``; returns once every member serves.

    ``extra``: more ``zoo.cfg`` lines (a later line wins), e.g. ``maxClientCnxns=0`` for the benchmarks' hundreds
    of connections from one address (ZooKeeper's default allows 60).
    """
    ports = free_ports(3 * size)
    servers = (
        [f"server.{i + 1}=127.0.0.1:{ports[3 * i + 1]}:{ports[3 * i + 2]}" for i in range(size)] if size > 1 else []
    )
    members = [ZkMember(f"z{i + 1}", workdir / f"z{i + 1}", ports[3 * i], i + 1, servers, extra) for i in range(size)]
    return _started(Cluster(members))
