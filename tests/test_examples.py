"""The examples run and show what they claim (they are the README's first contact with the library)."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import swarmha

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


def readme_example() -> str:
    """The README's Python example, exactly as written."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## In a dozen lines") :]
    return section[section.index("```python\n") + len("```python\n") : section.index("\n```\n")]


def test_readme_example_runs_and_ctrl_c_steps_down_releases_and_hands_over(tmp_path: Path) -> None:
    code = readme_example()
    assert 'swarmha.connect("sqlite:///tmp/election.db")' in code
    script = tmp_path / "readme_example.py"
    script.write_text(code.replace("/tmp/election.db", str(tmp_path / "election.db")))  # the one change: the path
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )

    first = start()
    try:
        assert first.stdout is not None
        assert first.stdout.readline().startswith("leading, fencing token "), "the first process did not lead"
        second = start()
        try:
            d = swarmha.connect(f"sqlite://{tmp_path / 'election.db'}")
            waiting = swarmha.Follower(d, "svc/leader")
            first.send_signal(signal.SIGINT)  # Ctrl-C
            out, err = first.communicate(timeout=20)
            assert first.returncode == 0, err
            assert "Traceback" not in err, err
            assert out == "not leading\n", out  # the loop's not-leader branch ran, then the loop ended
            assert second.stdout is not None
            # ttl is 10 s: the second leads within 5 s only because the first released the key
            line = _readline_within(second, 5.0)
            assert line.startswith("leading, fencing token "), line
            assert waiting.leader is not None and waiting.leader.token == int(line.split()[-1])
            second.send_signal(signal.SIGTERM)
            out, err = second.communicate(timeout=20)
            assert second.returncode == 0 and "Traceback" not in err, err
            assert out == "not leading\n", out
            assert waiting.leader is None  # released by the second too
            d.close()
        finally:
            second.kill()
            second.wait(10)
    finally:
        first.kill()
        first.wait(10)


def _readline_within(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output within {timeout}s"
    return proc.stdout.readline()


def test_examples_and_the_demo_leave_no_temporary_directory_behind(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}
    for cmd in (
        [sys.executable, str(ROOT / "examples" / "failover.py"), "--ttl", "1"],
        [sys.executable, str(ROOT / "examples" / "asyncio_leader.py")],
        [sys.executable, "-m", "swarmha.manager.cli", "demo", "--ttl", "2s", "--no-engine"],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, env=env)
        assert done.returncode == 0, (cmd, done.stdout, done.stderr)
        assert list(tmp.iterdir()) == [], (cmd, list(tmp.iterdir()))
    assert "failover times:" in done.stdout, done.stdout
