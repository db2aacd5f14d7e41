"""The fault harness: N candidate processes on a real store, faults injected at random but reproducibly.

    report = run_faults(store, workdir, faults=10, seed=7, ttl=1.0)

Each worker (tests/support/fault/worker.py) reaches the store through its own :class:`FaultProxy` (networked
backends), so a network fault can hit one candidate alone. Fault kinds (chosen by a ``random.Random(seed)``,
bounded in count and time):

* ``kill_leader`` / ``kill_any`` — SIGKILL, then a replacement process with the same node name (the fault
  heals at once, or, if no other candidate process has started yet, when the first one has);
* ``pause_leader`` — SIGSTOP for 1.5 x ttl, then SIGCONT (the GC-pause case);
* ``cut`` / ``blackhole`` / ``delay`` — one candidate's link to the store resets, goes silent, or slows;
* ``lossy`` (only when asked for in ``kinds``) — one candidate's link loses the bytes sent for a while;
* ``store_outage`` — the whole store becomes unreachable for a while (server killed and restarted, or
  the sqlite file locked), if the store fixture supports ``stop()``/``start()``;
* ``store_pause`` — every process of the store is stopped (SIGSTOP) for a while, then continued, if the
  fixture has ``pause()``/``resume()``: connections stay open but nothing answers;
* both heal when the store serves writes again, where the fixture can tell (:func:`store_back`);
* ``store_partition`` (only when asked for in ``kinds``) — every candidate's link to the store goes silent at once
  (networked backends);
* ``member_loss`` — one member of a 3-member cluster is killed and restarted, if the fixture has
  ``kill_member(i)``/``restart_member(i)``;
* ``transfer`` (only with ``steer``, which also gives the workers priorities and preemption) — the leader is
  told to transfer the key to the next worker, or (a third of the time) to a node that does not exist.

Between faults the harness waits for a leader (bounded) so each fault's recovery can be measured. The
observation logs are then merged and checked by :mod:`tests.support.fault.checker`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarmha.discovery import parse_url
from tests.support.fault.checker import Fault, Report, check, load
from tests.support.fault.proxy import FaultProxy

ROOT = Path(__file__).resolve().parents[3]
NETWORK_KINDS = ("cut", "blackhole", "delay", "lossy")
#: Fault kinds injected only when asked for by name (``kinds=``): ``lossy`` loses bytes mid-stream, which
#: TCP never does (see tests/support/fault/proxy.py); it stands for a broken middlebox. ``store_partition``
#: cuts every candidate off at once (a soak asks for it, so older soaks' default mix stays the same).
OPT_IN_KINDS = ("lossy", "store_partition")
_PROXY_MODE = {"cut": "drop", "blackhole": "blackhole", "delay": "delay", "lossy": "lossy"}
#: Faults of the whole store: each heals when the store serves writes again (:func:`store_back`).
STORE_KINDS = ("store_outage", "store_pause")


def store_back(store: Any, ended: float) -> float:
    """When a whole-store fault that ``ended`` (the store restarted or continued) is over for the candidates.

    A store that can tell (``await_commits``: the etcd and ZooKeeper fixtures) is asked when it serves writes again
    (one committed, and another a second later), so a recovery counts the candidates' time, not the store's own: a
    ZooKeeper 3.8 ensemble paused as a whole has committed no new session for seconds to over a minute after
    SIGCONT, and once one within milliseconds of SIGCONT and then none for over a minute (docs/reliability.md).
    Other stores, and one that does not serve within 60 s, heal when the fault ended. The soak reports each store's
    lag."""
    await_commits = getattr(store, "await_commits", None)
    back = None if await_commits is None else await_commits(60.0)
    return ended if back is None else max(ended, back)


class Worker:
    def __init__(
        self, node: str, url: str, ttl: float, log: Path, proxies: list[FaultProxy], held: tuple[str, ...] = ()
    ) -> None:
        self.node, self.url, self.ttl, self.log, self.proxies = node, url, ttl, log, proxies
        self.held = held  # the worker's --keys/--lease arguments
        self.proc: subprocess.Popen[bytes] | None = None
        # the worker's own log (swarmha's messages with monotonic stamps): evidence when a check fails
        self.stderr = log.with_suffix(".err").open("ab")
        self.spawn()

    def spawn(self) -> None:
        try:
            self._spawned_at_size = self.log.stat().st_size
        except FileNotFoundError:
            self._spawned_at_size = 0
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.fault.worker",
                "--url",
                self.url,
                "--node",
                self.node,
                "--ttl",
                str(self.ttl),
                "--log",
                str(self.log),
                *self.held,
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stderr=self.stderr,
        )

    def started(self) -> bool:
        """True once the process spawned last has logged an observation (it runs as a candidate)."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            return self.log.stat().st_size > self._spawned_at_size
        except FileNotFoundError:
            return False

    def last_token(self, since: float) -> int | None:
        """The token of this worker's latest observation if it started after ``since`` and was leading."""
        try:
            with self.log.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 400))
                tail = f.read().decode(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return None
        for raw in reversed(tail):
            if f'"n": "{self.node}"' in raw and raw.endswith("}"):
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                return line["tb"] if line["a"] > since and time.monotonic() - line["b"] < 0.2 else None
        return None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        finally:
            self.stderr.close()


def _proxied_url(url: str) -> tuple[str, list[FaultProxy]]:
    parsed = parse_url(url)
    if not parsed.hosts or parsed.scheme in ("sqlite", "memory"):
        return url, []
    proxies = [FaultProxy((h, p)) for h, p in parsed.endpoints(0)]
    netloc = ",".join(p.address for p in proxies)
    scheme, rest = url.split("://", 1)
    userinfo = rest.split("/", 1)[0].rpartition("@")[0]
    tail = rest[len(rest.split("/", 1)[0]) :]
    return f"{scheme}://{userinfo + '@' if userinfo else ''}{netloc}{tail}", proxies


def run_faults(
    store: Any,
    workdir: Path,
    *,
    faults: int,
    seed: int,
    ttl: float,
    workers: int = 3,
    kinds: tuple[str, ...] | None = None,
    budget: float = 600.0,
    progress: Callable[[str], None] | None = None,
    keys: int = 0,
    lease: bool = False,
    steer: bool = False,
) -> Report:
    """Run ``faults`` faults against ``store`` and return the checker's report (see the module docstring).

    ``keys``: each worker also campaigns for that many more keys (``lease``: all on one shared Lease), so the
    faults land on processes holding many keys; the checked key is the same."""
    held = (
        *(("--keys", str(keys)) if keys else ()),
        *(("--lease",) if lease else ()),
        *(("--steer", "--workers", str(workers)) if steer else ()),
    )
    rng = random.Random(seed)
    url = store.url()
    networked = parse_url(url).scheme not in ("sqlite", "memory")
    available = ["kill_leader", "kill_any", "pause_leader"]
    if networked:
        available += list(NETWORK_KINDS)
    if networked:
        available.append("store_partition")
    if getattr(store, "can_stop", False):
        available.append("store_outage")
    if hasattr(store, "pause"):
        available.append("store_pause")
    if hasattr(store, "kill_member"):
        available.append("member_loss")
    if steer:
        available.append("transfer")
    default = tuple(k for k in available if k not in OPT_IN_KINDS)
    chosen = [k for k in (kinds or default) if k in available]
    assert chosen, f"no fault kind applies to this store (asked {kinds}, available {available})"

    workdir.mkdir(parents=True, exist_ok=True)
    pool: list[Worker] = []
    injected: list[Fault] = []
    crashes: list[str] = []

    def revive_crashed() -> None:
        """A worker that exited on its own is a finding (a candidate must survive store errors): note it
        and start it again so the run goes on."""
        for w in pool:
            if w.proc is not None and w.proc.poll() is not None:
                crashes.append(
                    f"{w.node} exited with {w.proc.returncode} at {time.monotonic():.3f} (see {w.log.name[:-4]}.err)"
                )
                w.spawn()

    deadline = time.monotonic() + budget
    try:
        for i in range(workers):
            wurl, proxies = _proxied_url(url)
            pool.append(Worker(f"c{i}", wurl, ttl, workdir / f"c{i}.log", proxies, held))

        def await_leader(limit: float, since: float) -> Worker | None:
            """The one worker leading in observations made after ``since`` (None if none within ``limit``)."""
            end = time.monotonic() + limit
            while time.monotonic() < end:
                leading = [w for w in pool if w.last_token(since) is not None]
                if len(leading) == 1:
                    return leading[0]
                time.sleep(0.01)
            return None

        heal = time.monotonic()
        await_leader(ttl + 20.0, heal)  # first election, server warm-up included
        for n in range(faults):
            if time.monotonic() > deadline:
                break
            revive_crashed()
            kind = rng.choice(chosen)
            victim = pool[rng.randrange(len(pool))]
            current = await_leader(ttl + 3.0, heal)
            if kind in ("kill_leader", "pause_leader", "transfer") or (kind in NETWORK_KINDS and rng.random() < 0.6):
                victim = current or victim
            duration = rng.uniform(0.5, 2.0) * ttl
            inject = time.monotonic()
            if kind in ("kill_leader", "kill_any"):
                victim.signal(signal.SIGKILL)
                assert victim.proc is not None
                victim.proc.wait(5)
                heal = time.monotonic()
                victim.spawn()
                if not any(w.started() for w in pool if w is not victim):
                    # no candidate left running (the others are still starting, after earlier kills): the
                    # election can only begin once one runs, and a Python start under CPU starvation takes
                    # seconds, so the fault heals when the first candidate process is up
                    end = heal + 30.0
                    while not any(w.started() for w in pool) and time.monotonic() < end:
                        time.sleep(0.01)
                    heal = time.monotonic()
            elif kind == "transfer":
                victim.signal(signal.SIGUSR1 if rng.random() < 2 / 3 else signal.SIGUSR2)
                time.sleep(duration)  # the transfer (or, to an absent node, its timeout) plays out
                heal = time.monotonic()
            elif kind == "pause_leader":
                victim.signal(signal.SIGSTOP)
                time.sleep(1.5 * ttl)
                victim.signal(signal.SIGCONT)
                heal = time.monotonic()
            elif kind in NETWORK_KINDS:
                for p in victim.proxies:
                    p.set_mode(_PROXY_MODE[kind], delay=0.2)
                time.sleep(duration)
                for p in victim.proxies:
                    p.set_mode("pass")
                heal = time.monotonic()
            elif kind == "store_outage":
                store.stop()
                time.sleep(duration)
                store.start()
                heal = time.monotonic()
            elif kind == "store_pause":
                store.pause()
                time.sleep(duration)
                store.resume()
                heal = time.monotonic()
            elif kind == "store_partition":
                for w in pool:
                    for p in w.proxies:
                        p.set_mode("blackhole")
                time.sleep(duration)
                for w in pool:
                    for p in w.proxies:
                        p.set_mode("pass")
                heal = time.monotonic()
            else:  # member_loss
                member = rng.randrange(3)
                store.kill_member(member)
                time.sleep(duration)
                store.restart_member(member)
                heal = time.monotonic()
            store_lag = 0.0
            if kind in STORE_KINDS:  # over when the store serves again, not when its processes are back
                ended, heal = heal, store_back(store, heal)
                store_lag = heal - ended
            injected.append(Fault(kind, victim.node, inject, heal, round(store_lag, 3)))
            if progress is not None:
                lag = f", the store committing again {store_lag:.2f}s after" if store_lag > 0.05 else ""
                progress(f"fault {n + 1}/{faults}: {kind} on {victim.node} ({heal - inject:.2f}s{lag})")
            time.sleep(rng.uniform(0.05, 0.3))
        await_leader(ttl + 3.0, heal)
        time.sleep(0.2)
        revive_crashed()
    finally:
        for w in pool:
            w.stop()
        for w in pool:
            for p in w.proxies:
                p.close()
    report = check(load(w.log for w in pool), injected, ttl)
    report.crashes = crashes
    return report
