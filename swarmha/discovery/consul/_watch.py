"""Watches: every watch of a Discovery served by one blocking recursive query (:class:`Hub`), and :class:`ConsulWatch`.

A :class:`Hub` covers a *scope* (the Discovery's key prefix). Its thread, ``swarmha-consul-watch[SCOPE]``, keeps
one blocking query ``GET /v1/kv/SCOPE?recurse&index=N&wait=...`` in flight on a connection of its own. Consul
answers it when anything under the scope changes (or after the wait, ~5 minutes), with every entry under the
scope; the hub keeps that *snapshot* and hands each watch the Record of its key, and a watch fires when that
Record differs from the one it saw. So a process waiting on any number of keys of one Discovery costs one thread,
one connection and one request per change under the prefix (or per 5 idle minutes).

Ordering: ``X-Consul-Index`` of a recursive answer is the highest index of a write or delete under the scope, so
a snapshot at index ``I`` holds every write under the scope up to ``I`` and none after it. A watch compares only
with snapshots at least as new as the read that produced the caller's ``seen`` (see :meth:`ConsulWatch.observe`):
a snapshot that predates that read is skipped, and the next one is at most one round trip away (the blocking
query returns at once when the scope's index is above the one asked for). A change made between the caller's read
and the watch's registration is therefore never missed, and a stale snapshot never fires a watch spuriously.
An index that goes backwards (a snapshot restore on the servers) starts over with a plain read, and that answer
is compared with what every watch saw whatever its index.

Failures: a failed query (agent down, timeout, 5xx) is retried with backoff (50 ms doubling to 500 ms), on the
next agent of the URL when there are several; an answer ends the break and the query resumes at the index it had
(no change is missed). If no answer comes within the URL's ``timeout`` of the break, every watch open then fails:
its :meth:`Watch.wait` raises :class:`~swarmha.errors.DiscoveryUnavailable` (callers close it and make a new one,
which the hub serves once the agent answers again).

Lifetime: the thread starts with the first watch. When the last watch closes, the query in flight is aborted at
once (its socket shut down: an HTTP request cannot be cancelled otherwise) and the thread ends :data:`HUB_IDLE`
seconds later unless a new watch comes (it then reconnects: one TCP connect). ``close()`` aborts the query and
joins the thread. Watch callbacks (:meth:`Watch.notify`) run on the hub's thread and must not block.
"""

from __future__ import annotations

import logging
import threading
import time

from swarmha._duration import go_duration
from swarmha.discovery._base import Record
from swarmha.discovery._fed import FedWatch, Outage
from swarmha.discovery.consul._client import Agents, Client, decode, index_of, kv_record
from swarmha.errors import DiscoveryError, DiscoveryUnavailable

__all__ = ["HUB_IDLE", "WATCH_WAIT", "ConsulWatch", "Hub"]

log = logging.getLogger("swarmha.discovery.consul")

#: Longest blocking-query wait the hub asks for (Consul's default wait).
WATCH_WAIT = 300.0
#: Seconds the hub's thread lingers after its last watch closed.
HUB_IDLE = 2.0


class ConsulWatch(FedWatch):
    """A watch on one key, fed by the :class:`Hub` of its Discovery (see the module docstring)."""

    def __init__(self, hub: Hub, key: str, seen: Record | None, read_index: int | None) -> None:
        super().__init__(seen)
        self._hub = hub
        self.key = key  # the full key (with the Discovery's prefix)
        # X-Consul-Index of the read that returned `seen` (used when `seen` is None), None if unknown
        self._read_index = read_index
        self._synced = False  # compared with a snapshot at least as new as that read
        self._generation = -1  # of the last snapshot observed: an older one is ignored

    def _unregister(self) -> None:
        self._hub.remove(self)

    def _predates_read(self, record: Record | None, index: int) -> bool:
        """True if a snapshot at ``index`` holding ``record`` for the key is older than the caller's read."""
        seen = self._seen
        if seen is not None:
            return index < seen.token  # the write that produced `seen` is not in the snapshot yet
        # The read found the key absent: a record in the snapshot written at or before that read was deleted by
        # then. Without the read's index, assume the snapshot is newer (at worst a spurious wake-up).
        return record is not None and self._read_index is not None and record.token <= self._read_index

    def observe_at(self, record: Record | None, index: int | None, generation: int) -> None:
        """(The hub) snapshot number ``generation`` at ``index`` (None: compare whatever the index) has ``record``."""
        with self._lock:
            if self._closed or self._error is not None or generation <= self._generation:
                return
            self._generation = generation
            if not self._synced:
                if index is not None and self._predates_read(record, index):
                    return
                self._synced = True
            if record != self._seen:
                self._seen = record
                self._changed = True
                self._kick()


class Hub:
    """One blocking recursive query on ``scope`` for every :class:`ConsulWatch` of it; see the module docstring."""

    def __init__(self, agents: Agents, path: str, scope: str) -> None:
        self._agents = agents
        self._path = path  # /v1/kv/<scope, quoted>
        self._scope = scope
        self._cond = threading.Condition()
        self._watches: dict[str, set[ConsulWatch]] = {}
        self._snapshot: dict[str, Record] | None = None
        self._snapshot_index: int | None = None  # None: compare whatever the index (after it went backwards)
        self._generation = 0
        self._index = 0  # to block on; 0: a plain read first
        self._client: Client | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, watch: ConsulWatch) -> None:
        """Serve ``watch``: compare it with the last snapshot now, and with every later one."""
        with self._cond:
            if self._closed:
                watch.fail(DiscoveryUnavailable(f"consul watch on {watch.key}: the discovery is closed"))
                return
            self._watches.setdefault(watch.key, set()).add(watch)
            snapshot, index, generation = self._snapshot, self._snapshot_index, self._generation
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"swarmha-consul-watch[{self._scope}]", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        if snapshot is not None:
            watch.observe_at(snapshot.get(watch.key), index, generation)

    def remove(self, watch: ConsulWatch) -> None:
        client = None
        with self._cond:
            group = self._watches.get(watch.key)
            if group is not None:
                group.discard(watch)
                if not group:
                    del self._watches[watch.key]
            if not self._watches:
                client, self._client = self._client, None  # nobody waits for the query in flight: drop it
            self._cond.notify_all()
        if client is not None:
            client.abort()

    def close(self) -> None:
        """Close every watch, abort the query in flight and join the thread. Idempotent."""
        with self._cond:
            self._closed = True
            watches = [w for group in self._watches.values() for w in group]
            client, thread = self._client, self._thread
            self._client = None
            self._cond.notify_all()
        for watch in watches:
            watch.close()
        if client is not None:
            client.abort()
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._agents.timeout + 5.0)

    def _run(self) -> None:
        outage = Outage(self._agents.timeout)
        client: Client | None = None
        try:
            while True:
                with self._cond:
                    if not self._watches and not self._closed:
                        self._cond.wait_for(lambda: bool(self._watches) or self._closed, HUB_IDLE)
                    if self._closed or not self._watches:
                        self._thread = None  # under the lock: a watch added from now on starts a new thread
                        return
                    if self._client is None:
                        self._client = Client(self._agents)
                    client, index = self._client, self._index
                try:
                    answered = self._query(client, index)
                    error: DiscoveryError | None = None
                except DiscoveryError as e:
                    answered, error = False, e
                except Exception as e:  # never let the thread die silently
                    log.exception("consul watch on %s: unexpected error", self._scope)
                    answered, error = False, DiscoveryError(f"consul watch on {self._scope}: {e!r}")
                with self._cond:
                    if self._closed:
                        return
                    dropped = client is not self._client  # aborted on purpose (no watch left): not a break
                    if error is not None and not dropped:
                        self._client = None  # a fresh connection for the retry
                if dropped or error is not None:
                    client.close()
                if answered:
                    outage.ok()
                    continue
                if dropped:
                    continue
                if outage.since is None:
                    log.debug("consul watch on %s broke (%s); resuming", self._scope, error)
                if outage.failed(time.monotonic()):
                    with self._cond:
                        failed = [w for group in self._watches.values() for w in group]
                        self._watches.clear()
                    failure = DiscoveryUnavailable(f"consul watches on {self._scope} could not be resumed: {error}")
                    for watch in failed:
                        watch.fail(failure)
                    continue
                outage.pause(self._cond, lambda: self._closed)
        finally:
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None
                if self._client is client:
                    self._client = None
            if client is not None:
                client.close()

    def _query(self, client: Client, index: int) -> bool:
        """One (blocking, once an index is known) recursive read; deliver its snapshot. True when it answered."""
        params = {"recurse": "true"}
        read_timeout = None
        if index > 0:
            # Consul adds up to wait/16 of jitter: ask for 16/17 of WATCH_WAIT.
            params.update(index=str(index), wait=go_duration(WATCH_WAIT * 16 / 17))
            read_timeout = WATCH_WAIT + self._agents.timeout
        response = client.request("GET", self._path, params=params, read_timeout=read_timeout)
        snapshot: dict[str, Record] = {}
        if response.status_code != 404:  # 404: nothing under the scope (yet)
            data = decode(response, "a recursive KV read")
            if not isinstance(data, list):
                raise DiscoveryError(f"consul answered a recursive KV read with {data!r}")
            for entry in data:
                name = entry.get("Key") if isinstance(entry, dict) else None
                if isinstance(name, str) and name.startswith(self._scope) and not name.endswith("/"):
                    snapshot[name] = kv_record(entry)
        new_index = index_of(response)
        # Consul's rules for blocking-query clients: an index that went backwards (a snapshot restore) starts over
        # with a plain read; one that is not above 0 (a Consul bug) blocks from 1 rather than spinning.
        went_back = new_index < index
        trusted = new_index > 0 and not went_back
        with self._cond:
            if self._closed:
                return True
            self._index = 0 if went_back else max(new_index, 1)
            self._snapshot = snapshot
            self._snapshot_index = new_index if trusted else None
            self._generation += 1
            generation = self._generation
            watches = [w for group in self._watches.values() for w in group]
        for watch in watches:
            watch.observe_at(snapshot.get(watch.key), new_index if trusted else None, generation)
        return True
