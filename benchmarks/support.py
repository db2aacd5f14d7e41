"""What several benchmarks share (public names: a benchmark never imports another's private ones).

* :func:`wait` / :func:`reached`: the one wait-on-a-condition loop (``poll`` chosen per use: the handover probes
  poll every 0.2-0.5 ms, readiness probes every few ms).
* :func:`uptime`: the load average line written beside every figure.
* :func:`splice`: a report's section put in its place between two markers of a document.
* :func:`commit_of`: the commit of a checkout, for reports that compare builds (``--base``).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["commit_of", "reached", "splice", "uptime", "wait"]


def wait(predicate: Callable[[], object], timeout: float, what: str = "condition", poll: float = 0.001) -> float:
    """Poll ``predicate`` until it is truthy; the seconds it took. TimeoutError naming ``what`` after ``timeout``."""
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)
    return time.monotonic() - began


def reached(predicate: Callable[[], object], timeout: float, poll: float = 0.001) -> bool:
    """:func:`wait`, answering False instead of raising when ``timeout`` passes first."""
    try:
        wait(predicate, timeout, poll=poll)
    except TimeoutError:
        return False
    return True


def uptime() -> str:
    """The ``uptime`` line (load averages), written beside the figures."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def splice(path: Path, begin: str, end: str, section: str) -> None:
    """Put ``section`` (which starts with the marker ``begin`` and ends with ``end``) in place of what stands from
    ``begin`` to ``end`` in ``path``; appended when the markers are absent (``path`` made if missing)."""
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def commit_of(tree: Path) -> str:
    """The short commit of a checkout (``+`` when it has uncommitted changes), or ``?``."""
    try:
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True)  # fmt: skip
    except OSError:
        return "?"
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "") if head.returncode == 0 else "?"
