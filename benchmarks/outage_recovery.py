"""Store-outage recovery: from the restarted store answering its health probe to a candidate leading again.

    python -m benchmarks.outage_recovery [--backend etcd|zk] [--rounds 8] [--outage 3] [--ttl 1]

One candidate leads on a single-member store started by ``tests.support.servers`` (etcd with a 500 ms election
timeout so that 1 s leases are allowed, ZooKeeper with tickTime 200 ms); each round kills the store, waits
``--outage`` seconds (long enough for client reconnect backoffs to reach their caps), starts it again, and
times the candidate's next True from the moment the server is healthy. Prints the distribution; the fault soak's
"a leader within ttl + 1 s after every heal" depends on it (docs/reliability.md).
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--ttl", type=float, default=1.0)
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    main()
