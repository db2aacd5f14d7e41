"""The ``swarmha`` command line read as Swarm classic's (Go's ``flag`` package) was: one-dash long flags, values
that start with a dash, Go durations, Swarm's global flags and its error sentences, ``help``, ``file://`` waited for.

Bad command lines are checked in-process (``main`` returns before anything starts); what must serve runs as a
real process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmha.errors import ConfigurationError
from swarmha.manager.cli import _parser, main
from swarmha.manager.cli_args import go_duration, go_style
from tests.support.helpers import wait_for
from tests.support.manager import ManagerProc, run_cli

pytestmark = pytest.mark.timeout(60)

ENGINES = "192.168.56.202:4444"


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        # Swarm's own sentences, as its integration suite matches them (cluster_options, engine_options, cli_*)
        (["manage", "--cluster-opt", "swarm.overcommit=-2", ENGINES], "swarm.overcommit should be larger than -1, "
         "-2.000000 is invalid"),
        (["manage", "-cluster-opt", "swarm.createretry=-1", ENGINES], "swarm.createretry can not be negative, -1 is "
         "invalid"),
        (["manage", "--engine-refresh-min-interval", "0s", ENGINES], "min refresh interval should be a positive"),
        (["manage", "--engine-refresh-min-interval", "-10s", ENGINES], "min refresh interval should be a positive"),
        (["manage", "--engine-refresh-max-interval", "-30s", ENGINES], "max refresh interval cannot be less than min"),
        (["manage", "--engine-refresh-min-interval", "30s", "-engine-refresh-max-interval", "20s", ENGINES],
         "max refresh interval cannot be less than min refresh interval"),
        (["manage", "--engine-failure-retry", "0", ENGINES], "invalid failure retry count"),
        (["manage", "--engine-failure-retry", "-1", ENGINES], "invalid failure retry count"),
        (["manage", "--heartbeat", "500ms", ENGINES], "--heartbeat should be at least one second"),
        (["manage", "--replication-ttl", "-5s", ENGINES], "--replication-ttl should be a positive number"),
        (["-l", "debug", "-experimental", "manage", "--replication-ttl=0s", ENGINES], "--replication-ttl should be a "
         "positive number"),
        (["list", "--timeout", "-10s", "consul://127.0.0.1:5555/test"], "--timeout should be a positive number"),
        (["list", "--timeout", "0s", "consul://127.0.0.1:5555/test"], "--timeout should be a positive number"),
        (["join", "--heartbeat=-10s", "--ttl=10s", "--advertise=127.0.0.1:2376", "consul://h/p"], "--heartbeat should "
         "be at least one second"),
        (["join", "--heartbeat=1s", "--ttl=-10s", "--advertise=127.0.0.1:2376", "consul://h/p"], "--ttl must be "
         "strictly superior to the heartbeat value"),
        (["join", "--delay", "-30s", "--advertise=127.0.0.1:2376", "consul://h/p"], "--delay should not be a negative"),
        # where Swarm said nothing useful: the fix named
        (["manage", "--replication-ttl", "20", ENGINES], "write 20s for 20 seconds"),
        (["manage", "--cluster-opt", "swarm.refresh=1", ENGINES], "--engine-refresh-min-interval"),
        (["manage", "--replication", "--advertise", "127.0.0.1:4000", "etcd//host:2379/x"], "did you mean "
         "etcd://host:2379/x?"),
        (["manage", "zk:/h1:2181/x"], "did you mean zk://h1:2181/x?"),
        (["manage", "--priority", "high", ENGINES], "--priority 'high' is not a whole number"),
        (["manage", "--body-timeout", "0s", ENGINES], "--body-timeout should be a positive number"),
        (["manage", "--body-timeout", "-1s", ENGINES], "--body-timeout should be a positive number"),
        (["manage", "--body-timeout", "60", ENGINES], "write 60s for 60 seconds"),
        (["switchover", "--to", "nohost", "consul://h/p"], "--to: 'nohost' is not HOST:PORT"),
        (["switchover", "--timeout", "0s", "consul://h/p"], "--timeout should be a positive number"),
        (["switchover", ENGINES], "switchover needs the managers' discovery store"),
        (["manage", f"file://{Path('/nonexistent-dir/engines')}"], "its directory does not exist"),
    ],
)  # fmt: skip
def test_a_bad_command_line_is_one_line_with_swarms_sentence(
    args: list[str], sentence: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert sentence in err
    assert len(err.strip().splitlines()) == 1, err  # one line: no usage text, no "expected one argument"
    assert "usage:" not in err and "expected one argument" not in err


def test_go_style_reads_one_dash_long_flags_and_dashed_values() -> None:
    parser = _parser()
    assert go_style(["-l", "debug", "-experimental", "manage", "-cluster-opt", "swarm.createretry=1"], parser) == [
        "-l",
        "debug",
        "--experimental",
        "manage",
        "--cluster-opt",
        "swarm.createretry=1",
    ]
    assert go_style(["manage", "--replication-ttl", "-5s", "-H", ":1", "-heartbeat=1s"], parser) == [
        "manage",
        "--replication-ttl=-5s",
        "-H",
        ":1",
        "--heartbeat=1s",
    ]
    assert go_style(["manage", "--", "-odd"], parser) == ["manage", "--", "-odd"]


def test_go_durations() -> None:
    assert go_duration("1m30s", "--x") == 90.0
    assert go_duration("-5s", "--x") == -5.0
    assert go_duration("0", "--x") == 0.0
    assert go_duration("250ms", "--x") == 0.25
    for bad in ("20", "20 parsecs", "", "s"):
        with pytest.raises(ConfigurationError, match="--x"):
            go_duration(bad, "--x")


def test_help_describes_swarmha_and_each_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["help"]) == 0
    assert "usage: swarmha" in capsys.readouterr().out
    assert main(["help", "manage"]) == 0
    assert "usage: swarmha manage" in capsys.readouterr().out
    assert main(["h", "j"]) == 0
    assert "usage: swarmha join" in capsys.readouterr().out
    assert main(["help", "nosuch"]) == 2
    assert "no such command 'nosuch'" in capsys.readouterr().err


def test_swarms_own_manage_line_serves(tmp_path: Path) -> None:
    """Swarm's integration suite starts every manager as ``swarm -l debug -experimental manage -H … --heartbeat=1s
    DISCOVERY`` (its scripts also write ``-cluster-opt``): that line runs as written."""
    engines = tmp_path / "engines"
    m = ManagerProc(
        f"file://{engines}",
        tmp_path,
        "--heartbeat=1s",
        "-cluster-opt",
        "swarm.createretry=1",
        "--cluster-opt",
        "swarm.overcommit=0.05",
        replication=False,
        prefix=("-l", "debug", "-experimental"),
    )
    try:
        wait_for(lambda: m.status().get("Nodes") == "0", 20, "the manager to serve with no engine file yet")
        assert "does not exist yet; waiting for it" in m.logs()
        engines.write_text("127.0.0.1:1\n")  # the file appears: its engine is picked up without a restart
        wait_for(lambda: m.status().get("Nodes") == "1", 20, "the engine from the file once it exists")
    finally:
        m.stop()


def test_experimental_and_debug_are_accepted_in_every_spelling() -> None:
    for args in (
        ["--experimental", "--debug", "list"],
        ["-experimental", "-debug", "list"],
        ["list", "--experimental"],
    ):
        result = run_cli(*args, "nodes://127.0.0.1:2375")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["127.0.0.1:2375"]
