"""The whole Docker API through the cluster (images, networks, volumes, containers, system), as Swarm served it.

Real parts only: the session's registry and two engines (``node-1``, ``node-2``, tests/support/docker_engines.py), a
primary and a replica manager (tests/support/docker_cluster.py), the stock docker CLI and docker-py. Every command goes
through the replica (both hops) unless the test says otherwise; the engines are then asked directly what
happened.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import docker
import pytest

from tests.support.docker_cluster import Cluster, Lines, cli, cluster, pair, popen_cli
from tests.support.docker_engines import IMAGE, NAMES, DockerEngine, Registry, docker_engines, registry
from tests.support.dockerd import busybox_tar, start_engine, stop_engine
from tests.support.helpers import wait_for
from tests.support.manager import ManagerProc

__all__ = ["cluster", "docker_engines", "pair", "registry"]  # the fixtures, imported so pytest finds them

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

Pair = tuple[ManagerProc, ManagerProc]


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def _has_image(e: DockerEngine, ref: str) -> bool:
    return e.docker("image", "inspect", ref, check=False).returncode == 0


@pytest.fixture
def replica(pair: Pair) -> ManagerProc:
    return pair[1]


# -- images ------------------------------------------------------------------------------------------------------


def _push(cluster: Cluster, registry: Registry, name: str, keep: bool) -> str:
    """``IMAGE`` pushed to the registry as ``name:1`` from node-1; removed from node-1 unless ``keep``."""
    ref = f"{registry.addr}/{name}:1"
    e = cluster.engines[0]
    e.docker("tag", IMAGE, ref)
    e.docker("push", ref, timeout=120)
    if not keep:
        e.docker("rmi", ref)
    return ref


def test_docker_pull_from_the_local_registry_lands_on_every_engine(
    cluster: Cluster, registry: Registry, replica: ManagerProc
) -> None:
    ref = _push(cluster, registry, _unique("pull"), keep=False)
    assert not any(_has_image(e, ref) for e in cluster.engines)
    out = cli(replica, "pull", ref, timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(_has_image(e, ref) for e in cluster.engines)
    for name in NAMES:
        assert name in out.stdout  # the merged progress names each node
    bad = cli(replica, "pull", f"{registry.addr}/no-such-repo:1", check=False, timeout=60)
    assert bad.returncode != 0 and "no-such-repo" in bad.stderr + bad.stdout


def test_after_a_pull_placement_knows_the_engines_images_at_once(cluster: Cluster, registry: Registry) -> None:
    """Swarm's suite tags an image on one engine behind the manager's back, pulls through the manager "to force
    the refresh images", and places by ``affinity:image==`` at once (here with refreshes a minute apart)."""
    ref = _push(cluster, registry, _unique("sync"), keep=False)
    replica = cluster.start_single("--engine-refresh", "60s")
    local = f"{_unique('behind')}:1"
    cluster.engines[1].docker("tag", IMAGE, local)
    try:
        assert cli(replica, "pull", ref, timeout=120).returncode == 0
        cid = cli(replica, "create", "--network", "none", "-e", f"affinity:image=={local}", IMAGE, "true").stdout
        assert cli(replica, "inspect", "-f", "{{.Node.Name}}", cid.strip()).stdout.strip() == NAMES[1]
        cli(replica, "rm", cid.strip())
    finally:
        cluster.engines[1].docker("rmi", local)
        replica.stop()


def test_docker_run_of_an_image_only_the_registry_has_pulls_it_on_the_chosen_engine(
    cluster: Cluster, registry: Registry, replica: ManagerProc
) -> None:
    ref = _push(cluster, registry, _unique("only"), keep=False)
    out = cli(replica, "run", "--rm", "--network", "none", ref, "echo", "from-the-registry", timeout=120)
    assert out.stdout == "from-the-registry\n", out.stderr
    assert [_has_image(e, ref) for e in cluster.engines].count(True) == 1  # pulled where it ran, only there


def test_tag_inspect_history_rmi_act_on_every_engine_that_has_the_image(cluster: Cluster, replica: ManagerProc) -> None:
    ref = f"{_unique('tagged')}:x"
    cli(replica, "tag", IMAGE, ref)
    assert all(_has_image(e, ref) for e in cluster.engines)
    info = json.loads(cli(replica, "image", "inspect", ref).stdout)
    assert ref in info[0]["RepoTags"]
    assert "import" in cli(replica, "history", "--no-trunc", ref).stdout.lower() or info[0]["Id"]
    removed = cli(replica, "rmi", ref)
    assert f"Untagged: {ref}" in removed.stdout
    assert not any(_has_image(e, ref) for e in cluster.engines)
    missing = cli(replica, "rmi", ref, check=False)
    assert missing.returncode != 0 and "No such image" in missing.stderr


def test_images_are_listed_once_per_id_and_filtered_by_label(
    cluster: Cluster, replica: ManagerProc, tmp_path: Path
) -> None:
    ids = cli(replica, "images", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}").stdout.split("\n")
    image_id = cluster.engines[0].docker("image", "inspect", "-f", "{{.Id}}", IMAGE).stdout.strip()
    assert ids.count(f"{image_id} {IMAGE}") == 1  # both engines have it: listed once
    ref = f"{_unique('labelled')}:1"
    tar = busybox_tar(tmp_path)
    out = cli(replica, "import", "--change", "LABEL swarmha.test=yes", str(tar), ref, timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(_has_image(e, ref) for e in cluster.engines)  # docker import: on every engine
    listed = cli(replica, "images", "-f", "label=swarmha.test=yes", "--format", "{{.Repository}}:{{.Tag}}").stdout
    assert set(listed.split()) == {ref}  # imported on each engine (an id per engine: the import time differs)
    cli(replica, "rmi", ref)


def test_save_and_load_go_through_the_cluster(cluster: Cluster, replica: ManagerProc, tmp_path: Path) -> None:
    ref = f"{_unique('saved')}:1"
    cluster.engines[0].docker("tag", IMAGE, ref)
    archive = tmp_path / "image.tar"
    cli(replica, "save", "-o", str(archive), ref, timeout=120)
    assert archive.stat().st_size > 100_000
    cluster.engines[0].docker("rmi", ref)
    loaded = cli(replica, "load", "-i", str(archive), timeout=120)
    assert loaded.returncode == 0 and ref in loaded.stdout, loaded.stderr
    assert loaded.stdout.count(f"Loaded image: {ref}") == 1, loaded.stdout  # once, as one engine says it
    assert all(_has_image(e, ref) for e in cluster.engines)  # docker load: on every engine
    cli(replica, "rmi", ref)


def test_a_soft_node_choice_without_the_image_goes_where_the_image_is(cluster: Cluster, replica: ManagerProc) -> None:
    """Swarm's "retry with image affinity": node-2 is asked for softly, lacks the image (only node-1 has it, and
    no registry does), so the container goes to node-1 — and the affinity is not kept in its labels."""
    local = f"{_unique('soft')}:1"
    cluster.engines[0].docker("tag", IMAGE, local)
    try:
        made = cli(replica, "create", "--network", "none", "-e", f"constraint:node==~{NAMES[1]}", local, "true",
                   check=False)  # fmt: skip
        assert made.returncode == 0, made.stderr
        inspected = cli(replica, "inspect", made.stdout.strip()).stdout
        assert json.loads(inspected)[0]["Node"]["Name"] == NAMES[0]
        assert f"image=={local}" not in inspected
        cli(replica, "rm", made.stdout.strip())
    finally:
        cluster.engines[0].docker("rmi", local)


def test_images_filters_and_save_across_nodes_as_swarm_did(
    cluster: Cluster, replica: ManagerProc, tmp_path: Path
) -> None:
    one, two = f"{_unique('only1')}:1", f"{_unique('only2')}:1"
    cluster.engines[0].docker("tag", IMAGE, one)
    cluster.engines[1].docker("tag", IMAGE, two)
    try:
        on1 = cli(replica, "images", "--filter", f"node={NAMES[0]}", "--format", "{{.Repository}}:{{.Tag}}")
        assert one in on1.stdout.split() and two not in on1.stdout.split(), on1.stdout
        missing = cli(replica, "images", "--filter", "before=no-such-image-here", check=False)
        assert missing.returncode != 0, missing.stdout
        apart = cli(replica, "save", "-o", str(tmp_path / "apart.tar"), one, two, check=False)
        assert apart.returncode != 0
        assert "Unable to find a healthy engine containing all images" in apart.stderr, apart.stderr
    finally:
        cluster.engines[0].docker("rmi", one)
        cluster.engines[1].docker("rmi", two)


# -- networks ----------------------------------------------------------------------------------------------------


def _on(e: DockerEngine, kind: str, name: str) -> bool:
    return e.docker(kind, "inspect", name, check=False).returncode == 0


def test_networks_are_listed_as_node_name_created_on_a_node_and_routed(cluster: Cluster, replica: ManagerProc) -> None:
    listed = cli(replica, "network", "ls", "--format", "{{.Name}}").stdout.split()
    assert {f"{n}/host" for n in NAMES} | {f"{n}/none" for n in NAMES} <= set(listed)
    net = _unique("net")
    assert cli(replica, "network", "create", f"{NAMES[0]}/{net}").returncode == 0
    assert [_on(e, "network", net) for e in cluster.engines] == [True, False]
    assert json.loads(cli(replica, "network", "inspect", f"{NAMES[0]}/{net}").stdout)[0]["Name"] == net
    assert json.loads(cli(replica, "network", "inspect", net).stdout)[0]["Name"] == net
    on_node = cli(replica, "network", "ls", "--filter", f"node={NAMES[1]}", "--format", "{{.Name}}").stdout.split()
    assert on_node and all(n.startswith(f"{NAMES[1]}/") for n in on_node)
    named = cli(replica, "network", "ls", "--filter", f"name={net}", "--format", "{{.Name}}").stdout.split()
    assert named == [f"{NAMES[0]}/{net}"]
    custom = cli(replica, "network", "ls", "--filter", "type=custom", "--format", "{{.Name}}").stdout.split()
    assert f"{NAMES[0]}/{net}" in custom and not any(n.endswith("/host") for n in custom)
    cid = cli(replica, "run", "-d", "--net", f"{NAMES[0]}/{net}", IMAGE, "sleep", "60").stdout.strip()
    try:
        assert cli(replica, "inspect", "-f", "{{.Node.Name}}", cid).stdout.strip() == NAMES[0]
        ps = cli(replica, "ps", "-q", "--no-trunc", "--filter", f"network={NAMES[0]}/{net}").stdout.split()
        assert ps == [cid]
        cli(replica, "network", "disconnect", net, cid)
        nets = cli(replica, "inspect", "-f", "{{json .NetworkSettings.Networks}}", cid).stdout
        assert net not in nets
        cli(replica, "network", "connect", f"{NAMES[0]}/{net}", cid)
        assert net in cli(replica, "inspect", "-f", "{{json .NetworkSettings.Networks}}", cid).stdout
    finally:
        cli(replica, "rm", "-f", cid, check=False)
    assert cli(replica, "network", "rm", f"{NAMES[0]}/{net}").returncode == 0
    assert not _on(cluster.engines[0], "network", net)
    gone = cli(replica, "network", "inspect", net, check=False)
    assert gone.returncode != 0 and "not found" in gone.stderr


def test_a_network_name_on_several_nodes_is_refused_naming_each_not_acted_on_at_one(
    cluster: Cluster, replica: ManagerProc
) -> None:
    # `none` is on every engine, a different network on each: which one `inspect none` means is not known
    none = cli(replica, "network", "inspect", "none", check=False)
    assert none.returncode != 0
    assert "ambiguous" in none.stderr and all(f"{n}/none" in none.stderr for n in NAMES), none.stderr
    assert json.loads(cli(replica, "network", "inspect", f"{NAMES[1]}/none").stdout)[0]["Name"] == "none"
    net, own = _unique("twin"), _unique("own")
    for name in (f"{NAMES[0]}/{net}", f"{NAMES[1]}/{net}", f"{NAMES[1]}/{own}"):
        cli(replica, "network", "create", name)
    cid = cli(replica, "run", "-d", "--net", f"{NAMES[1]}/{own}", IMAGE, "sleep", "60").stdout.strip()
    try:
        # connect/disconnect: the name means the network on the container's node
        cli(replica, "network", "connect", net, cid)
        on_2 = json.loads(cluster.engines[1].docker("network", "inspect", net).stdout)[0]["Containers"] or {}
        on_1 = json.loads(cluster.engines[0].docker("network", "inspect", net).stdout)[0]["Containers"] or {}
        assert cid in on_2 and not on_1
        cli(replica, "network", "disconnect", net, cid)
        assert not json.loads(cluster.engines[1].docker("network", "inspect", net).stdout)[0]["Containers"]
    finally:
        cli(replica, "rm", "-f", cid, check=False)
    refused = cli(replica, "network", "rm", net, check=False)
    assert refused.returncode != 0 and "ambiguous" in refused.stderr, refused.stderr
    assert [_on(e, "network", net) for e in cluster.engines] == [True, True]  # nothing removed
    cli(replica, "network", "rm", f"{NAMES[0]}/{net}", f"{NAMES[1]}/{own}")
    assert json.loads(cli(replica, "network", "inspect", net).stdout)[0]["Name"] == net  # one left: unique
    cli(replica, "network", "rm", net)
    assert [_on(e, "network", net) for e in cluster.engines] == [False, False]


def test_network_create_and_ls_refuse_what_swarm_and_dockerd_refuse(cluster: Cluster, replica: ManagerProc) -> None:
    bad_filter = cli(replica, "network", "ls", "--filter", "type=foo", check=False)
    assert bad_filter.returncode != 0 and "type" in bad_filter.stderr, bad_filter.stderr
    no_node = cli(replica, "network", "create", "node-9/" + _unique("n"), check=False)
    assert no_node.returncode != 0 and "node==node-9" in no_node.stderr, no_node.stderr
    net = _unique("dup")
    cli(replica, "network", "create", f"{NAMES[1]}/{net}")
    try:
        again = cli(replica, "network", "create", net, check=False)  # the CLI asks CheckDuplicate
        assert again.returncode != 0 and f"network with name {net} already exists" in again.stderr, again.stderr
        assert [_on(e, "network", net) for e in cluster.engines] == [False, True]
    finally:
        cli(replica, "network", "rm", f"{NAMES[1]}/{net}", check=False)


# -- volumes -----------------------------------------------------------------------------------------------------


def test_volumes_are_listed_as_node_name_and_a_container_goes_where_its_volume_is(
    cluster: Cluster, replica: ManagerProc
) -> None:
    vol = _unique("vol")
    assert cli(replica, "volume", "create", f"{NAMES[1]}/{vol}").stdout.strip() == vol
    assert [_on(e, "volume", vol) for e in cluster.engines] == [False, True]
    assert f"{NAMES[1]}/{vol}" in cli(replica, "volume", "ls", "--format", "{{.Name}}").stdout.split()
    assert (
        cli(replica, "volume", "ls", "-q", "--filter", f"node={NAMES[0]}").stdout.split().count(f"{NAMES[0]}/{vol}")
        == 0
    )
    assert json.loads(cli(replica, "volume", "inspect", vol).stdout)[0]["Name"] == vol
    for _ in range(2):  # wherever spread would go, the volume decides
        out = cli(replica, "run", "--rm", "-v", f"{vol}:/data", IMAGE, "sh", "-c", "echo x >> /data/f; cat /data/f")
        assert out.returncode == 0, out.stderr
    assert out.stdout == "x\nx\n"  # the same volume both times, on node-2
    in_use = cli(replica, "run", "-d", "-v", f"{vol}:/data", IMAGE, "sleep", "60").stdout.strip()
    try:
        assert cli(replica, "inspect", "-f", "{{.Node.Name}}", in_use).stdout.strip() == NAMES[1]
    finally:
        cli(replica, "rm", "-f", in_use)
    assert cli(replica, "volume", "rm", vol).returncode == 0
    assert not _on(cluster.engines[1], "volume", vol)
    assert cli(replica, "volume", "inspect", vol, check=False).returncode != 0


def test_a_volume_name_on_several_nodes_is_removed_on_each_as_swarm_did(cluster: Cluster, replica: ManagerProc) -> None:
    vol = _unique("twin")
    for n in NAMES:
        cli(replica, "volume", "create", f"{n}/{vol}")
    assert [_on(e, "volume", vol) for e in cluster.engines] == [True, True]
    ambiguous = cli(replica, "volume", "inspect", vol, check=False)
    assert ambiguous.returncode != 0 and "ambiguous" in ambiguous.stderr, ambiguous.stderr
    assert all(f"{n}/{vol}" in ambiguous.stderr for n in NAMES)
    used = cluster.engines[0].docker("run", "-d", "-v", f"{vol}:/data", IMAGE, "sleep", "60").stdout.strip()
    try:  # in use on node-1: refused there, named; node-2's goes
        busy = cli(replica, "volume", "rm", vol, check=False)
        assert busy.returncode != 0 and f"{NAMES[0]}:" in busy.stderr and "in use" in busy.stderr, busy.stderr
        assert [_on(e, "volume", vol) for e in cluster.engines] == [True, False]
    finally:
        cluster.engines[0].docker("rm", "-f", used)
    cli(replica, "volume", "create", f"{NAMES[1]}/{vol}")
    assert cli(replica, "volume", "rm", vol).stdout.strip() == vol
    assert [_on(e, "volume", vol) for e in cluster.engines] == [False, False]
    gone = cli(replica, "volume", "rm", vol, check=False)
    assert gone.returncode != 0 and "no such volume" in gone.stderr


def test_a_volume_created_by_a_bare_name_is_created_on_every_node_as_swarm_did(
    cluster: Cluster, replica: ManagerProc
) -> None:
    vol = _unique("everywhere")
    assert cli(replica, "volume", "create", vol).stdout.strip() == vol
    try:
        assert [_on(e, "volume", vol) for e in cluster.engines] == [True, True]
        listed = cli(replica, "volume", "ls", "--format", "{{.Name}}", "--filter", f"name={vol}").stdout.split()
        assert sorted(listed) == [f"{n}/{vol}" for n in NAMES]
    finally:
        cli(replica, "volume", "rm", vol, check=False)
    assert [_on(e, "volume", vol) for e in cluster.engines] == [False, False]
    label = f'com.docker.swarm.whitelists=["node=={NAMES[1]}"]'
    cli(replica, "volume", "create", "--label", label, vol)
    try:
        assert [_on(e, "volume", vol) for e in cluster.engines] == [False, True]  # where the whitelist lets it
    finally:
        cli(replica, "volume", "rm", vol, check=False)
    no_node = cli(replica, "volume", "create", "node-9/" + vol, check=False)
    assert no_node.returncode != 0 and "node==node-9" in no_node.stderr, no_node.stderr


# -- containers and system ---------------------------------------------------------------------------------------


def test_ps_last_limit_node_filter_and_the_node_object(cluster: Cluster, replica: ManagerProc) -> None:
    made = []
    try:
        for i, node in enumerate((NAMES[0], NAMES[1], NAMES[0])):
            made.append(
                cli(replica, "create", "--network", "none", "-e", f"constraint:node=={node}", "--name",
                    _unique(f"ps{i}"), IMAGE, "true").stdout.strip()
            )  # fmt: skip
            time.sleep(1.05)  # Created has a one-second resolution: the order below is the creation order
        assert cli(replica, "ps", "-a", "-q", "--no-trunc", "-l").stdout.split() == [made[2]]
        assert cli(replica, "ps", "-a", "-q", "--no-trunc", "-n", "2").stdout.split() == [made[2], made[1]]
        on_one = cli(replica, "ps", "-a", "-q", "--no-trunc", "--filter", f"node={NAMES[0]}").stdout.split()
        assert made[0] in on_one and made[2] in on_one and made[1] not in on_one
        client = docker.APIClient(base_url=f"tcp://{replica.addr}", version="1.41", timeout=30)
        try:
            listed = {c["Id"]: c for c in client.containers(all=True)}
            node = listed[made[1]]["Node"]
            assert node["Name"] == NAMES[1] and node["Addr"] == cluster.engines[1].addr and node["Cpus"] > 0
            assert node["Labels"]["node"] == "2"
            inspected = client.inspect_container(made[1])["Node"]
            assert set(inspected) == {"ID", "IP", "Addr", "Name", "Cpus", "Memory", "Labels"}
            assert inspected["IP"] == "127.0.0.1" and inspected["Memory"] > 0
        finally:
            client.close()
    finally:
        for cid in made:
            cli(replica, "rm", "-f", cid, check=False)


def test_rename_update_commit_go_to_the_owning_engine(cluster: Cluster, replica: ManagerProc) -> None:
    name, new = _unique("ren"), _unique("renamed")
    cid = cli(replica, "create", "--network", "none", "--name", name, "-e", f"constraint:node=={NAMES[1]}", IMAGE,
              "true").stdout.strip()  # fmt: skip
    try:
        assert cli(replica, "rename", name, new).returncode == 0
        assert cluster.engines[1].docker("inspect", "-f", "{{.Name}}", cid).stdout.strip() == f"/{new}"
        assert cli(replica, "update", "--restart", "on-failure:3", new).returncode == 0
        policy = cluster.engines[1].docker("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", cid).stdout
        assert policy.strip() == "on-failure"
        ref = f"{_unique('committed')}:1"
        assert cli(replica, "commit", new, ref).returncode == 0
        assert [_has_image(e, ref) for e in cluster.engines] == [False, True]
        cli(replica, "rmi", ref)
    finally:
        cli(replica, "rm", "-f", cid, check=False)


def test_info_counts_version_df_and_prune(cluster: Cluster, pair: Pair) -> None:
    _, replica = pair
    direct = [docker.APIClient(base_url=e.host, version="1.41", timeout=30) for e in cluster.engines]
    try:
        cid = cli(replica, "run", "-d", "--network", "none", IMAGE, "sleep", "60").stdout.strip()

        def counts() -> tuple[int, int, int]:
            infos = [d.info() for d in direct]
            return tuple(sum(i[k] for i in infos) for k in ("Containers", "ContainersRunning", "ContainersStopped"))

        def shown() -> tuple[int, int, int]:
            out = cli(replica, "info", "--format", "{{.Containers}} {{.ContainersRunning}} {{.ContainersStopped}}")
            a, b, c = (int(x) for x in out.stdout.split())
            return a, b, c

        wait_for(lambda: shown() == counts(), 15, "docker info's counts to match the engines'", poll=0.2)
        images = cli(replica, "info", "--format", "{{.Images}}").stdout.strip()
        assert int(images) == sum(d.info()["Images"] for d in direct)
        version = json.loads(cli(replica, "version", "--format", "{{json .Server}}").stdout)
        assert version["ApiVersion"] == "1.41" and version["Os"] == "linux" and version["KernelVersion"]
        df = cli(replica, "system", "df", "--format", "{{.Type}} {{.TotalCount}}").stdout
        assert "Containers" in df and "Images" in df, df
        cli(replica, "rm", "-f", cid)
        stopped = cli(replica, "create", "--network", "none", IMAGE, "true").stdout.strip()
        pruned = cli(replica, "container", "prune", "-f")
        assert stopped in pruned.stdout, pruned.stdout + pruned.stderr
    finally:
        for d in direct:
            d.close()


def test_system_prune_prunes_every_engine_and_names_local_objects_node_name(
    cluster: Cluster, replica: ManagerProc
) -> None:
    label = f"swarmha.test={_unique('prune')}"  # the prune is filtered to this test's objects only
    stopped = [
        cli(
            replica, "create", "--label", label, "-e", f"constraint:node=={n}", "--network", "none", IMAGE, "true"
        ).stdout.strip()
        for n in NAMES
    ]
    net, vol = _unique("prunenet"), _unique("prunevol")
    cli(replica, "network", "create", "--label", label, f"{NAMES[0]}/{net}")
    cli(replica, "volume", "create", "--label", label, f"{NAMES[1]}/{vol}")
    keep = _unique("keepnet")  # unlabelled: the filter must reach the engines, or this goes too
    cli(replica, "network", "create", f"{NAMES[0]}/{keep}")
    try:
        assert [_on(e, "container", c) for e, c in zip(cluster.engines, stopped, strict=True)] == [True, True]
        out = cli(replica, "system", "prune", "-f", "--volumes", "--filter", f"label={label}", timeout=120)
        assert out.returncode == 0, out.stderr
        assert not any(_on(e, "container", c) for e in cluster.engines for c in stopped)
        assert not _on(cluster.engines[0], "network", net) and not _on(cluster.engines[1], "volume", vol)
        assert _on(cluster.engines[0], "network", keep)
        for c in stopped:
            assert c in out.stdout, out.stdout
        assert f"{NAMES[0]}/{net}" in out.stdout.split() and f"{NAMES[1]}/{vol}" in out.stdout.split(), out.stdout
    finally:
        for c in stopped:
            cli(replica, "rm", "-f", c, check=False)
        for name in (net, keep):
            cli(replica, "network", "rm", f"{NAMES[0]}/{name}", check=False)
        cli(replica, "volume", "rm", f"{NAMES[1]}/{vol}", check=False)


# -- events ------------------------------------------------------------------------------------------------------


def test_events_carry_engine_connect_and_disconnect_and_until_ends_the_stream(
    cluster: Cluster, replica: ManagerProc, tmp_path: Path
) -> None:
    since = time.time()
    extra = start_engine(7, hostname="node-3")
    follow = popen_cli(replica, "events", "--filter", "type=swarm", "--format", "{{.Action}} {{.Actor.Attributes}}")
    try:
        lines = Lines(follow)
        record = cluster.discovery.put(f"docker/swarm/nodes/{extra.addr}", extra.addr, cluster.session)
        line = lines.next(20) or ""
        assert line.startswith("engine_connect") and "node-3" in line, line
        cluster.discovery.delete(f"docker/swarm/nodes/{extra.addr}", record.token)
        line = lines.next(20) or ""
        assert line.startswith("engine_disconnect") and "node-3" in line, line
    finally:
        follow.kill()
        follow.wait(10)
        stop_engine(extra)
    # --since/--until: the past, replayed, and the stream ends by itself
    began = time.monotonic()
    past = cli(replica, "events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}", "--format",
               "{{.Type}} {{.Action}}", timeout=30)  # fmt: skip
    assert time.monotonic() - began < 20
    assert "swarm engine_connect" in past.stdout and "swarm engine_disconnect" in past.stdout, past.stdout


# -- docker-compose ----------------------------------------------------------------------------------------------

COMPOSE = """\
version: "3"
services:
  web:
    image: {image}
    command: sh -c "echo web-started; echo web > /data/web; sleep 300"
    volumes: [data:/data]
  worker:
    image: {image}
    command: sh -c "echo worker-started; sleep 300"
    volumes: [data:/data]
volumes:
  data: {{}}
"""


def _compose(m: ManagerProc, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(project), "DOCKER_HOST": f"tcp://{m.addr}"}
    return subprocess.run(
        ["docker-compose", "--no-ansi", "-p", project.name, *args], cwd=project, env=env, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip


def test_docker_compose_up_ps_logs_down_through_a_replica(
    cluster: Cluster, replica: ManagerProc, tmp_path: Path
) -> None:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed")
    project = tmp_path / _unique("proj")
    project.mkdir()
    (project / "docker-compose.yml").write_text(COMPOSE.format(image=IMAGE))
    name = project.name
    try:
        up = _compose(replica, project, "up", "-d")
        assert up.returncode == 0, up.stderr
        ps = _compose(replica, project, "ps")
        assert ps.returncode == 0, ps.stderr
        assert f"{name}_web_1" in ps.stdout and f"{name}_worker_1" in ps.stdout and ps.stdout.count("Up") == 2
        wait_for(
            lambda: "worker-started" in _compose(replica, project, "logs").stdout, 20, "the services' logs", poll=0.2
        )
        logs = _compose(replica, project, "logs", "web").stdout
        assert "web-started" in logs
        where = [sum(_on(e, "container", f"{name}_{s}_1") for s in ("web", "worker")) for e in cluster.engines]
        assert sorted(where) == [0, 2]  # both services where the named volume and the network are
        volume_node = [e for e in cluster.engines if _on(e, "volume", f"{name}_data")]
        assert len(volume_node) == 1
        down = _compose(replica, project, "down", "-v")
        assert down.returncode == 0, down.stderr
        assert not any(_on(e, "container", f"{name}_web_1") for e in cluster.engines)
        assert not any(_on(e, "network", f"{name}_default") for e in cluster.engines)
        assert not any(_on(e, "volume", f"{name}_data") for e in cluster.engines)
    finally:
        _compose(replica, project, "down", "-v")


def test_docker_build_is_placed_by_a_constraint_build_arg_and_streams_its_output(
    cluster: Cluster, replica: ManagerProc, tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {IMAGE}\nRUN echo built-here > /built\n")
    ref = f"{_unique('built')}:1"
    out = cli(replica, "build", "--build-arg", f"constraint:node=={NAMES[1]}", "-t", ref, str(tmp_path), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "built-here" in out.stdout + out.stderr or "Successfully tagged" in out.stdout
    assert [_has_image(e, ref) for e in cluster.engines] == [False, True]
    assert cli(replica, "run", "--rm", "--network", "none", ref, "cat", "/built").stdout == "built-here\n"
    cli(replica, "rmi", ref)


# -- the same through the primary, and the API shapes with docker-py ------------------------------------------


def test_the_commands_work_against_the_primary_too(cluster: Cluster, registry: Registry, pair: Pair) -> None:
    primary, _ = pair
    ref = _push(cluster, registry, _unique("direct"), keep=False)
    assert cli(primary, "pull", ref, timeout=120).returncode == 0
    assert all(_has_image(e, ref) for e in cluster.engines)
    assert cli(primary, "rmi", ref).returncode == 0
    vol, net = _unique("pvol"), _unique("pnet")
    cli(primary, "volume", "create", f"{NAMES[0]}/{vol}")
    cli(primary, "network", "create", f"{NAMES[0]}/{net}")
    try:
        out = cli(
            primary, "run", "--rm", "--net", net, "-v", f"{vol}:/d", IMAGE, "sh", "-c", "echo ok > /d/f; cat /d/f"
        )
        assert out.stdout == "ok\n", out.stderr
        assert f"{NAMES[0]}/{vol}" in cli(primary, "volume", "ls", "-q").stdout.split()
        assert f"{NAMES[0]}/{net}" in cli(primary, "network", "ls", "--format", "{{.Name}}").stdout.split()
    finally:
        cli(primary, "network", "rm", net, check=False)
        cli(primary, "volume", "rm", vol, check=False)


def test_docker_py_sees_the_api_shapes_through_a_replica(
    cluster: Cluster, registry: Registry, replica: ManagerProc
) -> None:
    ref = _push(cluster, registry, _unique("py"), keep=False)
    client = docker.DockerClient(base_url=f"tcp://{replica.addr}", version="1.41", timeout=60)
    try:
        image = client.images.pull(ref)
        assert ref in image.tags
        assert any(ref in i.tags for i in client.images.list())
        net = client.networks.create(f"{NAMES[1]}/{_unique('pynet')}")
        try:
            assert net.attrs["Name"].startswith("pynet")
            names = [n.name for n in client.networks.list()]
            assert f"{NAMES[1]}/{net.attrs['Name']}" in names
        finally:
            client.api.remove_network(f"{NAMES[1]}/{net.attrs['Name']}")
        vol = client.volumes.create(f"{NAMES[0]}/{_unique('pyvol')}")
        assert vol.name.startswith("pyvol")
        assert f"{NAMES[0]}/{vol.name}" in [v.name for v in client.volumes.list()]
        client.api.remove_volume(vol.name)
        df = client.df()
        assert {"LayersSize", "Images", "Containers", "Volumes"} <= set(df)
        version = client.version()
        assert version["ApiVersion"] == "1.41" and version["Os"] == "linux"
        assert client.info()["Images"] >= 1
        client.images.remove(ref)
        assert not any(_has_image(e, ref) for e in cluster.engines)
    finally:
        client.close()
