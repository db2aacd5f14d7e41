"""Threads of one Discovery at idle, counted in a fresh process: ``python -m tests.support.threads_probe URL TTL
EXPECTED_JSON SETTLE``.

The scene is the one docs/api.md's "Threads" table describes: one Discovery, a Candidate leading one key and a
Follower watching it, nothing changing. A process of its own sees no thread of anything else (an earlier test's
Discovery whose engine wakes to renew, a per-file feed another test opened first), so the count is exact. It
waits (bounded by SETTLE seconds) for the set of threads named as the table writes them to equal EXPECTED
(threads that served the first requests end after an idle period of their own), then prints the last set seen as
JSON on stdout; exit 0 either way (the test compares), 1 if the election itself did not happen.
"""

from __future__ import annotations

import collections
import json
import re
import sys
import threading
import time

import swarmha
from tests.support.helpers import COLLECTOR_THREAD, Collector


def label(name: str, prefix: str) -> str:
    """A thread's name as the table writes it: the URL's key prefix as ``[prefix]``; gRPC's unnamed threads
    (grpcio starts them as ``Thread-N (_run)``) as ``grpc (_run)``."""
    name = name.replace(f"[{prefix}/]", "[prefix]").replace(f"[{prefix}]", "[prefix]")
    return re.sub(r"^Thread-\d+ \(_run\)$", "grpc (_run)", name)


def main(url: str, ttl: float, expected: dict[str, int], settle: float) -> int:
    before = set(threading.enumerate())
    prefix = url.split("?")[0].rstrip("/").rpartition("/")[2]
    d = swarmha.connect(url)
    candidate = swarmha.Candidate(d, "svc/leader", node="n1", ttl=ttl)
    follower = swarmha.Follower(d, "svc/leader")
    elected = Collector(candidate.run_for_election())
    leaders = Collector(follower.follow_election())

    def seen() -> dict[str, int]:
        alive = [t for t in threading.enumerate() if t not in before and t.is_alive() and t.name != COLLECTOR_THREAD]
        return dict(collections.Counter(label(t.name, prefix) for t in alive))

    try:
        if elected.next(timeout=10.0) is not True:
            return 1
        while (leader := leaders.next(timeout=10.0)) is None:
            pass
        if leader.node != "n1":
            return 1
        deadline = time.monotonic() + settle
        last = seen()
        while last != expected and time.monotonic() < deadline:
            time.sleep(0.05)
            last = seen()
        print(json.dumps(last, sort_keys=True))
        return 0
    finally:
        candidate.stop()
        follower.stop()
        d.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3]), float(sys.argv[4])))
