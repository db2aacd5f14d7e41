"""Metrics: the manager's ``--metrics`` listener scraped and parsed with prometheus_client's own parser across a
failover, and the library's observer hook (plain callback, and the ready-made PrometheusObserver)."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import swarmha
from swarmha.observe import Observation, PrometheusObserver, add_observer
from tests.support.helpers import wait_for
from tests.support.manager import ManagerProc, run_cli
from tests.support.net import free_port

pytestmark = pytest.mark.timeout(90)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``GET /metrics``, parsed by prometheus_client: {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """Sum over the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_metrics_show_role_term_handover_and_requests_before_and_after_a_failover(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/s.db"
    ports = [free_port(), free_port()]
    first = ManagerProc(url, tmp_path, "--replication-ttl", "2s", "--metrics", f"127.0.0.1:{ports[0]}")
    second = None
    try:
        wait_for(lambda: first.role() == "Primary", 15, "a primary")
        second = ManagerProc(url, tmp_path, "--replication-ttl", "2s", "--metrics", f"127.0.0.1:{ports[1]}")
        wait_for(lambda: second.status().get("Primary") == first.addr, 15, "the replica to see it")
        for _ in range(3):
            assert second.get("/v1.41/containers/json")[0] == 200  # forwarded to the primary
        before = scrape(ports[1])
        assert value(before, "swarmha_manager_primary") == 0
        term_before = value(before, "swarmha_manager_term")
        assert term_before > 0
        assert value(before, "swarmha_requests_total", route="containers/json", via="replica", code="200") == 3
        assert total(before, "swarmha_request_duration_seconds_count", route="containers/json", via="replica") == 3
        assert value(before, "swarmha_manager_store_reachable") == 1
        assert value(before, "swarmha_manager_leadership_changes_total", event="acquired") == 0
        assert value(scrape(ports[0]), "swarmha_manager_primary") == 1

        first.signal(signal.SIGKILL)  # a crash: the replica's next forward fails, then it is elected after the TTL
        first.proc.wait(10)
        assert second.get("/v1.41/containers/json", timeout=15)[0] == 200  # held until the new primary serves it
        assert second.role() == "Primary"
        assert second.get("/v1.41/containers/json")[0] == 200  # served as primary
        after = scrape(ports[1])
        assert value(after, "swarmha_manager_primary") == 1
        assert value(after, "swarmha_manager_term") > term_before
        assert value(after, "swarmha_manager_leadership_changes_total", event="acquired") == 1
        assert value(after, "swarmha_upstream_errors_total", kind="unreachable") >= 1
        assert 0 < value(after, "swarmha_manager_last_handover_seconds") < 2 + 2  # the TTL, plus one election
        assert value(after, "swarmha_requests_total", route="containers/json", via="replica", code="200") == 4
        assert value(after, "swarmha_requests_total", route="containers/json", via="primary", code="200") == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/health", timeout=5) as r:
            assert r.status == 200
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_bad_metrics_address_is_refused_before_anything_starts(tmp_path: Path) -> None:
    result = run_cli("manage", "--metrics", "nohost!:1", "nodes://127.0.0.1:2375")
    assert result.returncode == 2 and "--metrics" in result.stderr  # a bad address is refused before anything


def test_the_observer_hook_sees_every_candidate_and_follower_event() -> None:
    seen: list[Observation] = []
    remove = add_observer(seen.append)
    registry = CollectorRegistry()
    remove_prom = add_observer(PrometheusObserver(registry))
    try:
        with swarmha.connect("memory://observe") as d:
            c = swarmha.Candidate(d, "svc/leader", node="n1", ttl=5).start()
            f = swarmha.Follower(d, "svc/leader").start()
            try:
                wait_for(lambda: any(o.kind == "elected" for o in seen), 10, "elected")
                wait_for(lambda: any(o.kind == "leader" and o.leader is not None for o in seen), 10, "followed")
                assert registry.get_sample_value("swarmha_election_leader", {"key": "svc/leader", "node": "n1"}) == 1
                term = c.term
                assert term is not None
                got = registry.get_sample_value("swarmha_election_term", {"key": "svc/leader", "node": "n1"})
                assert got == term.token
            finally:
                c.stop()
                f.stop()
        assert registry.get_sample_value("swarmha_election_leader", {"key": "svc/leader", "node": "n1"}) == 0
        kinds = [(o.source, o.kind) for o in seen]
        assert ("candidate", "elected") in kinds and ("candidate", "lost") in kinds and ("follower", "leader") in kinds
    finally:
        remove()
        remove_prom()
