"""Store-outage recovery: from the restarted store answering its health probe to a candidate leading again.

    python -m benchmarks.outage_recovery [--backend etcd|zk] [--rounds 8] [--outage 3] [--ttl 1]
    python -m benchmarks.outage_recovery --pause [--rounds 8] [--ttl 20]

With ``--pause``, how long a leader rides out a hung store instead: each round SIGSTOPs the store at a random
moment of the leader's renewal period, times the candidate's False from the SIGSTOP (its renew deadline, counted
from its last successful renewal *sent*: between ``renew_deadline - ttl/3`` and ``renew_deadline``, 6.7-13.3 s
with the default ttl 20 s), then SIGCONTs it and waits for the candidate to lead again.

One candidate leads on a single-member store started by ``tests.support.servers`` (etcd with a 500 ms election
timeout so that 1 s leases are allowed, ZooKeeper with tickTime 200 ms); each round kills the store, waits
``--outage`` seconds (long enough for client reconnect backoffs to reach their caps), starts it again, and
times the candidate's next True from the moment the server is healthy. Prints the distribution; the fault soak's
"a leader within ttl + 1 s after every heal" depends on it (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import swarmha
from tests.support.helpers import Collector
from tests.support.servers import Cluster, etcd_cluster, zk_cluster


def _store(backend: str, workdir: Path) -> tuple[Cluster, str]:
    if backend == "etcd":
        cluster = etcd_cluster(workdir, 1, extra=["--election-timeout=500", "--heartbeat-interval=50"])
        return cluster, f"etcd://{cluster.hosts}/bench?timeout=2"
    cluster = zk_cluster(workdir, 1)
    return cluster, f"zk://{cluster.hosts}/bench?timeout=2"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.outage_recovery", description=__doc__)
    parser.add_argument("--backend", choices=["etcd", "zk"], default="etcd")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--outage", type=float, default=3.0, help="seconds the store stays down per round")
    parser.add_argument("--ttl", type=float, default=None, help="candidate ttl (default 1 s; 20 s with --pause)")
    parser.add_argument("--pause", action="store_true", help="SIGSTOP the store: time the leader's ride-out")
    args = parser.parse_args(argv)
    if args.ttl is None:
        args.ttl = 20.0 if args.pause else 1.0
    if args.pause:
        ride_out(args.backend, args.rounds, args.ttl)
        return
    cluster, url = _store(args.backend, Path(tempfile.mkdtemp(prefix="swarmha-outage-")))
    discovery = swarmha.connect(url)
    candidate = swarmha.Candidate(discovery, "svc/leader", node="n", ttl=args.ttl)
    events = Collector(candidate.run_for_election())
    recoveries: list[float] = []
    try:
        assert events.next(10.0) is True, "no leader at the start"
        for _ in range(args.rounds):
            cluster.kill()
            assert events.next(args.ttl + 5.0) is False, "the leader did not demote during the outage"
            time.sleep(args.outage)  # the outage itself, not a verdict
            cluster.start()  # returns once the server answers its health probe
            healthy_at = time.monotonic()
            won_at, elected = events.next_timed(args.ttl + 10.0)
            assert elected is True
            recoveries.append(won_at - healthy_at)
    finally:
        candidate.stop()
        discovery.close()
        cluster.close()
    print(
        f"{args.backend}: leader again after the store was healthy, ttl {args.ttl:g} s, {len(recoveries)} outages of "
        f"{args.outage:g} s: p50 {statistics.median(recoveries):.3f} s, max {max(recoveries):.3f} s; "
        f"all: {' '.join(f'{r:.3f}' for r in recoveries)}; load {Path('/proc/loadavg').read_text().split()[:3]}"
    )


def ride_out(backend: str, rounds: int, ttl: float) -> None:
    """Per round: SIGSTOP the store at a random point of the renewal period; seconds until the leader's False."""
    cluster, url = _store(backend, Path(tempfile.mkdtemp(prefix="swarmha-pause-")))
    discovery = swarmha.connect(url)
    candidate = swarmha.Candidate(discovery, "svc/leader", node="n", ttl=ttl)
    events = Collector(candidate.run_for_election())
    rides: list[float] = []
    try:
        assert events.next(10.0) is True, "no leader at the start"
        for _ in range(rounds):
            # one whole renewal period first (a term won after a pause may count from a lease granted earlier),
            # then a random phase of the next: the steady state of a primary that has led for a while
            time.sleep(ttl / 3 + random.uniform(0, ttl / 3))
            cluster.pause()
            paused = time.monotonic()
            try:
                lost_at, elected = events.next_timed(ttl + 5.0)
                assert elected is False, "the leader did not step down during the pause"
                rides.append(lost_at - paused)
            finally:
                cluster.resume()
            assert events.next(ttl + 10.0) is True, "no leader after the pause"
    finally:
        candidate.stop()
        discovery.close()
        cluster.close()
    print(
        f"{backend}: a leader (ttl {ttl:g} s, renew deadline {candidate.renew_deadline:g} s) stepped down "
        f"{min(rides):.1f}-{max(rides):.1f} s after the store was paused (p50 {statistics.median(rides):.1f} s, "
        f"{len(rides)} pauses); all: {' '.join(f'{r:.2f}' for r in rides)}"
    )


if __name__ == "__main__":
    main()
