"""Manager benchmarks: the cost of each forwarding hop next to nginx, stream latency, failover as a client sees it.

    python -m benchmarks.manager [--quick] [--rounds 20] [--out docs/benchmarks-manager.md]

Starts its own parts on loopback: one dockerd (tests/support/dockerd.py, busybox image, one idle container), an nginx
reverse proxy to it (``daemon off``, one worker, upstream keep-alive: the reference proxy hop), and two
``swarmha manage --replication`` processes over a sqlite discovery (the first is the primary, the second a
replica). Then, side by side in one run (targets interleaved in blocks, so load changes hit all of them):

* ``/_ping``, ``/containers/json`` and ``/containers/json?filters={"status":["running"]}`` latency (p50/p90/p99,
  one keep-alive connection, sequential) and throughput (closed loop, concurrency 1 and 8, keep-alive) direct to
  dockerd, through nginx, through the primary, through replica → primary (the replica answers ``/_ping``
  itself, as Swarm did, and each manager answers the plain list from its view of the engines), with the manager
  process's CPU time per request during its throughput runs (``/proc``; what a shared machine's load changes
  least);
* ``logs -f``: the same container's log stream read directly and through the replica at once; per line, the
  difference of the client-side arrival times;
* failover: a client sends the filtered list (forwarded) to the replica back to back while the primary gets SIGTERM
  (graceful) or SIGKILL (crash); per round, the time until the replica answers ``/info`` as Primary, the
  failed requests and the longest request (the stall). The stopped manager comes back as a replica. Then the
  store pause: the same pair over a one-member etcd, SIGSTOPped for 1.5 x ttl (past the primary's renew
  deadline, within the replica's wait); the time from SIGCONT to a primary, and what the client saw
  (:mod:`benchmarks.manager_failover`).

The load generator is a small blocking-socket HTTP/1.1 client in this process (threads for concurrency 8),
so every target pays the same client cost. Prints the tables and writes them to ``--out`` with the command,
the machine and the load (``uptime``) before and after.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import attrs

from benchmarks.core import machine, percentiles
from benchmarks.loadgen import FORWARDED, Conn, HTTPError
from benchmarks.manager_failover import Failover, Managers, failover, store_pause
from benchmarks.support import uptime, wait
from tests.support.dockerd import IMAGE, DockerEngine, busybox_tar, missing, start_engine, stop_engine
from tests.support.net import free_port
from tests.support.procs import stop_group
from tests.support.servers import Cluster, etcd_cluster

__all__ = ["main"]

#: Forwarded by a replica and relayed by the primary to the engine: a container list with a filter (a plain list
#: and an inspect are answered by each manager from its event-fed view of the engines: no hop to measure there).
PATHS = ("/_ping", "/v1.41/containers/json", FORWARDED)


# -- a small HTTP/1.1 client: the same cost in front of every target ------------------------------------------


def latency(addr: str, path: str, n: int) -> list[float]:
    """``n`` sequential requests on one keep-alive connection; seconds each."""
    conn = Conn(addr)
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            status, _ = conn.get(path)
            out.append(time.perf_counter() - t0)
            if status != 200:
                raise HTTPError(f"{addr}{path}: status {status}")
    finally:
        conn.close()
    return out


def throughput(addr: str, path: str, concurrency: int, seconds: float) -> float:
    """Completed requests per second with ``concurrency`` keep-alive connections in a closed loop."""
    counts = [0] * concurrency
    errors: list[BaseException] = []
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        conn = Conn(addr)
        try:
            start.wait(10)
            while time.perf_counter() < stop_at[0]:
                status, _ = conn.get(path)
                if status != 200:
                    raise HTTPError(f"status {status}")
                counts[i] += 1
        except BaseException as e:  # reported by the caller
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    start.wait(10)
    for t in threads:
        t.join(seconds + 30)
    took = time.perf_counter() - t0
    if errors:
        raise HTTPError(f"{addr}{path}: {errors[0]!r}")
    return sum(counts) / took


# -- the parts: dockerd, nginx, managers ------------------------------------------------------------------------


NGINX_CONF = """daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream engine {{ server {engine}; keepalive 32; keepalive_requests 10000000; keepalive_timeout 600s; }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://engine;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""


@attrs.define
class Nginx:
    addr: str
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, engine: str, directory: Path) -> Nginx:
        directory.mkdir(parents=True, exist_ok=True)
        addr = f"127.0.0.1:{free_port()}"
        conf = directory / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=directory, engine=engine, listen=addr))
        log = open(directory / "stderr.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(directory)], stdout=log, stderr=log, start_new_session=True
        )
        nginx = cls(addr, proc)
        wait(lambda: answers(addr), 10, "nginx to answer")
        return nginx

    def stop(self) -> None:
        stop_group(self.proc)


def answers(addr: str, path: str = "/_ping") -> bool:
    """True if ``addr`` answers GET ``path`` with 200 now (a readiness probe: any failure is False)."""
    try:
        conn = Conn(addr, timeout=1.0)
    except OSError:
        return False
    try:
        return conn.get(path)[0] == 200
    except (OSError, HTTPError):
        return False
    finally:
        conn.close()


# -- measurements -------------------------------------------------------------------------------------------------


def side_by_side(targets: dict[str, str], rounds: int, block: int) -> dict[tuple[str, str], list[float]]:
    """Latency samples per (target, path), targets interleaved block by block."""
    samples: dict[tuple[str, str], list[float]] = {(t, p): [] for t in targets for p in PATHS}
    for addr in targets.values():  # warm up: connections, caches, the primary's engine view
        for path in PATHS:
            latency(addr, path, 50)
    for _ in range(rounds):
        for name, addr in targets.items():
            for path in PATHS:
                samples[(name, path)] += latency(addr, path, block)
    return samples


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) the process ``pid`` has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rates(
    targets: dict[str, str],
    concurrency: int,
    seconds: float,
    repeats: int,
    pids: dict[str, int] | None = None,
    cpu: dict[tuple[str, str], float] | None = None,
) -> dict[tuple[str, str], float]:
    """Median requests/s per (target, path) over ``repeats`` interleaved runs of ``seconds`` each.

    For the targets in ``pids``, the median CPU time of that process per request (seconds) goes to ``cpu``.
    """
    runs: dict[tuple[str, str], list[float]] = {(t, p): [] for t in targets for p in PATHS}
    used: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for name, addr in targets.items():
            for path in PATHS:
                pid = (pids or {}).get(name)
                c0, t0 = (cpu_seconds(pid) if pid else 0.0), time.perf_counter()
                rate = throughput(addr, path, concurrency, seconds)
                runs[(name, path)].append(rate)
                if pid and rate > 0:
                    used.setdefault((name, path), []).append(
                        (cpu_seconds(pid) - c0) / (rate * (time.perf_counter() - t0))
                    )
    if cpu is not None:
        cpu.update({k: sorted(v)[len(v) // 2] for k, v in used.items()})
    return {k: sorted(v)[len(v) // 2] for k, v in runs.items()}


_LINE = re.compile(rb"tick (\d+)\n")


def _follow(addr: str, cid: str, arrivals: dict[int, float], stop: threading.Event, ready: threading.Event) -> None:
    conn = Conn(addr, timeout=30)
    try:
        status, headers = conn.head("GET", f"/v1.41/containers/{cid}/logs?follow=1&stdout=1&tail=0")
        if status != 200:
            raise HTTPError(f"logs via {addr}: status {status}")
        ready.set()
        pending = b""
        for chunk in conn.chunks(headers):
            now = time.perf_counter()
            pending += chunk
            for m in _LINE.finditer(pending):
                arrivals.setdefault(int(m.group(1)), now)
            pending = pending[pending.rfind(b"\n") + 1 :]
            if stop.is_set():
                return
    finally:
        conn.close()


def logs_latency(engine: DockerEngine, replica: str, lines: int, period: float) -> list[float]:
    """Per line: arrival through the replica minus arrival direct from the engine (same container, same time)."""
    script = f"i=0; while [ $i -lt {lines + 20} ]; do echo tick $i; i=$((i+1)); sleep {period}; done"
    cid = engine.docker("run", "-d", IMAGE, "sh", "-c", script).stdout.strip()
    direct: dict[int, float] = {}
    via: dict[int, float] = {}
    stop = threading.Event()
    readies = [threading.Event(), threading.Event()]
    threads = [
        threading.Thread(target=_follow, args=(engine.addr, cid, direct, stop, readies[0]), daemon=True),
        threading.Thread(target=_follow, args=(replica, cid, via, stop, readies[1]), daemon=True),
    ]
    try:
        for t in threads:
            t.start()
        for r in readies:
            r.wait(10)
        wait(lambda: len(via) >= lines + 5 or not threads[1].is_alive(), (lines + 20) * period + 20, "log lines", 0.05)
    finally:
        stop.set()
        engine.docker("rm", "-f", cid, check=False)
        for t in threads:
            t.join(10)
    both = sorted(set(direct) & set(via))[3:]  # the first lines may predate one of the two streams
    return [via[i] - direct[i] for i in both[:lines]]


# -- the report -------------------------------------------------------------------------------------------------


def _ms(x: float) -> str:
    return f"{x * 1000:.2f}"


def _ratio(hop: float, nginx: float) -> str:
    return f"{hop / nginx:.1f}x" if nginx > 0 else "n/a"


def report(
    lat: dict[tuple[str, str], list[float]],
    tput: dict[int, dict[tuple[str, str], float]],
    logs: list[float],
    fail: dict[str, list[Failover]],
    targets: list[str],
    cpu: dict[int, dict[tuple[str, str], float]] | None = None,
) -> str:
    out = ["### Latency (one keep-alive connection, sequential requests)", ""]
    out += ["| path | target | n | p50 ms | p90 ms | p99 ms | added p50 ms (vs the hop before) |", "|" + "---|" * 7]
    before = {"engine": None, "nginx": "engine", "primary": "engine", "replica": "primary"}
    for path in PATHS:
        for t in targets:
            p = percentiles(lat[(t, path)])
            prev = before[t]
            added = "" if prev is None else _ms(p["p50"] - percentiles(lat[(prev, path)])["p50"])
            out.append(
                f"| `{path}` | {t} | {int(p['n'])} | {_ms(p['p50'])} | {_ms(p['p90'])} | {_ms(p['p99'])} | {added} |"
            )
    out += ["", "### Throughput (closed loop, keep-alive; median of the interleaved runs)", ""]
    conc = sorted(tput)
    cpu = cpu or {}
    out += [
        "| path | target | "
        + " | ".join(f"c={c} req/s (% of engine)" for c in conc)
        + " | manager CPU µs per request, "
        + " / ".join(f"c={c}" for c in conc)
        + " |"
    ]
    out += ["|---|---|" + "---|" * (len(conc) + 1)]
    for path in PATHS:
        for t in targets:
            cells = []
            for c in conc:
                r, base = tput[c][(t, path)], tput[c][("engine", path)]
                cells.append(f"{r:.0f} ({100 * r / base:.0f} %)")
            used = [cpu.get(c, {}).get((t, path)) for c in conc]
            cells.append(" / ".join(f"{u * 1e6:.0f}" for u in used if u is not None))
            out.append(f"| `{path}` | {t} | " + " | ".join(cells) + " |")
    out += ["", "### Per-hop cost next to nginx (p50 added latency)", ""]
    out += ["| path | nginx hop ms | primary hop ms | ratio | replica hop ms | ratio |", "|" + "---|" * 6]
    for path in PATHS:
        p50 = {t: percentiles(lat[(t, path)])["p50"] for t in targets}
        ng, pr, rp = p50["nginx"] - p50["engine"], p50["primary"] - p50["engine"], p50["replica"] - p50["primary"]
        out.append(f"| `{path}` | {_ms(ng)} | {_ms(pr)} | {_ratio(pr, ng)} | {_ms(rp)} | {_ratio(rp, ng)} |")
    if logs:
        p = percentiles(logs)
        out += ["", "### `logs -f` through the replica (arrival via replica minus arrival direct, same line)", ""]
        out += ["| n | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
        out.append(f"| {int(p['n'])} | {_ms(p['p50'])} | {_ms(p['p90'])} | {_ms(p['p99'])} | {_ms(p['max'])} |")
    if fail:
        out += ["", "### Manager failover as a client of the replica sees it", ""]
        out += [
            "| stop | rounds | takeover p50 ms | takeover max ms | failed requests (total) | "
            "longest request p50 ms | longest request max ms |",
            "|" + "---|" * 7,
        ]
        notes = [k for k in fail if k.startswith("store pause")]
        for kind, runs in fail.items():
            took = percentiles([r.took for r in runs])
            stall = percentiles([r.stall for r in runs])
            out.append(
                f"| {kind} | {len(runs)} | {_ms(took['p50'])} | {_ms(took['max'])} | {sum(r.failed for r in runs)} "
                f"of {sum(r.requests for r in runs)} | {_ms(stall['p50'])} | {_ms(stall['max'])} |"
            )
        if notes:
            out += [
                "",
                "Store pause: the same two managers over a one-member etcd, SIGSTOPped past the primary's renew "
                "deadline (it steps down) and within the replica's wait (ttl + 2 s); takeover counts from SIGCONT to "
                "a primary, the longest request includes the pause.",
            ]
    out += ["", "### Targets, from the figures above", ""]
    out += ["| goal | measured | met |", "|---|---|---|"]
    out += _goals(lat, tput, logs, fail)
    return "\n".join(out)


def _goals(
    lat: dict[tuple[str, str], list[float]],
    tput: dict[int, dict[tuple[str, str], float]],
    logs: list[float],
    fail: dict[str, list[Failover]],
) -> list[str]:
    rows = []

    def row(goal: str, measured: str, ok: bool) -> None:
        rows.append(f"| {goal} | {measured} | {'yes' if ok else '**no**'} |")

    p50 = {k: percentiles(v)["p50"] for k, v in lat.items()}
    path = FORWARDED
    for hop, (a, b) in {"primary": ("primary", "engine"), "replica": ("replica", "primary")}.items():
        added = p50[(a, path)] - p50[(b, path)]
        row(f"{hop} hop adds <= 1 ms p50 to `{path}`", f"{_ms(added)} ms", added <= 0.001)
        nginx = p50[("nginx", path)] - p50[("engine", path)]
        row(f"{hop} hop <= 3x nginx's added p50 (`{path}`)", _ratio(added, nginx), nginx > 0 and added <= 3 * nginx)
    for c, r in sorted(tput.items()):
        share = r[("primary", path)] / r[("engine", path)]
        row(f"primary >= 50 % of the engine's throughput, c={c}", f"{share * 100:.0f} %", share >= 0.5)
        share = r[("replica", path)] / r[("primary", path)]
        row(f"replica >= 50 % of the primary's throughput, c={c}", f"{share * 100:.0f} %", share >= 0.5)
    if logs:
        worst = percentiles(logs)["p99"]
        row("a `logs -f` line through a replica within 10 ms of the engine (p99)", f"{_ms(worst)} ms", worst <= 0.010)
    for kind, runs in fail.items():
        if kind.startswith("store pause"):
            failed = sum(r.failed for r in runs)
            row("no failed request through a replica across a store pause", f"{failed} failed", failed == 0)
    graceful = fail.get("graceful (SIGTERM)")
    if graceful:
        took = percentiles([r.took for r in graceful])["p50"]
        row("graceful manager failover p50 <= 100 ms", f"{_ms(took)} ms", took <= 0.100)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.manager", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run under a minute (figures mean little)")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved latency blocks per target (default 20)")
    parser.add_argument("--block", type=int, default=100, help="requests per latency block (default 100)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one throughput run (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved throughput runs per target (default 3)")
    parser.add_argument("--log-lines", type=int, default=100, help="logs -f lines compared (default 100)")
    parser.add_argument("--failovers", type=int, default=10, help="graceful failover rounds (default 10)")
    parser.add_argument("--crashes", type=int, default=3, help="crash failover rounds (default 3)")
    parser.add_argument("--store-pauses", type=int, default=3, help="etcd pause rounds (default 3)")
    parser.add_argument("--ttl", default="2s", help="--replication-ttl of the managers (default 2s)")
    parser.add_argument("--out", default="docs/benchmarks-manager.md", help="where to write the markdown")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.block, args.seconds, args.repeats = 3, 50, 0.5, 1
        args.log_lines, args.failovers, args.crashes, args.store_pauses = 20, 2, 1, 1
    reason = missing()
    if reason:
        sys.exit(f"benchmarks.manager: cannot run: {reason}")
    if not _which("nginx"):
        sys.exit("benchmarks.manager: cannot run: nginx is not installed")

    load_before = uptime()
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="swarmha-bench-mgr-"))
    engine = start_engine(0)
    nginx: Nginx | None = None
    managers: Managers | None = None
    etcd: Cluster | None = None
    on_etcd: Managers | None = None
    try:
        engine.docker("import", str(busybox_tar(tmp)), IMAGE)
        parts = f"one dockerd ({_version(engine)}), nginx {_nginx_version()}"
        engine.docker("run", "-d", "--name", "idle", IMAGE, "sleep", "100000")
        nginx = Nginx.start(engine.addr, tmp / "nginx")
        managers = Managers(engine.addr, tmp, args.ttl)
        targets = {
            "engine": engine.addr,
            "nginx": nginx.addr,
            "primary": managers.primary.addr,
            "replica": managers.replica.addr,
        }
        print("measuring latency ...", flush=True)
        lat = side_by_side(targets, args.rounds, args.block)
        tput: dict[int, dict[tuple[str, str], float]] = {}
        cpu: dict[int, dict[tuple[str, str], float]] = {}
        pids = {"primary": managers.primary.proc.pid, "replica": managers.replica.proc.pid}
        for c in (1, 8):
            print(f"measuring throughput, concurrency {c} ...", flush=True)
            cpu[c] = {}
            tput[c] = rates(targets, c, args.seconds, args.repeats, pids, cpu[c])
        print("measuring logs -f ...", flush=True)
        logs = logs_latency(engine, managers.replica.addr, args.log_lines, 0.05)
        fail: dict[str, list[Failover]] = {"graceful (SIGTERM)": [], "crash (SIGKILL)": []}
        ttl = float(args.ttl.rstrip("s"))
        for i in range(args.failovers):
            print(f"graceful failover {i + 1}/{args.failovers} ...", flush=True)
            fail["graceful (SIGTERM)"].append(failover(managers, signal.SIGTERM, 10))
        for i in range(args.crashes):
            print(f"crash failover {i + 1}/{args.crashes} ...", flush=True)
            fail["crash (SIGKILL)"].append(failover(managers, signal.SIGKILL, ttl + 10))
        if args.store_pauses:
            managers.close()
            managers = None
            etcd = etcd_cluster(tmp / "etcd", 1)
            on_etcd = Managers(engine.addr, tmp, args.ttl, url=f"etcd://{etcd.hosts}/bench?timeout=2")
            kind = f"store pause (etcd SIGSTOP {1.5 * ttl:g} s)"
            fail[kind] = []
            for i in range(args.store_pauses):
                print(f"store pause {i + 1}/{args.store_pauses} ...", flush=True)
                fail[kind].append(store_pause(on_etcd, etcd, 1.5 * ttl, ttl + 10))
    finally:
        for group in (managers, on_etcd):
            if group is not None:
                group.close()
        if etcd is not None:
            etcd.close()
        if nginx is not None:
            nginx.stop()
        stop_engine(engine)
    table = report(lat, tput, logs, fail, list(targets), cpu)
    print(table)
    command = "python -m benchmarks.manager " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (
        "# Manager benchmarks\n\n"
        f"Command: `{command.strip()}` ({time.monotonic() - began:.0f} s)  \n"
        f"Machine: {machine()}  \nDate: {time.strftime('%Y-%m-%d %H:%M')}  \n"
        f"Load before: `{load_before}`  \nLoad after: `{uptime()}`\n\n"
        f"Parts: {parts} (1 worker, upstream keep-alive), "
        f"two `swarmha manage --replication --replication-ttl {args.ttl}` over sqlite, all on loopback; the client "
        "is this process (blocking sockets, one thread per connection). `/_ping` through the replica is answered "
        "by the replica itself (as Swarm did); `/containers/json` is answered by each manager from its event-fed "
        'view of the engines (swarmha.manager.view), so it crosses no hop (its "added" latency is what the view '
        "saves over asking the engine); the filtered list crosses both hops (replica, primary, engine), and the "
        "goals and the failover rounds use it.\n\n"
        f"{table}\n"
    )
    Path(args.out).write_text(text)
    print(f"written to {args.out}")


def _which(name: str) -> bool:
    return shutil.which(name) is not None


def _version(engine: DockerEngine) -> str:
    r = engine.docker("version", "--format", "{{.Server.Version}}", check=False)
    return "Docker " + (r.stdout.strip() or "?")


def _nginx_version() -> str:
    r = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return r.stderr.strip().rpartition("/")[2] or "?"


if __name__ == "__main__":
    main()
