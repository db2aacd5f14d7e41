"""The whole Docker API through the cluster (images, networks, volumes, containers, system), as Swarm served it.

Real parts only: the session's registry and two engines (``node-1``, ``node-2``, tests/docker_engines.py), a
primary and a replica manager (tests/docker_cluster.py), the stock docker CLI and docker-py. Every command goes
through the replica (both hops) unless the test says otherwise; the engines are then asked directly what
happened.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.docker_cluster import Cluster, Lines, cli, cluster, pair, popen_cli
from tests.docker_engines import IMAGE, NAMES, DockerEngine, Registry, docker_engines, registry
from tests.dockerd import busybox_tar
from tests.helpers import wait_for
from tests.manager_support import ManagerProc

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
    assert all(_has_image(e, ref) for e in cluster.engines)  # docker load: on every engine
    cli(replica, "rmi", ref)
