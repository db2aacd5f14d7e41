"""What the two backend threads outside the election engine buy: SQLite's change feed, ZooKeeper's timer.

    python -m benchmarks runtime-threads [--rounds 40] [--idle 5] [--parts sqlite zk]

* ``sqlite``: graceful handover between two Discoveries on one file (a leader ``stop()``\\ s, a standby that waited
  0.2-0.3 s leads), with the change feed as it is (a thread blocked in ``select`` on inotify, woken by every commit)
  against the same feed polling ``kv_version`` every 5 ms and every 50 ms with inotify off: what any runtime
  without a blocking wait of its own (a timer that polls) could do at best. Also the process's CPU per idle
  second with one watch open, for each.
* ``zk``: ZooKeeper's ``swarmha-zk-timer`` during the same handovers: how many timed callbacks ran and how long
  each held the thread (they make store requests: a ticket's turn check reads the queue, an expired session's
  deletes are sent), how late each started, and the thread's wake-ups and the process's CPU per idle second.

Prints one table per part; the figures are quoted in the module docstrings of ``swarmha/discovery/sqlite.py`` and
``swarmha/discovery/zookeeper/_timer.py``.
"""

from __future__ import annotations

import argparse
import queue
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import swarmha

KEY = "svc/leader"
TTL = 10.0


def _quantiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered) * 1e3:.2f} / {p99 * 1e3:.2f} / {ordered[-1] * 1e3:.2f}"


def _elected(candidate: swarmha.Candidate) -> queue.SimpleQueue[tuple[float, bool]]:
    out: queue.SimpleQueue[tuple[float, bool]] = queue.SimpleQueue()

    def run() -> None:
        for value in candidate.run_for_election():
            out.put((time.monotonic(), value))

    threading.Thread(target=run, name="bench-candidate", daemon=True).start()
    return out


def handovers(url: Callable[[], str], rounds: int) -> list[float]:
    """Seconds from a leader's ``stop()`` to a standby (another Discovery, waiting 0.2 s) knowing it leads."""
    d1, d2 = swarmha.connect(url()), swarmha.connect(url())
    try:
        times = []
        leader = swarmha.Candidate(d1, KEY, node="a", ttl=TTL)
        assert _elected(leader).get(timeout=10)[1] is True
        for i in range(rounds):
            # always on the other Discovery than the leader's: its engine learns of the release from the store
            standby = swarmha.Candidate(d2 if i % 2 == 0 else d1, KEY, node=f"n{i}", ttl=TTL)
            events = _elected(standby)
            # the standby waits on its watch; a random extra wait, so that a poll's phase does not line up
            time.sleep(0.2 + random.uniform(0.0, 0.1))
            start = time.monotonic()
            leader.stop()
            when, value = events.get(timeout=10)
            assert value is True
            times.append(when - start)
            leader = standby
        leader.stop()
        return times
    finally:
        d1.close()
        d2.close()


def idle_cpu(url: str, seconds: float) -> float:
    """CPU seconds of this process per idle second with a leader and a follower on one Discovery."""
    d = swarmha.connect(url)
    try:
        leader = swarmha.Candidate(d, KEY, node="a", ttl=TTL)
        follower = swarmha.Follower(d, KEY)
        assert _elected(leader).get(timeout=10)[1] is True
        threading.Thread(target=lambda: list(follower.follow_election()), daemon=True).start()
        time.sleep(3.0)  # the engine's spare workers end
        start = time.process_time()
        time.sleep(seconds)
        used = time.process_time() - start
        leader.stop()
        follower.stop()
        return used / seconds
    finally:
        d.close()


def sqlite_part(rounds: int, idle: float) -> None:
    from swarmha.discovery import sqlite as module

    print("\nsqlite: handover between two Discoveries on one file (ms p50 / p99 / max), CPU per idle second")
    print(f"{'change feed':<40} {'handover':>24} {'idle CPU':>10}")
    saved = module._INOTIFY
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for label, inotify, poll in (
                ("thread blocked on inotify (as shipped)", True, None),
                ("polling every 5 ms (no inotify)", False, 0.005),
                ("polling every 50 ms (no inotify)", False, 0.05),
            ):
                module._INOTIFY = inotify
                path = Path(tmp) / f"{label.split()[0]}-{poll}.db"
                url = f"sqlite:///{path}" + (f"?poll={poll}" if poll else "")
                times = handovers(lambda u=url: u, rounds)  # type: ignore[misc]
                cpu = idle_cpu(url, idle)
                print(f"{label:<40} {_quantiles(times):>24} {cpu * 100:>9.2f}%")
        finally:
            module._INOTIFY = saved


@contextmanager
def _timed_callbacks() -> Iterator[dict[str, list[float]]]:
    """Record, for every callback the ZooKeeper timer runs, how long it ran and how late it started."""
    from swarmha.discovery.zookeeper import _timer

    seen: dict[str, list[float]] = {"ran": [], "late": [], "wakes": []}
    original_call_at = _timer.Timer.call_at
    original_wait = threading.Condition.wait

    def call_at(self: Any, when: float, callback: Callable[[], None]) -> Any:
        def timed() -> None:
            start = time.monotonic()
            seen["late"].append(max(0.0, start - when))
            try:
                callback()
            finally:
                seen["ran"].append(time.monotonic() - start)

        return original_call_at(self, when, timed)

    def wait(self: Any, timeout: float | None = None) -> bool:
        if threading.current_thread().name == "swarmha-zk-timer":
            seen["wakes"].append(time.monotonic())
        return original_wait(self, timeout)

    _timer.Timer.call_at = call_at  # type: ignore[method-assign]
    threading.Condition.wait = wait  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        _timer.Timer.call_at = original_call_at  # type: ignore[method-assign]
        threading.Condition.wait = original_wait  # type: ignore[method-assign]


def zk_part(rounds: int, idle: float) -> None:
    from tests.support.servers import zk_cluster

    print("\nzk: the swarmha-zk-timer thread (ms p50 / p99 / max)")
    with tempfile.TemporaryDirectory() as tmp:
        cluster = zk_cluster(Path(tmp), 1)
        try:
            counter = iter(range(1_000_000))
            with _timed_callbacks() as seen:
                times = handovers(lambda: f"zk://{cluster.hosts}/bench{next(counter) // 2}?timeout=2", rounds)
                ran, late = list(seen["ran"]), list(seen["late"])
                seen["wakes"].clear()
                cpu = idle_cpu(f"zk://{cluster.hosts}/idle?timeout=2", idle)
                wakes = len(seen["wakes"]) / (idle + 3.0)
            print(f"handover (two Discoveries)               {_quantiles(times)}")
            print(f"timer callbacks during {rounds} handovers: {len(ran)}")
            print(f"  each held the timer thread             {_quantiles(ran)}")
            print(f"  started late by                        {_quantiles(late)}")
            print(f"timer wake-ups per idle second           {wakes:.1f}")
            print(f"process CPU per idle second              {cpu * 100:.2f}%")
        finally:
            cluster.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks runtime-threads",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=40, help="handovers per configuration (default 40)")
    parser.add_argument("--idle", type=float, default=5.0, help="idle seconds measured for CPU (default 5)")
    parser.add_argument("--parts", nargs="+", choices=["sqlite", "zk"], default=["sqlite", "zk"])
    args = parser.parse_args(argv)
    parts = " ".join(args.parts)
    command = f"python -m benchmarks runtime-threads --rounds {args.rounds} --idle {args.idle:g} --parts {parts}"
    print(f"{command}; {time.strftime('%F %T')}")
    if "sqlite" in args.parts:
        sqlite_part(args.rounds, args.idle)
    if "zk" in args.parts:
        zk_part(args.rounds, args.idle)


if __name__ == "__main__":
    main()
