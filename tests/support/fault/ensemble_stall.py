"""How long a 3-member ZooKeeper ensemble takes to commit again after it was paused as a whole, without swarmha.

    python -m tests.support.fault.ensemble_stall --pauses 60 --clients 9 --seed 7

Starts an ensemble as the soak does (tests/support/servers.py), ``--clients`` plain kazoo clients that each keep
one ephemeral znode with a ``--ttl`` session (as candidates would, with kazoo's own reconnect), then ``--pauses``
times: SIGSTOP every member for ``uniform(0.5, 2) x ttl`` (the soak's ``store_pause``), SIGCONT, and time the first
session the ensemble commits after it (:meth:`~tests.support.servers.Cluster.await_commits`). It prints one line per
pause and a summary; the soak's slow recoveries after ``store_pause`` are compared with these figures in
docs/reliability.md. Bounded: at most ``--limit`` s of waiting per pause.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import threading
import time
from pathlib import Path

from kazoo.client import KazooClient
from kazoo.retry import KazooRetry

from tests.support.fault.soak import percentile
from tests.support.servers import Cluster, zk_cluster


def _holder(cluster: Cluster, index: int, ttl: float, stop: threading.Event) -> None:
    client = KazooClient(
        hosts=cluster.hosts,
        timeout=ttl,
        connection_retry=KazooRetry(max_tries=-1, delay=0.05, max_delay=0.2),
        command_retry=None,
    )
    client.start(timeout=30)
    try:
        while not stop.is_set():
            try:
                if client.exists(f"/holder{index}") is None:
                    client.create(f"/holder{index}", b"", ephemeral=True)
            except Exception:  # connection loss, expiry: the client reconnects by itself
                pass
            stop.wait(0.1)
    finally:
        client.stop()
        client.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pauses", type=int, default=60)
    p.add_argument("--clients", type=int, default=9, help="plain kazoo clients holding an ephemeral (default 9)")
    p.add_argument("--ttl", type=float, default=1.5, help="their session timeout, and the pause scale (default 1.5)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--limit", type=float, default=60.0, help="longest wait for a commit after a pause (default 60)")
    args = p.parse_args()
    rng = random.Random(args.seed)
    cluster = zk_cluster(Path(tempfile.mkdtemp(prefix="swarmha-stall-")), 3)
    stop = threading.Event()
    holders = [
        threading.Thread(target=_holder, args=(cluster, i, args.ttl, stop), daemon=True) for i in range(args.clients)
    ]
    lags: list[float] = []
    try:
        for t in holders:
            t.start()
        time.sleep(2.0)
        for n in range(args.pauses):
            pause = rng.uniform(0.5, 2.0) * args.ttl
            cluster.pause()
            time.sleep(pause)
            cluster.resume()
            ended = time.monotonic()
            back = cluster.await_commits(args.limit)
            lag = args.limit if back is None else back - ended
            lags.append(lag)
            note = " (none within the limit)" if back is None else ""
            print(f"{time.strftime('%H:%M:%S')} pause {n + 1}: {pause:.2f} s, first commit {lag:.2f} s after{note}")
            time.sleep(rng.uniform(0.05, 0.3))
    finally:
        stop.set()
        cluster.close()
    over = sum(1 for x in lags if x > 1.0)
    print(
        f"{len(lags)} pauses, {args.clients} kazoo clients with {args.ttl:g} s sessions: first commit after SIGCONT "
        f"p50 {percentile(lags, 50):.2f} s, max {max(lags, default=math.nan):.2f} s, {over} over 1 s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
