"""Scale: N keys, three processes campaigning for all of them, swarmha beside kazoo and the etcd lock.

    python -m benchmarks scale [--quick] [--keys 1,100,1000,10000] [--backends etcd,zk,sqlite[,consul,postgres,redis]]
                               [--systems swarmha,swarmha-lease,kazoo-election,kazoo-lock,etcd-lock] [--out FILE]

For every backend, system and N: three worker processes (``python -m benchmarks.scale worker ...``) each
campaign for the same N keys (ttl 6 s) on one server started for the run (ZooKeeper with its default
``maxClientCnxns=60``). Measured:

* **elect**: from the moment the three are told to go (each has built its clients) until every key has a
  leader; then every key must have exactly one (the three processes' sets of led keys are disjoint and cover N);
* **settled** (``swarmha-lease`` only): from then until the first whole second with fewer than 5 store requests
  per process (the standbys' watches are still being set up after the last key is led), at most 60 s;
* **idle req/s per process**: server-side request counter over the 6 s after that, with every key held
  (``benchmarks/stores.py`` says what each server counts; ZooKeeper counts its heartbeat pings too), / 3;
* **garbage collection**: seconds each process spent in the collector from "go" to every key led (all
  generations, and full collections apart), the most of the three (in ``benchmarks-scale.json`` beside ``--out`` only);
* **elect CPU and requests** (``benchmarks-scale.json`` only): CPU seconds (user + system) each process spent from
  "go" to every key led, the most of the three, and the store's request count over that time per key (all three
  processes; what each server counts: ``benchmarks/stores.py``);
* **threads, fds, store connections, RSS** per process (the largest of the three), from ``/proc``;
* **handover p50/p95 per key**: the process leading most keys gives all of them up gracefully (swarmha
  ``stop()``, kazoo ``Lock.release()`` / the ``Election`` function returning, etcd ``Lock.release()``); for each
  key, from the moment its release was started to the moment another process leads it (``CLOCK_MONOTONIC``
  is one clock for every process of the machine).

Systems: ``swarmha`` (a session per candidate), ``swarmha-lease`` (one :class:`swarmha.Lease` per process),
``kazoo-election`` / ``kazoo-lock`` (one KazooClient per process, N recipes, a thread each: kazoo's recipes
block), ``etcd-lock`` (pyetcd, one client per process, N locks each with its own lease, a thread each; one
refresher thread per process keeps the held locks' leases alive). Peers run up to ``--peer-max`` keys (1000).
Before/after: ``--base DIR`` (another checkout, e.g. ``git worktree add --detach /tmp/swarmha-base COMMIT``)
runs every ``swarmha-lease`` row with that checkout's workers too, right before this one's, ``--repeat R`` times
(base, new, base, new, ...), on the same servers: rows labelled ``(base)``.
Writes the table between ``<!-- scale:begin -->`` and ``<!-- scale:end -->`` in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from benchmarks.support import commit_of, splice
from tests.support.net import established_to

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
TTL = 6.0
PROCESSES = 3
IDLE_WINDOW = 6.0
#: Requests a second per process below which the store is taken as quiet, and how long to wait for that at most.
QUIET, SETTLE_MAX = 5.0, 60.0
SYSTEMS = ["swarmha", "swarmha-lease", "kazoo-election", "kazoo-lock", "etcd-lock"]
PEERS = {"kazoo-election": "zk", "kazoo-lock": "zk", "etcd-lock": "etcd"}


# -- the worker process ----------------------------------------------------------------------------------


class _GcClock:
    """Time this process spends in the garbage collector, by generation (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._began = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        generation = info["generation"]
        self.seconds[generation] += time.perf_counter() - self._began
        self.count[generation] += 1


def _proc_stats(port: int) -> dict[str, int]:
    """Threads, fds, RSS (kB) and ESTABLISHED TCP connections to ``port`` of this process, from /proc."""
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "threads": int(fields["Threads"].strip()),
        "fds": len(os.listdir("/proc/self/fd")),
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "conns": established_to(port),
    }


class _Worker:
    """Campaigns for ``keys`` with one system; records when each key was won and when its release started."""

    def __init__(self, system: str, url: str, keys: list[str], node: str) -> None:
        self.system, self.url, self.keys, self.node = system, url, keys, node
        self.lock = threading.Lock()
        self.leading: set[str] = set()
        self.elected: dict[str, float] = {}
        self.released: dict[str, float] = {}
        self._stop = threading.Event()
        self._handles: dict[str, Any] = {}
        self._setup()

    def _won(self, key: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.leading.add(key)
            self.elected[key] = now

    def _lost(self, key: str) -> None:
        with self.lock:
            self.leading.discard(key)

    def _setup(self) -> None:
        if self.system.startswith("swarmha"):
            import swarmha
            from swarmha.observe import add_observer

            self.d = swarmha.connect(self.url)

            def observe(seen: Any) -> None:
                if seen.source != "candidate" or seen.node != self.node:
                    return
                if seen.kind == "elected":
                    self._won(seen.key)
                elif seen.kind == "lost":
                    self._lost(seen.key)

            add_observer(observe)
            self.lease = swarmha.Lease(self.d, ttl=TTL) if self.system == "swarmha-lease" else None
            for key in self.keys:
                if self.lease is not None:
                    self._handles[key] = swarmha.Candidate(self.d, key, node=self.node, lease=self.lease)
                else:
                    self._handles[key] = swarmha.Candidate(self.d, key, node=self.node, ttl=TTL)
        elif self.system.startswith("kazoo"):
            from kazoo.client import KazooClient

            hosts, prefix = self.url.split("://", 1)[1].split("/", 1)
            self.prefix = "/" + prefix
            self.client = KazooClient(hosts=hosts, timeout=TTL)
            self.client.start(timeout=10)
        else:
            import pyetcd

            hosts, prefix = self.url.split("://", 1)[1].split("/", 1)
            host, port = hosts.split(",")[0].rsplit(":", 1)
            self.client = pyetcd.client(host=host, port=int(port))
            self.client.get("warm-up")
            self.prefix = prefix

    def go(self) -> None:
        if self.system.startswith("swarmha"):
            for c in self._handles.values():
                c.start()
            return
        for key in self.keys:
            threading.Thread(target=self._peer, args=(key,), daemon=True).start()
        if self.system == "etcd-lock":
            threading.Thread(target=self._refresh, daemon=True).start()

    def _peer(self, key: str) -> None:
        """One kazoo recipe or etcd lock per key, on a thread of its own (these recipes block)."""
        done = threading.Event()
        self._handles[key] = done
        if self.system == "kazoo-election":
            election = self.client.Election(f"{self.prefix}/{key}", self.node)

            def lead() -> None:
                self._won(key)
                done.wait()
                self._lost(key)

            with contextlib.suppress(Exception):
                election.run(lead)
        elif self.system == "kazoo-lock":
            lock = self.client.Lock(f"{self.prefix}/{key}", self.node)
            with contextlib.suppress(Exception):
                if lock.acquire():
                    self._won(key)
                    done.wait()
                    self._lost(key)
                    lock.release()
        else:
            lock = self.client.lock(f"{self.prefix}/{key}", ttl=int(TTL))
            with contextlib.suppress(Exception):
                if lock.acquire(timeout=None):
                    with self.lock:
                        self._locks = getattr(self, "_locks", {})
                        self._locks[key] = lock
                    self._won(key)
                    done.wait()
                    self._lost(key)
                    with self.lock:
                        self._locks.pop(key, None)
                    lock.release()

    def _refresh(self) -> None:
        while not self._stop.wait(TTL / 3.0):
            with self.lock:
                locks = list(getattr(self, "_locks", {}).values())
            for lock in locks:
                with contextlib.suppress(Exception):
                    lock.refresh()

    def release(self) -> dict[str, float]:
        """Give up every key led now; when each release started."""
        with self.lock:
            held = sorted(self.leading)
        for key in held:
            started = time.monotonic()
            self.released[key] = started
            handle = self._handles[key]
            if self.system.startswith("swarmha"):
                handle.stop()
            else:
                handle.set()
        return {k: self.released[k] for k in held}

    def quit(self) -> None:
        self._stop.set()
        if self.system.startswith("swarmha"):
            for c in self._handles.values():
                c.stop()
            if self.lease is not None:
                self.lease.close()
            self.d.close()
        else:
            for handle in self._handles.values():
                handle.set()
            with contextlib.suppress(Exception):
                if self.system.startswith("kazoo"):
                    self.client.stop()
                else:
                    self.client.close()


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale worker")
    parser.add_argument("--system", required=True, choices=SYSTEMS)
    parser.add_argument("--url", required=True)
    parser.add_argument("--keys", type=int, required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    keys = [f"k{i:05d}" for i in range(args.keys)]
    clock = _GcClock()
    worker = _Worker(args.system, args.url, keys, args.node)

    def reply(value: Any) -> None:
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    reply("ready")
    for line in sys.stdin:
        command = line.strip()
        if command == "go":
            worker.go()
            reply("going")
        elif command == "count":
            with worker.lock:
                reply(len(worker.leading))
        elif command == "leading":
            with worker.lock:
                reply(sorted(worker.leading))
        elif command == "stats":
            reply(_proc_stats(args.port))
        elif command == "gc":
            times = os.times()
            reply(
                {
                    "full_s": clock.seconds[2],
                    "full_n": clock.count[2],
                    "all_s": sum(clock.seconds),
                    "cpu_s": times.user + times.system,
                }
            )
        elif command == "release":
            reply(worker.release())
        elif command == "elected":
            with worker.lock:
                reply(dict(worker.elected))
        elif command == "quit":
            worker.quit()
            reply("bye")
            return


# -- the harness -------------------------------------------------------------------------------------------


class _Proc:
    """One worker process, run from ``tree`` (this checkout, or ``--base``'s: its swarmha and its worker)."""

    def __init__(self, system: str, url: str, keys: int, node: str, port: int, tree: Path = ROOT) -> None:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.scale", "worker", "--system", system, "--url", url,
             "--keys", str(keys), "--node", node, "--port", str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tree, env=env,
        )  # fmt: skip
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in: IO[str] = self.proc.stdin
        self._out: IO[str] = self.proc.stdout

    def read(self) -> Any:
        line = self._out.readline()
        if not line:
            raise RuntimeError(f"worker exited (code {self.proc.poll()})")
        return json.loads(line)

    def ask(self, command: str) -> Any:
        self._in.write(command + "\n")
        self._in.flush()
        return self.read()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("quit")
        with contextlib.suppress(Exception):
            self.proc.wait(30)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_one(stores: Any, backend: str, system: str, n: int, elect_timeout: float, tree: Path = ROOT) -> dict[str, Any]:
    """One measurement; with ``tree`` another checkout, its row names the system ``SYSTEM (base)``."""
    prefix = f"scale-{system}-{n}-{time.monotonic_ns()}"
    url = stores.url(backend, prefix)
    port = _store_port(stores, backend)
    result: dict[str, Any] = {"backend": backend, "system": _label(system, tree), "keys": n}
    procs = [_Proc(system, url, n, f"p{i}", port, tree) for i in range(PROCESSES)]
    try:
        for p in procs:
            assert p.read() == "ready"
        gc_before = [p.ask("gc") for p in procs]
        requests_before = stores.requests(backend)
        began = time.monotonic()
        for p in procs:
            p.ask("go")
        deadline = began + elect_timeout
        shown = began
        while (led := sum(p.ask("count") for p in procs)) < n:
            if time.monotonic() - shown >= 5.0:
                shown = time.monotonic()
                print(f"  {shown - began:.0f}s: {led} of {n} keys led", flush=True)
            if time.monotonic() > deadline:
                result["error"] = f"not every key elected within {elect_timeout:.0f}s"
                result["led"] = sum(p.ask("count") for p in procs)
                return result
            time.sleep(0.02)
        result["elect_s"] = time.monotonic() - began
        requests_after = stores.requests(backend)
        gc_after = [p.ask("gc") for p in procs]
        # in the garbage collector from "go" to every key led, the most of the three processes
        for name in ("full_s", "full_n", "all_s"):
            result[f"gc_{name}"] = max(a[name] - b[name] for a, b in zip(gc_after, gc_before, strict=True))
        # CPU (user + system) from "go" to every key led, the most of the three (a --base checkout may not say)
        if all("cpu_s" in g for g in gc_before + gc_after):
            result["elect_cpu_s"] = max(a["cpu_s"] - b["cpu_s"] for a, b in zip(gc_after, gc_before, strict=True))
        # the store's count (benchmarks/stores.py says what it counts; ZooKeeper: packets, pings included)
        counted = [requests_after[k] - requests_before.get(k, 0.0) for k in requests_after if k != "connections"]
        result["elect_requests_per_key"] = sum(counted) / n
        led = [set(p.ask("leading")) for p in procs]
        union = set().union(*led)
        result["exactly_one"] = len(union) == n and sum(len(s) for s in led) == n
        if system == "swarmha-lease":
            result["settled_s"] = _settle(stores, backend)
        else:
            time.sleep(1.0)
        result["idle_rps_per_process"] = _requests_over(stores, backend, IDLE_WINDOW) / IDLE_WINDOW / PROCESSES
        stats = [p.ask("stats") for p in procs]
        for name in ("threads", "fds", "conns", "rss_kb"):
            result[name] = max(s[name] for s in stats)
        counts = [p.ask("count") for p in procs]
        leader = procs[counts.index(max(counts))]
        others = [p for p in procs if p is not leader]
        released = leader.ask("release")
        deadline = time.monotonic() + elect_timeout
        while sum(p.ask("count") for p in others) < n:
            if time.monotonic() > deadline:
                result["handover_error"] = "not every released key was taken over"
                break
            time.sleep(0.02)
        elected: dict[str, float] = {}
        for p in others:
            elected.update(p.ask("elected"))
        handovers = [elected[k] - t for k, t in released.items() if k in elected and elected[k] >= t]
        result["released"] = len(released)
        result["handover_p50_ms"] = _percentile(handovers, 0.5) * 1000
        result["handover_p95_ms"] = _percentile(handovers, 0.95) * 1000
        return result
    finally:
        for p in procs:
            p.close()


def _label(system: str, tree: Path) -> str:
    """A row's system: ``SYSTEM (base)`` for the workers of ``--base``'s checkout."""
    return system if tree == ROOT else f"{system} (base)"


def _measure(stores: Any, backend: str, system: str, n: int, timeout: float, tree: Path) -> dict[str, Any]:
    try:
        r = run_one(stores, backend, system, n, timeout, tree)
    except Exception as e:
        r = {"backend": backend, "system": _label(system, tree), "keys": n, "error": f"{type(e).__name__}: {e}"}
    print(f"  {json.dumps(r)}", flush=True)
    return r


def _settle(stores: Any, backend: str) -> float:
    """Seconds from "every key led" until the first whole second with fewer than :data:`QUIET` store requests
    per process (the standbys' watches are still being set up for a while after the last key is led); at most
    :data:`SETTLE_MAX`, 1.0 at the least. Only for ``swarmha-lease``: with a session per key (swarmha, the peers)
    the keepalives never go quiet."""
    began = time.monotonic()
    while time.monotonic() - began < SETTLE_MAX:
        if _requests_over(stores, backend, 1.0) / PROCESSES < QUIET:
            break
    return time.monotonic() - began


def _requests_over(stores: Any, backend: str, seconds: float) -> float:
    """Requests the store counted over the next ``seconds`` (its connection count aside)."""
    before = stores.requests(backend)
    time.sleep(seconds)
    after = stores.requests(backend)
    return sum(after.get(k, 0.0) - before.get(k, 0.0) for k in after if k != "connections")


def _store_port(stores: Any, backend: str) -> int:
    if backend == "consul":  # the Consul API double, in this process
        return int(stores.consul.port) if stores.consul is not None else 0
    if backend == "postgres":
        return int(stores.postgres.port) if stores.postgres is not None else 0
    if backend == "redis":
        return int(stores.redis.port) if stores.redis is not None else 0
    cluster = {"etcd": stores.etcd, "zk": stores.zk}.get(backend)
    return 0 if cluster is None else int(cluster.members[0].client_port)


def report(results: list[dict[str, Any]], command: str, versions: str = "") -> str:
    lines = [
        BEGIN,
        "## Scale: N keys x 3 processes",
        "",
        f"Command: `{command}` — {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}{versions}.",
        "ttl 6 s; every figure measured in that one run, all systems on the same servers (ZooKeeper with its "
        "default `maxClientCnxns=60`). Per process: the largest of the three. settled (one Lease per process "
        "only): from every key led until a second with fewer than 5 store requests per process (watches still "
        "being set up). idle req/s: server-side requests over the 6 s after that, with every key held, per process "
        "(ZooKeeper counts heartbeat pings; n/m: not measured, the "
        "sqlite counter sees only the harness's own connections). handover: per key, from "
        "its release to another process leading it, while the releasing process gives up all its keys.",
        "",
        "| backend | system | keys | every key led (s) | settled (s) | exactly one | idle req/s | threads | fds "
        "| store conns | RSS MB | handover p50 / p95 (ms) |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r and "elect_s" not in r:
            lines.append(
                f"| {r['backend']} | {r['system']} | {r['keys']} | **failed**: {r['error']} "
                f"({r.get('led', '?')} led) | | | | | | | | |"
            )
            continue
        hand = f"{r['handover_p50_ms']:.1f} / {r['handover_p95_ms']:.1f}"
        # the sqlite counter sees this process's connections only, not the workers'
        idle = "n/m" if r["backend"] == "sqlite" else f"{r['idle_rps_per_process']:.1f}"
        settled = f"{r['settled_s']:.0f}" if "settled_s" in r else "n/m"
        if "handover_error" in r:
            hand += " (incomplete)"
        lines.append(
            f"| {r['backend']} | {r['system']} | {r['keys']} | {r['elect_s']:.2f} | {settled} | "
            f"{'yes' if r['exactly_one'] else '**NO**'} | {idle} | {r['threads']} | "
            f"{r['fds']} | {r['conns']} | {r['rss_kb'] / 1024:.0f} | {hand} |"
        )
    lines += ["", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        worker_main(argv[1:])
        return
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke mode: N=1,10 on sqlite and etcd, no peers")
    parser.add_argument("--keys", default="1,100,1000,10000", help="comma-separated N values")
    parser.add_argument("--backends", default="etcd,zk,sqlite")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--peer-max", type=int, default=1000, help="largest N for the peers and per-session swarmha")
    parser.add_argument("--sqlite-max", type=int, default=1000, help="largest N on sqlite")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument(
        "--base",
        type=Path,
        help="another checkout (git worktree add --detach DIR COMMIT): each swarmha-lease run is also made with "
        "its workers, right before this checkout's, rows labelled '(base)'",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each row (with --base: base, new, base, ...)")
    args = parser.parse_args(argv)
    if args.base is not None and not (args.base / "benchmarks" / "scale.py").is_file():
        parser.error(f"--base {args.base}: not a swarmha checkout (no benchmarks/scale.py)")
    keys = [1, 10] if args.quick else [int(k) for k in args.keys.split(",")]
    backends = ["sqlite", "etcd"] if args.quick else args.backends.split(",")
    systems = ["swarmha-lease"] if args.quick else args.systems.split(",")
    from benchmarks.stores import Stores

    results: list[dict[str, Any]] = []
    with Stores(list(backends), zk_extra=[]) as stores:
        for backend in backends:
            for system in systems:
                if system in PEERS and PEERS[system] != backend:
                    continue
                for n in keys:
                    if (system != "swarmha-lease" and n > args.peer_max) or (
                        backend == "sqlite" and n > args.sqlite_max
                    ):
                        continue
                    timeout = max(30.0, n / 50.0)
                    trees = [ROOT] if args.base is None or system != "swarmha-lease" else [args.base, ROOT]
                    for _ in range(args.repeat):
                        for tree in trees:
                            print(f"scale: {backend} {system} N={n} ({tree}) ...", flush=True)
                            results.append(_measure(stores, backend, system, n, timeout, tree))
    command = "python -m benchmarks scale " + " ".join(argv)
    versions = f"; base {commit_of(args.base)}, new {commit_of(ROOT)}" if args.base is not None else ""
    section = report(results, command.strip(), versions)
    print(section)
    if not args.quick:
        splice(Path(args.out), BEGIN, END, section)
    json_path = Path(args.out).with_name("benchmarks-scale.json")
    if not args.quick:
        json_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
