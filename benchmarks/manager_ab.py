"""A/B of manager versions on one dockerd: ``/containers/json`` latency and throughput, interleaved round by round.

    git worktree add --detach /tmp/swarmha-base <commit>
    python -m benchmarks.manager_ab --base /tmp/swarmha-base [--rounds 6]

Starts one dockerd (busybox image, one idle container), an nginx reverse proxy (the reference hop) and, per
variant, a primary and a replica ``swarmha manage --replication`` over their own sqlite file: ``base`` runs the
checkout given by ``--base``, ``new`` this checkout, ``new-asyncio`` this checkout with ``SWARMHA_LOOP=asyncio``.
Each round measures every target in turn (latency: 200 sequential requests on one keep-alive connection;
throughput: 1 s closed loop at concurrency 1, then 8), so load changes on a shared machine hit all variants
alike. Prints p50, the p50 added over the engine, the median throughput as a share of the engine's, and each
manager's CPU time per request in the closed loops (from ``/proc/PID/stat``: what a shared machine's load
changes least), with ``uptime`` before and after. Uses the load generator of :mod:`benchmarks.manager` (same
client cost everywhere).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import swarmha
from benchmarks.manager import Nginx, answers, cpu_seconds, latency, throughput
from benchmarks.support import uptime, wait
from tests.support.dockerd import IMAGE, busybox_tar, missing, start_engine, stop_engine
from tests.support.manager import ROOT
from tests.support.net import free_port

__all__ = ["main"]

PATH = "/v1.41/containers/json"


def _manager(root: Path, url: str, directory: Path, env_extra: dict[str, str]) -> tuple[str, subprocess.Popen[bytes]]:
    addr = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARM_", "DOCKER_"))}
    env["PYTHONPATH"] = str(root)
    env.update(env_extra)
    args = ["manage", "-H", addr, "--replication", "--advertise", addr, "--replication-ttl", "20s", url]
    log = open(directory / f"manager-{addr.rpartition(':')[2]}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarmha.manager.cli", *args],
        cwd=root,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    return addr, proc


def _rate(addr: str, concurrency: int, pid: int | None, cpu: list[float]) -> float:
    """Closed-loop requests/s; appends the process ``pid``'s CPU µs per request to ``cpu``."""
    c0, t0 = (cpu_seconds(pid) if pid else 0.0), time.perf_counter()
    rate = throughput(addr, PATH, concurrency, 1.0)
    if pid:
        cpu.append((cpu_seconds(pid) - c0) / (rate * (time.perf_counter() - t0)) * 1e6)
    return rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.manager_ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--base", required=True, type=Path, help="a checkout of the version to compare with")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    args = parser.parse_args(argv)
    reason = missing()
    if reason:
        sys.exit(f"benchmarks.manager_ab: cannot run: {reason}")
    variants = [
        ("base", args.base.resolve(), {}),
        ("new", ROOT, {}),
        ("new-asyncio", ROOT, {"SWARMHA_LOOP": "asyncio"}),
    ]
    tmp = Path(tempfile.mkdtemp(prefix="swarmha-bench-ab-"))
    engine = start_engine(0)
    procs: list[subprocess.Popen[bytes]] = []
    pids: dict[str, int] = {}
    nginx: Nginx | None = None
    load_before = uptime()
    try:
        engine.docker("import", str(busybox_tar(tmp)), IMAGE)
        engine.docker("run", "-d", "--name", "idle", IMAGE, "sleep", "100000")
        nginx = Nginx.start(engine.addr, tmp / "nginx")
        targets = {"engine": engine.addr, "nginx": nginx.addr}
        for name, root, extra in variants:
            url = f"sqlite://{tmp}/{name}.db"
            discovery = swarmha.connect(url)
            session = discovery.session(3600)
            discovery.put(f"docker/swarm/nodes/{engine.addr}", engine.addr, session)
            primary, proc = _manager(root, url, tmp, extra)
            procs.append(proc)
            wait(lambda a=primary: answers(a, PATH), 60, f"the {name} primary")  # type: ignore[misc]
            replica, proc = _manager(root, url, tmp, extra)
            procs.append(proc)
            targets[f"{name} primary"] = primary
            targets[f"{name} replica"] = replica
            pids[f"{name} primary"], pids[f"{name} replica"] = procs[-2].pid, procs[-1].pid
        for addr in targets.values():
            wait(lambda a=addr: answers(a, PATH), 60, addr)  # type: ignore[misc]
            latency(addr, PATH, 100)  # warm up
        lat: dict[str, list[float]] = {k: [] for k in targets}
        rate1: dict[str, list[float]] = {k: [] for k in targets}
        rate8: dict[str, list[float]] = {k: [] for k in targets}
        cpu1: dict[str, list[float]] = {k: [] for k in targets}
        cpu8: dict[str, list[float]] = {k: [] for k in targets}
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds} ...", flush=True)
            for k, addr in targets.items():
                lat[k] += latency(addr, PATH, 200)
            for k, addr in targets.items():
                rate1[k].append(_rate(addr, 1, pids.get(k), cpu1[k]))
            for k, addr in targets.items():
                rate8[k].append(_rate(addr, 8, pids.get(k), cpu8[k]))
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if nginx is not None:
            nginx.stop()
        stop_engine(engine)
    e50 = statistics.median(lat["engine"])
    e1, e8 = statistics.median(rate1["engine"]), statistics.median(rate8["engine"])
    print(f"\n`{PATH}`, {args.rounds} rounds; load before `{load_before}`, after `{uptime()}`\n")
    print(
        "| target | p50 ms | added p50 ms (vs engine) | c=1 req/s (% of engine) | c=8 req/s (% of engine) "
        "| CPU µs/req c=1 / c=8 (this process) |"
    )
    print("|---|---|---|---|---|---|")
    for k in targets:
        p50 = statistics.median(lat[k])
        r1, r8 = statistics.median(rate1[k]), statistics.median(rate8[k])
        print(
            f"| {k} | {p50 * 1e3:.3f} | {(p50 - e50) * 1e3:+.3f} | {r1:.0f} ({r1 / e1 * 100:.0f} %) "
            f"| {r8:.0f} ({r8 / e8 * 100:.0f} %) | {_median_us(cpu1[k])} / {_median_us(cpu8[k])} |"
        )


def _median_us(values: list[float]) -> str:
    return f"{statistics.median(values):.0f}" if values else ""


if __name__ == "__main__":
    main()
