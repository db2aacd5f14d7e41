"""The Discovery contract over Consul's KV store and sessions (see the package docstring for the mapping)."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

import httpx

from swarmha.discovery._base import Discovery, Record, Session, Watch, check_key, check_ttl
from swarmha.discovery._url import DiscoveryURL
from swarmha.discovery.consul._client import Agents, Client, decode, index_of, kv_record
from swarmha.discovery.consul._session import SESSION_TTL_MIN, ConsulSession, session_ttl_for
from swarmha.discovery.consul._watch import ConsulWatch, Hub
from swarmha.errors import (
    ConfigurationError,
    DiscoveryError,
    DiscoveryUnavailable,
    InvalidDiscoveryURL,
    SessionExpired,
)

__all__ = ["DEFAULT_PORT", "DEFAULT_TIMEOUT", "ConsulDiscovery"]

DEFAULT_PORT = 8500
DEFAULT_TIMEOUT = 5.0
#: Connections for every request but the watches' (those have the hub's own): as many as the election engine's
#: workers (swarmha.election._engine.WORKERS), the requests one Discovery's elections can have in flight at once.
#: One connection was too few: 1,000 candidates with a session each (no Lease) renew 500 times a second at ttl
#: 6 s, and on one connection the renewals queued past the renew deadline (``python -m benchmarks scale
#: --backends consul --keys 1000 --systems swarmha``: leaders lost their terms).
REQUEST_CONNECTIONS = 4

_TRUE = {"1", "true", "yes", "on"}


class ConsulDiscovery(Discovery):
    """Discovery over a Consul agent's HTTP API; see the module docstring for the URL and the guarantees."""

    def __init__(self, url: DiscoveryURL) -> None:
        if not url.hosts:
            raise InvalidDiscoveryURL(f"consul URL {str(url)!r} names no agent: consul://HOST:8500/prefix")
        self.url = url
        p = url.params
        known = {"token", "dc", "https", "ca", "cert", "key", "timeout", "session_ttl_min"}
        unknown = sorted(set(p) - known)
        if unknown:
            raise InvalidDiscoveryURL(
                f"consul URL {str(url)!r} has unknown parameters {unknown}; known: {', '.join(sorted(known))}"
            )
        timeout = url.seconds("timeout", DEFAULT_TIMEOUT)
        self.session_ttl_min = url.seconds("session_ttl_min", SESSION_TTL_MIN)
        tls = p.get("https", "").lower() in _TRUE or "ca" in p or "cert" in p
        if "key" in p and "cert" not in p:
            raise InvalidDiscoveryURL(f"consul URL {str(url)!r}: key= needs cert=")
        ssl_context: ssl.SSLContext | None = None
        if tls:
            try:
                ssl_context = ssl.create_default_context(cafile=p.get("ca") or None)
                if "cert" in p:
                    ssl_context.load_cert_chain(p["cert"], p.get("key") or None)
            except (OSError, ssl.SSLError) as e:
                raise ConfigurationError(f"consul URL {str(url)!r}: cannot load TLS files: {e}") from e
        scheme = "https" if tls else "http"
        bases = [
            f"{scheme}://[{h}]:{port}" if ":" in h else f"{scheme}://{h}:{port}"
            for h, port in url.endpoints(DEFAULT_PORT)
        ]
        self._agents = Agents(
            bases,
            timeout=timeout,
            headers={"X-Consul-Token": p["token"]} if p.get("token") else {},
            query={"dc": p["dc"]} if p.get("dc") else {},
            ssl_context=ssl_context,
        )
        self._prefix = url.path + "/" if url.path else ""
        self._lock = threading.Lock()
        self._closed = False
        self._hubs: dict[str, Hub] = {}  # scope -> its hub (one scope, the prefix, unless the URL has none)
        self._client = Client(self._agents, connections=REQUEST_CONNECTIONS)
        # X-Consul-Index of the last read of each key, with what it returned: a watch of a key read absent tells
        # from it whether a record in the hub's snapshot came before that read (see ConsulWatch.observe).
        self._reads: dict[str, tuple[Record | None, int]] = {}

    # -- plumbing ------------------------------------------------------------------------------------

    def _k(self, key: str) -> str:
        return self._prefix + check_key(key)

    def _path(self, full_key: str) -> str:
        return "/v1/kv/" + urllib.parse.quote(full_key, safe="/")

    def _check_open(self) -> None:
        if self._closed:
            raise DiscoveryUnavailable(f"consul discovery {self.url} is closed")

    def _record(self, response: httpx.Response) -> Record | None:
        if response.status_code == 404:
            return None
        data = decode(response, "a KV read")
        if not isinstance(data, list) or len(data) != 1:
            raise DiscoveryError(f"consul answered a KV read with {data!r}, expected one entry")
        return kv_record(data[0])

    def _read(self, full_key: str) -> Record | None:
        response = self._client.request("GET", self._path(full_key))
        record = self._record(response)
        with self._lock:
            self._reads[full_key] = (record, index_of(response))
        return record

    # -- the contract --------------------------------------------------------------------------------

    def check_ttl(self, ttl: float) -> None:
        """Refuse a ttl whose session TTL (ttl/2) lies outside what the servers accept (see the module doc)."""
        session_ttl_for(check_ttl(ttl), self.session_ttl_min)

    def session(self, ttl: float) -> Session:
        """A Consul session with TTL ``ttl/2`` (invalidated ~``ttl`` after the last renewal), behaviour delete."""
        session_ttl = session_ttl_for(ttl, self.session_ttl_min)
        self._check_open()
        return ConsulSession(self._client, check_ttl(ttl), session_ttl, self.session_ttl_min)

    def _txn(self, ops: list[dict[str, Any]]) -> tuple[list[Record], list[str]]:
        """Run KV operations atomically (``PUT /v1/txn``): the Records written, or the errors that undid them."""
        body = json.dumps([{"KV": op} for op in ops]).encode()
        response = self._client.request("PUT", "/v1/txn", content=body, conflict_ok=True)
        data = decode(response, "a transaction")
        if not isinstance(data, dict):
            raise DiscoveryError(f"consul answered a transaction with {data!r}")
        if response.status_code == 409:
            errors = [str(e.get("What", e)) if isinstance(e, dict) else str(e) for e in data.get("Errors") or []]
            if any("invalid session" in e.lower() for e in errors):
                raise SessionExpired(f"consul refused a lock with an invalidated session: {'; '.join(errors)}")
            return [], errors or ["conflict"]
        if response.status_code != 200:
            raise DiscoveryError(f"consul answered a transaction with {response.status_code}: {response.text[:200]}")
        return [kv_record(r["KV"]) for r in data.get("Results") or [] if isinstance(r, dict) and "KV" in r], []

    def _write(
        self, k: str, value: str, session: Session | None, *, absent: bool = False
    ) -> tuple[Record | None, list[str]]:
        """Write ``k`` (locked by ``session`` if given; only if absent if asked) in one transaction.

        The Record carries the write's index. Errors: why Consul refused (the transaction then did nothing).
        """
        op: dict[str, Any] = {"Key": k, "Value": base64.b64encode(value.encode("utf-8")).decode()}
        op["Verb"] = "set" if session is None else "lock"
        if session is not None:
            op["Session"] = session.id
        checks: list[dict[str, Any]] = [{"Verb": "check-not-exists", "Key": k}] if absent else []
        records, errors = self._txn([*checks, op])
        if errors:
            return None, errors
        if len(records) != 1:
            raise DiscoveryError(f"consul answered a write of {k!r} without its entry")
        # The transaction answers without the value; the write just stored ours.
        return Record(value, records[0].token, records[0].session), []

    def create(self, key: str, value: str, session: Session) -> Record | None:
        """Create ``key`` locked by ``session``: one transaction ``check-not-exists`` + ``lock`` (Consul's acquire)."""
        k = self._k(key)
        self._check_open()
        record, errors = self._write(k, value, session, absent=True)
        if record is not None:
            if record.session != session.id:
                raise SessionExpired(f"consul session {session.id} did not get {k!r}: {record}")
            return record
        if any("lock delay" in e.lower() for e in errors):
            raise DiscoveryUnavailable(f"consul refused to lock {k!r}: it is in a lock-delay ({'; '.join(errors)})")
        return None

    def put(self, key: str, value: str, session: Session | None = None) -> Record:
        """Write ``key``; with a session, lock it for that session (fails if another session holds it)."""
        k = self._k(key)
        self._check_open()
        record, errors = self._write(k, value, session)
        if record is None:
            raise DiscoveryError(f"consul refused to write {k!r}: {'; '.join(errors)}")
        return record

    def get(self, key: str) -> Record | None:
        self._check_open()
        return self._read(self._k(key))

    def delete(self, key: str, token: int) -> bool:
        """Compare-and-delete: one transaction ``check-index`` + ``delete`` (False if absent or another token)."""
        k = self._k(key)
        self._check_open()
        _, errors = self._txn([{"Verb": "check-index", "Key": k, "Index": token}, {"Verb": "delete", "Key": k}])
        return not errors

    def list(self, prefix: str) -> Mapping[str, Record]:
        p = self._k(prefix) + "/"
        self._check_open()
        response = self._client.request("GET", self._path(p), params={"recurse": "true"})
        if response.status_code == 404:
            return {}
        data = decode(response, "a KV list")
        if not isinstance(data, list):
            raise DiscoveryError(f"consul answered a KV list with {data!r}")
        out: dict[str, Record] = {}
        for entry in data:
            name = entry.get("Key", "") if isinstance(entry, dict) else ""
            if name.startswith(p) and not name.endswith("/"):
                out[name[len(self._prefix) :]] = kv_record(entry)
        return out

    def _hub(self, full_key: str) -> Hub:
        """The hub of the scope ``full_key`` lies in: the URL's prefix, or without one the key's first segment."""
        if self._prefix:
            scope = self._prefix
        else:  # no prefix: watching the whole KV store would wake on every write anywhere in it
            head, slash, _ = full_key.partition("/")
            scope = head + slash
        with self._lock:
            hub = self._hubs.get(scope)
            if hub is None:
                hub = self._hubs[scope] = Hub(self._agents, self._path(scope), scope)
            return hub

    def watch(self, key: str, seen: Record | None) -> Watch:
        """A watch served by the Discovery's hub: one thread and one blocking query for every watch (see there)."""
        k = self._k(key)
        self._check_open()
        with self._lock:
            last = self._reads.get(k)
        read_index = last[1] if last is not None and last[0] == seen and last[1] > 0 else None
        hub = self._hub(k)
        w = ConsulWatch(hub, k, seen, read_index)
        hub.add(w)
        return w

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            hubs = list(self._hubs.values())
        for hub in hubs:
            hub.close()
        self._client.close()
