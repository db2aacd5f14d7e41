"""Three candidate processes elect a leader through one sqlite file; the leader is killed; failover is timed.

    python examples/failover.py [--ttl 2] [--db PATH]

Each child process runs ``swarmha.Candidate`` and does its "leader work" only while ``is_leader``.
This process watches with ``swarmha.Follower`` and prints who leads. It then stops the leader gracefully
(SIGTERM: the child calls ``stop()``, which releases the key) and SIGKILLs the next one (nothing released:
its session must expire), printing both measured failover times.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import swarmha


def say(line: str) -> None:
    """Print one whole line in one write: the children share this stdout, and with PYTHONUNBUFFERED
    ``print`` writes the text and its newline separately, so another process's line could land between."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def child(url: str, node: str, ttl: float) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with swarmha.Candidate(swarmha.connect(url), "demo/leader", node=node, ttl=ttl) as candidate:
        for elected in candidate.run_for_election():
            term = candidate.term
            say(f"  [{node}] elected, token {term.token}" if elected and term else f"  [{node}] lost")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ttl", type=float, default=2.0, help="session TTL in seconds (default 2)")
    parser.add_argument("--db", help="sqlite file (default: a new temporary file)")
    parser.add_argument("--child", nargs=2, metavar=("URL", "NODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.ttl)
        return

    if args.db:
        run(args.db, args.ttl)
    else:
        with tempfile.TemporaryDirectory(prefix="swarmha-") as workdir:  # removed with the file when done
            run(os.path.join(workdir, "election.db"), args.ttl)


def run(db: str, ttl: float) -> None:
    url = f"sqlite://{db}"
    say(f"discovery: {url}, ttl={ttl}s")
    procs = {
        node: subprocess.Popen([sys.executable, __file__, "--ttl", str(ttl), "--child", url, node])
        for node in ("node-1", "node-2", "node-3")
    }
    discovery = swarmha.connect(url)
    follower = swarmha.Follower(discovery, "demo/leader")
    changes = follower.follow_election()
    try:
        leader = next(ld for ld in changes if ld is not None)
        say(f"leader: {leader.node} (token {leader.token})")
        for how, sig in (("stopped gracefully (SIGTERM)", signal.SIGTERM), ("killed (SIGKILL)", signal.SIGKILL)):
            start = time.monotonic()
            procs[leader.node].send_signal(sig)
            say(f"{leader.node} {how}")
            new = next(ld for ld in changes if ld is not None and ld.node != leader.node)
            took = time.monotonic() - start
            say(f"new leader: {new.node} (token {new.token}) after {took * 1000:.1f} ms")
            leader = new
    finally:
        follower.stop()
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(10)
        discovery.close()


if __name__ == "__main__":
    main()
