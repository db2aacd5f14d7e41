"""A candidate process for fault runs: appends an observation around each unit of "leader work" to a log.

One JSON line per observation, written with one ``write`` syscall (so a SIGKILL loses at most the line in
flight)::

    {"n": "c1", "a": <monotonic before>, "ta": <token before or null>,
                "b": <monotonic after>,  "tb": <token after or null>}

Leader work counts as done in [a, b] only if ``ta == tb`` and both are set: the token read just before ``a`` and just
after ``b`` agree (so the term was valid over all of [a, b]). The checker (tests/support/fault/checker.py) merges
every worker's log.

With ``--keys N`` the worker also campaigns for N more keys (``fault/held-0`` ...) on the same Discovery (and,
with ``--lease``, through one shared :class:`swarmha.Lease`), so every fault lands on a process holding or
waiting for many keys; the observed key is still ``fault/leader``.

With ``--steer`` the observed candidate takes part in steering: ``c1`` has priority 1, every one preempts (after
``ttl``), and the harness's ``transfer`` fault sends the leader SIGUSR1 (transfer to the next worker, ``c0`` ->
``c1`` -> ``c2`` -> ``c0``) or SIGUSR2 (transfer to a node that does not exist: False after ``ttl/2``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import threading
import time

import swarmha


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--ttl", type=float, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--work", type=float, default=0.002, help="seconds of 'leader work' per observation")
    parser.add_argument("--keys", type=int, default=0, help="more keys to campaign for beside the observed one")
    parser.add_argument("--lease", action="store_true", help="every candidate of the process on one shared Lease")
    parser.add_argument("--steer", action="store_true", help="priorities, preemption and transfers (see above)")
    parser.add_argument("--workers", type=int, default=3, help="how many workers the ring of transfers has")
    args = parser.parse_args()

    # swarmha's log on stderr (the harness keeps it next to the observation log), stamped with the same
    # monotonic clock as the observations
    factory = logging.getLogRecordFactory()

    def stamped(*a: object, **k: object) -> logging.LogRecord:
        record = factory(*a, **k)
        record.mono = time.monotonic()
        return record

    logging.setLogRecordFactory(stamped)
    logging.basicConfig(level=logging.INFO, format=f"%(mono).3f {args.node} %(levelname)s %(name)s: %(message)s")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    discovery = swarmha.connect(args.url)
    lease = swarmha.Lease(discovery, args.ttl) if args.lease else None
    steering = {"priority": int(args.node == "c1"), "preempt": True} if args.steer else {}
    candidate = swarmha.Candidate(
        discovery, "fault/leader", node=args.node, ttl=args.ttl, lease=lease, **steering
    ).start()

    def transfer(to: str, timeout: float) -> None:
        with contextlib.suppress(swarmha.errors.ConfigurationError):  # not leading (any more): nothing to hand over
            candidate.transfer(to, timeout)

    def on_transfer(signum: int, frame: object) -> None:
        following = f"c{(int(args.node[1:]) + 1) % args.workers}"
        to, timeout = (following, args.ttl) if signum == signal.SIGUSR1 else ("absent", args.ttl / 2)
        threading.Thread(target=transfer, args=(to, timeout), daemon=True).start()

    if args.steer:
        signal.signal(signal.SIGUSR1, on_transfer)
        signal.signal(signal.SIGUSR2, on_transfer)
    held = [
        swarmha.Candidate(discovery, f"fault/held-{i}", node=args.node, ttl=args.ttl, lease=lease).start()
        for i in range(args.keys)
    ]
    try:
        while not stopping.is_set():
            # [a, b] lies between the two token reads: a pause (SIGSTOP) between a read and its clock read must
            # not stretch the interval past the moment the term was seen valid (b read after the second token
            # once made a leader paused right after that read look as if it had worked through the pause).
            before = candidate.term
            a = time.monotonic()
            if before is not None:
                time.sleep(args.work)  # the leader's work: it must not overlap another leader's
            b = time.monotonic()
            after = candidate.term
            line = {
                "n": args.node,
                "a": a,
                "ta": None if before is None else before.token,
                "b": b,
                "tb": None if after is None else after.token,
            }
            os.write(fd, (json.dumps(line) + "\n").encode())
            stopping.wait(args.interval)
    finally:
        for c in [candidate, *held]:
            c.stop()
        if lease is not None:
            lease.close()
        discovery.close()
        os.close(fd)


if __name__ == "__main__":
    main()
