"""swarmha's manager beside the real Docker Swarm classic: ``docker ps`` and ``docker inspect`` at 1, 3 and 10 engines.

    python -m benchmarks.manager_classic [--quick] [--swarm PATH] [--sizes 1,3,10] [--out docs/benchmarks-manager.md]

Needs Swarm classic's binary (``bash ../shared/swarm-classic/build.sh`` builds it to /tmp/swarm-classic/swarm;
``--swarm`` or ``SWARM_CLASSIC_BIN`` names another); without it the part is skipped with a message. Starts on
loopback: ten dockerd (tests/support/dockerd.py, each with its own host name and engine ID, the busybox image and
one idle container) and one etcd 3.4 with ``--enable-v2`` (Swarm classic's libkv speaks the v2 API, swarmha the
v3 one). Then for N = 1, 3, 10 engines, registered under a prefix of their own for each system:
``swarm manage --replication`` twice (a primary, a replica) and ``swarmha manage --replication`` twice, all at
once, and side by side in one run (targets interleaved block by block):

* p50/p90 latency of ``GET /v1.24/containers/json`` and ``GET /v1.24/containers/ID/json`` (the idle container
  of node-1), one keep-alive connection, sequential, direct to node-1 and through each manager;
* throughput at concurrency 8 (closed loop, keep-alive), interleaved runs, the median.

The client is :mod:`benchmarks.manager`'s (blocking sockets, one thread per connection): the same cost in front
of every target. Writes (or replaces) the ``## Beside Swarm classic`` section of ``--out``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import swarmha
from benchmarks.core import machine, percentiles
from benchmarks.manager import latency, throughput
from benchmarks.support import uptime, wait
from tests.support.dockerd import IMAGE, DockerEngine, busybox_tar, missing, start_engine, stop_engine
from tests.support.manager import ManagerProc
from tests.support.net import free_port
from tests.support.procs import stop_group

__all__ = ["SECTION", "main", "swarm_binary"]

SECTION = "## Beside Swarm classic"
SIZES = (1, 3, 10)
TARGETS = ("node-1", "swarmha primary", "swarmha replica", "classic primary", "classic replica")


def swarm_binary(given: str | None = None) -> str | None:
    """Swarm classic's binary: ``given``, ``SWARM_CLASSIC_BIN``, or the build script's output; None if absent."""
    path = given or os.environ.get("SWARM_CLASSIC_BIN") or "/tmp/swarm-classic/swarm"
    return path if os.access(path, os.X_OK) else None


class Etcd:
    """One etcd member with the v2 API on (Swarm classic's libkv needs it)."""

    def __init__(self, directory: Path) -> None:
        self.port, peer = free_port(), free_port()
        self.addr = f"127.0.0.1:{self.port}"
        with open(directory / "etcd.log", "wb") as log:
            self.proc = subprocess.Popen(
                ["etcd", "--name", "bench", "--data-dir", str(directory / "etcd"), "--enable-v2",
                 "--listen-client-urls", f"http://{self.addr}", "--advertise-client-urls", f"http://{self.addr}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", f"bench=http://127.0.0.1:{peer}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait(lambda: _get(f"http://{self.addr}/health")[0] == 200, 30, "etcd", poll=0.1)

    def put_v2(self, key: str, value: str) -> None:
        req = urllib.request.Request(
            f"http://{self.addr}/v2/keys/{key}", data=f"value={value}".encode(), method="PUT"
        )  # no TTL: the benchmark's engines stay registered for its whole run
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()

    def stop(self) -> None:
        stop_group(self.proc)


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except Exception as e:  # a readiness probe: any failure is "not yet"
        return 0, str(e).encode()


def _status(addr: str) -> dict[str, str]:
    """The SystemStatus pairs of ``addr``'s /info, with the count of healthy nodes as ``healthy``."""
    code, body = _get(f"http://{addr}/v1.24/info", 1.0)
    if code != 200:
        return {}
    pairs = json.loads(body).get("SystemStatus") or []
    out = {str(k).strip(): str(v) for k, v in pairs if isinstance(k, str)}
    out["healthy"] = str(sum(1 for k, v in pairs if str(k).strip() == "└ Status" and v == "Healthy"))
    return out


class Classic:
    """``swarm manage --replication`` on a free port."""

    def __init__(self, binary: str, url: str, directory: Path) -> None:
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        with open(directory / f"classic-{self.port}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [binary, "manage", "-H", self.addr, "--replication", "--advertise", self.addr,
                 "--replication-ttl", "4s", url],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def stop(self) -> None:
        stop_group(self.proc)


def _ready(addr: str, role: str, n: int, what: str) -> None:
    def ok() -> bool:
        s = _status(addr)
        return s.get("Role", "").lower() == role and s.get("healthy") == str(n)

    wait(ok, 60, f"{what}: {role} with {n} healthy nodes", poll=0.2)


def measure(
    targets: dict[str, str], paths: dict[str, str], rounds: int, block: int, seconds: float, repeats: int
) -> tuple[dict[tuple[str, str], list[float]], dict[tuple[str, str], float]]:
    """Latency samples and median throughput (concurrency 8) per (target, path name), interleaved."""
    lat: dict[tuple[str, str], list[float]] = {(t, p): [] for t in targets for p in paths}
    for addr in targets.values():
        for path in paths.values():
            latency(addr, path, 30)  # warm up: connections, the managers' views
    for _ in range(rounds):
        for name, addr in targets.items():
            for pname, path in paths.items():
                lat[(name, pname)] += latency(addr, path, block)
    runs: dict[tuple[str, str], list[float]] = {(t, p): [] for t in targets for p in paths}
    for _ in range(repeats):
        for name, addr in targets.items():
            for pname, path in paths.items():
                runs[(name, pname)].append(throughput(addr, path, 8, seconds))
    return lat, {k: sorted(v)[len(v) // 2] for k, v in runs.items()}


def report(results: dict[int, tuple[dict[tuple[str, str], list[float]], dict[tuple[str, str], float]]]) -> str:
    rows = [
        "| engines | request | target | p50 ms | p90 ms | req/s at c=8 |",
        "| ---: | --- | --- | ---: | ---: | ---: |",
    ]
    goals = ["| engines | request | swarmha primary p50 ≤ classic primary | replica ≤ 1.2 x classic replica | "
             "c=8 primary ≥ classic primary |", "| ---: | --- | --- | --- | --- |"]  # fmt: skip
    for n, (lat, tput) in results.items():
        for pname in ("list", "inspect"):
            p50 = {}
            for t in TARGETS:
                pc = percentiles(lat[(t, pname)])
                p50[t] = pc["p50"]
                rows.append(
                    f"| {n} | {pname} | {t} | {pc['p50'] * 1e3:.3f} | {pc['p90'] * 1e3:.3f} | {tput[(t, pname)]:.0f} |"
                )
            ok1 = p50["swarmha primary"] <= p50["classic primary"]
            ok2 = p50["swarmha replica"] <= 1.2 * p50["classic replica"]
            ok3 = tput[("swarmha primary", pname)] >= tput[("classic primary", pname)]
            goals.append(
                f"| {n} | {pname} | {'met' if ok1 else 'NOT met'} "
                f"({p50['swarmha primary'] * 1e3:.3f} vs {p50['classic primary'] * 1e3:.3f}) | "
                f"{'met' if ok2 else 'NOT met'} ({p50['swarmha replica'] * 1e3:.3f} vs "
                f"{1.2 * p50['classic replica'] * 1e3:.3f}) | {'met' if ok3 else 'NOT met'} "
                f"({tput[('swarmha primary', pname)]:.0f} vs {tput[('classic primary', pname)]:.0f}) |"
            )
    return "\n".join(rows) + "\n\nGoals:\n\n" + "\n".join(goals) + "\n"


def _counts(sizes: list[int]) -> str:
    """``1, 3 and 10``."""
    return " and ".join(filter(None, [", ".join(map(str, sizes[:-1])), str(sizes[-1])]))


def _engine(i: int, tar: Path) -> tuple[DockerEngine, str]:
    e = start_engine(100 + i, hostname=f"node-{i + 1}")
    e.docker("import", str(tar), IMAGE)
    cid = e.docker("run", "-d", "--network", "none", "--name", "idle", IMAGE, "sleep", "100000").stdout.strip()
    return e, cid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.manager_classic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run (figures mean little)")
    parser.add_argument("--swarm", help="Swarm classic binary (default: $SWARM_CLASSIC_BIN or its build output)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved latency blocks per target (default 10)")
    parser.add_argument("--block", type=int, default=100, help="requests per latency block (default 100)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one throughput run (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved throughput runs per target (default 3)")
    parser.add_argument("--out", default="docs/benchmarks-manager.md", help="the markdown whose section is replaced")
    parser.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="engine counts, comma-separated (default 1,3,10)"
    )
    args = parser.parse_args(argv)
    try:
        sizes = sorted({int(n) for n in args.sizes.split(",")})
    except ValueError:
        parser.error(f"--sizes: not a comma-separated list of engine counts: {args.sizes!r}")
    if not sizes or sizes[0] < 1:
        parser.error(f"--sizes: engine counts are 1 or more: {args.sizes!r}")
    if args.quick:
        args.rounds, args.block, args.seconds, args.repeats = 2, 30, 0.5, 1
    binary = swarm_binary(args.swarm)
    if binary is None:
        print("benchmarks.manager_classic: skipped: no Swarm classic binary (bash ../shared/swarm-classic/build.sh)")
        return
    reason = missing() or (None if shutil.which("etcd") else "etcd is not installed")
    if reason:
        sys.exit(f"benchmarks.manager_classic: cannot run: {reason}")
    load_before, began = uptime(), time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="swarmha-bench-classic-"))
    tar = busybox_tar(tmp)
    engines: list[tuple[DockerEngine, str]] = []
    etcd: Etcd | None = None
    results = {}
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            engines = list(pool.map(lambda i: _engine(i, tar), range(max(sizes))))
        etcd = Etcd(tmp)
        for n in sizes:
            print(f"{n} engine(s) ...", flush=True)
            results[n] = _one_size(binary, etcd, [e for e, _ in engines[:n]], engines[0][1], tmp, args)
    finally:
        if etcd is not None:
            etcd.stop()
        with concurrent.futures.ThreadPoolExecutor(len(engines) or 1) as pool:  # each takes seconds to stop
            list(pool.map(lambda held: stop_engine(held[0]), engines))
    table = report(results)
    print(table)
    command = "python -m benchmarks.manager_classic " + " ".join(sys.argv[1:] if argv is None else argv)
    section = (
        f"{SECTION}\n\n"
        f"Command: `{command.strip()}` ({time.monotonic() - began:.0f} s)  \n"
        f"Machine: {machine()}  \nDate: {time.strftime('%Y-%m-%d %H:%M')}  \n"
        f"Load before: `{load_before}`  \nLoad after: `{uptime()}`\n\n"
        f"{version} (built from source, ../shared/swarm-classic/build.sh) and swarmha {swarmha.__version__}, "
        "each as a primary and a replica (`manage --replication`, one etcd 3.4 for both), in front of the same "
        f"{_counts(sizes)} dockerd (one idle container each). `list` is `GET /v1.24/containers/json`, `inspect` "
        "`GET /v1.24/containers/ID/json` of node-1's container; `node-1` is that engine asked directly. "
        "Latency: one keep-alive connection, sequential; req/s: concurrency 8, keep-alive, median of the runs. "
        "Targets interleaved block by block.\n\n"
        f"{table}"
    )
    out = Path(args.out)
    text = out.read_text() if out.exists() else "# Manager benchmarks\n"
    head = text.split(SECTION)[0].rstrip("\n")
    out.write_text(f"{head}\n\n{section}")
    print(f"written to {args.out}")


def _one_size(
    binary: str, etcd: Etcd, engines: list[DockerEngine], cid: str, tmp: Path, args: argparse.Namespace
) -> tuple[dict[tuple[str, str], list[float]], dict[tuple[str, str], float]]:
    n = len(engines)
    for e in engines:
        etcd.put_v2(f"classic{n}/docker/swarm/nodes/{e.addr}", e.addr)
    ha_url = f"etcd://{etcd.addr}/ha{n}"
    discovery = swarmha.connect(ha_url)
    session = discovery.session(3600)
    procs: list[ManagerProc | Classic] = []
    try:
        for e in engines:
            discovery.put(f"docker/swarm/nodes/{e.addr}", e.addr, session)
        classic_url = f"etcd://{etcd.addr}/classic{n}"
        cp = Classic(binary, classic_url, tmp)
        sp = ManagerProc(ha_url, tmp, "--replication-ttl", "4s", "--engine-refresh", "5s")
        procs += [cp, sp]
        _ready(cp.addr, "primary", n, "classic")
        _ready(sp.addr, "primary", n, "swarmha")
        cr = Classic(binary, classic_url, tmp)
        sr = ManagerProc(ha_url, tmp, "--replication-ttl", "4s", "--engine-refresh", "5s")
        procs += [cr, sr]
        _ready(cr.addr, "replica", n, "classic")
        _ready(sr.addr, "replica", n, "swarmha")
        targets = dict(zip(TARGETS, (engines[0].addr, sp.addr, sr.addr, cp.addr, cr.addr), strict=True))
        paths = {"list": "/v1.24/containers/json", "inspect": f"/v1.24/containers/{cid}/json"}
        for addr in targets.values():  # every target knows the container (the managers' views are up)
            url = f"http://{addr}{paths['inspect']}"
            wait(lambda u=url: _get(u)[0] == 200, 30, f"{addr} to inspect")  # type: ignore[misc]
        return measure(targets, paths, args.rounds, args.block, args.seconds, args.repeats)
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.stop()
        with contextlib.suppress(Exception):
            session.close()
        discovery.close()


if __name__ == "__main__":
    main()
