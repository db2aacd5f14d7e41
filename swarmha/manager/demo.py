"""Three managers on loopback over an embedded sqlite store; the primary is stopped, then the next one killed.

Each manager is a separate ``swarmha manage --replication`` process (so SIGKILL is real). A Docker engine the
demo can reach over TCP (``DOCKER_HOST=tcp://...``, or ``--engine HOST:PORT``) is joined as a node; without
one the demo runs with an empty cluster. Each manager's own log lines (``Cluster leadership acquired``, ``New
leader elected: ...``) are shown as they happen, interleaved and prefixed with the manager's address; at each
step the demo prints what ``docker info`` shows through every manager (Role, Primary, Nodes and the engines).
It sends SIGTERM to the primary and measures until another manager answers as primary, then SIGKILLs that one
and measures again (that failover waits for the session TTL, ``--ttl``). Exits 0 when both failovers happened.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import swarmha
from swarmha._duration import parse_duration
from swarmha.errors import DiscoveryError
from swarmha.manager._config import parse_address
from swarmha.manager.cluster import NODES_KEY

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ttl", default="2s", help="replication TTL of the managers (default 2s): the SIGKILL failover")
    p.add_argument("--managers", type=int, default=3, help="number of managers (default 3, at least 2)")
    p.add_argument("--engine", help="a Docker engine HOST:PORT to join (default: DOCKER_HOST if it is tcp://)")
    p.add_argument("--no-engine", action="store_true", help="do not look for a Docker engine")
    p.add_argument("--timeout", default="20s", help="give up waiting for any step after this long (default 20s)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(host: str, port: int, path: str, timeout: float) -> tuple[int, bytes]:
    """``GET path`` on a fresh loopback connection: (status, body). Raises OSError or http.client's errors.

    The standard library's client: the demo makes a few hundred plain requests to local managers, which needs
    no client library (the managers' own client is asyncio's; the demo is not)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _engine(args: argparse.Namespace) -> str | None:
    if args.no_engine:
        return None
    candidate = args.engine or os.environ.get("DOCKER_HOST", "")
    if candidate.startswith("tcp://") or (args.engine and candidate):
        host, port = parse_address(candidate, "--engine")
        try:
            status, _ = _get(host, port, "/_ping", 1.0)
            if status != 200:
                raise http.client.HTTPException(f"/_ping answered {status}")
        except (OSError, http.client.HTTPException) as e:
            print(f"engine {host}:{port} does not answer ({e}); running without an engine")
            return None
        return f"{host}:{port}"
    if os.path.exists("/var/run/docker.sock"):
        print("found /var/run/docker.sock; the managers reach engines over TCP only: set DOCKER_HOST=tcp://...")
    return None


_print_lock = threading.Lock()


def _say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


def _relay_log(port: int, stream: Any) -> None:
    """Print a manager's log lines as they come, prefixed with its address (a thread per manager)."""
    for raw in iter(stream.readline, b""):
        _say(f"  [manager 127.0.0.1:{port}] {raw.decode(errors='replace').rstrip()}")
    stream.close()


def _info(port: int) -> dict[str, str] | None:
    try:
        _, body = _get("127.0.0.1", port, "/info", 0.5)
        status = json.loads(body).get("SystemStatus") or []
    except (OSError, http.client.HTTPException, ValueError, AttributeError):
        return None
    out = {str(k).strip(): str(v) for k, v in status}
    # the engine lines as docker info prints them: " name: addr" (one per engine)
    engines = [f"{str(k).strip()}: {v}" for k, v in status if str(k).startswith(" ") and not str(k).startswith("  ")]
    out["_engines"] = "\n".join(engines)
    return out


def _wait(what: str, timeout: float, probe: Any) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.005)
    raise TimeoutError(f"demo: timed out after {timeout:g}s waiting for {what}")


def run(args: argparse.Namespace) -> int:
    """The ``swarmha demo`` command."""
    ttl = parse_duration(args.ttl, "--ttl")
    timeout = parse_duration(args.timeout, "--timeout")
    if args.managers < 2:
        print("swarmha demo: --managers must be at least 2", file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="swarmha-demo-")
    url = f"sqlite://{workdir}/swarmha.db"
    engine = _engine(args)
    ports = [_free_port() for _ in range(args.managers)]
    print(f"discovery: {url}   replication ttl: {args.ttl}   engine: {engine or '(none)'}")
    procs: dict[int, subprocess.Popen[bytes]] = {}
    relays: list[threading.Thread] = []
    stop_join = threading.Event()
    join_thread: threading.Thread | None = None
    try:
        if engine is not None:
            join_thread = threading.Thread(target=_join, args=(url, engine, stop_join), daemon=True)
            join_thread.start()
        for port in ports:
            cmd = [sys.executable, "-m", "swarmha.manager.cli", "manage", "-H", f"127.0.0.1:{port}", "--replication"]
            cmd += ["--advertise", f"127.0.0.1:{port}", "--replication-ttl", args.ttl, "--engine-refresh", "1s", url]
            procs[port] = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
            )
            _say(f"started manager 127.0.0.1:{port} (pid {procs[port].pid})")
            relay = threading.Thread(target=_relay_log, args=(port, procs[port].stdout), daemon=True)
            relay.start()
            relays.append(relay)

        def roles(alive: list[int]) -> dict[int, dict[str, str]] | None:
            seen = {p: _info(p) for p in alive}
            if any(v is None for v in seen.values()):
                return None
            primaries = [p for p, v in seen.items() if v and v.get("Role") == "primary".capitalize()]
            if len(primaries) != 1:
                return None
            want = f"127.0.0.1:{primaries[0]}"
            if any(v and v.get("Primary") != want for v in seen.values()):
                return None
            return {p: v for p, v in seen.items() if v is not None}

        alive = list(ports)
        state = _wait("one primary that every manager agrees on", timeout, lambda: roles(alive))
        _show(state)
        figures = []
        for how, sig in (("stopped gracefully (SIGTERM)", signal.SIGTERM), ("killed (SIGKILL)", signal.SIGKILL)):
            primary = next(p for p, v in state.items() if v.get("Role") == "Primary")
            began = time.monotonic()
            procs[primary].send_signal(sig)
            alive.remove(primary)
            _say(f"\nprimary 127.0.0.1:{primary} {how}")

            def new_primary(alive: list[int] = alive) -> int | None:
                for p in alive:
                    v = _info(p)
                    if v and v.get("Role") == "Primary":
                        return p
                return None

            winner = _wait("a new primary", timeout + ttl, new_primary)
            took = time.monotonic() - began
            figures.append((how, took))
            _say(f"127.0.0.1:{winner} answers as primary {took * 1000:.0f} ms later")
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = procs[primary].wait(timeout)
                _say(f"old primary exited with status {code}")
            state = _wait("every manager to agree on the new primary", timeout, lambda: roles(alive))
            _show(state)
            if len(alive) < 2:
                break
        _say("\nfailover times:")
        for how, took in figures:
            _say(f"  {how:32s} {took * 1000:8.0f} ms")
        return 0
    except TimeoutError as e:
        print(str(e), file=sys.stderr)
        return 1
    finally:
        stop_join.set()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for relay in relays:
            relay.join(5)
        if join_thread is not None:
            join_thread.join(5)
        shutil.rmtree(workdir, ignore_errors=True)  # the store and the managers' logs: nothing left behind


def _show(state: dict[int, dict[str, str]]) -> None:
    """What ``docker -H 127.0.0.1:PORT info`` shows of the cluster, for every manager."""
    lines = []
    for port, status in sorted(state.items()):
        lines.append(f"docker -H 127.0.0.1:{port} info")
        lines.append(f"   Role: {status.get('Role', '?')}")
        lines.append(f"   Primary: {status.get('Primary', '?')}")
        lines.append(f"   Nodes: {status.get('Nodes', '?')}")
        lines += [f"    {e}" for e in status.get("_engines", "").splitlines()]
    _say("\n".join(lines))


def _join(url: str, engine: str, stop: threading.Event) -> None:
    """Keep ``engine`` registered (as ``swarmha join`` does) until ``stop``."""
    with swarmha.connect(url) as discovery:
        session = None
        while not stop.is_set():
            try:
                if session is None:
                    session = discovery.session(10.0)
                    discovery.put(f"{NODES_KEY}/{engine}", engine, session)
                else:
                    session.keepalive()
            except DiscoveryError:
                session = None
            stop.wait(2.0)
        if session is not None:
            session.close()
