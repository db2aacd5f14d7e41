"""A **test double** of the Consul HTTP API (not Consul): the KV and Session endpoints swarmha's backend uses.

No Consul binary can be installed where these tests run, so this module serves the subset of the Consul
HTTP API that ``swarmha.discovery.consul`` relies on, from a real HTTP/1.1 server on a loopback port,
following Consul's documented behaviour and (where the docs are silent) its source (``agent/consul/state/kvs.go``,
``session_ttl.go``, ``agent/session_endpoint.go``, ``agent/kvs_endpoint.go``):

* one Raft-like index that every write bumps; ``X-Consul-Index`` on reads (never below 1);
* KV: ``GET /v1/kv/<key>`` (``?recurse``, ``?keys`` with ``?separator``, ``?raw``), ``PUT`` (``?flags``,
  ``?cas``, ``?acquire``, ``?release`` -- later ones override earlier ones, as in Consul), ``DELETE``
  (``?cas``, ``?recurse``); entries carry Key, Value (base64, null when empty), Flags, Session, LockIndex,
  CreateIndex, ModifyIndex. A CAS delete of an absent key answers ``true`` (Consul does);
* sessions: ``PUT /v1/session/create|renew/<id>|destroy/<id>``, ``GET /v1/session/info/<id>|list|node/<n>``;
  behaviours ``release`` (default) and ``delete``; ``LockDelay`` (default 15 s, numbers below 1000 read as
  seconds, capped at 60 s on use); a TTL session is invalidated ``ttl_multiplier`` x TTL (Consul: exactly 2)
  after its last renewal; TTLs outside ``[session_ttl_min, 86400s]`` are refused with Consul's 500
  "Invalid Session TTL" answer;
* ``PUT /v1/txn`` with KV operations (set, cas, lock, unlock, get, check-index, check-session,
  check-not-exists, delete, delete-cas, delete-tree): all or nothing under one index; results carry the
  entries without their values (except for get); a failed op answers 409 with ``Errors`` (OpIndex, What);
* blocking queries: ``?index=`` + ``?wait=`` (Go duration syntax, default 5 m, max 10 m, plus up to wait/16
  of random jitter as Consul adds); a query returns at once when the current index is above ``index``;
* errors: 400 for malformed requests, 404 for missing keys / unknown sessions on renew, 403 for a wrong ACL
  token (when ``acl_token`` is set), 500 for what Consul's RPC layer rejects (invalid session, bad TTL).

Not implemented: datacenters, namespaces, health checks (accepted and ignored), non-KV txn ops, ACL policies.

:meth:`ConsulDouble.stop` makes it unreachable (listening socket and every open connection closed, blocked
queries cut) and keeps its state; :meth:`ConsulDouble.start` brings it back on the same port. Like a Consul
server after a leader election, a restart resets every session's TTL timer (sessions survive restarts).
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs

__all__ = ["ConsulDouble", "format_go_duration", "parse_go_duration"]

SESSION_TTL_MAX = 86400.0
MAX_LOCK_DELAY = 60.0
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
MAX_VALUE_SIZE = 512 * 1024

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go ``time.ParseDuration`` string (``"10s"``, ``"1m30s"``, ``"250ms"``, ``"0"``)."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"time: invalid duration {text!r}")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise ValueError(f"time: invalid duration {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def format_go_duration(seconds: float) -> str:
    """Go's ``Duration.String()`` for whole-ish durations: ``10s``, ``24h0m0s``, ``1.5s``, ``250ms``."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{int(hours)}h{int(minutes)}m{secs:g}s"
    if minutes:
        return f"{int(minutes)}m{secs:g}s"
    return f"{secs:g}s"


@attrs.define
class _Entry:
    key: str
    value: bytes
    flags: int = 0
    session: str = ""
    lock_index: int = 0
    create_index: int = 0
    modify_index: int = 0

    def json(self) -> dict[str, Any]:
        return {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": base64.b64encode(self.value).decode() if self.value else None,
            "Session": self.session or None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@attrs.define
class _Session:
    id: str
    name: str
    node: str
    lock_delay: float
    behavior: str
    ttl: str
    ttl_seconds: float
    checks: list[str]
    create_index: int
    expires: float | None = None

    def json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            "LockDelay": int(self.lock_delay * 1e9),
            "Behavior": self.behavior,
            "TTL": self.ttl,
            "NodeChecks": self.checks,
            "ServiceChecks": None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.create_index,
        }


class _Aborted(Exception):
    """The double was stopped while a request was in flight: drop the connection without an answer."""


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _State:
    """Everything the double stores; all access holds :attr:`cond`."""

    def __init__(self, session_ttl_min: float, ttl_multiplier: float) -> None:
        self.cond = threading.Condition()
        self.index = 0
        self.kv: dict[str, _Entry] = {}
        self.kv_index = 0  # max index of the kvs and tombstones tables
        self.touched: dict[str, int] = {}  # key -> index of its last write or delete (drives blocking queries)
        self.sessions: dict[str, _Session] = {}
        self.session_index = 0
        self.lock_delay: dict[str, float] = {}
        self.running = False
        self.session_ttl_min = session_ttl_min
        self.ttl_multiplier = ttl_multiplier

    def next_index(self) -> int:
        self.index += 1
        return self.index

    # -- sessions ---------------------------------------------------------------------------------

    def arm(self, session: _Session, now: float) -> None:
        if session.ttl_seconds > 0:
            session.expires = now + session.ttl_seconds * self.ttl_multiplier

    def reap(self) -> None:
        now = time.monotonic()
        for sid in [sid for sid, s in self.sessions.items() if s.expires is not None and s.expires <= now]:
            self.invalidate(sid)

    def next_expiry(self) -> float | None:
        return min((s.expires for s in self.sessions.values() if s.expires is not None), default=None)

    def invalidate(self, sid: str) -> bool:
        """Destroy a session and apply its behaviour to the keys it holds (state/session.go deleteSessionTxn)."""
        session = self.sessions.pop(sid, None)
        if session is None:
            return False
        idx = self.next_index()
        self.session_index = idx
        now = time.monotonic()
        delay = min(session.lock_delay, MAX_LOCK_DELAY)
        for key in [k for k, e in self.kv.items() if e.session == sid]:
            if session.behavior == "delete":
                del self.kv[key]
            else:
                entry = self.kv[key]
                entry.session = ""
                entry.modify_index = idx
            self.touched[key] = idx
            self.kv_index = idx
            if delay > 0:
                self.lock_delay[key] = now + delay
        self.cond.notify_all()
        return True

    # -- kv -----------------------------------------------------------------------------------------

    def write(self, entry: _Entry) -> None:
        self.kv[entry.key] = entry
        self.touched[entry.key] = entry.modify_index
        self.kv_index = entry.modify_index
        self.cond.notify_all()

    def remove(self, keys: list[str]) -> None:
        if not keys:
            return
        idx = self.next_index()
        for key in keys:
            del self.kv[key]
            self.touched[key] = idx
        self.kv_index = idx
        self.cond.notify_all()

    def prefix_mark(self, prefix: str) -> int:
        return max((i for k, i in self.touched.items() if k.startswith(prefix)), default=0)


class ConsulDouble:
    """A Consul HTTP API double on ``host:port`` (port 0: a free port, kept across stop/start).

    ``session_ttl_min`` plays the Consul server option of the same name (Consul's default is 10 s; tests lower
    it to rehearse expiry quickly); ``ttl_multiplier`` is how many TTLs after the last renewal a session is
    invalidated (Consul's ``SessionTTLMultiplier``, 2). With ``acl_token`` set, requests must carry it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        session_ttl_min: float = 10.0,
        ttl_multiplier: float = 2.0,
        acl_token: str | None = None,
        node: str = "consul-double",
    ) -> None:
        self.host = host
        self.port = port
        self.acl_token = acl_token
        self.node = node
        self.state = _State(session_ttl_min, ttl_multiplier)
        self.requests = 0  # how many HTTP requests were served (lets tests check idle watchers stay quiet)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._lifecycle = threading.Lock()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def url(self, prefix: str, **params: str) -> str:
        """A ``consul://`` discovery URL for this double with key prefix ``prefix``."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return f"consul://{self.address}/{prefix}{query}"

    def start(self) -> ConsulDouble:
        """Listen (again) on the same port; every session's TTL timer restarts, as after a Consul leader election."""
        with self._lifecycle:
            if self._server is not None:
                return self
            server = _Server((self.host, self.port), _Handler, self)
            self.port = server.server_address[1]
            with self.state.cond:
                now = time.monotonic()
                for session in self.state.sessions.values():
                    self.state.arm(session, now)
                self.state.running = True
                self.state.cond.notify_all()
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="consul-double", daemon=True
            )
            self._thread.start()
            return self

    def stop(self) -> None:
        """Become unreachable: close the listening socket and every connection; keep the data."""
        with self._lifecycle:
            server, thread = self._server, self._thread
            if server is None:
                return
            self._server = self._thread = None
            with self.state.cond:
                self.state.running = False
                self.state.cond.notify_all()
            server.shutdown()
            server.server_close()
            with self._conns_lock:
                conns = list(self._conns)
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            if thread is not None:
                thread.join(5.0)

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> ConsulDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- test hooks (the same effects are reachable over HTTP) ------------------------------------

    def destroy_session(self, sid: str) -> bool:
        """Invalidate a session behind its owner's back (like ``consul session destroy`` by an operator)."""
        with self.state.cond:
            return self.state.invalidate(sid)

    def session_ids(self) -> list[str]:
        with self.state.cond:
            self.state.reap()
            return list(self.state.sessions)

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)


#: The name of the double's thread serving one client connection.
CONNECTION_THREAD = "consul-double-conn"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler], double: ConsulDouble) -> None:
        self.double = double
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        threading.current_thread().name = CONNECTION_THREAD  # the double's, not the client's (thread counts)
        super().setup()
        # Go (and so Consul) sets TCP_NODELAY on every connection; without it small answers wait for delayed ACKs.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.double.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.double.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read their own output."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- plumbing -------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        double = self.server.double
        double.requests += 1
        parsed = urllib.parse.urlsplit(self.path)
        self.params = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.index: int | None = None
        try:
            token = self.headers.get("X-Consul-Token") or self.params.get("token")
            if double.acl_token is not None and token != double.acl_token:
                raise _HTTPError(403, "ACL not found")
            status, payload = self._route(method, urllib.parse.unquote(parsed.path))
        except _HTTPError as e:
            self._send(e.status, e.message.encode(), "text/plain; charset=utf-8")
            return
        except _Aborted:
            self.close_connection = True
            return
        if isinstance(payload, bytes):
            self._send(status, payload, "application/octet-stream")
        else:
            self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.index is not None:
            self.send_header("X-Consul-Index", str(max(1, self.index)))
            self.send_header("X-Consul-KnownLeader", "true")
            self.send_header("X-Consul-LastContact", "0")
        self._headers_buffer.append(b"\r\n" + body)  # headers and body in one write
        self.flush_headers()

    def _route(self, method: str, path: str) -> tuple[int, Any]:
        if path.startswith("/v1/kv/") or path == "/v1/kv":
            key = path[len("/v1/kv/") :] if path.startswith("/v1/kv/") else ""
            handler = {"GET": self._kv_get, "PUT": self._kv_put, "DELETE": self._kv_delete}.get(method)
            if handler is None:
                raise _HTTPError(405, f"method {method} not allowed")
            return handler(key)
        if path.startswith("/v1/session/"):
            op, _, arg = path[len("/v1/session/") :].partition("/")
            routes: dict[tuple[str, str], Callable[[str], tuple[int, Any]]] = {
                ("PUT", "create"): self._session_create,
                ("PUT", "destroy"): self._session_destroy,
                ("PUT", "renew"): self._session_renew,
                ("GET", "info"): self._session_info,
                ("GET", "list"): self._session_list,
                ("GET", "node"): self._session_node,
            }
            route = routes.get((method, op))
            if route is None:
                if any(o == op for _, o in routes):
                    raise _HTTPError(405, f"method {method} not allowed")
                raise _HTTPError(404, f"Invalid URL path: not a recognized HTTP API endpoint: {path}")
            return route(arg)
        if path == "/v1/txn":
            if method != "PUT":
                raise _HTTPError(405, f"method {method} not allowed")
            return self._txn()
        if path == "/v1/status/leader" and method == "GET":
            return 200, f"{self.server.double.host}:8300"
        raise _HTTPError(404, f"Invalid URL path: not a recognized HTTP API endpoint: {path}")

    def _uint_param(self, name: str, message: str) -> int | None:
        if name not in self.params:
            return None
        try:
            value = int(self.params[name])
        except ValueError:
            raise _HTTPError(400, message) from None
        if value < 0:
            raise _HTTPError(400, message)
        return value

    def _blocking(self, query: Callable[[], tuple[int, Any]], mark: Callable[[], int]) -> Any:
        """Consul's blockingQuery: answer at once unless ``?index`` is at or above the current index.

        Caller holds the state lock. Returns the query result; sets ``self.index``.
        """
        st = self.server.double.state
        min_index = self._uint_param("index", "Invalid index") or 0
        wait = DEFAULT_WAIT
        if "wait" in self.params:
            try:
                wait = parse_go_duration(self.params["wait"])
            except ValueError:
                raise _HTTPError(400, "Invalid wait time") from None
            if wait <= 0:
                wait = DEFAULT_WAIT
            wait = min(wait, MAX_WAIT)
        st.reap()
        idx, result = query()
        if min_index == 0 or max(1, idx) > min_index:
            self.index = idx
            return result
        deadline = time.monotonic() + wait + random.uniform(0, wait / 16)
        start = mark()
        while True:
            if not st.running:
                raise _Aborted
            now = time.monotonic()
            if now >= deadline:
                break
            wake = min(t for t in (deadline, st.next_expiry()) if t is not None)
            st.cond.wait(max(0.0, wake - now))
            if not st.running:
                raise _Aborted
            st.reap()
            if mark() != start:
                break
        self.index, result = query()
        return result

    # -- KV -------------------------------------------------------------------------------------------

    def _kv_get(self, key: str) -> tuple[int, Any]:
        st = self.server.double.state
        recurse = "recurse" in self.params
        keys = "keys" in self.params
        with st.cond:
            if keys or recurse:

                def query() -> tuple[int, Any]:
                    entries = sorted((e for k, e in st.kv.items() if k.startswith(key)), key=lambda e: e.key)
                    idx = max([e.modify_index for e in entries] + [st.prefix_mark(key)]) or st.kv_index
                    return idx, entries

                entries: list[_Entry] = self._blocking(query, lambda: st.prefix_mark(key))
                if not entries:
                    return 404, b""
                if keys:
                    sep = self.params.get("separator", "")
                    out: list[str] = []
                    for e in entries:
                        name = e.key
                        if sep:
                            cut = name.find(sep, len(key))
                            if cut >= 0:
                                name = name[: cut + len(sep)]
                        if not out or out[-1] != name:
                            out.append(name)
                    return 200, out
                return 200, [e.json() for e in entries]

            def one() -> tuple[int, Any]:
                return st.kv_index, st.kv.get(key)

            entry: _Entry | None = self._blocking(one, lambda: st.touched.get(key, 0))
            if entry is None:
                return 404, b""
            if "raw" in self.params:
                return 200, entry.value
            return 200, [entry.json()]

    def _kv_put(self, key: str) -> tuple[int, Any]:
        if not key:
            raise _HTTPError(400, "Missing key name")
        if len(self.body) > MAX_VALUE_SIZE:
            raise _HTTPError(413, f"Request body({len(self.body)} bytes) too large, max size: {MAX_VALUE_SIZE} bytes")
        flags = self._uint_param("flags", "Invalid flags") or 0
        op, arg = "set", ""
        cas = self._uint_param("cas", "Invalid CAS index")
        if cas is not None:
            op = "cas"
        if "acquire" in self.params:
            op, arg = "lock", self.params["acquire"]
        if "release" in self.params:
            op, arg = "unlock", self.params["release"]
        st = self.server.double.state
        with st.cond:
            st.reap()
            existing = st.kv.get(key)
            entry = _Entry(key, self.body, flags)
            if op in ("lock", "unlock") and not arg:
                raise _HTTPError(500, "missing session")
            if op == "lock":
                if st.lock_delay.get(key, 0.0) > time.monotonic():
                    return 200, False  # kvs_endpoint.go: "Rejecting lock of key due to lock-delay"
                if arg not in st.sessions:
                    raise _HTTPError(500, f'invalid session "{arg}"')
                if existing is not None and existing.session not in ("", arg):
                    return 200, False
                idx = st.next_index()
                if existing is None:
                    entry.create_index, entry.lock_index = idx, 1
                elif existing.session == arg:
                    entry.create_index, entry.lock_index = existing.create_index, existing.lock_index
                else:
                    entry.create_index, entry.lock_index = existing.create_index, existing.lock_index + 1
                entry.session = arg
            elif op == "unlock":
                if existing is None or existing.session != arg:
                    return 200, False
                idx = st.next_index()
                entry.create_index, entry.lock_index = existing.create_index, existing.lock_index
            else:
                if op == "cas" and (
                    (cas == 0 and existing is not None)
                    or (cas != 0 and (existing is None or existing.modify_index != cas))
                ):
                    return 200, False
                idx = st.next_index()
                if existing is not None:
                    entry.create_index, entry.lock_index = existing.create_index, existing.lock_index
                    entry.session = existing.session
                else:
                    entry.create_index = idx
            entry.modify_index = idx
            st.write(entry)
            return 200, True

    def _kv_delete(self, key: str) -> tuple[int, Any]:
        st = self.server.double.state
        with st.cond:
            st.reap()
            if "recurse" in self.params:
                st.remove([k for k in st.kv if k.startswith(key)])
                return 200, True
            if not key:
                raise _HTTPError(400, "Missing key name")
            cas = self._uint_param("cas", "Invalid CAS index")
            existing = st.kv.get(key)
            if cas is not None and (existing is None or existing.modify_index != cas):
                return 200, existing is None  # kvsDeleteCASTxn: `return entry == nil, nil`
            if existing is not None:
                st.remove([key])
            return 200, True

    # -- transactions (KV operations only) ---------------------------------------------------------------

    def _txn(self) -> tuple[int, Any]:
        """``PUT /v1/txn``: KV ops applied atomically under one index; 409 with ``Errors`` if any op fails."""
        try:
            ops = json.loads(self.body or b"null")
            if not isinstance(ops, list) or not all(isinstance(o, dict) and isinstance(o.get("KV"), dict) for o in ops):
                raise ValueError('expected a list of {"KV": {...}} operations')
        except ValueError as e:
            raise _HTTPError(400, f"Failed to parse body: {e}") from None
        if len(ops) > 128:
            raise _HTTPError(413, f"Transaction contains too many operations ({len(ops)} > 128)")
        st = self.server.double.state
        with st.cond:
            st.reap()
            kv = {k: attrs.evolve(e) for k, e in st.kv.items()}
            idx = st.index + 1
            results: list[dict[str, Any]] = []
            errors: list[dict[str, Any]] = []
            written: set[str] = set()
            for i, op in enumerate(ops):
                try:
                    entry = self._txn_op(st, kv, idx, op["KV"], written)
                except ValueError as e:
                    errors.append({"OpIndex": i, "What": str(e)})
                    continue
                if entry is not None:
                    out = entry.json()
                    if str(op["KV"].get("Verb")) != "get":
                        out["Value"] = None
                    results.append({"KV": out})
            if errors:
                return 409, {"Results": None, "Errors": errors}
            if written:
                st.index = idx
                st.kv = kv
                for key in written:
                    st.touched[key] = idx
                st.kv_index = idx
                st.cond.notify_all()
            return 200, {"Results": results, "Errors": None}

    @staticmethod
    def _txn_op(st: _State, kv: dict[str, _Entry], idx: int, op: dict[str, Any], written: set[str]) -> _Entry | None:
        verb = str(op.get("Verb", ""))
        key = str(op.get("Key", ""))
        session = str(op.get("Session") or "")
        index = int(op.get("Index") or 0)
        try:
            value = base64.b64decode(op.get("Value") or "")
        except ValueError:
            raise ValueError(f"invalid Value for key {key!r}") from None
        existing = kv.get(key)
        entry = _Entry(key, value, int(op.get("Flags") or 0))
        if verb in ("get", "check-index", "check-session", "check-not-exists"):
            if verb == "check-not-exists":
                if existing is not None:
                    raise ValueError(f"key {key!r} exists")
                return None
            if existing is None:
                if verb == "get":
                    raise ValueError(f"key {key!r} doesn't exist")
                raise ValueError(f"failed to check {verb[6:]}, key {key!r} doesn't exist")
            if verb == "check-index" and existing.modify_index != index:
                raise ValueError(
                    f"failed index check for key {key!r}, current modify index {existing.modify_index} != {index}"
                )
            if verb == "check-session" and existing.session != session:
                raise ValueError(
                    f"failed session check for key {key!r}, current session {existing.session!r} != {session!r}"
                )
            return existing
        if verb in ("delete", "delete-cas", "delete-tree"):
            if verb == "delete-tree":
                doomed = [k for k in kv if k.startswith(key)]
            elif verb == "delete-cas" and existing is not None and existing.modify_index != index:
                raise ValueError(f"failed to delete key {key!r}, index is stale")
            else:
                doomed = [key] if existing is not None else []
            for k in doomed:
                del kv[k]
                written.add(k)
            return None
        if verb in ("lock", "unlock") and not session:
            raise ValueError("missing session")
        if verb == "lock":
            if st.lock_delay.get(key, 0.0) > time.monotonic():
                raise ValueError(f"failed to lock key {key!r} due to lock delay")
            if session not in st.sessions:
                raise ValueError(f'invalid session "{session}"')
            if existing is not None and existing.session not in ("", session):
                raise ValueError(f"failed to lock key {key!r}, lock is already held")
            entry.session = session
            if existing is None:
                entry.create_index, entry.lock_index = idx, 1
            else:
                entry.create_index = existing.create_index
                entry.lock_index = existing.lock_index + (0 if existing.session == session else 1)
        elif verb == "unlock":
            if existing is None or existing.session != session:
                raise ValueError(f"failed to unlock key {key!r}, lock isn't held, or is held by another session")
            entry.create_index, entry.lock_index = existing.create_index, existing.lock_index
        elif verb in ("set", "cas"):
            if verb == "cas" and (
                (index == 0 and existing is not None)
                or (index != 0 and (existing is None or existing.modify_index != index))
            ):
                raise ValueError(f"failed to set key {key!r}, index is stale")
            if existing is not None:
                entry.create_index, entry.lock_index, entry.session = (
                    existing.create_index,
                    existing.lock_index,
                    existing.session,
                )
            else:
                entry.create_index = idx
        else:
            raise ValueError(f"unknown KV verb {verb!r}")
        entry.modify_index = idx
        kv[key] = entry
        written.add(key)
        return entry

    # -- sessions ---------------------------------------------------------------------------------------

    def _session_create(self, _: str) -> tuple[int, Any]:
        double = self.server.double
        st = double.state
        fields: dict[str, Any] = {}
        if self.body:
            try:
                raw = json.loads(self.body)
                if not isinstance(raw, dict):
                    raise ValueError("expected a JSON object")
                fields = {k.lower(): v for k, v in raw.items()}
                lock_delay = _lock_delay(fields.get("lockdelay", 15.0))
            except ValueError as e:
                raise _HTTPError(400, f"Request decode failed: {e}") from None
        else:
            lock_delay = 15.0
        behavior = fields.get("behavior") or "release"
        if behavior not in ("release", "delete"):
            raise _HTTPError(500, f"Invalid Behavior setting '{behavior}'")
        ttl = str(fields.get("ttl") or "")
        ttl_seconds = 0.0
        if ttl:
            try:
                ttl_seconds = parse_go_duration(ttl)
            except ValueError as e:
                raise _HTTPError(500, f"Session TTL '{ttl}' invalid: {e}") from None
            if ttl_seconds != 0 and not st.session_ttl_min <= ttl_seconds <= SESSION_TTL_MAX:
                raise _HTTPError(
                    500,
                    f"Invalid Session TTL '{round(ttl_seconds * 1e9)}', must be between "
                    f"[{format_go_duration(st.session_ttl_min)}={format_go_duration(SESSION_TTL_MAX)}]",
                )
        node = fields.get("node") or double.node
        if node != double.node:
            raise _HTTPError(500, "Missing node registration")
        checks = fields.get("nodechecks", fields.get("checks", ["serfHealth"])) or []
        with st.cond:
            st.reap()
            idx = st.next_index()
            session = _Session(
                id=str(uuid.uuid4()),
                name=str(fields.get("name") or ""),
                node=node,
                lock_delay=lock_delay,
                behavior=behavior,
                ttl=ttl,
                ttl_seconds=ttl_seconds,
                checks=list(checks),
                create_index=idx,
            )
            st.arm(session, time.monotonic())
            st.sessions[session.id] = session
            st.session_index = idx
            st.cond.notify_all()
            return 200, {"ID": session.id}

    def _session_destroy(self, sid: str) -> tuple[int, Any]:
        if not sid:
            raise _HTTPError(400, "Missing session")
        st = self.server.double.state
        with st.cond:
            st.reap()
            st.invalidate(sid)
            return 200, True

    def _session_renew(self, sid: str) -> tuple[int, Any]:
        if not sid:
            raise _HTTPError(400, "Missing session")
        st = self.server.double.state
        with st.cond:
            st.reap()
            session = st.sessions.get(sid)
            if session is None:
                raise _HTTPError(404, f"Session id '{sid}' not found")
            st.arm(session, time.monotonic())
            st.cond.notify_all()
            return 200, [session.json()]

    def _session_info(self, sid: str) -> tuple[int, Any]:
        if not sid:
            raise _HTTPError(400, "Missing session")
        st = self.server.double.state
        with st.cond:

            def query() -> tuple[int, Any]:
                session = st.sessions.get(sid)
                return st.session_index, [session.json()] if session else []

            return 200, self._blocking(query, lambda: st.session_index)

    def _session_list(self, _: str) -> tuple[int, Any]:
        st = self.server.double.state
        with st.cond:
            return 200, self._blocking(
                lambda: (st.session_index, [s.json() for s in st.sessions.values()]), lambda: st.session_index
            )

    def _session_node(self, node: str) -> tuple[int, Any]:
        if not node:
            raise _HTTPError(400, "Missing node name")
        st = self.server.double.state
        with st.cond:
            return 200, self._blocking(
                lambda: (st.session_index, [s.json() for s in st.sessions.values() if s.node == node]),
                lambda: st.session_index,
            )


def _lock_delay(value: Any) -> float:
    """Consul's FixupLockDelay: a duration string or a number of nanoseconds; values below 1000 mean seconds."""
    if isinstance(value, str):
        seconds = parse_go_duration(value)
        return seconds * 1e9 if seconds * 1e9 < 1000 else seconds
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if value < 1000 else value / 1e9
    raise ValueError(f"invalid LockDelay {value!r}")
