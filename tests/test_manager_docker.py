"""The manager in front of real Docker engines, driven by the stock docker CLI and docker-py.

Two dockerd engines (tests/support/docker_engines.py, once per session) are registered under docker/swarm/nodes/ in a
sqlite store; a primary and a replica manager run as separate processes. Everything here talks to the replica
unless it says otherwise, so every request crosses both hops (replica → primary → engine).
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support.docker_cluster import LOOP, Cluster, Lines, cli, cluster, pair, popen_cli
from tests.support.docker_engines import IMAGE, NAMES, DockerEngine, docker_engines, registry
from tests.support.helpers import wait_for
from tests.support.manager import ManagerProc

__all__ = ["cluster", "docker_engines", "pair", "registry"]  # the fixtures, imported so pytest finds them

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]


# -- docker info ----------------------------------------------------------------------------------------------


def test_docker_info_shows_role_primary_and_every_node(cluster: Cluster, pair: tuple[ManagerProc, ManagerProc]) -> None:
    primary, replica = pair
    for m, role in ((primary, "Primary"), (replica, "Replica")):
        out = cli(m, "info").stdout
        assert f"Role: {role}" in out
        assert f"Primary: {primary.addr}" in out
        assert "Strategy: spread" in out
        assert "Server Version: swarm/1.2.9+swarmha-" in out  # Swarm's form (scripts match swarm/), naming swarmha
        assert "Filters: health, port, containerslots, dependency, affinity, constraint, whitelist" in out
        assert "Nodes: 2" in out
        for e, name in zip(cluster.engines, NAMES, strict=True):
            assert f" {name}: {e.addr}" in out
        assert "└ Status: Healthy" in out
        assert "└ Reserved Memory: " in out
        assert "└ Labels: " in out and "storagedriver=vfs" in out


# -- run, exec, logs, events through the replica --------------------------------------------------------------


def test_docker_run_rm_echo_through_a_replica(pair: tuple[ManagerProc, ManagerProc]) -> None:
    _, replica = pair
    result = cli(replica, "run", "--rm", "--network", "none", IMAGE, "echo", "hi")
    assert result.stdout == "hi\n", result.stderr
    piped = cli(replica, "run", "--rm", "-i", "--network", "none", IMAGE, "cat", input="through stdin\n")
    assert piped.stdout == "through stdin\n", piped.stderr  # stdin's end travels as a half-close, both hops


def test_docker_exec_through_a_replica(pair: tuple[ManagerProc, ManagerProc]) -> None:
    _, replica = pair
    cid = cli(replica, "run", "-d", "--network", "none", IMAGE, "sleep", "60").stdout.strip()
    try:
        assert cli(replica, "exec", cid, "echo", "exec-ok").stdout == "exec-ok\n"
        assert cli(replica, "exec", "-i", cid[:12], "cat", input="via exec stdin\n").stdout == "via exec stdin\n"
        assert cli(replica, "inspect", "-f", "{{.State.Running}}", cid).stdout.strip() == "true"
    finally:
        cli(replica, "rm", "-f", cid, check=False)


def test_logs_follow_streams_through_a_replica_unbuffered(pair: tuple[ManagerProc, ManagerProc]) -> None:
    _, replica = pair
    cid = cli(replica, "run", "-d", "--network", "none", IMAGE, "sh", "-c", LOOP).stdout.strip()
    follow = popen_cli(replica, "logs", "-f", cid)
    try:
        lines = Lines(follow)
        seen = [lines.next(10) for _ in range(4)]
        assert seen[0] == "line 0"
        assert seen[3] == "line 3"  # new lines keep arriving: the stream is live, not a buffered dump
    finally:
        follow.kill()
        follow.wait(10)
        cli(replica, "rm", "-f", cid, check=False)


def test_events_stream_through_a_replica(pair: tuple[ManagerProc, ManagerProc]) -> None:
    _, replica = pair
    client = docker.DockerClient(base_url=f"tcp://{replica.addr}", version="1.41", timeout=30)
    events = client.events(decode=True, filters={"type": "container"})
    got: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()

    def read() -> None:
        try:
            for event in events:
                got.put(event)
        except Exception:  # the stream was closed by the test
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        out = client.containers.run(IMAGE, ["echo", "evt"], network_mode="none", remove=True)
        assert out == b"evt\n"
        deadline = time.monotonic() + 10
        statuses = set()
        while "start" not in statuses and time.monotonic() < deadline:
            try:
                statuses.add(got.get(timeout=max(0.01, deadline - time.monotonic())).get("status"))
            except queue.Empty:
                break
        assert "start" in statuses
    finally:
        events.close()
        client.close()
        reader.join(10)


# -- placement --------------------------------------------------------------------------------------------------


def test_spread_places_across_both_engines_and_constraints_pin_the_node(
    cluster: Cluster, pair: tuple[ManagerProc, ManagerProc]
) -> None:
    primary, replica = pair
    direct = [docker.DockerClient(base_url=e.host, version="1.41", timeout=30) for e in cluster.engines]
    client = docker.DockerClient(base_url=f"tcp://{replica.addr}", version="1.41", timeout=30)
    created: list[str] = []
    try:

        def counts() -> list[int]:
            return [len(d.containers.list(all=True)) for d in direct]

        def in_sync() -> bool:
            code, info = primary.get("/info")
            return code == 200 and info["Containers"] == sum(counts())

        wait_for(in_sync, 10, "the primary's container counts to match the engines", poll=0.1)
        before = counts()
        for _ in range(4):
            created.append(client.containers.create(IMAGE, ["true"], network_mode="none").id)
        after = counts()
        added = [a - b for a, b in zip(after, before, strict=True)]
        assert sum(added) == 4
        assert abs(after[0] - after[1]) <= max(1, abs(before[0] - before[1]) - 4), (before, after)
        assert all(n > 0 for n in added) or abs(before[0] - before[1]) >= 3

        pinned = client.containers.create(
            IMAGE, ["true"], network_mode="none", environment=[f"constraint:node=={NAMES[1]}", "KEEP=1"]
        )
        created.append(pinned.id)
        on_target = direct[1].containers.get(pinned.id)
        assert "KEEP=1" in on_target.attrs["Config"]["Env"]
        assert not any(x.startswith("constraint:") for x in on_target.attrs["Config"]["Env"])
        listed = {c["Id"]: c["Names"][0] for c in client.api.containers(all=True)}
        assert listed[pinned.id] == f"/{NAMES[1]}/{pinned.name}"  # Swarm's /node-name/container-name

        with pytest.raises(docker.errors.APIError, match="constraint"):
            client.containers.create(IMAGE, ["true"], environment=["constraint:node==no-such-node"])
    finally:
        for cid in created:
            with __import__("contextlib").suppress(docker.errors.APIError):
                client.api.remove_container(cid, force=True)
        client.close()
        for d in direct:
            d.close()


# -- failover during a stream ----------------------------------------------------------------------------------


def test_failover_during_a_stream(docker_engines: list[DockerEngine], tmp_path: Path) -> None:
    own = Cluster(docker_engines, tmp_path)  # a store of its own: the module's managers lead the other one
    try:
        _failover_during_a_stream(own)
    finally:
        own.close()


def _failover_during_a_stream(cluster: Cluster) -> None:
    primary, replica = cluster.start_managers("--shutdown-timeout", "1s")
    cid = cli(replica, "run", "-d", "--network", "none", IMAGE, "sh", "-c", LOOP).stdout.strip()
    follow = popen_cli(replica, "logs", "-f", cid)
    try:
        lines = Lines(follow)
        assert lines.next(10) == "line 0"
        primary.signal(signal.SIGTERM)
        took = wait_for(lambda: replica.role() == "Primary", 10, "the replica to take over", poll=0.005)
        # the old primary drains for at most --shutdown-timeout and exits; the stream it carried goes on, resumed
        # by the replica (now the primary) where it was: the next lines, none twice (tests/test_manager_failover.py)
        assert primary.proc.wait(10) == 0
        exited = time.monotonic()
        n = 1
        while time.monotonic() - exited < 2:
            assert lines.next(10) == f"line {n}"
            n += 1
        assert follow.poll() is None
        # the new primary serves the same container at once, streams included
        again = popen_cli(replica, "logs", "-f", "--tail", "1", cid)
        try:
            assert (Lines(again).next(10) or "").startswith("line ")
        finally:
            again.kill()
            again.wait(10)
        print(f"graceful failover under a stream: {took * 1000:.0f} ms")
    finally:
        follow.kill()
        follow.wait(10)
        cli(replica, "rm", "-f", cid, check=False)
        primary.stop()
        replica.stop()


def test_a_container_is_named_by_its_swarm_id_too(pair: tuple[ManagerProc, ManagerProc]) -> None:
    """Every container carries ``com.docker.swarm.id``; inspect, logs and ps find it by that id, as in Swarm."""
    _, replica = pair
    cid = cli(replica, "run", "-d", "--network", "none", IMAGE, "echo", "by swarm id").stdout.strip()
    try:
        swarm_id = cli(replica, "inspect", "-f", '{{ index .Config.Labels "com.docker.swarm.id" }}', cid).stdout.strip()
        assert len(swarm_id) == 64 and swarm_id != cid
        assert cli(replica, "inspect", "-f", "{{ .Id }}", swarm_id).stdout.strip() == cid
        wait_for(lambda: "by swarm id" in cli(replica, "logs", swarm_id).stdout, 10, "the logs by swarm id")
        listed = cli(replica, "ps", "-aq", "--no-trunc", "--filter", f"label=com.docker.swarm.id={swarm_id}")
        assert listed.stdout.split() == [cid]
    finally:
        cli(replica, "rm", "-f", cid, check=False)


def test_a_percent_encoded_name_in_a_path_is_decoded(pair: tuple[ManagerProc, ManagerProc]) -> None:
    _, replica = pair
    created = cli(replica, "network", "create", "probe 01", check=False)
    assert created.returncode == 0, created.stderr
    try:
        code, found = replica.get("/v1.41/networks/probe%2001")
        assert code == 200, found
        assert found["Name"] == "probe 01"
    finally:
        cli(replica, "network", "rm", "probe 01", check=False)


def test_a_container_started_a_moment_ago_is_known_to_placement(pair: tuple[ManagerProc, ManagerProc]) -> None:
    """``--link``, ``--volumes-from`` and ``--net container:`` name a container started just before, through
    another manager even: placement finds it at once, not after the next refresh."""
    primary, replica = pair
    made: list[str] = []
    try:
        for i in range(3):
            c1 = f"moment-{i}"
            made.append(c1)
            cli(primary, "run", "-d", "--name", c1, "--network", "none", IMAGE, "sleep", "60")
            for extra in (["--link", f"{c1}:l0"], ["--volumes-from", c1], ["--net", f"container:{c1}"]):
                r = cli(replica, "create", *extra, IMAGE, "true", check=False)
                assert r.returncode == 0, (extra, r.stderr)
                made.append(r.stdout.strip())
    finally:
        cli(replica, "rm", "-f", *made, check=False)


def test_ps_is_task_and_a_rename_to_a_name_taken_on_another_node(pair: tuple[ManagerProc, ManagerProc]) -> None:
    """Swarm's ``ps --filter is-task`` (the engines do not know it) and cluster-wide names: a rename to a name
    a container on the other node has is refused with dockerd's Conflict."""
    _, replica = pair
    task, plain = _unique("task"), _unique("plain")
    cli(replica, "run", "-d", "--name", task, "-e", "constraint:node==node-1", "--label", "com.docker.swarm.task=",
        "--network", "none", IMAGE, "sleep", "60")  # fmt: skip
    cli(replica, "run", "-d", "--name", plain, "-e", "constraint:node==node-2", "--network", "none", IMAGE,
        "sleep", "60")  # fmt: skip
    try:
        tasks = cli(replica, "ps", "--filter", "is-task=true", "--format", "{{.Names}}").stdout.split()
        others = cli(replica, "ps", "--filter", "is-task=false", "--format", "{{.Names}}").stdout.split()
        assert f"node-1/{task}" in tasks and f"node-2/{plain}" not in tasks
        assert f"node-2/{plain}" in others and f"node-1/{task}" not in others
        taken = cli(replica, "rename", task, plain, check=False)
        assert taken.returncode != 0 and "Conflict" in taken.stderr, taken.stderr
        cli(replica, "rename", task, task + "-x")
        cli(replica, "rename", task + "-x", task)  # its old name is free again at once
    finally:
        cli(replica, "rm", "-f", task, plain, check=False)


def _unique(prefix: str) -> str:
    return f"{prefix}{time.monotonic_ns() % 10**9}"


def test_events_until_a_moment_ago_ends_at_once_with_nothing(pair: tuple[ManagerProc, ManagerProc]) -> None:
    """As Swarm streamed them: ``--until`` alone is what happens from now until then, not the engines' replay
    of their past events."""
    _, replica = pair
    cli(replica, "run", "--rm", "--network", "none", IMAGE, "true")  # the engines have past events
    done = cli(replica, "events", "--until", str(int(time.time()) - 1), timeout=10)
    assert done.stdout == ""
