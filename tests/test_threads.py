"""Threads per Discovery at idle, by name, on every backend: the table in docs/api.md ("Threads"), asserted.

The scene is the one the table describes: one Discovery, a Candidate leading one key and a Follower watching it,
nothing changing. It runs in a process of its own (:mod:`tests.support.threads_probe`), so no thread of an
earlier test (a Discovery whose engine wakes to renew, a per-file feed opened first) is counted or hidden; the
probe waits (bounded) for the set of threads to settle to the table's row: threads that served the election's
first requests end after an idle period of their own (the engine's spare workers, for one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.stores import StoreFixture

ROOT = Path(__file__).resolve().parent.parent

TTL = 10.0

#: Every Discovery: the election engine's timer and the one worker it keeps while a campaign or a follow lives.
ENGINE = {"swarmha-engine-timer": 1, "swarmha-engine-worker": 1}

#: backend -> the threads beyond ENGINE at idle, by name ("[prefix]": the URL's key prefix; see docs/api.md).
IDLE_THREADS: dict[str, dict[str, int]] = {
    "memory": {},
    "sqlite": {"swarmha-sqlite-feed": 1},
    "etcd": {"swarmha-etcd-watch": 1, "grpc (_run)": 2},
    "zk": {
        "swarmha-zk-timer": 1,
        **{
            f"swarmha-zk[{conn}]-{role}": 1
            for conn in ("shared", f"sessions(ttl={TTL:g})")
            for role in ("io", "completions", "callbacks")
        },
    },
    "consul": {"swarmha-consul-watch[prefix]": 1},
    "postgres": {"swarmha-postgres-watch": 1},
    "pgbouncer": {"swarmha-postgres-watch": 1},
    "redis": {"swarmha-redis-watch[prefix]": 1},
}

#: Seconds the threads get to settle: the engine's and the watch streams' idle periods (2 s) with room to spare.
SETTLE = 10.0


@pytest.mark.slow
def test_threads_at_idle_are_the_documented_ones(store: StoreFixture) -> None:
    expected = {**ENGINE, **IDLE_THREADS[store.name]}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.threads_probe", store.url(), str(TTL), json.dumps(expected), str(SETTLE)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"{store.name}: the probe's election failed: {proc.stderr[-2000:]}"
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == expected, f"{store.name}: threads at idle {seen}, documented {expected}"
