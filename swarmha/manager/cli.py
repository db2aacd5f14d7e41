"""The ``swarmha`` command: ``manage``, ``join``, ``list``, ``status``, ``demo`` (Swarm classic's flags and env vars).

Every argument is checked before anything starts: a bad address, URL, duration or TLS file exits with status 2
and a one-line error naming it; nothing is bound, no session is opened. Runtime failures (the port is taken,
the store refuses) exit with status 1. A manager or join agent stopped with SIGINT/SIGTERM exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

import swarmha
from swarmha import Follower
from swarmha.errors import ConfigurationError, DiscoveryError, SessionExpired, SwarmHAError
from swarmha.manager import demo as _demo
from swarmha.manager._config import format_duration, parse_address, parse_duration, parse_filters, parse_listen
from swarmha.manager.cluster import NODES_KEY, STRATEGIES
from swarmha.manager.manager import LEADER_KEY, Manager, ManagerConfig, loop_factory
from swarmha.manager.tls import TLSConfig

__all__ = ["main"]

log = logging.getLogger("swarmha.manager")

#: Accepted range of --replication-ttl / join --ttl, in seconds.
TTL_RANGE = (0.5, 3600.0)


class _LogrusFormatter(logging.Formatter):
    """``INFO[0003] message``, as Swarm's logrus printed it (seconds since start)."""

    def __init__(self) -> None:
        super().__init__()
        self._start = time.monotonic()

    def format(self, record: logging.LogRecord) -> str:
        level = {"WARNING": "WARN", "CRITICAL": "FATA"}.get(record.levelname, record.levelname)[:4]
        text = f"{level}[{int(time.monotonic() - self._start):04d}] {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(debug: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogrusFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("swarmha").setLevel(logging.DEBUG if debug else logging.INFO)
    # the election library's own info lines duplicate the manager's Swarm-style ones
    logging.getLogger("swarmha.election").setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _ttl(text: str, what: str) -> float:
    seconds = parse_duration(text, what)
    lo, hi = TTL_RANGE
    if not lo <= seconds <= hi:
        raise ConfigurationError(
            f"{what} {text!r} is out of range: it must be between {format_duration(lo)} and {format_duration(hi)}"
        )
    return seconds


def _discovery_arg(args: argparse.Namespace) -> str:
    url: str | None = args.discovery or os.environ.get("SWARM_DISCOVERY")
    if not url:
        raise ConfigurationError("a discovery URL is required (argument or SWARM_DISCOVERY), e.g. sqlite:///tmp/s.db")
    return url


def _static_nodes(url: str) -> tuple[str, ...]:
    rest = url[len("nodes://") :].strip("/")
    if not rest:
        raise ConfigurationError(f"discovery URL {url!r} lists no nodes: expected nodes://HOST:PORT,HOST:PORT")
    out = []
    for part in rest.split(","):
        host, port = parse_address(part, f"node in {url!r}")
        out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return tuple(out)


# -- manage ----------------------------------------------------------------------------------------------


def _manage(args: argparse.Namespace) -> int:
    url = _discovery_arg(args)
    listen = parse_listen(args.host, "-H")
    advertise = None
    if args.advertise:
        host, port = parse_address(args.advertise, "--advertise")
        advertise = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    ttl = _ttl(args.replication_ttl, "--replication-ttl")
    if args.strategy not in STRATEGIES:
        raise ConfigurationError(f"--strategy {args.strategy!r} is unknown: expected one of {', '.join(STRATEGIES)}")
    tls = TLSConfig(args.tls or args.tlsverify, args.tlsverify, args.tlscacert, args.tlscert, args.tlskey)
    tls.check()
    static: tuple[str, ...] = ()
    if url.startswith("nodes://"):
        if args.replication:
            raise ConfigurationError("--replication needs a discovery store (sqlite://, etcd://, zk://, consul://)")
        static = _static_nodes(url)
    elif args.replication and not advertise:
        raise ConfigurationError("--replication needs --advertise HOST:PORT (or SWARM_ADVERTISE)")
    config = ManagerConfig(
        listen=listen,
        discovery_url=url,
        replication=args.replication,
        advertise=advertise,
        ttl=ttl,
        strategy=args.strategy,
        filters=parse_filters(args.filters),
        static_engines=static,
        tls=tls,
        refresh=parse_duration(args.engine_refresh, "--engine-refresh"),
        primary_wait=parse_duration(args.primary_wait, "--primary-wait"),
        drain_timeout=parse_duration(args.shutdown_timeout, "--shutdown-timeout"),
    )
    discovery = None if static else swarmha.connect(url)
    setup_logging(args.debug)

    async def main() -> None:
        manager = Manager(config, discovery)
        await manager.run()

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(main())
    except OSError as e:
        print(f"swarmha manage: cannot listen on {args.host}: {e}", file=sys.stderr)
        return 1
    return 0


# -- join ------------------------------------------------------------------------------------------------


def _join(args: argparse.Namespace) -> int:
    url = _discovery_arg(args)
    if not args.advertise:
        raise ConfigurationError("join needs --advertise ENGINE_HOST:PORT (or SWARM_ADVERTISE)")
    host, port = parse_address(args.advertise, "--advertise")
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    heartbeat = parse_duration(args.heartbeat, "--heartbeat")
    ttl = _ttl(args.ttl, "--ttl")
    if ttl <= heartbeat:
        raise ConfigurationError(f"--ttl ({args.ttl}) must be longer than --heartbeat ({args.heartbeat})")
    discovery = swarmha.connect(url)
    setup_logging(args.debug)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    key = f"{NODES_KEY}/{addr}"
    log.info("Registering on the discovery service every %s... addr=%s discovery=%s", args.heartbeat, addr, url)
    session = None
    try:
        while not stop.is_set():
            try:
                if session is None:
                    session = discovery.session(ttl)
                    discovery.put(key, addr, session)
                else:
                    session.keepalive()
            except SessionExpired:
                log.warning("the registration of %s expired; registering again", addr)
                session = None
                continue
            except DiscoveryError as e:
                log.error("discovery error: %s", e)
                stop.wait(min(1.0, heartbeat))
                continue
            stop.wait(heartbeat)
    finally:
        if session is not None:
            session.close()
        discovery.close()
    return 0


# -- list / status -------------------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    url = _discovery_arg(args)
    if url.startswith("nodes://"):
        for node in _static_nodes(url):
            print(node)
        return 0
    with swarmha.connect(url) as discovery:
        records = discovery.list(NODES_KEY)
        for addr in sorted({r.value or k.rpartition("/")[2] for k, r in records.items()}):
            print(addr)
    return 0


def _status(args: argparse.Namespace) -> int:
    url = _discovery_arg(args)
    with swarmha.connect(url) as discovery:
        leader = Follower(discovery, LEADER_KEY).leader
        engines = len(discovery.list(NODES_KEY))
    if leader is None:
        print("No elected primary cluster manager")
        print(f"Nodes: {engines}")
        return 1
    print(f"Primary: {leader.node}")
    print(f"Term: {leader.token}")
    print(f"Nodes: {engines}")
    return 0


# -- the parser ------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="swarmha",
        description="Docker Swarm classic style HA cluster manager (swarm manage --replication) on swarmha.",
    )
    p.add_argument("--version", action="version", version=f"swarmha {swarmha.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    disc_help = (
        "discovery URL: sqlite:///PATH, etcd://H:P/PREFIX, zk://..., consul://..., nodes://H:P,H:P ($SWARM_DISCOVERY)"
    )

    m = sub.add_parser("manage", help="run a manager (primary or replica)", description="Run a cluster manager.")
    m.add_argument("-H", "--host", default=os.environ.get("SWARM_HOST", ":2375"), help="listen address ($SWARM_HOST)")
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
    m.add_argument("--engine-refresh", default="5s", help="interval between engine refreshes (default 5s)")
    m.add_argument(
        "--primary-wait", default="5s", help="how long a replica waits for a primary before 503 (default 5s)"
    )
    m.add_argument(
        "--shutdown-timeout", default="5s", help="how long in-flight requests may drain on exit (default 5s)"
    )
    m.add_argument("--debug", action="store_true", help="debug logging")
    m.add_argument("discovery", nargs="?", help=disc_help)
    m.set_defaults(func=_manage)

    j = sub.add_parser(
        "join", help="register a Docker engine in the discovery store", description="Register an engine."
    )
    j.add_argument("--advertise", "--addr", default=os.environ.get("SWARM_ADVERTISE"), help="ENGINE_HOST:PORT")
    j.add_argument("--heartbeat", default="20s", help="period between registrations (default 20s)")
    j.add_argument("--ttl", default="60s", help="expiry of the registration (default 60s; > --heartbeat)")
    j.add_argument("--debug", action="store_true", help="debug logging")
    j.add_argument("discovery", nargs="?", help=disc_help)
    j.set_defaults(func=_join)

    ls = sub.add_parser("list", help="print the registered engines", description="Print the registered engines.")
    ls.add_argument("discovery", nargs="?", help=disc_help)
    ls.set_defaults(func=_list)

    st = sub.add_parser("status", help="print the current primary and its term", description="Print the primary.")
    st.add_argument("discovery", nargs="?", help=disc_help)
    st.set_defaults(func=_status)

    d = sub.add_parser("demo", help="three managers on loopback: failover shown live", description=_demo.__doc__)
    _demo.add_arguments(d)
    d.set_defaults(func=_demo.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``swarmha`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigurationError as e:
        print(f"swarmha {args.command}: {e}", file=sys.stderr)
        return 2
    except (SwarmHAError, ImportError) as e:
        print(f"swarmha {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
