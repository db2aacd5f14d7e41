"""A candidate process for multi-process tests: campaigns and reports each observation as a JSON line.

Every ``--interval`` it takes an observation around a unit of "leader work"::

    {"node": "n1", "t0": <monotonic before>, "t1": <monotonic after>, "leader": true, "token": 7}

``t0``/``t1`` are CLOCK_MONOTONIC readings, comparable with the test process's. It exits on SIGTERM after
``stop()`` (printing {"node": ..., "stopped": true}); SIGKILL and SIGSTOP are the tests' business.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

import swarmha


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", default="svc/leader")
    parser.add_argument("--node", required=True)
    parser.add_argument("--ttl", type=float, default=2.0)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument(
        "--mode",
        choices=("start", "never-iterate"),
        default="start",
        help="start(): campaign without an iterator; never-iterate: take run_for_election() and never advance it",
    )
    args = parser.parse_args()

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    discovery = swarmha.connect(args.url)
    candidate = swarmha.Candidate(discovery, args.key, node=args.node, ttl=args.ttl)
    if args.mode == "start":
        candidate.start()
    else:
        elections = candidate.run_for_election()  # the campaign must run although this is never advanced
    out = sys.stdout
    while not stopping.is_set():
        t0 = time.monotonic()
        term = candidate.term
        t1 = time.monotonic()
        line = {"node": args.node, "t0": t0, "t1": t1, "leader": term is not None}
        if term is not None:
            line["token"] = term.token
        out.write(json.dumps(line) + "\n")
        out.flush()
        stopping.wait(args.interval)
    candidate.stop()
    if args.mode == "never-iterate":
        assert list(elections) in ([], [True, False]), "the iterator yields what happened, then ends"
    discovery.close()
    out.write(json.dumps({"node": args.node, "stopped": True, "t": time.monotonic()}) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
