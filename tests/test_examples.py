"""The examples run and show what they claim (they are the README's first contact with the library)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_failover_example_measures_a_graceful_and_a_crash_failover() -> None:
    out = run_example("failover.py", "--ttl", "1")
    times = [float(ms) for ms in re.findall(r"^new leader: node-\d \(token \d+\) after ([\d.]+) ms$", out, re.M)]
    assert len(times) == 2, out
    graceful, crash = times
    assert graceful < 1000, out  # released, not expired
    assert 300 < crash < 2500, out  # expired: about the ttl after the last renewal


def test_asyncio_example_fences_a_deposed_leader() -> None:
    out = run_example("asyncio_leader.py")
    assert "fenced store accepted 4 writes, tokens [1, 2, 3, 4]" in out, out
    assert "would now be refused: True" in out, out
    assert re.search(r"^follower: (alpha|beta) leads \(token \d\)$", out, re.M), out
