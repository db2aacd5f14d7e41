"""``swarmha join``: keep one engine registered in the discovery store, as ``swarm join`` did, checking it first.

The registration is Swarm's: key ``<prefix>/docker/swarm/nodes/<addr>``, value ``<addr>``, held by a session with
``--ttl`` and renewed every ``--heartbeat``; ``--delay`` waits a random time in [0, delay] first.

Unlike Swarm, the agent checks that the address answers the Docker Engine API before it registers it
(:func:`check_engine`: ``GET /_ping`` answers 200 ``OK`` and ``GET /version`` a JSON object with ``ApiVersion``;
a TLS-only engine's answer to a plain request counts). While it does not — nothing listens (the WARN names the OS
error, ``[Errno 111] Connection refused``), or something else does (an etcd port answers ``/_ping`` with 404) —
it logs a WARN saying what answered on every attempt (every ``min(heartbeat, 5s)``, as Swarm's join retried its
registration) and does not register; once the engine answers, it registers and says so. A registered engine
that stops answering is warned about on each heartbeat and stays registered: the managers show it ``Unhealthy``
with its error, as Swarm's did. Store errors are logged and retried; SIGINT/SIGTERM close the session (the key
goes at once).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import signal
import threading

from swarmha import Discovery
from swarmha.errors import DiscoveryError, SessionExpired
from swarmha.manager.cluster import NODES_KEY

__all__ = ["check_engine", "run_join"]

log = logging.getLogger("swarmha.manager")


def check_engine(addr: str, timeout: float = 5.0) -> str:
    """ "" when ``addr`` answers the Docker Engine API, else what is wrong (naming the OS reason or the answer).

    The API answers ``GET /_ping`` with 200 ``OK`` and ``GET /version`` with a JSON object carrying ``ApiVersion``.
    An engine that speaks only TLS answers a plain request as dockerd does (400 "Client sent an HTTP request to
    an HTTPS server"): that counts (the join agent has no certificates to look further)."""
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        conn.request("GET", "/_ping")
        r = conn.getresponse()
        body = r.read(4096)
        if r.status == 400 and _TLS_ONLY in body:
            return ""
        if r.status != 200 or body.strip() != b"OK":
            return f"{addr} is not a Docker engine: GET /_ping answered {r.status} {_shown(body)}"
        conn.request("GET", "/version")
        r = conn.getresponse()
        body = r.read(1 << 20)
        try:
            version = json.loads(body) if r.status == 200 else None
        except ValueError:
            version = None
        if not isinstance(version, dict) or not isinstance(version.get("ApiVersion"), str):
            return f"{addr} is not a Docker engine: GET /version answered {r.status} {_shown(body)} (no ApiVersion)"
        return ""
    except OSError as e:
        reason = f"[Errno {e.errno}] {os.strerror(e.errno)}" if e.errno is not None else (str(e) or type(e).__name__)
        return f"cannot reach {addr}: {reason}"
    except http.client.HTTPException as e:
        return f"{addr} does not speak HTTP: {e or type(e).__name__}"
    finally:
        conn.close()


#: What dockerd (Go's HTTP server) answers a plain HTTP request on a TLS port.
_TLS_ONLY = b"Client sent an HTTP request to an HTTPS server"


def _shown(body: bytes) -> str:
    text = body[:80].decode("utf-8", "replace").strip()
    return repr(text + ("..." if len(body) > 80 else "")) if text else "(empty)"


def run_join(
    discovery: Discovery, addr: str, url: str, *, heartbeat: float, ttl: float, delay: float, heartbeat_text: str
) -> int:
    """Register ``addr`` until SIGINT/SIGTERM; returns the exit status (0)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if delay > 0:
        wait = random.uniform(0, delay)
        log.info("Add a random delay %.3fs to avoid synchronized registration", wait)
        if stop.wait(wait):
            return 0
    key = f"{NODES_KEY}/{addr}"
    log.info("Registering on the discovery service every %s... addr=%s discovery=%s", heartbeat_text, addr, url)
    session = None
    registered = False
    try:
        while not stop.is_set():
            problem = check_engine(addr)
            if problem:
                if not registered:
                    log.warning("engine %s does not answer the Docker API, not registering it yet: %s", addr, problem)
                    stop.wait(min(heartbeat, 5.0))
                    continue
                log.warning("engine %s does not answer the Docker API: %s", addr, problem)
            try:
                if session is None:
                    session, registered = discovery.session(ttl), False
                if not registered:
                    discovery.put(key, addr, session)
                    registered = True
                    log.info("Registered %s in the discovery service", addr)
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
