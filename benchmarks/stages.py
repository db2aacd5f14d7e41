"""Where the milliseconds of a graceful handover go: one handover timed stage by stage, inside the process.

    python -m benchmarks stages [--quick] [--backends etcd zk] [--rounds 80] [--out FILE]

The election benchmark's one-process ``handover`` setup (``benchmarks/election.py``): two contenders, each with
its own Discovery, the waiter settled 0.1-0.2 s, then the leader's ``stop()``. For every round, from the moment
``stop()`` is called (``CLOCK_MONOTONIC``):

* **release sent / answered**: the leader's ``Discovery.release`` called / returned (its store round trip);
* **waiter woken**: the waiter's machine woken by its watch (the key's deletion reached it);
* **claim made / answered**: the waiter's ``Discovery.claim_async`` called / its future done (between them the
  claim's round trip, whether it went inline or as a future);
* **elected**: the waiter's consumer got its True from ``run_for_election()`` (the election benchmark's figure);
* **stop() returned**: the leader's ``stop()`` came back (its machine's last steps included).

The timestamps come from wrapping, for the run only, ``release`` and ``claim_async`` of the backend's Discovery
class and the engine's ``Task._on_watch``: names of this checkout, so the tool measures this checkout; for a
before/after, run it from a checkout of each build (``PYTHONPATH=DIR``) and compare. The wrapping costs a few
microseconds per stage. p50 and p90 over the rounds, ms. ``--out FILE`` writes the table between
``<!-- stages:begin -->`` and ``<!-- stages:end -->`` in FILE (docs/benchmarks.md), else it is printed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.contenders import SwarmhaContender
from benchmarks.stores import Stores
from benchmarks.support import splice

BEGIN, END = "<!-- stages:begin -->", "<!-- stages:end -->"
KEY = "bench/leader"
TTL = 30.0
STAGES = [
    "release sent",
    "release answered",
    "waiter woken",
    "claim made",
    "claim answered",
    "elected",
    "stop() returned",
]


class _Round:
    """The timestamps of one round, taken by the wrappers while ``recording``."""

    def __init__(self) -> None:
        self.recording = False
        self.leader: Any = None  # the leader's Discovery
        self.waiter: Any = None  # the waiter's Discovery
        self.waiter_task: Any = None
        self.marks: dict[str, float] = {}

    def mark(self, stage: str) -> None:
        if self.recording and stage not in self.marks:
            self.marks[stage] = time.monotonic()


@contextmanager
def _wrapped(cls: type, now: _Round) -> Iterator[None]:
    """Wrap ``cls.release``, ``cls.claim_async`` and ``Task._on_watch`` to mark ``now``'s stages; undone after."""
    from swarmha.election._engine import Task

    release, claim_async, on_watch = cls.release, cls.claim_async, Task._on_watch  # type: ignore[attr-defined]
    own = {name: cls.__dict__.get(name) for name in ("release", "claim_async")}  # None: inherited

    def wrapped_release(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self is now.leader:
            now.mark("release sent")
        try:
            return release(self, *args, **kwargs)
        finally:
            if self is now.leader:
                now.mark("release answered")

    def wrapped_claim(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self is now.waiter:
            now.mark("claim made")
        future = claim_async(self, *args, **kwargs)
        if self is now.waiter:
            future.add_done_callback(lambda _: now.mark("claim answered"))
        return future

    def wrapped_on_watch(task: Any) -> None:
        if task is now.waiter_task:
            now.mark("waiter woken")
        on_watch(task)

    cls.release, cls.claim_async = wrapped_release, wrapped_claim  # type: ignore[attr-defined]
    Task._on_watch = wrapped_on_watch  # type: ignore[method-assign]
    try:
        yield
    finally:
        for name, original in own.items():
            if original is None:
                delattr(cls, name)
            else:
                setattr(cls, name, original)
        Task._on_watch = on_watch  # type: ignore[method-assign]


def measure(url: str, rounds: int, settle: float = 0.1) -> list[dict[str, float]]:
    """``rounds`` handovers on ``url``; per round, each stage's ms after the leader's ``stop()`` was called."""
    now = _Round()
    make: Callable[[int], SwarmhaContender] = lambda i: SwarmhaContender(url, KEY, f"n{i}", TTL)  # noqa: E731
    leader = make(0)
    leader.campaign()
    if not leader.elected.wait(10.0):
        leader.close()
        raise RuntimeError(f"no first leader on {url}")
    results: list[dict[str, float]] = []
    with _wrapped(type(leader.discovery), now):
        try:
            for i in range(rounds):
                waiter = make(i + 1)
                waiter.campaign()
                time.sleep(settle * random.uniform(1.0, 2.0))
                assert waiter.candidate is not None
                now.leader, now.waiter, now.marks = leader.discovery, waiter.discovery, {}
                now.waiter_task = waiter.candidate._worker._task  # type: ignore[attr-defined]
                now.recording = True
                start = time.monotonic()
                leader.release()
                now.mark("stop() returned")
                if not waiter.elected.wait(10.0):
                    raise RuntimeError(f"round {i + 1}: the waiter never led")
                now.marks["elected"] = waiter.elected_at
                time.sleep(0.01)  # a claim's done-callback may come just after the consumer's True
                now.recording = False
                results.append({stage: (t - start) * 1000.0 for stage, t in now.marks.items()})
                leader.close()
                leader = waiter
        finally:
            now.recording = False
            leader.close()
    return results


def table(by_backend: dict[str, list[dict[str, float]]], rounds: int) -> str:
    backends = list(by_backend)
    lines = [
        f"Command: `python -m benchmarks stages --backends {' '.join(backends)} --rounds {rounds}`, "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC. ms after the leader's `stop()` was called, "
        "p50 / p90 over the rounds (a stage a round did not reach is left out of its figures).",
        "",
        "| stage | " + " | ".join(backends) + " |",
        "|---|" + "---:|" * len(backends),
    ]
    for stage in STAGES:
        cells = []
        for backend in backends:
            values = [r[stage] for r in by_backend[backend] if stage in r]
            if len(values) < 2:
                cells.append("-")
                continue
            p90 = statistics.quantiles(values, n=10)[-1]
            cells.append(f"{statistics.median(values):.2f} / {p90:.2f}")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["etcd", "zk"], help="default: etcd zk")
    parser.add_argument("--rounds", type=int, default=80, help="handovers per backend (default 80)")
    parser.add_argument("--quick", action="store_true", help="10 rounds on memory (CI smoke)")
    parser.add_argument("--out", help="write the table into this file (between its markers)")
    args = parser.parse_args(argv)
    backends, rounds = (["memory"], 10) if args.quick else (args.backends, args.rounds)
    by_backend: dict[str, list[dict[str, float]]] = {}
    with Stores(backends) as stores:
        for backend in backends:
            print(f"stages: {backend}, {rounds} rounds ...", flush=True)
            by_backend[backend] = measure(stores.url(backend, f"stages-{backend}"), rounds)
    text = table(by_backend, rounds)
    if args.out:
        splice(Path(args.out), BEGIN, END, f"{BEGIN}\n{text}\n{END}")
    print(text)


if __name__ == "__main__":
    main()
