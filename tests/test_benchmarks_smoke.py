"""CI smoke test of the benchmark harness: ``python -m benchmarks election --quick`` runs and writes its table.

It asserts nothing about speed (the CI machine is shared); it pins that the harness starts its servers, runs
swarmha and the peers, cleans up, and produces the report. Peers whose library is not installed (tooz and
matplotlib come with the ``bench`` extra) are reported as such and the run goes on.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow
_QUICK = ["election", "--quick"]


def _benchmarks(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks ARGS`` from this checkout, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_quick_election_benchmark_exits_0_and_writes_the_table(tmp_path: Path) -> None:
    # swarmha and one peer on two real servers: the harness's every path (server start, swarmha, a peer, the
    # report, the plots) at a fraction of the full quick run's time; the full run is the benchmark itself
    proc = _benchmarks(
        *_QUICK, "--backends", "etcd", "zk", "--systems", "swarmha", "kazoo-lock", "--out", str(tmp_path), timeout=110
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (tmp_path / "benchmarks.md").read_text()
    assert "| swarmha @ etcd |" in report
    assert "| kazoo-lock @ zk |" in report
    assert "### Idle cost" in report
    assert (tmp_path / "benchmarks-election.json").exists()
    if importlib.util.find_spec("matplotlib") is not None:  # the bench extra; without it the run has no plots
        assert (tmp_path / "img" / "election-handover.png").exists()


@pytest.mark.parametrize(
    "part",
    ["election", "core", "manager", "manager-ab", "outage-recovery", "consul-client", "runtime-threads", "stages"],
)
def test_every_benchmark_part_runs_from_python_m_benchmarks(part: str) -> None:
    proc = _benchmarks(part, "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage: "), proc.stdout[:500]


def test_the_stage_timing_of_a_handover_reaches_every_stage(tmp_path: Path) -> None:
    """``stages --quick`` (memory): every stage gets figures, and their p50s come in the order a handover takes them."""
    out = tmp_path / "doc.md"
    proc = _benchmarks("stages", "--quick", "--out", str(out), timeout=60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from benchmarks.stages import BEGIN, END, STAGES

    doc = out.read_text()
    assert BEGIN in doc and END in doc
    rows = {
        line.split("|")[1].strip(): line.split("|")[2].strip() for line in doc.splitlines() if line.startswith("| ")
    }
    p50 = [float(rows[stage].split(" / ")[0]) for stage in STAGES]  # "-" (a stage never reached) fails here
    order = ["release sent", "release answered", "claim made", "claim answered", "elected"]
    assert [p50[STAGES.index(s)] for s in order] == sorted(p50[STAGES.index(s)] for s in order)


def test_the_election_handover_runs_the_build_before_side_by_side_with_base(tmp_path: Path) -> None:
    """``election --base DIR``: the other checkout's swarmha gets rows of its own (here this very checkout, on the
    memory backend), its blocks taking turns with this build's, each in a process of its checkout."""
    proc = _benchmarks(
        "election", "--parts", "handover", "--backends", "memory", "--systems", "swarmha", "--rounds", "12",
        "--base", str(ROOT), "--out", str(tmp_path), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    turns = [line.split(" (rounds")[0] for line in proc.stdout.splitlines() if line.startswith("handover: ")]
    assert turns == ["handover: swarmha-base @ memory", "handover: swarmha @ memory"] * 2
    report = (tmp_path / "benchmarks.md").read_text()
    assert "| swarmha-base @ memory | 12 |" in report and "| swarmha @ memory | 12 |" in report
    assert "`--base`: `swarmha-base` is the build" in report
