"""The history checker: merges the workers' observation logs and looks for safety and liveness violations.

Fails on:

(a) **overlap** — two terms whose leader work intervals overlap in time (a term's span runs from the start
    of its first to the end of its last unit of leader work; the clocks are one host's CLOCK_MONOTONIC);
(b) **token regression** — terms ordered by when their work started whose tokens do not strictly increase,
    or one token claimed by two nodes;
(c) **slow recovery** — after a fault healed, no leader work observed within ``ttl + 1 s`` (unless another
    fault was injected within ``ttl + 1 s`` of the heal, before a leader appeared; that one is measured
    instead — a fault injected later does not excuse the missing leader).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

__all__ = ["Fault", "Report", "check", "load"]


@attrs.frozen
class Fault:
    """One fault: injected at ``inject``, healed at ``heal``; for a whole-store fault, ``store_lag`` is how long
    after the fault ended the store committed a write again (``heal`` counts from then)."""

    kind: str
    target: str
    inject: float
    heal: float
    store_lag: float = 0.0


@attrs.frozen
class Observation:
    node: str
    a: float
    b: float
    token_before: int | None
    token_after: int | None

    @property
    def did_leader_work(self) -> bool:
        return self.token_before is not None and self.token_before == self.token_after


@attrs.define
class Report:
    observations: int = 0
    terms: int = 0
    faults: int = 0
    faults_by_kind: dict[str, int] = attrs.field(factory=dict)
    overlaps: list[str] = attrs.field(factory=list)
    token_regressions: list[str] = attrs.field(factory=list)
    slow_recoveries: list[str] = attrs.field(factory=list)
    recovery_times: list[float] = attrs.field(factory=list)
    longest_gap: float = 0.0
    longest_gap_at: float = 0.0  # when the longest gap started (monotonic)
    injected: list[Fault] = attrs.field(factory=list)
    crashes: list[str] = attrs.field(factory=list)  # workers that exited without being killed (set by the harness)

    @property
    def ok(self) -> bool:
        failed = self.overlaps or self.token_regressions or self.slow_recoveries or self.crashes
        return not failed and self.terms > 0

    def summary(self) -> str:
        return (
            f"{self.faults} faults {self.faults_by_kind}, {self.observations} observations, {self.terms} terms, "
            f"{len(self.overlaps)} overlaps, {len(self.token_regressions)} token regressions, "
            f"{len(self.slow_recoveries)} slow recoveries, {len(self.crashes)} worker crashes, "
            f"longest leaderless gap {self.longest_gap:.3f}s"
        )


def load(paths: Iterable[Path]) -> list[Observation]:
    out: list[Observation] = []
    for path in paths:
        for raw in path.read_text().splitlines():
            try:
                d = json.loads(raw)
            except json.JSONDecodeError:
                continue  # a line cut short by SIGKILL
            out.append(Observation(d["n"], d["a"], d["b"], d["ta"], d["tb"]))
    return out


def check(observations: Sequence[Observation], faults: Sequence[Fault], ttl: float) -> Report:
    report = Report(observations=len(observations), faults=len(faults), injected=list(faults))
    for f in faults:
        report.faults_by_kind[f.kind] = report.faults_by_kind.get(f.kind, 0) + 1

    # terms: token -> (node, first work start, last work end)
    terms: dict[int, tuple[str, float, float]] = {}
    for o in observations:
        if not o.did_leader_work:
            continue
        token = o.token_before
        assert token is not None
        node, lo, hi = terms.get(token, (o.node, o.a, o.b))
        if node != o.node:
            report.token_regressions.append(f"token {token} claimed by {node} and {o.node}")
        terms[token] = (node, min(lo, o.a), max(hi, o.b))
    report.terms = len(terms)

    ordered = sorted(terms.items(), key=lambda kv: kv[1][1])
    latest_end, latest_token = float("-inf"), None
    for i, (token, (node, lo, hi)) in enumerate(ordered):
        if lo < latest_end:
            report.overlaps.append(
                f"term {token} ({node}) started at {lo:.4f} before term {latest_token} ended at {latest_end:.4f}"
            )
        if i and token <= ordered[i - 1][0]:
            report.token_regressions.append(f"token {token} ({node}) follows token {ordered[i - 1][0]}")
        if hi > latest_end:
            latest_end, latest_token = hi, token

    work_starts = sorted(o.a for o in observations if o.did_leader_work)
    if work_starts:
        gaps = [(b - a, a) for a, b in itertools.pairwise(work_starts)]
        report.longest_gap, report.longest_gap_at = max(gaps, default=(0.0, 0.0))
    injects = sorted(f.inject for f in faults)
    for f in faults:
        after = next((t for t in work_starts if t >= f.heal), None)
        next_inject = next((t for t in injects if t > f.heal), None)
        if after is None and next_inject is None:
            report.slow_recoveries.append(f"{f.kind} on {f.target} healed at {f.heal:.3f}: no leader afterwards")
            continue
        if after is None or (next_inject is not None and next_inject < after):
            if next_inject is not None and next_inject <= f.heal + ttl + 1.0:
                continue  # superseded by a later fault before anyone led: that one is measured instead
            # nobody led between this heal and a fault injected more than ttl + 1 s later: as slow as it gets
            assert next_inject is not None
            report.slow_recoveries.append(
                f"{f.kind} on {f.target} healed at {f.heal:.3f}: no leader before the next fault "
                f"{next_inject - f.heal:.3f}s later"
            )
            continue
        took = after - f.heal
        report.recovery_times.append(took)
        if took > ttl + 1.0:
            report.slow_recoveries.append(f"{f.kind} on {f.target} healed at {f.heal:.3f}: leader after {took:.3f}s")
    return report
