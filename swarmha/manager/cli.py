"""The ``swarmha`` command: ``manage``, ``join``, ``list``, ``status``, ``switchover``, ``demo`` (Swarm's flags).

Every argument is checked before anything starts: a bad address, URL, duration or TLS file exits with status 2
and a one-line error naming it; nothing is bound, no session is opened. Runtime failures (the port is taken,
the store refuses) exit with status 1. A manager or join agent stopped with SIGINT/SIGTERM exits 0.

Swarm classic's flags (its ``cli/flags.go``) are all accepted with Swarm's meaning, or refused with exit status 2
and the reason swarmha cannot honour them (:data:`REFUSED`); none is silently ignored. Swarm's global flags
(``-l/--log-level``, ``--debug``, ``--experimental``) go before or after the command. The commands answer to
Swarm's one-letter names too (``m``, ``j``, ``l``, ``h``).

The command line is read as Swarm's (Go's ``flag`` package) read it: a long flag may be written with one dash
(``-cluster-opt swarm.createretry=1``, ``-experimental``), and a flag's value may start with a dash
(``--replication-ttl -5s`` is the value ``-5s``, refused with Swarm's sentence, not a usage text). Durations are
Go's: ``20s``, ``500ms``, ``1m30s``, ``0``; a bare number such as ``20`` is refused naming the fix (``20s``), as
Go's ``time.ParseDuration`` refused it, rather than guessed. Checks fail with Swarm's own sentences
(``--heartbeat should be at least one second``, ``min refresh interval should be a positive number``, ...), so
scripts matching them keep working.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import swarmha
from swarmha import Follower, Leader
from swarmha._duration import format_duration
from swarmha.errors import ConfigurationError, DiscoveryError, SwarmHAError
from swarmha.manager import cli_args
from swarmha.manager import demo as _demo
from swarmha.manager._config import parse_address, parse_filters, parse_listen
from swarmha.manager.cluster import NODES_KEY, STRATEGIES
from swarmha.manager.engine_list import FileEngines, host_list, is_host_list
from swarmha.manager.join import run_join
from swarmha.manager.logs import LOG_LEVELS, setup_logging
from swarmha.manager.manager import LEADER_KEY, Manager, ManagerConfig, loop_factory
from swarmha.manager.tls import TLSConfig

__all__ = ["main"]

log = logging.getLogger("swarmha.manager")

T = TypeVar("T")


#: Swarm flags swarmha does not honour, with the reason given when one is used.
REFUSED = {
    "--api-enable-cors": "CORS headers are not implemented; put a reverse proxy in front to add them",
}


def _advertise(text: str) -> str:
    try:
        host, port = parse_address(text, "--advertise")
    except ConfigurationError as e:
        raise ConfigurationError(f"{e}: --advertise should be of the form ip:port or hostname:port") from None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _discovery_arg(args: argparse.Namespace) -> str:
    url: str | None = args.discovery or os.environ.get("SWARM_DISCOVERY")
    if not url:
        raise ConfigurationError("a discovery URL is required (argument or SWARM_DISCOVERY), e.g. sqlite:///tmp/s.db")
    cli_args.check_scheme(url)
    if url.startswith("token://"):
        raise ConfigurationError(
            "token:// discovery (Docker Hub's hosted service) was shut down; use a store (etcd://, zk://, consul://, "
            "redis://, sqlite://), nodes://H:P,H:P or file:///PATH"
        )
    return cli_args.with_discovery_opts(url, getattr(args, "discovery_opt", None) or [])


def _priority(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise ConfigurationError(f"--priority {text!r} is not a whole number (e.g. 10; higher is preferred)") from None


def _refuse_unsupported(args: argparse.Namespace) -> None:
    for flag, reason in REFUSED.items():
        if getattr(args, flag.lstrip("-").replace("-", "_"), False):
            raise ConfigurationError(f"{flag} is not supported: {reason}")


def _engine_source(url: str, replication: bool) -> tuple[tuple[str, ...], str | None]:
    """(static addresses, file URL) for the store-less forms; ((), None) for a store URL."""
    static = is_host_list(url)
    if (static or url.startswith("file://")) and replication:
        raise ConfigurationError(
            "Leader election is only supported with consul, etcd and zookeeper discovery (and sqlite://, redis://): "
            f"--replication needs a discovery store, not {url.partition('://')[0] if '://' in url else 'a host list'}"
        )
    if static:
        return host_list(url), None
    if url.startswith("file://"):
        FileEngines(url)  # the path must name a file (which may not exist yet: it is waited for)
        return (), url
    return (), None


# -- manage ----------------------------------------------------------------------------------------------


def _manage(args: argparse.Namespace) -> int:
    _refuse_unsupported(args)
    overcommit, create_retry = cli_args.cluster_options(args)
    url = _discovery_arg(args)
    hosts = args.host or [os.environ.get("SWARM_HOST") or ":2375"]
    if len(hosts) > 1:
        raise ConfigurationError(f"-H was given {len(hosts)} times: swarmha serves one listen address")
    listen = parse_listen(hosts[0], "-H")
    advertise = _advertise(args.advertise) if args.advertise else None
    ttl = cli_args.ttl(args.replication_ttl, "--replication-ttl")
    if args.strategy not in STRATEGIES:
        raise ConfigurationError(f"--strategy {args.strategy!r} is unknown: expected one of {', '.join(STRATEGIES)}")
    tls = TLSConfig(args.tls or args.tlsverify, args.tlsverify, args.tlscacert, args.tlscert, args.tlskey)
    tls.check()
    static, engines_file = _engine_source(url, args.replication)
    if args.replication and not advertise:
        raise ConfigurationError(
            "--advertise address must be provided when using --leader-election (--replication needs --advertise "
            "HOST:PORT or SWARM_ADVERTISE)"
        )
    min_flag = "--engine-refresh-min-interval" if args.engine_refresh_min_interval else "--engine-refresh"
    refresh_min = cli_args.positive(
        args.engine_refresh_min_interval or args.engine_refresh,
        min_flag,
        "min refresh interval should be a positive number",
    )
    refresh_max = (
        cli_args.go_duration(args.engine_refresh_max_interval, "--engine-refresh-max-interval")
        if args.engine_refresh_max_interval
        else refresh_min
    )
    if refresh_max < refresh_min:
        raise ConfigurationError(
            f"max refresh interval cannot be less than min refresh interval ({args.engine_refresh_max_interval} < "
            f"{format_duration(refresh_min)})"
        )
    retry = cli_args.count(args.engine_failure_retry, "--engine-failure-retry")
    if retry is None:
        retry = cli_args.count(args.engine_refresh_retry, "--engine-refresh-retry")
    if retry is not None and retry <= 0:
        raise ConfigurationError(
            f"invalid failure retry count: --engine-failure-retry {retry} should be a positive number"
        )
    config = ManagerConfig(
        listen=listen,
        discovery_url=url,
        replication=args.replication,
        advertise=advertise,
        ttl=ttl,
        strategy=args.strategy,
        filters=parse_filters(args.filters),
        static_engines=static,
        engines_file=engines_file,
        tls=tls,
        refresh=refresh_min,
        refresh_max=refresh_max,
        heartbeat=cli_args.heartbeat(args.heartbeat),
        failure_retry=retry or 1,
        primary_wait=cli_args.positive(args.primary_wait, "--primary-wait") if args.primary_wait else None,
        drain_timeout=cli_args.nonnegative(args.shutdown_timeout, "--shutdown-timeout"),
        overcommit=overcommit,
        create_retry=create_retry,
        metrics=parse_listen(args.metrics, "--metrics") if args.metrics else None,
        priority=_priority(args.priority),
        body_timeout=cli_args.positive(args.body_timeout, "--body-timeout"),
    )
    if config.metrics is not None:
        from swarmha.manager.metrics import check_installed

        check_installed()
    discovery = None if static or engines_file else swarmha.connect(url)
    setup_logging(args.log_level, args.debug)

    async def main() -> None:
        manager = Manager(config, discovery)
        await manager.run()

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(main())
    except OSError as e:
        print(f"swarmha manage: cannot listen on {hosts[0]}: {e}", file=sys.stderr)
        return 1
    return 0


# -- join ------------------------------------------------------------------------------------------------


def _join(args: argparse.Namespace) -> int:
    _refuse_unsupported(args)
    url = _discovery_arg(args)
    if not args.advertise:
        raise ConfigurationError("missing mandatory --advertise flag: join needs --advertise ENGINE_HOST:PORT")
    addr = _advertise(args.advertise)
    delay = cli_args.nonnegative(args.delay, "--delay")
    heartbeat = cli_args.heartbeat(args.heartbeat)
    if cli_args.go_duration(args.ttl, "--ttl") <= heartbeat:
        raise ConfigurationError(
            f"--ttl must be strictly superior to the heartbeat value (--ttl {args.ttl}, --heartbeat {args.heartbeat})"
        )
    ttl = cli_args.ttl(args.ttl, "--ttl")
    if is_host_list(url) or url.startswith("file://"):
        raise ConfigurationError(f"join registers in a discovery store; {url!r} is a fixed engine list")
    discovery = swarmha.connect(url)
    setup_logging(args.log_level, args.debug)
    return run_join(discovery, addr, url, heartbeat=heartbeat, ttl=ttl, delay=delay, heartbeat_text=args.heartbeat)


# -- list / status -------------------------------------------------------------------------------------


def _bounded(timeout: float, what: str, fn: Callable[[], T]) -> T:
    """``fn()`` on a thread, or ConfigurationError-free SwarmHAError ``Timed out`` after ``timeout``."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=run, name="swarmha-cli", daemon=True)
    t.start()
    t.join(timeout)
    if error:
        raise error[0]
    if not result:
        raise DiscoveryError(f"Timed out: {what} did not answer within {format_duration(timeout)} (--timeout)")
    return result[0]


def _list(args: argparse.Namespace) -> int:
    _refuse_unsupported(args)
    url = _discovery_arg(args)
    timeout = cli_args.positive(args.timeout, "--timeout")
    if is_host_list(url):
        for node in host_list(url):
            print(node)
        return 0
    if url.startswith("file://"):
        for node in FileEngines(url)():
            print(node)
        return 0

    def read() -> list[str]:
        with swarmha.connect(url) as discovery:
            records = discovery.list(NODES_KEY)
            return sorted({r.value or k.rpartition("/")[2] for k, r in records.items()})

    for addr in _bounded(timeout, url, read):
        print(addr)
    return 0


def _status(args: argparse.Namespace) -> int:
    _refuse_unsupported(args)
    url = _discovery_arg(args)
    timeout = cli_args.positive(args.timeout, "--timeout")

    def read() -> tuple[Leader | None, int]:
        with swarmha.connect(url) as discovery:
            return Follower(discovery, LEADER_KEY).leader, len(discovery.list(NODES_KEY))

    leader, engines = _bounded(timeout, url, read)
    if leader is None:
        print("No elected primary cluster manager")
        print(f"Nodes: {engines}")
        return 1
    print(f"Primary: {leader.node}")
    print(f"Term: {leader.token}")
    print(f"Nodes: {engines}")
    return 0


def _switchover(args: argparse.Namespace) -> int:
    from swarmha.manager.switchover import switchover

    url = _discovery_arg(args)
    timeout = cli_args.positive(args.timeout, "--timeout")
    to = None
    if args.to:
        host, port = parse_address(args.to, "--to")
        to = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if is_host_list(url) or url.startswith("file://"):
        raise ConfigurationError(f"switchover needs the managers' discovery store; {url!r} is a fixed engine list")
    with swarmha.connect(url) as discovery:
        outcome = switchover(discovery, LEADER_KEY, to, timeout, print)
    print(f"Primary: {outcome.primary.node if outcome.primary is not None else ''}")
    if not outcome.switched:
        print(f"swarmha switchover: {outcome.message}", file=sys.stderr)
        return 1
    print(f"Switchover done: {outcome.message}")
    return 0


# -- the parser ------------------------------------------------------------------------------------------


def _global_flags(defaults: bool) -> cli_args.Parser:
    """Swarm's global flags; on the commands too (``SUPPRESS``), so they work before or after the command."""
    g = cli_args.Parser(add_help=False)
    default = None if defaults else argparse.SUPPRESS
    g.add_argument(
        "-l",
        "--log-level",
        choices=sorted(LOG_LEVELS),
        metavar="LEVEL",
        default=default,
        help="log level: debug, info, warn, error, fatal, panic (default info)",
    )
    g.add_argument(
        "--debug",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="debug mode: log level debug (unless --log-level says otherwise) and the store clients' own logs",
    )
    g.add_argument(
        "--experimental",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="accepted, as Swarm 1.2 accepted it: swarmha's features (rescheduling included) are always on",
    )
    return g


def _parser() -> argparse.ArgumentParser:
    p = cli_args.Parser(
        prog="swarmha",
        description="Docker Swarm classic style HA cluster manager (swarm manage --replication) on swarmha.",
        parents=[_global_flags(True)],
    )
    p.add_argument("-v", "--version", action="version", version=f"swarmha version {swarmha.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=cli_args.Parser)
    common = _global_flags(False)

    disc_help = (
        "discovery: sqlite:///PATH, etcd://H:P/PREFIX, zk://..., consul://..., redis://H:P/PREFIX, nodes://H:P,H:P, "
        "a bare H:P,H:P "
        "list (ranges as in Swarm: 10.0.0.[1:3]:2375), file:///PATH (one engine a line) ($SWARM_DISCOVERY)"
    )
    opt_help = "store option, repeatable: kv.cacertfile=, kv.certfile=, kv.keyfile= (TLS to etcd), kv.path="

    m = sub.add_parser(
        "manage",
        aliases=["m"],
        parents=[common],
        help="run a manager (primary or replica)",
        description="Run a cluster manager.",
    )
    m.add_argument(
        "-H", "--host", action="append", help="listen address, e.g. :4000 or tcp://0.0.0.0:4000 ($SWARM_HOST)"
    )
    m.add_argument("--replication", action="store_true", help="take part in primary election (needs --advertise)")
    m.add_argument(
        "--advertise",
        "--addr",
        default=os.environ.get("SWARM_ADVERTISE"),
        help="HOST:PORT of this manager ($SWARM_ADVERTISE)",
    )
    m.add_argument("--replication-ttl", default="20s", help="leader lock release time on failure (default 20s)")
    m.add_argument("--strategy", default="spread", help="placement strategy: spread (default), binpack, random")
    m.add_argument(
        "-f",
        "--filter",
        action="append",
        dest="filters",
        metavar="NAME",
        help="placement filter to use, repeatable (default: all of health, port, containerslots, dependency, "
        "affinity, constraint, whitelist)",
    )
    m.add_argument("--tls", action="store_true", help="serve TLS (implied by --tlsverify)")
    m.add_argument("--tlsverify", action="store_true", help="serve TLS and require client certificates from the CA")
    m.add_argument("--tlscacert", help="CA certificate that signs client (and manager) certificates")
    m.add_argument("--tlscert", help="this manager's certificate")
    m.add_argument("--tlskey", help="this manager's private key")
    m.add_argument(
        "--engine-refresh-min-interval",
        help="engine refresh minimum interval: each round waits a random time in [min, max] (default 5s; Swarm's 30s)",
    )
    m.add_argument(
        "--engine-refresh-max-interval", help="engine refresh maximum interval (default: the minimum interval)"
    )
    m.add_argument("--engine-refresh", default="5s", help="both refresh intervals at once (swarmha's; default 5s)")
    m.add_argument(
        "--engine-failure-retry",
        help="consecutive failed refreshes before a healthy engine is marked unhealthy (default 1; Swarm's 3)",
    )
    m.add_argument("--engine-refresh-retry", help="deprecated; replaced by --engine-failure-retry")
    m.add_argument(
        "--heartbeat", default="60s", help="longest time between two reads of the engine list from discovery (60s)"
    )
    m.add_argument("-c", "--cluster-driver", default="swarm", help="cluster driver: swarm (the only one)")
    m.add_argument(
        "--cluster-opt",
        action="append",
        help="cluster driver option KEY=VALUE, repeatable: swarm.overcommit=RATIO (default 0: reserve no more than "
        "an engine has; Swarm's 0.05), swarm.createretry=N (retry a failed create on another engine N times)",
    )
    m.add_argument("--discovery-opt", action="append", help=opt_help)
    m.add_argument(
        "--refresh-on-node-filter",
        action="store_true",
        help="accepted: container lists always ask the engines, so a node filter always sees fresh data",
    )
    m.add_argument(
        "--container-name-refresh-filter",
        metavar="NAME",
        help="accepted: container lists always ask the engines, so a name filter always sees fresh data",
    )
    m.add_argument("--api-enable-cors", "--cors", action="store_true", help=f"refused: {REFUSED['--api-enable-cors']}")
    m.add_argument(
        "--primary-wait",
        help="how long a replica holds a request while no primary answers, then 503 (default: --replication-ttl + 2s)",
    )
    m.add_argument(
        "--shutdown-timeout",
        default="30s",
        help="after SIGTERM, how long open requests and streams (logs -f, events, attach) go on (default 30s)",
    )
    m.add_argument(
        "--body-timeout",
        default="60s",
        help="how long a request body (an upload, a create) may send nothing before it is answered 408 and its "
        "connections close (default 60s)",
    )
    m.add_argument(
        "--metrics",
        metavar="ADDR",
        help="serve Prometheus metrics on /metrics (and /health) at ADDR, e.g. :9323 (needs swarmha[metrics])",
    )
    m.add_argument(
        "--priority",
        default="0",
        help="preference to be the primary: switchover without --to picks the highest; a free key goes to the "
        "highest waiting (default 0)",
    )
    m.add_argument("discovery", nargs="?", help=disc_help)
    m.set_defaults(func=_manage)

    j = sub.add_parser(
        "join",
        aliases=["j"],
        parents=[common],
        help="register a Docker engine in the discovery store",
        description="Register an engine (checked with GET /_ping first).",
    )
    j.add_argument("--advertise", "--addr", default=os.environ.get("SWARM_ADVERTISE"), help="ENGINE_HOST:PORT")
    j.add_argument("--heartbeat", default="60s", help="period between each heartbeat (default 60s)")
    j.add_argument("--ttl", default="180s", help="expiration of the registration (default 180s; > --heartbeat)")
    j.add_argument("--delay", default="0s", help="add a random delay in [0s,delay] to avoid synchronized registration")
    j.add_argument("--discovery-opt", action="append", help=opt_help)
    j.add_argument("discovery", nargs="?", help=disc_help)
    j.set_defaults(func=_join)

    ls = sub.add_parser(
        "list",
        aliases=["l"],
        parents=[common],
        help="print the registered engines",
        description="Print the registered engines, one address a line (as swarm list did).",
    )
    ls.add_argument("--timeout", default="10s", help="give up after this long (default 10s)")
    ls.add_argument("--discovery-opt", action="append", help=opt_help)
    ls.add_argument("discovery", nargs="?", help=disc_help)
    ls.set_defaults(func=_list)

    st = sub.add_parser(
        "status",
        parents=[common],
        help="print the current primary and its term",
        description="Print the primary.",
    )
    st.add_argument("--timeout", default="10s", help="give up after this long (default 10s)")
    st.add_argument("--discovery-opt", action="append", help=opt_help)
    st.add_argument("discovery", nargs="?", help=disc_help)
    st.set_defaults(func=_status)

    so = sub.add_parser(
        "switchover",
        parents=[common],
        help="move the primary to another manager now (an operator's command)",
        description="Ask the primary to hand over to --to ADDR (default: the replica with the highest --priority); "
        "print who leads after it. Exit 0 if the switch happened, 1 if not.",
    )
    so.add_argument("--to", metavar="ADDR", help="the manager (its --advertise address) to make primary")
    so.add_argument("--timeout", default="10s", help="give up after this long (default 10s)")
    so.add_argument("--discovery-opt", action="append", help=opt_help)
    so.add_argument("discovery", nargs="?", help=disc_help)
    so.set_defaults(func=_switchover)

    h = sub.add_parser("help", aliases=["h"], help="show the help of swarmha or of one command")
    h.add_argument("topic", nargs="?", metavar="COMMAND", help="the command to describe")

    def show_help(args: argparse.Namespace) -> int:
        name = _COMMANDS.get(args.topic, args.topic)
        target = sub.choices.get(name) if name else p
        if target is None:
            raise ConfigurationError(f"no such command {args.topic!r}: expected one of {', '.join(_NAMES)}")
        target.print_help()
        return 0

    h.set_defaults(func=show_help)

    d = sub.add_parser("demo", help="three managers on loopback: failover shown live", description=_demo.__doc__)
    _demo.add_arguments(d)
    d.set_defaults(func=_demo.run)
    return p


_COMMANDS = {"m": "manage", "j": "join", "l": "list", "h": "help"}
_NAMES = ("manage", "join", "list", "status", "switchover", "demo", "help")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``swarmha`` console script; returns the exit status."""
    parser = _parser()
    words = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(cli_args.go_style(words, parser))
    try:
        code: int = args.func(args)
    except ConfigurationError as e:
        print(f"swarmha {_COMMANDS.get(args.command, args.command)}: {e}", file=sys.stderr)
        return 2
    except (SwarmHAError, ImportError) as e:
        print(f"swarmha {_COMMANDS.get(args.command, args.command)}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
