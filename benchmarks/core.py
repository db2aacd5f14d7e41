"""Core election benchmarks on the embedded backends: handover, crash failover, idle CPU.

    python -m benchmarks.core [--rounds 200] [--ttl 1.0] [--quick] [--out docs/benchmarks-core.md]

* graceful handover: the leader calls ``stop()``; time until the next candidate reads ``is_leader``
  (two candidates in one process, each with its own connection; memory and sqlite).
* crash failover (sqlite): a leader process is SIGKILLed; time until another process reports leadership,
  in seconds and as a multiple of ttl.
* idle cost: CPU time (user+sys) over a window of an idle leader, waiting candidate and follower.

Prints a table and writes it, with the command line and the machine, to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import swarmha
from benchmarks.support import wait
from tests.support.procs import CandidateProcess, first_line


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)

    def pick(q: float) -> float:
        return s[min(len(s) - 1, round(q * (len(s) - 1)))]

    return {"n": len(s), "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": s[-1]}


def handover(url_for: object, rounds: int) -> list[float]:
    """Leader stop() -> next candidate is_leader, in seconds, over ``rounds`` terms."""
    d1, d2 = swarmha.connect(url_for()), None  # type: ignore[operator]
    d2 = swarmha.connect(d1.url.raw)
    samples = []
    try:
        waiting = swarmha.Candidate(d2, "bench/leader", node="b", ttl=30.0).start()
        for i in range(rounds):
            leader = swarmha.Candidate(d1, "bench/leader", node=f"a{i}", ttl=30.0).start()
            if i == 0:
                waiting.stop()
            wait(lambda c=leader: c.is_leader, 10, poll=0.0002)
            nxt = swarmha.Candidate(d2, "bench/leader", node=f"b{i}", ttl=30.0).start()
            time.sleep(0.01)  # let the next candidate arm its watch, as a long-waiting one has
            start = time.monotonic()
            leader.stop()
            wait(lambda c=nxt: c.is_leader, 10, poll=0.0002)
            samples.append(time.monotonic() - start)
            nxt.stop()
    finally:
        d1.close()
        d2.close()
    return samples


def crash_failover(ttl: float, rounds: int, directory: Path) -> list[float]:
    samples = []
    for r in range(rounds):
        url = f"sqlite://{directory / f'crash{r}.db'}"
        procs = [CandidateProcess(url, f"n{i}", ttl) for i in range(3)]
        try:
            deadline = time.monotonic() + 20
            while not any(p.leading() for p in procs):
                if time.monotonic() > deadline:
                    raise TimeoutError("no leader")
                time.sleep(0.005)
            leader = next(p for p in procs if p.leading())
            killed = time.monotonic()
            leader.signal(signal.SIGKILL)
            rest = [p for p in procs if p is not leader]
            line = first_line(rest, lambda ln, t=killed: bool(ln.get("leader")) and ln["t0"] > t, ttl + 5)
            samples.append(line["t1"] - killed)
        finally:
            for p in procs:
                p.stop()
    return samples


def idle_cpu(url: str, seconds: float) -> dict[str, float]:
    """CPU share of one core used by this process with an idle leader + waiting candidate + follower."""
    d = swarmha.connect(url)
    leader = swarmha.Candidate(d, "idle/leader", node="l", ttl=3.0).start()
    wait(lambda: leader.is_leader, 10, poll=0.0002)
    d2 = swarmha.connect(url)
    waiting = swarmha.Candidate(d2, "idle/leader", node="w", ttl=3.0).start()
    follower = swarmha.Follower(d2, "idle/leader").start()
    time.sleep(0.5)
    t0, c0 = time.monotonic(), time.process_time()
    time.sleep(seconds)
    cpu = (time.process_time() - c0) / (time.monotonic() - t0)
    for x in (waiting, follower, leader):
        x.stop()
    d.close()
    d2.close()
    return {"cpu_share": cpu}


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, "
        f"Python {platform.python_version()}, {platform.system()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200, help="handover rounds per backend")
    parser.add_argument("--crash-rounds", type=int, default=10)
    parser.add_argument("--ttl", type=float, default=1.0, help="ttl for the crash failover runs")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="a smoke run in a few seconds (figures mean little)")
    parser.add_argument("--out", default="docs/benchmarks-core.md")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.crash_rounds, args.idle_seconds = 10, 1, 1.0

    tmp = Path(tempfile.mkdtemp(prefix="swarmha-bench-"))
    counter = iter(range(10**9))
    rows: list[tuple[str, dict[str, float], str]] = []
    mem = handover(lambda: f"memory://bench{next(counter)}", args.rounds)
    rows.append(("graceful handover, memory", percentiles(mem), "ms"))
    sq = handover(lambda: f"sqlite://{tmp / f'h{next(counter)}.db'}", args.rounds)
    rows.append(("graceful handover, sqlite", percentiles(sq), "ms"))
    crash = crash_failover(args.ttl, args.crash_rounds, tmp)
    rows.append((f"crash failover (SIGKILL), sqlite, ttl={args.ttl}s", percentiles(crash), "s"))
    idle_sql = idle_cpu(f"sqlite://{tmp / 'idle.db'}", args.idle_seconds)
    idle_mem = idle_cpu("memory://idle", args.idle_seconds)

    lines = [
        "| measurement | n | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|---|",
    ]
    for name, p, unit in rows:
        scale = 1000.0 if unit == "ms" else 1.0
        fmt = "{:.2f}" if unit == "ms" else "{:.3f}"
        cells = " | ".join(fmt.format(p[k] * scale) + f" {unit}" for k in ("p50", "p90", "p99", "max"))
        lines.append(f"| {name} | {int(p['n'])} | {cells} |")
    lines += [
        "",
        "| idle cost (leader + waiting candidate + follower in one process) | CPU, share of one core |",
        "|---|---|",
        f"| sqlite (inotify wake-up on key changes, 1 s safety poll) | {idle_sql['cpu_share'] * 100:.2f} % |",
        f"| memory | {idle_mem['cpu_share'] * 100:.2f} % |",
    ]
    table = "\n".join(lines)
    print(table)
    command = "python -m benchmarks.core " + " ".join(sys.argv[1:])
    Path(args.out).write_text(
        "# Core benchmarks (embedded backends)\n\n"
        f"Command: `{command.strip()}`  \nMachine: {machine()}  \nDate: {time.strftime('%Y-%m-%d')}\n\n"
        f"{table}\n\n"
        "Crash failover is measured from the SIGKILL to the first observation of leadership by another "
        f"process; the bound to meet is ttl + 0.5 s = {args.ttl + 0.5:.1f} s.\n"
    )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
