"""The long fault soak: thousands of seeded faults against one backend, summarised in docs/reliability.md.

    python -m tests.support.fault.soak --backend sqlite --faults 1000 --seed 1 --ttl 1.0 --out docs/reliability.md

It starts the store itself (the test store fixtures of tests/support/stores/, or 3-member clusters built on
tests/support/servers.py for ``etcd-cluster`` / ``zk-cluster``), then calls
:func:`tests.support.fault.harness.run_faults` in chunks of ``--chunk`` faults, each with a fresh key prefix, fresh
workers and fresh logs (so logs and memory stay bounded), seeded ``chunk_seed(seed, i)``. A chunk that finds a
violation keeps its logs under ``--workdir`` and is listed with its seed, so it can be replayed alone::

    run_faults(store, path, faults=<chunk>, seed=<chunk seed>, ttl=<ttl>)

The reports are aggregated (faults by kind, overlaps, token regressions, longest leaderless gap, recovery
time distribution) and written to the backend's section of ``--out``; the summary table at the top of that
file is rebuilt from every backend's section (each section carries its figures as a JSON comment). Several
soaks may run at once: the file is updated under an exclusive ``flock``.

Evidence for slow recoveries: a monitor thread measures this process's scheduling lag (how late a 50 ms
sleep wakes up) and samples the load average; each slow recovery is listed with the worst lag seen while it
lasted and, from the chunk's logs, the longest pause between two consecutive observations of each worker
(a worker logs every 10 ms, so a pause of hundreds of ms means it was not scheduled, not that it lost).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import datetime
import fcntl
import hashlib
import itertools
import json
import math
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import attrs

from tests.support.fault.checker import Report, load
from tests.support.fault.harness import STORE_KINDS, run_faults
from tests.support.servers import ETCD, Cluster, etcd_cluster, zk_cluster
from tests.support.stores.cluster import ClusterStore, MemberClusterStore

BACKENDS = ("sqlite", "etcd", "zk", "consul", "etcd-cluster", "zk-cluster", "postgres", "pgbouncer", "redis")
SUMMARY_BEGIN, SUMMARY_END = "<!-- soak:summary:begin -->", "<!-- soak:summary:end -->"
SECTIONS_END = "<!-- soak:sections:end -->"
DATA = re.compile(r"<!-- soak:data (\{.*?\}) -->")

#: etcd with a 500 ms election timeout (50 ms heartbeat): its minimum lease TTL, 1.5 x the election timeout
#: rounded up to whole seconds, becomes 1 s instead of 2 s, so ttl=1 gets a 1 s lease.
FAST_ETCD_FLAGS = ("--heartbeat-interval=50", "--election-timeout=500")


# -- stores ------------------------------------------------------------------------------------------------


class _TmpPathFactory:
    """The one method of pytest's TempPathFactory that the store fixtures call."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._n = 0

    def mktemp(self, basename: str, numbered: bool = True) -> Path:
        self._n += 1
        path = self.base / (f"{basename}{self._n}" if numbered else basename)
        path.mkdir(parents=True, exist_ok=False)
        return path


def _etcd_cluster(workdir: Path, size: int, fast: bool) -> Cluster:
    """tests.support.servers.etcd_cluster, optionally with the fast election timeout (FAST_ETCD_FLAGS)."""
    return etcd_cluster(workdir, size, FAST_ETCD_FLAGS if fast else ())


def open_store(backend: str, base: Path, fast_etcd: bool) -> Any:
    """The store fixture for ``backend`` (its servers started under ``base``)."""
    factory = _TmpPathFactory(base)
    if backend == "sqlite":
        from tests.support.stores.sqlite import open_store as open_sqlite

        return open_sqlite(factory)  # type: ignore[arg-type]
    if backend == "consul":
        from tests.support.stores.consul import open_store as open_consul

        return open_consul(factory)  # type: ignore[arg-type]
    if backend == "postgres":
        from tests.support.stores.postgres import open_store as open_postgres

        return open_postgres(factory)  # type: ignore[arg-type]
    if backend == "pgbouncer":
        from tests.support.stores.pgbouncer import open_store as open_pgbouncer

        return open_pgbouncer(factory)  # type: ignore[arg-type]
    if backend == "redis":
        from tests.support.stores.redis import open_store as open_redis

        return open_redis(factory)  # type: ignore[arg-type]
    if backend == "zk":
        from tests.support.stores.zookeeper import open_store as open_zk

        return open_zk(factory)  # type: ignore[arg-type]
    if backend == "etcd":
        return ClusterStore(backend, "etcd", _etcd_cluster(factory.mktemp("etcd"), 1, fast_etcd))
    if backend == "etcd-cluster":
        return MemberClusterStore(backend, "etcd", _etcd_cluster(factory.mktemp("etcd"), 3, fast_etcd))
    if backend == "zk-cluster":
        return MemberClusterStore(backend, "zk", zk_cluster(factory.mktemp("zookeeper"), 3))
    raise ValueError(backend)


# -- evidence of CPU starvation ------------------------------------------------------------------------------


class LagMonitor:
    """Measures how late a 50 ms sleep wakes up (this process's scheduling lag) and samples the load average."""

    PERIOD = 0.05

    def __init__(self) -> None:
        self.lags: deque[tuple[float, float]] = deque(maxlen=200_000)  # (monotonic, lag) when lag > 20 ms
        self.loads: deque[tuple[float, float]] = deque(maxlen=20_000)  # (monotonic, 1-min load) every 1 s
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-lag", daemon=True)

    def start(self) -> LagMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        last_load = 0.0
        while not self._stop.is_set():
            t = time.monotonic()
            self._stop.wait(self.PERIOD)
            now = time.monotonic()
            lag = now - t - self.PERIOD
            self.samples += 1
            if lag > 0.02:
                self.lags.append((now, lag))
            if now - last_load >= 1.0:
                last_load = now
                self.loads.append((now, os.getloadavg()[0]))

    def worst_lag(self, lo: float, hi: float) -> float:
        return max((lag for t, lag in self.lags if lo <= t <= hi), default=0.0)

    def load_at(self, t: float) -> float | None:
        return min(self.loads, key=lambda s: abs(s[0] - t), default=(0.0, None))[1]

    def count_over(self, threshold: float) -> int:
        return sum(1 for _, lag in self.lags if lag > threshold)


def worker_pauses(logs: Sequence[Path], lo: float, hi: float) -> dict[str, float]:
    """Per worker node: the longest pause between consecutive observations that overlaps [lo, hi]."""
    by_node: dict[str, list[float]] = {}
    for o in load(logs):
        by_node.setdefault(o.node, []).append(o.a)
    out: dict[str, float] = {}
    for node, starts in sorted(by_node.items()):
        starts.sort()
        worst = 0.0
        for a, b in itertools.pairwise(starts):
            if b >= lo and a <= hi:
                worst = max(worst, b - a)
        out[node] = round(worst, 3)
    return out


# -- the run -----------------------------------------------------------------------------------------------------


def chunk_seed(seed: int, index: int) -> int:
    """The seed of chunk ``index`` of a soak seeded ``seed`` (replay a chunk with run_faults(seed=...))."""
    return seed * 10_000 + index


@attrs.define
class Totals:
    faults: int = 0
    by_kind: dict[str, int] = attrs.field(factory=dict)
    observations: int = 0
    terms: int = 0
    overlaps: list[str] = attrs.field(factory=list)
    regressions: list[str] = attrs.field(factory=list)
    crashes: list[str] = attrs.field(factory=list)
    slow: list[dict[str, Any]] = attrs.field(factory=list)
    recoveries: list[float] = attrs.field(factory=list)
    longest_gap: float = 0.0
    by_kind_recovery: dict[str, list[float]] = attrs.field(factory=dict)
    starts_waited: list[float] = attrs.field(factory=list)  # kills that left no candidate running: wait for one
    store_lags: list[float] = attrs.field(factory=list)  # whole-store faults: the store's own return (store_lag)
    longest_gap_what: str = ""
    chunks: int = 0
    failed_chunks: list[dict[str, Any]] = attrs.field(factory=list)

    def add(self, report: Report) -> None:
        self.chunks += 1
        self.faults += report.faults
        for kind, n in report.faults_by_kind.items():
            self.by_kind[kind] = self.by_kind.get(kind, 0) + n
        self.observations += report.observations
        self.terms += report.terms
        self.overlaps += report.overlaps
        self.regressions += report.token_regressions
        self.crashes += [f"chunk {self.chunks - 1}: {c}" for c in report.crashes]
        self.recoveries += report.recovery_times
        self.starts_waited += [
            f.heal - f.inject for f in report.injected if f.kind.startswith("kill") and f.heal - f.inject > 0.05
        ]
        self.store_lags += [f.store_lag for f in report.injected if f.kind in STORE_KINDS]
        if report.longest_gap > self.longest_gap:
            self.longest_gap = report.longest_gap
            lo, hi = report.longest_gap_at, report.longest_gap_at + report.longest_gap
            during = [f"{f.kind} ({f.heal - f.inject:.2f}s)" for f in report.injected if f.inject < hi and f.heal > lo]
            self.longest_gap_what = f"chunk {self.chunks - 1}, during: " + (", ".join(during) or "no fault")

    def add_recoveries(self, report: Report, logs: Sequence[Path]) -> None:
        """Recovery time per fault kind (the checker's rule: first leader work after the heal)."""
        starts = sorted(o.a for o in load(logs) if o.did_leader_work)
        injects = sorted(f.inject for f in report.injected)
        for f in report.injected:
            i = bisect.bisect_left(starts, f.heal)
            j = bisect.bisect_right(injects, f.heal)
            if i < len(starts) and (j == len(injects) or injects[j] > starts[i]):
                self.by_kind_recovery.setdefault(f.kind, []).append(starts[i] - f.heal)


def keep_store_logs(store: Any, into: Path) -> None:
    """Copy the logs of ``store``'s members (a tests.support.servers Cluster) into ``into``; others have none."""
    cluster = getattr(store, "cluster", None)
    for member in getattr(cluster, "members", ()):
        into.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copy(member.workdir / "server.log", into / f"{member.name}.log")


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def _say(text: str) -> None:
    print(f"{datetime.datetime.now():%H:%M:%S} {text}", flush=True)


_SLOW = re.compile(
    r"^(\S+) on (\S+) healed at ([0-9.]+): "
    r"(?:leader after ([0-9.]+)s|no leader before the next fault ([0-9.]+)s|no leader)"
)


def soak(args: argparse.Namespace) -> tuple[Totals, float, LagMonitor]:
    base = Path(args.workdir or tempfile.mkdtemp(prefix=f"swarmha-soak-{args.backend}-"))
    base.mkdir(parents=True, exist_ok=True)
    monitor = LagMonitor().start()
    totals = Totals()
    kinds = tuple(args.kinds.split(",")) if args.kinds else None
    started = time.monotonic()
    end = started + args.max_minutes * 60.0
    store = open_store(args.backend, base / "store", fast_etcd=not args.default_etcd_timeouts)
    _say(f"{args.backend}: store up at {store.url()} (workdir {base})")
    try:
        index = args.first_chunk
        while totals.faults < args.faults and time.monotonic() < end:
            n = min(args.chunk, args.faults - totals.faults)
            seed = chunk_seed(args.seed, index)
            workdir = base / f"chunk{index:03d}"
            budget = min(n * (8.0 * args.ttl + 10.0), max(30.0, end - time.monotonic()))
            t0 = time.monotonic()
            try:
                report = run_faults(
                    store,
                    workdir,
                    faults=n,
                    seed=seed,
                    ttl=args.ttl,
                    budget=budget,
                    kinds=kinds,
                    keys=args.keys,
                    lease=args.lease,
                    steer=args.steer,
                )
            finally:
                if store.can_stop:
                    store.start()  # a chunk interrupted mid-outage must not leave the store down
            totals.add(report)
            logs = sorted(workdir.glob("c*.log"))
            totals.add_recoveries(report, logs)
            for text in report.slow_recoveries:
                m = _SLOW.match(text)
                entry: dict[str, Any] = {"chunk": index, "seed": seed, "what": text}
                if m:
                    heal = float(m.group(3))
                    took = float(m.group(4) or m.group(5) or args.ttl + 1.0)
                    entry["worst_lag"] = round(monitor.worst_lag(heal, heal + took), 3)
                    entry["load1"] = monitor.load_at(heal)
                    entry["worker_pauses"] = worker_pauses(logs, heal, heal + took)
                totals.slow.append(entry)
            bad = not report.ok
            if bad:
                timeline = [attrs.asdict(f) for f in report.injected]
                (workdir / "faults.json").write_text(json.dumps({"seed": seed, "faults": timeline}, indent=0))
                totals.failed_chunks.append({"chunk": index, "seed": seed, "faults": n, "logs": str(workdir)})
            else:
                shutil.rmtree(workdir, ignore_errors=True)
            _say(
                f"{args.backend} chunk {index} seed {seed}: {report.summary()} "
                f"[{time.monotonic() - t0:.0f}s, total {totals.faults} faults, load {os.getloadavg()[0]:.2f}]"
            )
            for text in report.overlaps + report.token_regressions + report.slow_recoveries + report.crashes:
                _say(f"  !! {text}")
            index += 1
    finally:
        if args.keep_store_logs:
            keep_store_logs(store, base / "store-logs")
        store.close()
        monitor.stop()
    return totals, time.monotonic() - started, monitor


# -- the document ------------------------------------------------------------------------------------------------


def _machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 2**20:.0f} GiB"
    system = f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    return f"{os.cpu_count()} cores ({cpu}){mem}, {system}"


def _server_version(backend: str) -> str:
    try:
        if backend.startswith("etcd"):
            out = subprocess.run([ETCD, "--version"], capture_output=True, text=True, timeout=10).stdout
            return out.splitlines()[0] if out else "etcd"
        if backend.startswith("zk"):
            return "ZooKeeper 3.8 (Debian zookeeper), tickTime=200, minSessionTimeout=400"
    except (OSError, subprocess.SubprocessError):
        return backend
    names = {
        "sqlite": f"sqlite {sqlite3.sqlite_version}",
        "consul": "the Consul HTTP API double",
        "postgres": "PostgreSQL 15 (Debian postgresql-15), fsync=off",
        "pgbouncer": "PostgreSQL 15 (Debian postgresql-15), fsync=off, behind PgBouncer (transaction pooling)",
        "redis": "Redis 7.0 (Debian redis-server), appendfsync always",
    }
    return names.get(backend, backend)


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def section(args: argparse.Namespace, totals: Totals, wall: float, monitor: LagMonitor, command: str) -> str:
    rec = totals.recoveries
    name = args.section or args.backend
    data = {
        "backend": name,
        "ttl": args.ttl,
        "faults": totals.faults,
        "by_kind": dict(sorted(totals.by_kind.items())),
        "overlaps": len(totals.overlaps),
        "regressions": len(totals.regressions),
        "slow": len(totals.slow),
        "crashes": len(totals.crashes),
        "longest_gap": round(totals.longest_gap, 3),
        "p50": round(percentile(rec, 50), 3) if rec else None,
        "p90": round(percentile(rec, 90), 3) if rec else None,
        "p99": round(percentile(rec, 99), 3) if rec else None,
        "max": round(max(rec), 3) if rec else None,
        "wall_min": round(wall / 60.0, 1),
    }
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(totals.by_kind.items()))
    lines = [
        f"<!-- soak:section:{name}:begin -->",
        f"### {name} (ttl {args.ttl:g} s)",
        f"<!-- soak:data {json.dumps(data)} -->",
        "",
        f"- command: `{command}`",
        f"- machine: {_machine()}; store: {_server_version(args.backend)}"
        + (
            "; etcd flags " + " ".join(FAST_ETCD_FLAGS)
            if args.backend.startswith("etcd") and not args.default_etcd_timeouts
            else ""
        ),
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; wall time {wall / 60.0:.1f} min; "
        f"{totals.chunks} chunks of ≤ {args.chunk} faults (seeds `{chunk_seed(args.seed, args.first_chunk)}`…)",
        f"- faults injected: **{totals.faults}** ({kinds})",
        f"- observations {totals.observations}, terms {totals.terms}",
        f"- overlapping terms: **{len(totals.overlaps)}**; token regressions: **{len(totals.regressions)}**; "
        f"recoveries slower than ttl + 1 s: **{len(totals.slow)}**; worker crashes: **{len(totals.crashes)}**",
        f"- longest leaderless gap (any two consecutive units of leader work): {totals.longest_gap:.3f} s "
        f"({totals.longest_gap_what})",
        f"- recovery after a heal (n={len(rec)}): p50 {_fmt(percentile(rec, 50))} s, "
        f"p90 {_fmt(percentile(rec, 90))} s, "
        f"p99 {_fmt(percentile(rec, 99))} s, max {_fmt(max(rec, default=float('nan')))} s",
        f"- scheduling lag of the soak process (a 50 ms sleep waking late; {monitor.samples} samples): "
        f"{monitor.count_over(0.1)} over 100 ms, {monitor.count_over(0.5)} over 500 ms, worst "
        f"{max((lag for _, lag in monitor.lags), default=0.0):.3f} s; load average at the end "
        f"{os.getloadavg()[0]:.2f}",
    ]
    if totals.starts_waited:
        w = totals.starts_waited
        lines.append(
            f"- kills that left no candidate process running (the others still starting after earlier kills): "
            f"{len(w)}; the harness waited for a Python process start: p50 {_fmt(percentile(w, 50))} s, "
            f"max {_fmt(max(w))} s (an idle machine starts one in ~0.45 s)"
        )
    if totals.store_lags:
        g = totals.store_lags
        lines.append(
            f"- whole-store faults ({len(g)}): recoveries count from when the store committed a write again, "
            f"p50 {_fmt(percentile(g, 50))} s, max {_fmt(max(g))} s after the fault ended "
            f"({sum(1 for x in g if x > 1.0)} over 1 s; where the fixture can tell, see tests/support/fault/harness.py)"
        )
    lines += ["", "| fault kind | injected | recovery p50 | p90 | p99 | max |", "|---|---|---|---|---|---|"]
    for kind, n in sorted(totals.by_kind.items()):
        r = totals.by_kind_recovery.get(kind, [])
        cells = " | ".join(_fmt(percentile(r, p)) for p in (50, 90, 99)) + f" | {_fmt(max(r, default=math.nan))}"
        lines.append(f"| {kind} | {n} | {cells} |")
    for title, items in (
        ("Overlaps", totals.overlaps),
        ("Token regressions", totals.regressions),
        ("Worker crashes", totals.crashes),
    ):
        if items:
            lines += ["", f"{title}:", ""] + [f"- {t}" for t in items[:20]]
    if totals.slow:
        lines += [
            "",
            "Slow recoveries (worst scheduling lag meanwhile; longest pause between a worker's observations):",
            "",
        ]
        for s in totals.slow[:30]:
            lines.append(
                f"- chunk {s['chunk']} (seed {s['seed']}): {s['what']} — lag {s.get('worst_lag')} s, "
                f"load {s.get('load1')}, worker pauses {s.get('worker_pauses')}"
            )
    if totals.failed_chunks:
        lines += [
            "",
            "Chunks with findings (logs kept): "
            + ", ".join(f"{c['chunk']} seed {c['seed']}" for c in totals.failed_chunks),
        ]
    lines.append(f"<!-- soak:section:{name}:end -->")
    return "\n".join(lines) + "\n"


SKELETON = f"""# Reliability: the fault soak

Produced by `python -m tests.support.fault.soak` (tests/support/fault/soak.py): seeded faults against real stores,
checked by the history checker (tests/support/fault/checker.py). The table and the per-backend sections below are
written by the soak; the rest is written by hand.

## Summary

{SUMMARY_BEGIN}
{SUMMARY_END}

## Per backend

{SECTIONS_END}
"""


def summary_table(text: str) -> str:
    rows = [
        "| backend | ttl | faults | by kind | overlaps | token regressions | slow (> ttl+1 s) | crashes | "
        "longest gap | "
        "recovery p50 / p90 / p99 / max | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    found = [json.loads(raw) for raw in DATA.findall(text)]
    order = {name: i for i, name in enumerate(BACKENDS)}
    found.sort(key=lambda d: (order.get(d["backend"].split()[0], len(order)), d["backend"]))
    for d in found:
        kinds = ", ".join(f"{k} {v}" for k, v in d["by_kind"].items())
        rec = " / ".join("-" if d[k] is None else f"{d[k]:.2f}" for k in ("p50", "p90", "p99", "max"))
        rows.append(
            f"| {d['backend']} | {d['ttl']:g} s | {d['faults']} | {kinds} | {d['overlaps']} | {d['regressions']} | "
            f"{d['slow']} | {d.get('crashes', 0)} | {d['longest_gap']:.2f} s | {rec} s | {d['wall_min']} min |"
        )
    return "\n".join(rows)


def update_document(path: Path, backend: str, body: str) -> None:
    """Replace ``backend``'s section of ``path`` (or add it) and rebuild the summary table, under a flock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # the lock file lives in the temp dir, not next to the document
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]  # same file, same lock in every process
    lock_path = Path(tempfile.gettempdir()) / f"swarmha-soak-{digest}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else SKELETON
        begin, end = f"<!-- soak:section:{backend}:begin -->", f"<!-- soak:section:{backend}:end -->"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            text = head + body.rstrip("\n") + rest.split(end, 1)[1]
        elif SECTIONS_END in text:
            text = text.replace(SECTIONS_END, body + "\n" + SECTIONS_END)
        else:
            text = text.rstrip("\n") + "\n\n" + body
        if SUMMARY_BEGIN in text and SUMMARY_END in text:
            head, rest = text.split(SUMMARY_BEGIN, 1)
            text = (
                head + SUMMARY_BEGIN + "\n" + summary_table(text) + "\n" + SUMMARY_END + rest.split(SUMMARY_END, 1)[1]
            )
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


# -- CLI -----------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tests.support.fault.soak",
        description="Long fault soak of one backend; writes its section of the reliability report.",
    )
    p.add_argument("--backend", required=True, choices=BACKENDS)
    p.add_argument("--faults", type=int, default=1000, help="faults to inject in total (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="main seed; chunk i runs with seed*10000+i")
    p.add_argument(
        "--first-chunk",
        type=int,
        default=0,
        help="index of the first chunk (default 0): --seed S --first-chunk I --faults 50 replays chunk I of seed S",
    )
    p.add_argument("--ttl", type=float, default=1.0, help="candidate ttl in seconds (default 1.0)")
    p.add_argument("--chunk", type=int, default=50, help="faults per chunk (fresh workers and logs; default 50)")
    p.add_argument("--out", type=Path, default=None, help="markdown file whose backend section to write")
    p.add_argument("--workdir", default=None, help="where stores and chunk logs go (default: a new temp dir)")
    p.add_argument(
        "--section",
        default=None,
        help="name of the report section to write (default: the backend's name), e.g. for a replay of one chunk",
    )
    p.add_argument(
        "--keep-store-logs",
        action="store_true",
        help="copy each etcd/ZooKeeper member's log to WORKDIR/store-logs before the store is removed (ZooKeeper "
        "logs only with an slf4j binding on $SWARMHA_ZK_JAR; see docs/reliability.md)",
    )
    p.add_argument("--kinds", default=None, help="comma-separated fault kinds (default: all the store supports)")
    p.add_argument("--max-minutes", type=float, default=100.0, help="stop starting chunks after this long")
    p.add_argument("--keys", type=int, default=0, help="more keys each worker campaigns for (faults with many held)")
    p.add_argument("--lease", action="store_true", help="each worker's candidates share one swarmha.Lease")
    p.add_argument(
        "--steer",
        action="store_true",
        help="workers with priorities and preemption, and transfer faults mixed in (see fault/harness.py)",
    )
    p.add_argument(
        "--default-etcd-timeouts",
        action="store_true",
        help="run etcd with its default 1 s election timeout (minimum lease 2 s) instead of 500 ms (minimum 1 s)",
    )
    args = p.parse_args(argv)
    if args.faults < 1 or args.chunk < 1 or args.ttl <= 0 or args.keys < 0 or args.first_chunk < 0:
        p.error("--faults and --chunk must be >= 1, --ttl > 0, --keys and --first-chunk >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m tests.support.fault.soak " + " ".join(sys.argv[1:] if argv is None else argv)

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    totals, wall, monitor = soak(args)
    body = section(args, totals, wall, monitor, command)
    print(body)
    if args.out is not None:
        update_document(args.out, args.section or args.backend, body)
    clean = (
        not (totals.overlaps or totals.regressions or totals.slow or totals.crashes) and totals.faults >= args.faults
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
