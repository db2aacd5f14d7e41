"""The scheduler on three real engines, driven by the stock docker CLI (and docker-compose) through a replica.

Engines (tests/support/docker_engines.py, once per session): ``node-1`` (``com.example.type=web zone=a storage=ssd``),
``node-2`` (``com.example.type=db zone=b storage=disk``), ``node-3`` (``zone=b containerslots=4``), each in a UTS
namespace with its own host name. A primary and a replica manager run on them; every request here goes to the
replica, so it crosses replica → primary → engine. Each test removes what it created and waits until the
primary's view matches the engines again, so placement in the next test is deterministic.

Refusals carry Swarm's texts: ``Unable to find a node that satisfies the following conditions`` followed by the
conditions of each filter up to the one that refused (``[port 18080 (Bridge mode)]``, ``[available container
slots]``, ``[node==node-1]``...), then that filter's own reason in parentheses.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.support.docker_cluster import Cluster
from tests.support.docker_engines import IMAGE, DockerEngine, docker_cli, named_engines
from tests.support.dockerd import kill_engine, restart_engine
from tests.support.helpers import wait_for
from tests.support.manager import ManagerProc, run_cli

__all__ = ["named_engines"]  # the session fixture, imported so pytest finds it

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

CONDITIONS = "Unable to find a node that satisfies the following conditions "
SLOTS = "[available container slots]"


class Sched:
    """The cluster of the module: managers, the engines' own clients, and what the running test created."""

    def __init__(self, cluster: Cluster, primary: ManagerProc, replica: ManagerProc) -> None:
        self.cluster = cluster
        self.primary, self.replica = primary, replica
        self.engines = cluster.engines
        self.direct = [docker.DockerClient(base_url=e.host, version="1.41", timeout=30) for e in self.engines]
        self.created: list[str] = []

    def docker(self, *args: str, via: ManagerProc | None = None) -> subprocess.CompletedProcess[str]:
        return docker_cli(f"tcp://{(via or self.replica).addr}", *args, check=False)

    def create(self, *args: str, via: ManagerProc | None = None, cmd: tuple[str, ...] = ("true",)) -> str:
        """``docker create ARGS IMAGE true`` through the replica; returns the id (fails the test if refused)."""
        r = self.docker("create", *args, IMAGE, *cmd, via=via)
        assert r.returncode == 0, r.stderr
        cid = r.stdout.strip()
        self.created.append(cid)
        return cid

    def refused(self, *args: str, via: ManagerProc | None = None) -> str:
        """``docker create ARGS IMAGE true`` that must be refused; returns the error text."""
        r = self.docker("create", *args, IMAGE, "true", via=via)
        if r.returncode == 0:
            self.created.append(r.stdout.strip())
            raise AssertionError(f"created on {self.node_of(r.stdout.strip())}, expected a refusal")
        return r.stderr

    def node_of(self, cid: str) -> str:
        """The host name of the engine that has ``cid`` (asked directly, not through the manager)."""
        for e, d in zip(self.engines, self.direct, strict=True):
            try:
                d.containers.get(cid)
            except docker.errors.NotFound:
                continue
            assert e.hostname is not None
            return e.hostname
        raise AssertionError(f"no engine has {cid}")

    def inspect(self, cid: str) -> dict[str, object]:
        r = self.docker("inspect", cid)
        assert r.returncode == 0, r.stderr
        out: dict[str, object] = json.loads(r.stdout)[0]
        return out

    def in_sync(self, m: ManagerProc | None = None) -> bool:
        code, info = (m or self.primary).get("/info")
        return code == 200 and info["Containers"] == sum(len(d.containers.list(all=True)) for d in self.direct)

    def status(self, m: ManagerProc | None = None) -> dict[str, dict[str, str]]:
        """Per node name, its ``└ key: value`` lines in ``docker info`` (``{"": {...}}`` holds the top lines)."""
        out: dict[str, dict[str, str]] = {"": {}}
        node = ""
        code, info = (m or self.replica).get("/info")
        assert code == 200, info
        for k, v in info["SystemStatus"]:
            if k.startswith("  └ "):
                out[node][k[len("  └ ") :]] = v
            elif k.startswith(" "):
                node = k.strip()
                out[node] = {}
            else:
                out[""][k] = v
        return out

    def cleanup(self) -> None:
        for cid in self.created:
            self.docker("rm", "-f", cid)
        self.created.clear()
        wait_for(self.in_sync, 15, "the primary's view to match the engines", poll=0.1)

    def close(self) -> None:
        for d in self.direct:
            d.close()


@pytest.fixture(scope="module")
def sched(named_engines: list[DockerEngine], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sched]:
    cluster = Cluster(named_engines, tmp_path_factory.mktemp("sched"))
    s: Sched | None = None
    try:
        s = Sched(cluster, *cluster.start_managers())
        wait_for(s.in_sync, 15, "the primary's view to match the engines", poll=0.1)
        yield s
    finally:
        if s is not None:
            s.close()
        cluster.close()


@pytest.fixture
def s(sched: Sched) -> Iterator[Sched]:
    try:
        yield sched
    finally:
        sched.cleanup()


# -- constraint ---------------------------------------------------------------------------------------------------


def test_constraint_on_node_name_id_and_address(s: Sched) -> None:
    assert s.node_of(s.create("-e", "constraint:node==node-2", "--net", "none")) == "node-2"
    engine_id = s.direct[2].info()["ID"]
    assert s.node_of(s.create("-e", f"constraint:node=={engine_id}", "--net", "none")) == "node-3"
    assert s.node_of(s.create("-e", f"constraint:node=={s.engines[0].addr}", "--net", "none")) == "node-1"
    assert s.node_of(s.create("-e", "constraint:node!=/^node-[12]$/", "--net", "none")) == "node-3"  # regexp
    assert s.node_of(s.create("-e", "constraint:node==*-1", "--net", "none")) == "node-1"  # glob
    err = s.refused("-e", "constraint:node==node-9")
    assert f"{CONDITIONS}\n{SLOTS}\n[node==node-9]" in err
    assert "(unable to find a node that satisfies the constraint node==node-9)" in err


def test_constraint_on_engine_labels_and_builtin_labels(s: Sched) -> None:
    assert s.node_of(s.create("-e", "constraint:com.example.type==db", "--net", "none")) == "node-2"
    assert s.node_of(s.create("-e", "constraint:com.example.type==w*", "--net", "none")) == "node-1"
    both = s.create("-e", "constraint:zone==b", "-e", "constraint:storage!=disk", "--net", "none")
    assert s.node_of(both) == "node-3"  # node-3 has no storage label: "" != disk
    assert s.node_of(s.create("-e", "constraint:storagedriver==vfs", "-e", "constraint:ostype==linux")) in (
        "node-1",
        "node-2",
        "node-3",
    )
    kernel = s.direct[0].info()["KernelVersion"]
    s.create("-e", f"constraint:kernelversion=={kernel}", "--net", "none")
    err = s.refused("-e", "constraint:storagedriver==overlay2", "-e", "constraint:zone==a")
    listed = (
        f"{CONDITIONS}\n{SLOTS}\n[{c}]\n"
        for c in ("storagedriver==overlay2 zone==a", "zone==a storagedriver==overlay2")
    )
    assert any(text in err for text in listed), err
    assert "the constraint storagedriver==overlay2" in err
    # the docker CLI does not keep the order of -e (a map); the label's JSON list keeps it
    err = s.refused("--label", 'com.docker.swarm.constraints=["zone==a","com.example.type==db"]')
    assert (
        "\n[zone==a com.example.type==db]\n(unable to find a node that satisfies the constraint com.example.type==db)"
        in err
    )


def test_constraint_env_entries_move_into_the_label_and_the_container_gets_a_swarm_id(s: Sched) -> None:
    cid = s.create("-e", "constraint:zone==a", "-e", "KEEP=1", "--net", "none")
    config = s.inspect(cid)["Config"]
    assert isinstance(config, dict)
    assert "KEEP=1" in config["Env"] and not any(x.startswith("constraint:") for x in config["Env"])
    assert json.loads(config["Labels"]["com.docker.swarm.constraints"]) == ["zone==a"]
    swarm_id = config["Labels"]["com.docker.swarm.id"]
    assert len(swarm_id) == 64 and int(swarm_id, 16) >= 0
    other = s.inspect(s.create("--net", "none"))["Config"]
    assert isinstance(other, dict)
    assert other["Labels"]["com.docker.swarm.id"] != swarm_id  # every container gets its own


def test_soft_constraint_is_honoured_when_possible_and_dropped_when_not(s: Sched) -> None:
    for _ in range(3):  # soft is honoured every time, however spread would weigh node-1
        assert s.node_of(s.create("-e", "constraint:zone==~a", "--net", "none")) == "node-1"
    assert s.node_of(s.create("-e", "constraint:node!=~node-1", "-e", "constraint:zone==b")) in ("node-2", "node-3")
    assert s.create("-e", "constraint:zone==~nowhere", "--net", "none")  # no node matches: placed anyway
    hard_and_soft = s.create("-e", "constraint:zone==b", "-e", "constraint:com.example.type==~web")
    assert s.node_of(hard_and_soft) in ("node-2", "node-3")  # the soft one cannot hold with the hard one


def test_constraints_label_as_docker_compose_writes_it(s: Sched) -> None:
    labels = 'com.docker.swarm.constraints=["zone==b","com.example.type==db"]'
    assert s.node_of(s.create("--label", labels, "--net", "none")) == "node-2"
    err = s.refused("--label", 'com.docker.swarm.constraints=["zone==a","storage==disk"]')
    assert "[zone==a storage==disk]" in err


def test_invalid_expressions_are_refused_with_swarms_text(s: Sched) -> None:
    assert "error from constraint filter: Key '%bad' is invalid" in s.refused("-e", "constraint:%bad==x")
    assert "error from constraint filter: Value '{x}' is invalid" in s.refused("-e", "constraint:node=={x}")
    assert "error from affinity filter: One of operator ==, != is expected" in s.refused("-e", "affinity:container")
    assert "invalid reschedule policy: sometimes" in s.refused("-e", "reschedule:sometimes")


# -- affinity -----------------------------------------------------------------------------------------------------


def test_affinity_to_a_container_by_name_and_id_hard_soft_and_negated(s: Sched) -> None:
    db = s.create("--name", "sched-db", "-e", "constraint:node==node-2", "--net", "none")
    assert s.node_of(s.create("-e", "affinity:container==sched-db", "--net", "none")) == "node-2"
    assert s.node_of(s.create("-e", f"affinity:container=={db}", "--net", "none")) == "node-2"
    assert s.node_of(s.create("-e", f"affinity:container=={db[:12]}", "--net", "none")) == "node-2"
    assert s.node_of(s.create("-e", "affinity:container==sched-d*", "--net", "none")) == "node-2"
    for _ in range(2):
        assert s.node_of(s.create("-e", "affinity:container!=sched-db", "--net", "none")) != "node-2"
    label = '["container==sched-db"]'
    assert s.node_of(s.create("--label", f"com.docker.swarm.affinities={label}", "--net", "none")) == "node-2"
    err = s.refused("-e", "affinity:container==no-such-container")
    assert f"{CONDITIONS}\n{SLOTS}\n[container==no-such-container (soft=false)]" in err
    assert "(unable to find a node that satisfies the affinity container==no-such-container)" in err
    assert s.create("-e", "affinity:container==~no-such-container", "--net", "none")  # soft: placed anyway
    err = s.refused("-e", "affinity:container==sched-db", "-e", "constraint:node==node-1")
    assert "[container==sched-db (soft=false)]\n[node==node-1]" in err


def test_affinity_to_an_image_and_to_a_container_label(s: Sched, tmp_path: Path) -> None:
    image = "swarmha-test:only-on-3"
    s.engines[2].docker("tag", IMAGE, image)
    try:
        wait_for(lambda: _image_seen(s, image), 15, "the primary to see the new image", poll=0.2)
        assert s.node_of(s.create("-e", f"affinity:image=={image}", "--net", "none")) == "node-3"
        err = s.refused("-e", "affinity:image==swarmha-test:nowhere")
        assert "[image==swarmha-test:nowhere (soft=false)]" in err
        cache = s.create("--label", "com.example.role=cache", "-e", "constraint:node==node-1", "--net", "none")
        assert s.node_of(cache) == "node-1"
        assert s.node_of(s.create("-e", "affinity:com.example.role==cache", "--net", "none")) == "node-1"
        assert s.node_of(s.create("-e", "affinity:com.example.role!=cache", "--net", "none")) != "node-1"
    finally:
        s.engines[2].docker("rmi", image, check=False)


def _image_seen(s: Sched, image: str) -> bool:
    r = s.docker("create", "-e", f"affinity:image=={image}", "--net", "none", "--name", "probe-image", IMAGE, "true")
    if r.returncode == 0:
        s.docker("rm", "-f", r.stdout.strip())
    return r.returncode == 0


# -- port ---------------------------------------------------------------------------------------------------------


def test_port_goes_only_where_it_is_free_and_is_refused_when_no_node_has_it(s: Sched) -> None:
    nodes = {s.node_of(s.create("--net", "none", "-p", "18080:80")) for _ in range(3)}
    assert nodes == {"node-1", "node-2", "node-3"}  # each node holds 18080 once
    err = s.refused("--net", "none", "-p", "18080:80")
    assert f"{CONDITIONS}\n[port 18080 (Bridge mode)]" in err
    assert "(unable to find a node with port 18080 available)" in err
    s.create("--net", "none", "-p", "18080:80/udp")  # another protocol: free
    s.create("--net", "none", "-p", "18081:80", "-p", "127.0.0.2:18082:80")
    # a host IP overlaps "every interface" wherever 18081 is held; another IP for 18082 is fine where it is held
    assert s.create("--net", "none", "-p", "127.0.0.3:18082:80", "-e", "constraint:node==node-1")
    assert s.create("--net", "none", "-p", "18083:80")  # no host port: Docker picks one, never a conflict


def test_port_held_by_containers_being_created_at_the_same_time(s: Sched) -> None:
    # docker-compose scale creates in parallel: a container being created holds its port (Swarm's issue #2499)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda _: s.docker("create", "--net", "none", "-p", "18095:80", IMAGE, "true"), range(4))
        )
    made = [r.stdout.strip() for r in answers if r.returncode == 0]
    s.created += made
    assert sorted(s.node_of(c) for c in made) == ["node-1", "node-2", "node-3"]
    [refused] = [r.stderr for r in answers if r.returncode != 0]
    assert "(unable to find a node with port 18095 available)" in refused


def test_port_counts_host_network_containers(s: Sched) -> None:
    for n in ("node-1", "node-2"):
        s.create("--net", "host", "--expose", "18090", "-e", f"constraint:node=={n}")
    assert s.node_of(s.create("--net", "none", "-p", "18090:80")) == "node-3"  # only node-3 has 18090 free
    err = s.refused("--net", "host", "--expose", "18090")
    assert f"{CONDITIONS}\n[port 18090/tcp (Host mode)]" in err
    assert "(unable to find a node with port 18090/tcp available in the Host mode)" in err


# -- dependency ---------------------------------------------------------------------------------------------------


def test_dependencies_place_next_to_the_container_and_refuse_two_nodes(s: Sched) -> None:
    s.create("--name", "dep-a", "-e", "constraint:node==node-3", "--net", "none")
    s.create("--name", "dep-b", "-e", "constraint:node==node-1", "--net", "none")
    assert s.node_of(s.create("--volumes-from", "dep-a", "--net", "none")) == "node-3"
    assert s.node_of(s.create("--net", "container:dep-b")) == "node-1"
    assert s.node_of(s.create("--link", "dep-a:a")) == "node-3"
    err = s.refused("--volumes-from", "dep-a", "--volumes-from", "dep-b:ro", "--net", "none")
    assert f"{CONDITIONS}\n{SLOTS}\n[--volumes-from=dep-a --volumes-from=dep-b:ro]" in err
    assert "(Unable to find a node fulfilling all dependencies: --volumes-from=dep-a --volumes-from=dep-b:ro)" in err
    err = s.refused("--link", "no-such:x")
    assert "Unable to find a node fulfilling all dependencies: --link=no-such:x" in err


def test_dependencies_named_node_slash_name_go_to_that_node(s: Sched) -> None:
    """The same name on two engines (made there directly): ``node/name``, as ``docker ps`` shows it, picks one."""
    twin = f"twin-{uuid.uuid4().hex[:6]}"
    one, three = s.engines[0], s.engines[2]
    for e in (one, three):
        e.docker("create", "--name", twin, "--net", "none", IMAGE, "true")
    try:
        placed: list[str] = []

        def accepted() -> bool:  # the scheduler learns containers made on an engine at its next refresh
            r = s.docker("create", "--volumes-from", f"node-3/{twin}", "--net", "none", IMAGE, "true")
            if r.returncode == 0:
                placed.append(r.stdout.strip())
                s.created.append(placed[-1])
            return r.returncode == 0

        wait_for(accepted, 15, "the primary's scheduler to know both twins", poll=0.2)
        assert s.node_of(placed[0]) == "node-3"
        assert s.node_of(s.create("--volumes-from", f"node-1/{twin}:ro", "--net", "none")) == "node-1"
        assert s.node_of(s.create("--link", f"node-3/{twin}:t")) == "node-3"
        assert s.node_of(s.create("--net", f"container:node-1/{twin}")) == "node-1"
        err = s.refused("--volumes-from", f"node-1/{twin}", "--link", f"node-3/{twin}:t")
        assert "unable to find a node that has everything this container uses" in err, err
        assert f"container node-1/{twin} is on node-1" in err and f"container node-3/{twin} is on node-3" in err
    finally:
        s.cleanup()
        for node in ("node-1", "node-3"):  # through the manager: its view (slots, dependencies) forgets them now
            r = s.docker("rm", "-f", f"{node}/{twin}")
            assert r.returncode == 0, r.stderr
        wait_for(s.in_sync, 15, "the primary's view to match the engines", poll=0.1)


# -- containerslots -----------------------------------------------------------------------------------------------


def test_containerslots_caps_the_containers_of_an_engine(s: Sched) -> None:
    assert [len(d.containers.list(all=True)) for d in s.direct] == [0, 0, 0]
    for _ in range(4):  # node-3 is labelled containerslots=4
        assert s.node_of(s.create("-e", "constraint:node==node-3", "--net", "none")) == "node-3"
    # as in Swarm, the slots filter drops node-3 and the constraint then finds no node
    err = s.refused("-e", "constraint:node==node-3")
    assert f"{CONDITIONS}\n{SLOTS}\n[node==node-3]\n(unable to find a node that satisfies the constraint" in err
    assert sorted(s.node_of(s.create("--net", "none")) for _ in range(2)) == ["node-1", "node-2"]
    # a container's own cap (label com.docker.swarm.slots=N): only where fewer than N containers are
    err = s.refused("--label", "com.docker.swarm.slots=1")
    assert f"{CONDITIONS}\n{SLOTS}\n(No node with enough open slots available in the cluster)" in err
    assert s.node_of(s.create("--label", "com.docker.swarm.slots=2", "-e", "constraint:node==node-1")) == "node-1"
    assert s.node_of(s.create("--label", "com.docker.swarm.slots=2")) == "node-2"  # the only one with 1
    assert "No node with enough open slots" in s.refused("--label", "com.docker.swarm.slots=2")


# -- docker-compose ------------------------------------------------------------------------------------------------


def test_docker_compose_labels_and_environment_place_the_services(s: Sched, tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text(
        f"""version: "2.4"
services:
  db:
    image: {IMAGE}
    command: ["sleep", "300"]
    network_mode: none
    labels:
      com.docker.swarm.constraints: '["com.example.type==db"]'
  web:
    image: {IMAGE}
    command: ["sleep", "300"]
    network_mode: none
    environment:
      - "affinity:container!=~*db*"
      - "constraint:zone==a"
"""
    )
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "DOCKER_HOST": f"tcp://{s.replica.addr}"}
    up = subprocess.run(
        ["docker-compose", "-p", "schedtest", "up", "-d"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        assert up.returncode == 0, up.stderr
        ids = {}
        for service in ("db", "web"):
            r = s.docker("ps", "-aq", "--no-trunc", "--filter", f"label=com.docker.compose.service={service}")
            ids[service] = r.stdout.split()
            s.created += ids[service]
        assert [s.node_of(c) for c in ids["db"]] == ["node-2"]
        assert [s.node_of(c) for c in ids["web"]] == ["node-1"]
    finally:
        subprocess.run(
            ["docker-compose", "-p", "schedtest", "down"], cwd=tmp_path, env=env, capture_output=True, timeout=120
        )


# -- --filter, strategies, reservations -------------------------------------------------------------------------------


def test_filter_flag_chooses_the_active_filters_and_info_lists_them(s: Sched) -> None:
    default = "health, port, containerslots, dependency, affinity, constraint, whitelist"
    assert s.status()[""]["Filters"] == default
    assert f"Filters: {default}" in s.docker("info").stdout
    only = s.cluster.start_single("--filter", "health", "--filter", "constraint")
    try:
        assert only.status()["Filters"] == "health, constraint"
        s.create("--net", "none", "-p", "18100:80", "-e", "constraint:node==node-1")
        # without the port filter the second 18100 on node-1 is not refused by the manager
        assert s.create("--net", "none", "-p", "18100:80", "-e", "constraint:node==node-1", via=only)
        assert "[port 18100 (Bridge mode)]" in s.refused(
            "--net", "none", "-p", "18100:80", "-e", "constraint:node==node-1"
        )
    finally:
        only.stop()
    bad = run_cli("manage", "--filter", "nosuch", "nodes://127.0.0.1:1")
    assert bad.returncode == 2 and "filter not supported" in bad.stderr and "containerslots" in bad.stderr


def test_reservations_show_in_docker_info_after_every_create_and_remove(s: Sched) -> None:
    n = s.direct[1].info()["NCPU"]

    def reserved(node: str) -> tuple[str, str]:
        block = s.status()[node]
        return block["Reserved CPUs"], block["Reserved Memory"].split(" / ")[0]

    wait_for(lambda: reserved("node-2") == (f"0 / {n}", "0 B"), 10, "node-2 to reserve nothing", poll=0.1)
    a = s.create("--cpus", "0.5", "-m", "64m", "-e", "constraint:node==node-2", "--net", "none")
    wait_for(lambda: reserved("node-2") == (f"0.5 / {n}", "64 MiB"), 10, "node-2: 0.5 CPU, 64 MiB", poll=0.1)
    b = s.create("-c", "1", "-m", "1g", "-e", "constraint:node==node-2", "--net", "none")  # -c counts as CPUs
    wait_for(lambda: reserved("node-2") == (f"1.5 / {n}", "1.062 GiB"), 10, "node-2: 1.5 CPUs", poll=0.1)
    # the engine gets shares of 1024 per CPU (runc refuses 1 share: it starts), as Swarm sent them
    assert s.direct[1].containers.get(b).attrs["HostConfig"]["CpuShares"] == -(-1024 // n)
    assert s.docker("start", b).returncode == 0
    # and shares set on the engine itself count as CPUs: 1024 shares reserve every CPU
    direct = s.direct[1].containers.create(IMAGE, "true", cpu_shares=1024, network_mode="none")
    s.created.append(direct.id)
    wait_for(lambda: reserved("node-2")[0] == f"{n + 1.5:g} / {n}", 15, "node-2: n + 1.5 CPUs", poll=0.1)
    direct.remove(force=True)
    wait_for(lambda: reserved("node-2")[0] == f"1.5 / {n}", 15, "node-2: 1.5 CPUs again", poll=0.1)
    err = s.refused("--cpus", f"{n - 1}", "-e", "constraint:node==node-2")  # 1.5 + n - 1 > n
    assert "no resources available to schedule container" in err
    assert s.docker("rm", "-f", a).returncode == 0
    wait_for(lambda: reserved("node-2") == (f"1 / {n}", "1 GiB"), 10, "node-2 to release 0.5 CPU, 64 MiB", poll=0.1)
    assert s.docker("rm", "-f", b).returncode == 0
    wait_for(lambda: reserved("node-2") == (f"0 / {n}", "0 B"), 10, "node-2 to reserve nothing again", poll=0.1)
    assert "no resources available to schedule container" in s.refused("-c", f"{n + 1}")
    assert "no resources available to schedule container" in s.refused("-m", "100t")


def test_spread_and_binpack_weigh_reservations_as_swarm(s: Sched) -> None:
    n = s.direct[0].info()["NCPU"]
    half, quarter = f"{n / 2:g}", f"{n / 4:g}"
    # spread: the least reserved node first (an engine's CPUs are n)
    placed = [s.node_of(s.create("--cpus", half, "--net", "none")) for _ in range(3)]
    assert sorted(placed) == ["node-1", "node-2", "node-3"]
    s.cleanup()
    binpack = s.cluster.start_single("--strategy", "binpack")
    try:
        assert binpack.status()["Strategy"] == "binpack"
        placed = [s.node_of(s.create("--cpus", quarter, "--net", "none", via=binpack)) for _ in range(4)]
        assert placed == ["node-1"] * 4  # the most loaded node that fits, equal ones by name: fills node-1
        fifth = s.node_of(s.create("--cpus", quarter, "--net", "none", via=binpack))
        assert fifth == "node-2"  # node-1 full: the next one
    finally:
        binpack.stop()
    s.cleanup()
    random_ = s.cluster.start_single("--strategy", "random")
    try:
        placed = [s.node_of(s.create("--cpus", half, "--net", "none", via=random_)) for _ in range(6)]
        assert sorted(placed) == ["node-1", "node-1", "node-2", "node-2", "node-3", "node-3"]  # only where it fits
        assert "no resources available to schedule container" in s.refused("--cpus", half, via=random_)
    finally:
        random_.stop()


# -- rescheduling on node failure ---------------------------------------------------------------------------------

#: How long after its engine dies a labelled container must run again elsewhere: the managers refresh every 1 s
#: (tests/support/manager.py), a dead dockerd refuses connections at once, then one create and one start.
RESCHEDULE_BOUND = 10.0


def test_reschedule_on_node_failure_moves_labelled_containers_only_and_leaves_no_duplicate(s: Sched) -> None:
    policy = 'com.docker.swarm.reschedule-policies=["on-node-failure"]'
    soft_3 = ("-e", "constraint:node==~node-3", "--net", "none")  # soft: node-3 while it lives, anywhere after
    sleep = (IMAGE, "sleep", "300")
    runs = {
        "mover": s.docker("run", "-d", "--name", "mover", "--label", policy, "-m", "32m", *soft_3, *sleep),
        "mover-env": s.docker("run", "-d", "--name", "mover-env", "-e", "reschedule:on-node-failure", *soft_3, *sleep),
        "stayer": s.docker("run", "-d", "--name", "stayer", *soft_3, *sleep),
    }
    ids = {}
    for name, r in runs.items():
        assert r.returncode == 0, r.stderr
        ids[name] = r.stdout.strip()
        s.created.append(ids[name])
        assert s.node_of(ids[name]) == "node-3"
    swarm_ids = {name: _labels(s, cid)["com.docker.swarm.id"] for name, cid in ids.items()}
    node3 = s.engines[2]
    wait_for(lambda: s.status()["node-3"]["Reserved Memory"].startswith("32 MiB"), 10, "node-3 to reserve 32 MiB")
    # the primary restarts a moved container if its last refresh saw it running: wait for that refresh
    running = "3 (3 Running, 0 Paused, 0 Stopped)"
    wait_for(lambda: s.status(s.primary)["node-3"]["Containers"] == running, 10, "the primary to see them run")

    kill_engine(node3)
    try:
        died = time.monotonic()
        moved: dict[str, tuple[str, str]] = {}

        def running_elsewhere() -> bool:
            for name in ("mover", "mover-env"):
                for e, d in zip(s.engines[:2], s.direct[:2], strict=True):
                    for c in d.containers.list(filters={"label": f"com.docker.swarm.id={swarm_ids[name]}"}):
                        if c.status == "running" and c.name == name:
                            assert e.hostname is not None
                            moved[name] = (c.id, e.hostname)
            return len(moved) == 2

        took = wait_for(running_elsewhere, RESCHEDULE_BOUND * 2, "the labelled containers to run elsewhere", poll=0.1)
        assert took < RESCHEDULE_BOUND, f"rescheduling took {took:.1f}s"
        s.created += [cid for cid, _ in moved.values()]
        print(f"rescheduled within {time.monotonic() - died:.1f}s of the kill")
        for name, (cid, node) in moved.items():
            assert cid != ids[name] and _labels(s, cid)["com.docker.swarm.id"] == swarm_ids[name]  # same swarm id
            assert f"Rescheduled container {ids[name]} from node-3 to {node} as {cid}" in s.primary.logs()
            assert f"Container {ids[name]} was running, starting container {cid}" in s.primary.logs()
        # the one without the policy is not moved: no live engine has it
        assert not any(d.containers.list(all=True, filters={"name": "stayer"}) for d in s.direct[:2])
        assert s.status()["node-3"]["Status"] == "Unhealthy"
        mover_node = moved["mover"][1]

        def reservation_moved() -> bool:  # through the replica: its own refresh sees the new container
            return s.status()[mover_node]["Reserved Memory"].startswith("32 MiB")

        wait_for(reservation_moved, 10, "the replica's docker info to show the reservation moved", poll=0.1)
        names = s.docker("ps", "--format", "{{.Names}}").stdout.split()
        assert f"{moved['mover'][1]}/mover" in names and f"{moved['mover-env'][1]}/mover-env" in names
        assert not any(n.endswith("/stayer") for n in names)
        err = s.refused("-e", "constraint:node==node-3")  # health: the dead node takes nothing
        assert "(unable to find a node that satisfies the constraint node==node-3)" in err
    finally:
        if node3.proc.poll() is not None:
            restart_engine(node3)

    def back_without_duplicates() -> bool:
        on_3 = {c.name: c.id for c in s.direct[2].containers.list(all=True)}
        return s.status()["node-3"]["Status"] == "Healthy" and "mover" not in on_3 and "mover-env" not in on_3

    wait_for(lambda: s.status(s.primary)["node-3"]["Status"] == "Healthy", 30, "node-3 back", poll=0.05)
    listed = s.docker("ps", "-aq", "--no-trunc", via=s.primary).stdout.split()  # removed before it read Healthy
    assert ids["mover"] not in listed and ids["mover-env"] not in listed and ids["stayer"] in listed
    wait_for(back_without_duplicates, 30, "node-3 back, its stale copies removed", poll=0.2)
    assert s.direct[2].containers.get(ids["stayer"]).name == "stayer"  # the unlabelled one is still there
    for name in ("mover", "mover-env"):
        copies = [
            c
            for d in s.direct
            for c in d.containers.list(all=True, filters={"label": f"com.docker.swarm.id={swarm_ids[name]}"})
        ]
        assert [c.id for c in copies] == [moved[name][0]]

    def reservations_settled() -> bool:
        status = s.status()
        return status["node-3"]["Reserved Memory"].startswith("0 B") and status[mover_node][
            "Reserved Memory"
        ].startswith("32 MiB")

    wait_for(reservations_settled, 10, "docker info: nothing reserved on node-3, 32 MiB where mover runs", poll=0.1)


def _labels(s: Sched, cid: str) -> dict[str, str]:
    config = s.inspect(cid)["Config"]
    assert isinstance(config, dict)
    labels: dict[str, str] = config["Labels"]
    return labels


def test_a_new_primary_removes_the_stale_copy_of_a_container_the_old_one_moved(s: Sched) -> None:
    policy = 'com.docker.swarm.reschedule-policies=["on-node-failure"]'
    r = s.docker(
        "run", "-d", "--name", "mover2", "--label", policy, "-e", "constraint:node==~node-3", IMAGE, "sleep", "300"
    )
    assert r.returncode == 0, r.stderr
    old_id = r.stdout.strip()
    s.created.append(old_id)
    swarm_id = _labels(s, old_id)["com.docker.swarm.id"]
    wait_for(
        lambda: s.status(s.primary)["node-3"]["Containers"].startswith("1 (1 Running"), 10, "the primary to see it"
    )

    def copies(engines: int = 3) -> list[str]:
        wanted = {"label": f"com.docker.swarm.id={swarm_id}"}
        return [c.id for d in s.direct[:engines] for c in d.containers.list(all=True, filters=wanted)]

    node3 = s.engines[2]
    kill_engine(node3)
    try:
        wait_for(lambda: len(copies(2)) == 1, 20, "the container to move off node-3", poll=0.1)
        [new_id] = copies(2)
        s.created.append(new_id)
        old_primary, replica = s.primary, s.replica
        old_primary.stop()  # the manager that moved it goes away; the replica takes over
        s.primary = replica
        wait_for(lambda: replica.role() == "Primary", 20, "the replica to become primary")
    finally:
        if node3.proc.poll() is not None:
            restart_engine(node3)
        if s.primary is s.replica:  # the module's next tests talk to a replica: start one
            s.replica = s.cluster.start_single_replica()
    wait_for(lambda: copies() == [new_id], 30, "the new primary to remove the stale copy on node-3", poll=0.2)
    assert f"container {old_id} was rescheduled on node" in s.primary.logs()
