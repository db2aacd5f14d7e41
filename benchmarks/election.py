"""Election benchmarks: swarmha on every backend and its peers on the same servers, in one run.

    python -m benchmarks election [--quick] [--rounds 100] [--crash-rounds 10] [--out docs] [--parts ...]

Parts (``--parts``, default all):

* ``handover``: graceful handover. A leader gives up (swarmha ``stop()``, kazoo ``Lock.release()``, kazoo
  ``Election`` function returns, etcd ``Lock.release()``, tooz ``stand_down_group_leader``) while one other
  contender has been waiting for ``SETTLE`` s; time until that contender knows it leads. Each contender has
  its own client connection; a new contender (and connection) is made for every term, outside the timing.
* ``handover-procs``: the same between contender *processes* (``python -m benchmarks.contenders``, told to
  give up on stdin), as a deployment runs them: nothing one contender does after its release can take the
  other's GIL. ``--proc-rounds`` rounds (default 40; a process start per round).
* ``crash``: crash failover. Contender *processes* (``python -m benchmarks.contenders``); the leader is
  SIGKILLed at a random phase of its renewal period; time until the waiting process knows it leads, in
  seconds and as a multiple of ttl (same ttl for every system).
* ``elect``: N swarmha candidates (threads of this process, each with its own Discovery, i.e. connection)
  start together on a vacant key; time until one leads (exactly one must).
* ``idle``: an idle leader plus N followers and N waiting candidates (each its own Discovery), N = 0, 1, 10,
  100: store requests per second (server-side counters, see ``benchmarks/stores.py``) and CPU of this
  process and of the server over a window.

``--base DIR`` (another checkout: ``git worktree add --detach DIR COMMIT``) puts that build's swarmha beside this
one's in the handover parts, as ``swarmha-base``: its blocks take turns with every other system's, and every block
of every system then runs in a new process of its own checkout (:func:`in_checkout`), so the two builds' ratios
to the peers come from one run, under the same drift. The report is in :mod:`benchmarks.election_report`.

Writes ``<out>/benchmarks.md`` (the tables between ``<!-- election:begin -->`` and ``<!-- election:end -->``;
the rest of an existing file is kept), ``<out>/benchmarks-election.json`` (every sample) and PNG plots under
``<out>/img/``. ``--out`` may also name a ``.md`` file.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import swarmha
from benchmarks.contenders import SYSTEMS, TOOZ_INTERVAL, Contender, backend_of
from benchmarks.election_report import BASE, load, machine, plots, report, write_report
from benchmarks.stores import BACKENDS, Stores
from benchmarks.support import commit_of, reached
from tests.support.procs import terminate

ROOT = Path(__file__).resolve().parent.parent
PARTS = ["handover", "handover-procs", "crash", "elect", "idle"]
PEERS = [
    "kazoo-lock",
    "kazoo-election",
    "tooz",
    "etcd-lock",
    "pg-advisory-lock",
    "tooz-redis",
    "redis-lock",
    "python-redis-lock",
]
#: How long the next contender waits before the leader gives up (a waiting candidate has waited a while).
SETTLE = 0.1
HANDOVER_TTL = 30.0
#: Between processes the waiting contender settles this many times longer (its campaign starts in a new process).
PROC_SETTLE = 3.0
ROUND_TIMEOUT = 10.0

_prefixes = iter(range(10**9))


def fresh(name: str) -> str:
    return f"b{os.getpid()}-{next(_prefixes)}-{name}"


def missing(system: str, ttl: float = 0.0) -> dict[str, Any] | None:
    """A result saying the peer's library is not installed (so the run goes on without it), or None."""
    modules = {"kazoo-lock": "kazoo", "kazoo-election": "kazoo", "tooz": "tooz", "etcd-lock": "pyetcd"}
    module = {
        **modules,
        "pg-advisory-lock": "psycopg",
        "tooz-redis": "tooz",
        "redis-lock": "redis",
        "python-redis-lock": "redis_lock",
    }.get(system)
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    print(f"  {system}: {module} is not installed (pip install -e '.[bench]'); skipped", flush=True)
    return {"samples": [], "failures": 0, "ttl": ttl, "missing": f"{module} not installed"}


def guarded(what: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``fn(*args)``, or a result carrying the error: one failing measurement must not lose the whole run."""
    try:
        return fn(*args)
    except Exception as e:
        print(f"  {what} FAILED: {type(e).__name__}: {e}", flush=True)
        return {"samples": [], "failures": 0, "error": f"{type(e).__name__}: {e}"[:200]}


# -- graceful handover ------------------------------------------------------------------------------------------

#: Handover rounds are run in blocks of this many per system, the systems taking turns (see ``interleaved``).
BLOCK = 10


def interleaved(
    what: str,
    pairs: list[tuple[str, str]],
    stores: Stores,
    run: Callable[[str, str, int], dict[str, Any]],
    rounds: int,
) -> dict[str, dict[str, Any]]:
    """``run(system, url, n)`` for every (system, backend) pair, ``rounds`` rounds each, in blocks of ``BLOCK``
    rounds with the pairs taking turns; samples and failures merged per pair.

    The ratio goals compare systems measured minutes apart on one machine whose disk-sync latency and load
    drift (medians of 30-round stretches of one system moved between 3.6 and 5.9 ms within a run): taking
    turns puts every drift on every system alike. A block that fails ends that pair's measurement.
    """
    results: dict[str, dict[str, Any]] = {}
    urls: dict[str, str] = {}
    for system, backend in pairs:
        name = f"{system} @ {backend}"
        skipped = missing(system)
        if skipped is not None:
            results[name] = skipped
        else:
            results[name] = {"samples": [], "failures": 0}
            urls[name] = stores.url(backend, fresh(system))
    done = 0
    while done < rounds:
        n = min(BLOCK, rounds - done)
        for system, backend in pairs:
            name = f"{system} @ {backend}"
            if name not in urls or "error" in results[name]:
                continue
            print(f"{what}: {name} (rounds {done + 1}-{done + n} of {rounds}) ...", flush=True)
            block = guarded(name, run, system, urls[name], n)
            results[name]["samples"] += block["samples"]
            results[name]["failures"] += block["failures"]
            if "error" in block:
                results[name]["error"] = block["error"]
        done += n
    return results


def in_checkout(tree: Path, part: str, system: str, url: str, rounds: int, settle: float) -> dict[str, Any]:
    """``part`` (``handover`` or ``handover_procs``) of ``system``, run by the checkout ``tree`` (its swarmha and its
    benchmark code: ``--base``'s, or this one) in a new process; the samples it printed."""
    code = (
        "import json, sys\n"
        "from benchmarks import election\n"
        "run = getattr(election, sys.argv[1])\n"
        "print(json.dumps(run(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, part, system, url, str(rounds), str(settle)],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
        timeout=60 + rounds * 4 * ROUND_TIMEOUT,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{part} in {tree} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def handover(system: str, url: str, rounds: int, settle: float) -> dict[str, Any]:
    """Samples (seconds) of leader gives up → the waiting contender leads, over ``rounds`` terms."""
    key = "bench/leader"
    make: Callable[[int], Contender] = lambda i: SYSTEMS[system](url, key, f"n{i}", HANDOVER_TTL)  # noqa: E731
    samples: list[float] = []
    failures = 0
    leader = make(0)
    leader.campaign()
    if not leader.elected.wait(ROUND_TIMEOUT):
        leader.close()
        raise RuntimeError(f"{system}: no first leader on {url}")
    try:
        for i in range(rounds):
            nxt = make(i + 1)
            nxt.campaign()
            time.sleep(settle * random.uniform(1.0, 2.0))  # random: no phase lock with a polling peer (tooz)
            if nxt.elected.is_set():
                raise RuntimeError(f"{system}: two contenders lead at once")
            start = time.monotonic()
            leader.release()
            if nxt.elected.wait(ROUND_TIMEOUT):
                samples.append(nxt.elected_at - start)
            else:
                failures += 1
            leader.close()
            leader = nxt
            if not leader.elected.is_set() and not leader.elected.wait(ROUND_TIMEOUT):
                raise RuntimeError(f"{system}: the next contender never led")
    finally:
        leader.close()
    return {"samples": samples, "failures": failures}


def handover_procs(system: str, url: str, rounds: int, settle: float) -> dict[str, Any]:
    """Samples (seconds) of leader gives up → the waiting contender leads, each contender its own process.

    As a deployment runs them: the leader's own work after its release (swarmha closes its session, a peer's
    client is closed later) cannot take the waiter's GIL. Both processes read ``CLOCK_MONOTONIC``.
    """
    samples: list[float] = []
    failures = 0
    with contender_processes(system, url, "bench/handover", "h", HANDOVER_TTL) as spawn:
        leader = spawn(0)
        for i in range(rounds):
            nxt = spawn(i + 1)
            time.sleep(settle * random.uniform(1.0, 2.0))
            if nxt.elected.is_set():
                raise RuntimeError(f"{system}: two contender processes lead at once")
            leader.release()
            if nxt.elected.wait(ROUND_TIMEOUT) and leader.released.wait(ROUND_TIMEOUT):
                samples.append(nxt.elected_at - leader.released_at)
            else:
                failures += 1
            leader.stop()
            leader = nxt
            if not leader.elected.wait(ROUND_TIMEOUT):
                raise RuntimeError(f"{system}: the next contender process never led")
    return {"samples": samples, "failures": failures}


# -- crash failover ---------------------------------------------------------------------------------------------


class _Proc:
    """A contender process (``python -m benchmarks.contenders``) and the JSON lines it printed."""

    def __init__(self, system: str, url: str, key: str, node: str, ttl: float) -> None:
        args = ["--system", system, "--url", url, "--key", key, "--node", node, "--ttl", str(ttl)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.contenders", *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.ready = threading.Event()
        self.elected = threading.Event()
        self.elected_at = 0.0
        self.released = threading.Event()
        self.released_at = 0.0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = json.loads(raw)
            if line.get("event") == "ready":
                self.ready.set()
            elif line.get("event") == "elected":
                self.elected_at = float(line["t"])
                self.elected.set()
            elif line.get("event") == "released":
                self.released_at = float(line["t"])
                self.released.set()

    def release(self) -> None:
        """Ask the process to give leadership up gracefully (it notes the time right before it does)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("release\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        terminate(self.proc)
        self._reader.join(5)


@contextlib.contextmanager
def contender_processes(system: str, url: str, key: str, prefix: str, ttl: float) -> Iterator[Callable[[int], _Proc]]:
    """``spawn(i)``: start contender process ``<prefix><i>`` and wait until it is ready (the first one: until it
    leads). Every process started is stopped when the block ends."""
    procs: list[_Proc] = []

    def spawn(i: int) -> _Proc:
        p = _Proc(system, url, key, f"{prefix}{i}", ttl)
        procs.append(p)
        if not p.ready.wait(30):
            raise RuntimeError(f"{system}: contender process not ready")
        if len(procs) == 1 and not p.elected.wait(30):
            raise RuntimeError(f"{system}: no first leader")
        return p

    try:
        yield spawn
    finally:
        for p in procs:
            p.stop()


def crash(system: str, url: str, ttl: float, rounds: int) -> dict[str, Any]:
    """Samples (seconds) of SIGKILL of the leader process → the waiting process leads."""
    samples: list[float] = []
    failures = 0
    with contender_processes(system, url, "bench/crash", "c", ttl) as spawn:
        leader = spawn(0)
        for r in range(rounds):
            waiting = spawn(r + 1)
            time.sleep(0.5 + random.uniform(0, ttl / 3.0))  # campaigning, and a random phase of the renewals
            if waiting.elected.is_set():
                raise RuntimeError(f"{system}: two contender processes lead at once")
            killed = time.monotonic()
            leader.kill()
            if waiting.elected.wait(ttl + 10.0):
                samples.append(waiting.elected_at - killed)
            else:
                failures += 1
            leader = waiting
            if not leader.elected.wait(30):
                raise RuntimeError(f"{system}: no leader after a crash")
    return {"samples": samples, "failures": failures, "ttl": ttl}


def warm_up(d: Any, timeout: float = 60.0) -> None:
    """Read once through ``d`` so its connection is up before a measurement (retried: many connect at once)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            d.get("warm-up")
            return
        except swarmha.errors.DiscoveryError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# -- election among N -------------------------------------------------------------------------------------------


def elect_among(url: str, n: int, rounds: int) -> dict[str, Any]:
    """Seconds from starting N candidates on a vacant key until one leads; checks that exactly one does."""
    discoveries = [swarmha.connect(url) for _ in range(n)]
    samples: list[float] = []
    failures = 0
    try:
        for d in discoveries:
            warm_up(d)
        for r in range(rounds):
            key = f"among/{r}"
            candidates = [swarmha.Candidate(d, key, node=f"n{i}", ttl=10.0) for i, d in enumerate(discoveries)]
            start = time.monotonic()
            for c in candidates:
                c.start()
            if reached(lambda cs=candidates: any(c.is_leader for c in cs), ROUND_TIMEOUT, 0.0005):
                samples.append(time.monotonic() - start)
                time.sleep(0.05)
                if sum(c.is_leader for c in candidates) != 1:
                    raise RuntimeError(f"{url}: {sum(c.is_leader for c in candidates)} leaders among {n}")
            else:
                failures += 1
            stoppers = [threading.Thread(target=c.stop) for c in candidates]
            for t in stoppers:
                t.start()
            for t in stoppers:
                t.join(30)
    finally:
        for d in discoveries:
            d.close()
    return {"samples": samples, "failures": failures}


# -- idle cost --------------------------------------------------------------------------------------------------


def idle(stores: Stores, backend: str, n: int, ttl: float, seconds: float, settle: float = 1.0) -> dict[str, Any]:
    """Requests/s and CPU with an idle leader + ``n`` followers + ``n`` waiting candidates."""
    url = stores.url(backend, fresh("idle"))
    key = "idle/leader"
    discoveries: list[Any] = []

    def connect() -> Any:
        d = swarmha.connect(url)
        discoveries.append(d)
        return d

    workers: list[Any] = []
    try:
        leader = swarmha.Candidate(connect(), key, node="leader", ttl=ttl).start()
        workers.append(leader)
        if not reached(lambda: leader.is_leader, ROUND_TIMEOUT):
            raise RuntimeError(f"{backend}: no idle leader")
        followers = [swarmha.Follower(connect(), key).start() for _ in range(n)]
        waiting = [swarmha.Candidate(connect(), key, node=f"w{i}", ttl=ttl).start() for i in range(n)]
        workers += followers + waiting
        reached(lambda: all(f.leader is not None for f in followers), 30, 0.01)
        time.sleep(settle)  # let every waiting candidate reach its watch (and a prepared session connect)
        before, cpu0, srv0, t0 = (
            stores.requests(backend),
            time.process_time(),
            stores.server_cpu(backend),
            time.monotonic(),
        )
        time.sleep(seconds)
        after, cpu1, srv1, t1 = (
            stores.requests(backend),
            time.process_time(),
            stores.server_cpu(backend),
            time.monotonic(),
        )
        if not leader.is_leader:
            raise RuntimeError(f"{backend}: the idle leader lost its term during the window")
    finally:
        stoppers = [threading.Thread(target=w.stop) for w in reversed(workers)]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(30)
        for d in discoveries:
            d.close()
    window = t1 - t0
    rates = {k: (after.get(k, 0.0) - before.get(k, 0.0)) / window for k in after if k != "connections"}
    return {
        "n": n,
        "window": window,
        "rates": rates,
        "connections": after.get("connections"),
        "cpu": (cpu1 - cpu0) / window,
        "server_cpu": None if srv0 is None or srv1 is None else (srv1 - srv0) / window,
    }


# -- main -------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks election", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke: a few rounds of everything, under a minute")
    parser.add_argument("--rounds", type=int, default=100, help="graceful handover rounds per system (default 100)")
    parser.add_argument(
        "--proc-rounds", type=int, default=40, help="graceful handover rounds between processes (default 40)"
    )
    parser.add_argument("--crash-rounds", type=int, default=10, help="crash failover rounds per system (default 10)")
    parser.add_argument("--crash-ttl", type=float, default=2.0, help="ttl of the crash runs, every system (2 s)")
    parser.add_argument("--elect-rounds", type=int, default=10, help="rounds per N of the election race")
    parser.add_argument("--idle-ttl", type=float, default=3.0)
    parser.add_argument("--idle-seconds", type=float, default=9.0, help="idle measurement window per N")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=BACKENDS)
    parser.add_argument("--systems", nargs="+", choices=["swarmha", *PEERS], default=["swarmha", *PEERS])
    parser.add_argument("--zk-query", default="", help="query string for swarmha's zk:// URLs, e.g. prepare=0")
    parser.add_argument("--out", default="docs", help="directory (or .md file) for the report (default docs)")
    parser.add_argument(
        "--base",
        type=Path,
        help="another checkout (git worktree add --detach DIR COMMIT): the handover parts also run its swarmha, as "
        f"'{BASE}', every block of every system in a new process of its checkout",
    )
    args = parser.parse_args(argv)
    if args.base is not None and not (args.base / "benchmarks" / "election.py").is_file():
        parser.error(f"--base {args.base}: not a swarmha checkout (no benchmarks/election.py)")
    command = "python -m benchmarks election " + " ".join(sys.argv[1:] if argv is None else argv)
    settle = SETTLE
    ns = [0, 1, 10, 100]
    elect_ns = [1, 10, 100]
    if args.quick:
        args.rounds, args.crash_rounds, args.elect_rounds, args.idle_seconds = 6, 1, 2, 1.0
        args.proc_rounds = 2
        ns, elect_ns = [0, 10], [1, 10]
        settle = 0.05
    out = Path(args.out)
    report_path = out if out.suffix == ".md" else out / "benchmarks.md"
    out_dir = report_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine(),
        "load_start": load(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "quick": args.quick,
        "settle": settle,
    }
    need = set(args.backends)
    need |= {backend_of(s) for s in args.systems if backend_of(s)} & set(BACKENDS)
    with Stores(sorted(need), args.zk_query) as stores:
        pairs = [(s, b) for s in args.systems for b in args.backends if backend_of(s) in ("", b)]
        handover_pairs = pairs
        if args.base is not None:
            results["base"], results["new"] = commit_of(args.base), commit_of(ROOT)
            handover_pairs = [p for s, b in pairs for p in ([(BASE, b)] if s == "swarmha" else []) + [(s, b)]]

        def run(part: str, system: str, url: str, n: int, wait: float) -> dict[str, Any]:
            if args.base is None:
                return {"handover": handover, "handover_procs": handover_procs}[part](system, url, n, wait)
            tree = args.base if system == BASE else ROOT
            return in_checkout(tree, part, "swarmha" if system == BASE else system, url, n, wait)

        if "handover" in args.parts:
            results["handover"] = interleaved(
                "handover", handover_pairs, stores, lambda s, url, n: run("handover", s, url, n, settle), args.rounds
            )
        if "handover-procs" in args.parts:
            results["handover_procs"] = interleaved(
                "handover between processes",
                [(s, b) for s, b in handover_pairs if b != "memory"],
                stores,
                lambda s, url, n: run("handover_procs", s, url, n, settle * PROC_SETTLE),
                args.proc_rounds,
            )
        if "crash" in args.parts:
            results["crash"] = {}
            crash_pairs = [(s, b) for s, b in pairs if b != "memory"]
            if args.quick:  # one round of swarmha and of the etcd lock on etcd
                crash_pairs = [(s, b) for s, b in crash_pairs if b == "etcd"]
            for system, backend in crash_pairs:
                name = f"{system} @ {backend}"
                print(f"crash: {name} ...", flush=True)
                url = stores.url(backend, fresh(system))
                results["crash"][name] = missing(system, args.crash_ttl) or guarded(
                    name, crash, system, url, args.crash_ttl, args.crash_rounds
                )
                results["crash"][name].setdefault("ttl", args.crash_ttl)
        if "elect" in args.parts and "swarmha" in args.systems:
            results["elect"] = {}
            for backend in args.backends:
                for n in elect_ns:
                    print(f"elect: {backend} N={n} ...", flush=True)
                    url = stores.url(backend, fresh("elect"))
                    rounds = max(2, args.elect_rounds // (2 if n >= 100 else 1))
                    results["elect"][f"{backend} N={n}"] = guarded(f"{backend} N={n}", elect_among, url, n, rounds)
        if "idle" in args.parts and "swarmha" in args.systems:
            results["idle"] = {}
            results["idle_ttl"], results["idle_seconds"] = args.idle_ttl, args.idle_seconds
            idle_settle = 0.3 if args.quick else 1.0
            for backend in [b for b in args.backends if b != "memory"]:
                results["idle"][backend] = []
                for n in ns:
                    print(f"idle: {backend} N={n} ...", flush=True)
                    row = guarded(
                        f"idle {backend} N={n}", idle, stores, backend, n, args.idle_ttl, args.idle_seconds, idle_settle
                    )
                    if "error" in row:
                        results.setdefault("errors", []).append(f"idle {backend} N={n}: {row['error']}")
                    else:
                        results["idle"][backend].append(row)
    results["elapsed"] = time.monotonic() - started
    results["load_end"] = load()
    results["tooz_interval"] = TOOZ_INTERVAL
    results["proc_settle"], results["round_timeout"] = PROC_SETTLE, ROUND_TIMEOUT
    (out_dir / "benchmarks-election.json").write_text(json.dumps(results, indent=1))
    plots(results, out_dir / "img")
    section = report(results, command.strip(), out_dir)
    write_report(section, report_path)
    print(section)
    print(f"written to {report_path}")


if __name__ == "__main__":
    main()
