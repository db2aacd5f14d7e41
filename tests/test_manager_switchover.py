"""``swarmha switchover`` and ``swarmha manage --priority``: the primary moved by the operator under load.

Real etcd, two real dockerd engines, managers as processes, the stock docker CLI as the client (the fixtures and
helpers of tests/test_manager_failover.py).
"""

from __future__ import annotations

import re
import time

import pytest

from tests.support.docker_engines import IMAGE, docker_cli, docker_engines, registry
from tests.support.helpers import wait_for
from tests.support.manager import ManagerProc, run_cli
from tests.support.net import free_port
from tests.test_manager_failover import LOOP, Managers, PsLoops, Stream, _docker, _numbers, _ready, managers

__all__ = ["docker_engines", "managers", "registry"]  # the fixtures, imported so pytest finds them

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(120)]


def _start(managers: Managers, *priorities: int) -> list[ManagerProc]:
    """One manager per priority (``--replication-ttl 4s``); the first leads; all see it and both engines."""
    procs = []
    for i, priority in enumerate(priorities):
        m = ManagerProc(managers.url, managers.tmp, "--replication-ttl", "4s", "--priority", str(priority))
        managers.all.append(m)
        procs.append(m)
        if i == 0:
            wait_for(lambda m=m: m.role() == "Primary", 20, "a primary")
    for m in procs:
        wait_for(lambda m=m: _ready(m, procs[0].addr), 20, f"{m.addr} to see the primary and both engines healthy")
    return procs


def test_switchover_to_a_named_replica_under_docker_ps_and_logs_follow(managers: Managers) -> None:
    """``swarmha switchover --to R2`` while ``docker ps --filter`` (forwarded) loops through R1 and a ``docker logs
    -f`` runs through R2: no request fails, the stream goes on (each line once, in order), R2 leads when the command
    returns, and the old primary says ``Cluster leadership transferred to R2``."""
    primary, r1, r2 = _start(managers, 0, 0, 0)
    run = docker_cli(f"tcp://{r1.addr}", "run", "-d", "--network", "none", IMAGE, "sh", "-c", LOOP)
    cid = run.stdout.strip()
    logs = Stream(_docker(r2, "logs", "-f", cid))
    loops = PsLoops([r1])
    try:
        wait_for(lambda: len(loops.results) >= 3 and len(logs.lines) >= 3, 20, "a few docker ps and log lines")
        began = time.monotonic()
        out = run_cli("switchover", "--to", r2.addr, "--timeout", "5s", managers.url)
        took = time.monotonic() - began
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"Primary: {r2.addr}" in out.stdout
        assert r2.role() == "Primary"  # when the command returns, the named manager answers as primary
        loops.wait_more(3, "docker ps served by the new primary")
        switched = time.monotonic()
        wait_for(lambda: logs.lines[-1][0] > switched + 1, 15, "log lines after the switchover")
        wait_for(lambda: f"Cluster leadership transferred to {r2.addr}" in primary.logs(), 5, "the old primary's log")
    finally:
        loops.stop()
        logs_err = logs.stop()
        docker_cli(f"tcp://{r1.addr}", "rm", "-f", cid, check=False)
    assert not loops.failed(), loops.failed()
    assert logs_err == "", logs_err
    n = _numbers(logs.lines, r"line (\d+)")
    assert n == list(range(len(n))), "a log line lost, duplicated or reordered"
    assert primary.role() == "Replica" and r1.status().get("Primary") == r2.addr
    handed = re.search(r"Cluster leadership transferred to \S+ in (\d+) ms", primary.logs())
    print(f"switchover --to: handed over in {handed.group(1) if handed else '?'} ms, command {took * 1000:.0f} ms "
          f"(process start included), {len(loops.results)} docker ps none failed, "
          f"slowest {loops.slowest():.2f}s; logs -f {len(n)} lines")  # fmt: skip


def test_switchover_picks_the_highest_priority_and_refuses_a_non_manager(managers: Managers) -> None:
    """Without --to the replica with the highest ``--priority`` becomes primary; ``docker info`` shows each
    manager's priority; a switchover to an address no manager has fails with a clear message, exit 1, and the
    primary before it leads again."""
    _, low, high = _start(managers, 0, 5, 9)
    info = docker_cli(f"tcp://{high.addr}", "info")
    assert "Priority: 9" in info.stdout, info.stdout
    out = run_cli("switchover", "--timeout", "5s", managers.url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Switching over to {high.addr} (priority 9" in out.stdout
    assert f"Primary: {high.addr}" in out.stdout
    assert high.role() == "Primary" and low.status().get("Primary") == high.addr

    nobody = f"127.0.0.1:{free_port()}"
    began = time.monotonic()
    out = run_cli("switchover", "--to", nobody, "--timeout", "3s", managers.url)
    took = time.monotonic() - began
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{nobody} did not take over within 3s" in out.stderr
    assert f"Primary: {high.addr}" in out.stdout  # the primary before it leads again
    wait_for(lambda: high.role() == "Primary", 5, "the old primary leading again")
    assert f"Cluster leadership transferred to {nobody}" not in high.logs()
    assert f"switchover to {nobody} failed" in high.logs()
    print(f"switchover to a non-manager: refused after {took:.1f}s (process start included)")


def test_switchover_without_a_preferred_replica_says_so(managers: Managers) -> None:
    """Every manager at the default priority: nobody is registered as preferred; the command says to name one."""
    primary, _ = _start(managers, 0, 0)
    out = run_cli("switchover", "--timeout", "2s", managers.url)
    assert out.returncode == 1
    assert "none is registered with a --priority" in out.stderr and "--to ADDR" in out.stderr
    assert primary.role() == "Primary"
