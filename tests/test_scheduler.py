"""The scheduler's pure parts on hand-built nodes: expressions, requests, each filter, the weights, the texts.

The same behaviour on real engines through the docker CLI is in tests/test_scheduler_docker.py; these pin the
rules (Swarm's) where a real cluster would need many engines to show them.
"""

from __future__ import annotations

import json

import pytest

from swarmha.manager.scheduler import Container, Image, Node, Request, Scheduler, SchedulingError
from swarmha.manager.scheduler.filter import FILTERS, new
from swarmha.manager.scheduler.filter.expr import Expr, ExprError, parse_exprs
from swarmha.manager.scheduler.node import Binding
from swarmha.manager.scheduler.records import from_engine, to_engine

GIB = 1 << 30


def node(name: str, *containers: Container, cpus: float = 2, memory: int = 2 * GIB, **labels: str) -> Node:
    return Node(
        id=f"ID-{name}", name=name, addr=f"10.0.0.{name[-1]}:2375", labels=dict(labels),
        containers=list(containers), total_cpus=cpus, total_memory=memory,
    )  # fmt: skip


def req(**config: object) -> Request:
    return Request.from_config(config)


def names(nodes: list[Node]) -> list[str]:
    return [n.name for n in nodes]


# -- expressions and requests ---------------------------------------------------------------------------------


def test_expressions_parse_as_swarms_with_its_errors() -> None:
    assert parse_exprs(["zone==a", "node!=~n*", "xy==/^a|b$/"]) == [
        Expr("zone", "==", "a"),
        Expr("node", "!=", "n*", soft=True),
        Expr("xy", "==", "/^a|b$/"),
    ]
    with pytest.raises(ExprError, match=r"^Key '%k' is invalid$"):
        parse_exprs(["%k==v"])
    with pytest.raises(ExprError, match=r"^Value '{v}' is invalid$"):
        parse_exprs(["kk=={v}"])
    with pytest.raises(ExprError, match=r"^One of operator ==, != is expected$"):
        parse_exprs(["kk=v"])
    with pytest.raises(ExprError, match=r"^Key 'k' is invalid$"):
        parse_exprs(["k==v"])  # as in Swarm, a key has at least two characters


def test_globs_are_anchored_regexps_are_searched() -> None:
    assert Expr("k", "==", "ub*t*").match("ubuntu")
    assert not Expr("k", "==", "ub*").match("xubuntu")
    assert Expr("k", "==", "/bunt/").match("xubuntu")
    assert Expr("k", "!=", "a").match("b") and not Expr("k", "!=", "a").match("a", "b")
    assert not Expr("k", "==", "/(/").match("(")  # a bad regexp matches nothing


def test_scheduling_env_moves_into_the_labels_compose_writes() -> None:
    r = req(
        Env=["constraint:zone==a", "A=1", "affinity:container==db", "reschedule:on-node-failure", "whitelist:n==x"],
        Labels={"com.docker.swarm.constraints": '["storage==ssd"]', "other": "1"},
    )
    assert r.env == ("A=1",)
    assert r.constraints == ("storage==ssd", "zone==a")
    assert json.loads(r.labels["com.docker.swarm.constraints"]) == ["storage==ssd", "zone==a"]
    assert json.loads(r.labels["com.docker.swarm.affinities"]) == ["container==db"]
    assert json.loads(r.labels["com.docker.swarm.reschedule-policies"]) == ["on-node-failure"]
    assert r.labels["other"] == "1" and r.whitelists == ("n==x",)
    assert req(Labels={"com.docker.swarm.constraints": "not json"}).constraints == ()
    with pytest.raises(SchedulingError, match="invalid reschedule policy: always"):
        req(Env=["reschedule:always"]).validate()
    with pytest.raises(SchedulingError, match="too many reschedule policies"):
        req(Env=["reschedule:off", "reschedule:on-node-failure"]).validate()


def test_reservations_count_cpu_shares_as_cpus_and_nano_cpus() -> None:
    r = req(HostConfig={"CpuShares": 1, "NanoCpus": 500_000_000, "Memory": 64 << 20})
    assert (r.cpus, r.memory) == (1.5, 64 << 20)


def test_cpu_shares_go_to_an_engine_as_shares_of_1024_per_cpu_and_come_back_as_cpus() -> None:
    config = {"Image": "x", "HostConfig": {"CpuShares": 1, "Memory": 5}}
    assert to_engine(config, 2)["HostConfig"] == {"CpuShares": 512, "Memory": 5}  # runc refuses 1 (< 2)
    assert to_engine(config, 3)["HostConfig"]["CpuShares"] == 342  # ceil, as Swarm
    assert config["HostConfig"]["CpuShares"] == 1  # a copy
    assert from_engine({"HostConfig": {"CpuShares": 342}}, 3)["HostConfig"]["CpuShares"] == 1
    assert from_engine({"HostConfig": {"CpuShares": 1024}}, 4)["HostConfig"]["CpuShares"] == 4  # docker run -c 1024
    for body in ({"HostConfig": {"CpuShares": 0}}, {"HostConfig": {}}, {}):  # nothing reserved, or NCPU unknown
        assert to_engine(body, 2) == body == from_engine(body, 2)
    assert to_engine(config, 0) == config


# -- filters ----------------------------------------------------------------------------------------------------


def test_default_filters_are_swarms_in_its_order_and_unknown_names_are_refused() -> None:
    assert FILTERS == ("health", "port", "containerslots", "dependency", "affinity", "constraint", "whitelist")
    assert Scheduler(filters=["constraint", "health", "constraint"]).filter_names == "constraint, health"
    with pytest.raises(ValueError, match="'nosuch' is not supported"):
        new(["nosuch"])


def test_soft_constraints_fall_back_hard_ones_refuse_with_the_conditions_listed() -> None:
    nodes = [node("n1", zone="a"), node("n2", zone="b")]
    s = Scheduler()
    assert names(s.select(req(Env=["constraint:zone==~b"]), nodes)) == ["n2"]
    assert names(s.select(req(Env=["constraint:zone==~c"]), nodes)) == ["n1", "n2"]
    with pytest.raises(SchedulingError) as e:
        s.select(req(Env=["constraint:zone==c"], HostConfig={"PortBindings": {"80/tcp": [{"HostPort": "80"}]}}), nodes)
    assert str(e.value) == (
        "Unable to find a node that satisfies the following conditions \n[port 80 (Bridge mode)]\n"
        "[available container slots]\n[zone==c]\n(unable to find a node that satisfies the constraint zone==c)"
    )


def test_constraint_node_matches_name_id_and_address() -> None:
    nodes = [node("n1"), node("n2")]
    for value in ("n2", "ID-n2", "10.0.0.2:2375", "/2$/"):
        assert names(Scheduler().select(req(Env=[f"constraint:node=={value}"]), nodes)) == ["n2"]


def test_health_refusal_is_passed_on_alone() -> None:
    sick = node("n1")
    sick.healthy = False
    with pytest.raises(SchedulingError, match=r"^No healthy node available in the cluster$"):
        Scheduler().select(req(), [sick])


def test_port_conflicts_need_the_same_port_protocol_and_an_overlapping_ip() -> None:
    def held(*b: Binding, mode: str = "", exposed: tuple[str, ...] = ()) -> Node:
        return node("n1", Container("c", requested=b, network_mode=mode, exposed=exposed))

    def fits(n: Node, **config: object) -> bool:
        try:
            Scheduler(filters=["port"]).select(req(**config), [n])
        except SchedulingError:
            return False
        return True

    def bind(port: str, ip: str = "", key: str = "80/tcp") -> dict[str, object]:
        return {"PortBindings": {key: [{"HostIp": ip, "HostPort": port}]}}

    assert not fits(held(Binding("", "8080")), HostConfig=bind("8080"))
    assert fits(held(Binding("", "8080", "udp")), HostConfig=bind("8080"))
    assert fits(held(Binding("127.0.0.2", "8080")), HostConfig=bind("8080", "127.0.0.3"))
    assert not fits(held(Binding("127.0.0.2", "8080")), HostConfig=bind("8080", "0.0.0.0"))
    assert not fits(held(Binding("::", "8080")), HostConfig=bind("8080", "127.0.0.3"))
    assert fits(held(Binding("", "8080")), HostConfig=bind(""))  # Docker picks the port
    assert not fits(held(mode="host", exposed=("8080/tcp",)), HostConfig=bind("8080"))
    assert not fits(held(Binding("", "8080")), HostConfig={"NetworkMode": "host"}, ExposedPorts={"8080/tcp": {}})
    assert fits(held(Binding("", "8080")), HostConfig={"NetworkMode": "host"}, ExposedPorts={"8081/tcp": {}})


def test_affinities_on_containers_images_and_labels() -> None:
    db = Container("a" * 64, names=("/db",), labels={"role": "cache"})
    nodes = [node("n1"), node("n2", db), node("n3")]
    nodes[2].images = [Image("sha256:" + "b" * 64, ("reg:5000/app:1.0",))]
    s = Scheduler()
    for a in ("container==db", f"container=={'a' * 12}", "role==cache", "container==d*"):
        assert names(s.select(req(Env=[f"affinity:{a}"]), nodes)) == ["n2"], a
    assert names(s.select(req(Env=["affinity:container!=db"]), nodes)) == ["n1", "n3"]
    for image in ("reg:5000/app:1.0", "reg:5000/app", "b" * 12):
        assert names(s.select(req(Env=[f"affinity:image=={image}"]), nodes)) == ["n3"], image
    assert len(s.select(req(Env=["affinity:container==~nothing"]), nodes)) == 3


def test_dependencies_on_two_nodes_are_refused() -> None:
    nodes = [node("n1", Container("1" * 64, names=("/a",))), node("n2", Container("2" * 64, names=("/b",)))]
    s = Scheduler()
    assert names(s.select(req(HostConfig={"Links": ["a:alias"]}), nodes)) == ["n1"]
    assert names(s.select(req(HostConfig={"NetworkMode": "container:b"}), nodes)) == ["n2"]
    with pytest.raises(SchedulingError, match="fulfilling all dependencies: --volumes-from=a --volumes-from=b:ro"):
        s.select(req(HostConfig={"VolumesFrom": ["a", "b:ro"]}), nodes)


def test_containerslots_from_the_engine_label_or_the_container_label() -> None:
    full = node("n1", Container("x"), containerslots="1")
    other = node("n2", Container("y"), Container("z"))
    assert names(Scheduler().select(req(), [full, other])) == ["n2"]
    assert names(Scheduler().select(req(), [node("n1", containerslots="lots")])) == ["n1"]  # not a number: no cap
    with pytest.raises(SchedulingError, match="No node with enough open slots available in the cluster"):
        Scheduler().select(req(Labels={"com.docker.swarm.slots": "1"}), [full, other])


def test_whitelist_keeps_the_nodes_named() -> None:
    nodes = [node("n1"), node("n2"), node("n3")]
    assert names(Scheduler().select(req(Env=["whitelist:node==n1|n3"]), nodes)) == ["n1", "n3"]


# -- strategies ---------------------------------------------------------------------------------------------------


def test_spread_and_binpack_weigh_cpu_and_memory_then_containers() -> None:
    busy = node("n1", Container("c1", cpus=1), memory=4 * GIB)
    idle = node("n2", Container("c2"), Container("c3"), memory=4 * GIB)
    want = req(HostConfig={"NanoCpus": 500_000_000})
    assert names(Scheduler("spread").select(want, [busy, idle])) == ["n2", "n1"]
    assert names(Scheduler("binpack").select(want, [busy, idle])) == ["n1", "n2"]
    # no reservation: equal weights, then the container count decides (spread: fewest; binpack: most)
    assert names(Scheduler("spread").select(req(), [busy, idle])) == ["n1", "n2"]
    assert names(Scheduler("binpack").select(req(), [busy, idle])) == ["n2", "n1"]
    with pytest.raises(SchedulingError, match=r"^no resources available to schedule container$"):
        Scheduler("spread").select(req(HostConfig={"Memory": 5 * GIB}), [busy, idle])
    assert names(Scheduler("random").select(req(HostConfig={"NanoCpus": 1_500_000_000}), [busy, idle])) == ["n2"]
