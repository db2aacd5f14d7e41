"""Watches: every watch of a Discovery served by one pub/sub connection (:class:`Hub`), and :class:`RedisWatch`.

The hub's thread, ``swarmha-redis-watch[PREFIX]``, keeps one ``PSUBSCRIBE __keyspace@DB__:PREFIX/*`` on a
connection of its own and wakes the watches of the key (or of the session) an event names: ``hset``/``del`` on a
data key, ``expired``/``del`` on a session key (every key bound to that session is absent from then on). Events
carry no data: a ``del``/``expired`` fires the watches that saw a record, with
:attr:`~swarmha.discovery.Watch.known_absent` set; a write fires those that saw the key absent, and for those that
saw a record the hub reads the key once (is it a change, or the late event of the write they saw?). Session
renewals (``expire`` events) wake nobody.

No change is missed between the caller's read and the watch: the hub numbers the events it receives, every read
notes the number before it is sent, and a new watch fires at once if an event for its key (or its holder's
session) arrived since. A read made before the current subscription is not trusted (the key is read again). When
the pub/sub connection breaks, every watch fires (its caller reads again) and the hub subscribes anew, asking the
server to publish the events first (``CONFIG SET notify-keyspace-events``: a restarted server forgot it); with
Sentinel it also follows the primary when the Sentinels name a new one. If that does not work within the URL's
``timeout``, every open watch fails with :class:`~swarmha.errors.DiscoveryUnavailable`. A connection that goes
silent without breaking (a partition, a NAT that forgot the flow) is found by a ``PING`` after :data:`PING_IDLE`
quiet seconds that gets no answer within ``timeout``, and handled as a break.

Expiry: Redis deletes an expired key when it is next touched or when its active expiry cycle finds it, and only
then publishes ``expired``. So each watch also knows when its holder's session should expire by the server's
``PTTL`` (read with the record) and asks the server again then (:meth:`Watch.recheck_at`): one ``PTTL`` per
session, not per key (answers are shared by the hub), which touches the key and makes the server expire it. A
crashed holder's key is therefore seen gone within a round trip of its expiry on the server. A live holder's
renewals publish ``expire`` events, each moving that time on by the session's ttl (read from the session key with
the first ``PTTL``), so watching a live holder sends no request.

Poll fallback: where the server's CONFIG may not be used (renamed, ACL) and ``events=server`` was not given, the
hub reads every watched key every ``poll`` seconds (one script, 500 keys a round trip) instead of subscribing.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from redis import exceptions as rx

from swarmha.discovery._base import Record
from swarmha.discovery._fed import FedWatch, Outage
from swarmha.discovery.redis._client import Link, enable_events
from swarmha.errors import DiscoveryError, DiscoveryUnavailable

__all__ = ["HUB_IDLE", "Hub", "RedisWatch"]

log = logging.getLogger("swarmha.discovery.redis")

#: Seconds the hub's thread lingers after its last watch closed.
HUB_IDLE = 2.0
#: Quiet seconds on the pub/sub connection after which the hub sends a PING (no answer within timeout: a break).
PING_IDLE = 5.0
#: Seconds after the server's expiry time at which a watch asks whether its holder's session is gone.
GRACE = 0.005
_READ_BATCH = 500
_REMEMBER = 4096
_MAYBE = Record("", -1)  # "the key changed, read it": what a watch woken by an event saw
_GONE = ("del", "expired", "evicted")


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisWatch(FedWatch):
    """A watch on one data key; ``holder``: the session of the record seen, ``deadline``: when it should expire."""

    def __init__(self, hub: Hub, key: str, seen: Record | None, changed: bool, deadline: float | None) -> None:
        super().__init__(seen, changed)
        self._hub = hub
        self.key = key
        self.holder = seen.session if seen is not None else None
        self._deadline = deadline if self.holder is not None else None

    def _unregister(self) -> None:
        self._hub.remove(self)

    def recheck_at(self) -> float | None:
        return self._deadline

    def hint(self) -> None:
        """The key may have changed (or the watch was blind for a while): wake the caller to read it."""
        with self._lock:
            if self._closed:
                return
            self._seen = _MAYBE
            self._changed = True
            self._kick()

    def gone(self, session: str | None = None) -> bool:
        """The key was deleted (``session``: that session ended). Fires if the record seen was there (and held by
        ``session``); False if the watch cannot tell (it saw the key change without reading it)."""
        with self._lock:
            seen = self._seen
            if self._closed or seen is None:
                return True
            if session is not None and seen is not _MAYBE and seen.session != session:
                return True
            self._seen = None
            self._changed = True
            self._kick()
            return True

    def written(self) -> bool:
        """The key was written. Fires if the watch saw it absent; False if a read must tell (it saw a record)."""
        with self._lock:
            if self._closed:
                return True
            if self._seen is not None:
                return False
            self._seen = _MAYBE
            self._changed = True
            self._kick()
            return True

    def _check_holder(self) -> None:
        """The holder's session should have expired by now: ask the server (one answer shared per session)."""
        holder = self.holder
        if holder is None:
            self._deadline = None
            return
        try:
            deadline = self._hub.session_deadline(holder)
        except DiscoveryError as e:
            log.debug("session check for %s failed: %s", self.key, e)
            self._deadline = time.monotonic() + self._hub.poll
            self.hint()  # may have changed: the caller reads (and meets the error itself)
            return
        self._deadline = deadline
        if deadline is None:
            self.gone(holder)

    def wait(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            due = self._deadline
            if due is not None and time.monotonic() >= due:
                self._check_holder()
            limits = [t for t in (end, self._deadline) if t is not None]
            remaining = None if not limits else max(0.0, min(limits) - time.monotonic())
            if super().wait(remaining):
                return True
            if self._closed or self._interrupted or self._error is not None:
                return False
            if end is not None and time.monotonic() >= end:
                return False


class Hub:
    """Every watch of one Discovery on one pub/sub connection (or one poll loop); see the module docstring."""

    def __init__(
        self,
        link: Link,
        namespace: str,
        pattern: str,
        read_many: Callable[[list[str]], list[Any]],
        check: Callable[[str], tuple[int, int | None]],
    ) -> None:
        self._link = link
        self._ns = namespace  # "<prefix>//": session keys are <ns>session/<sid>
        self._pattern = pattern
        self._read_many = read_many
        self._check = check
        self.poll = link.target.poll
        self._timeout = link.target.timeout
        self._cond = threading.Condition()
        self._by_key: dict[str, set[RedisWatch]] = {}
        self._by_session: dict[str, set[RedisWatch]] = {}
        self.seq = 0  # events received (and subscriptions made) so far
        self.floor = 0  # reads noted before this number may have missed an event
        # "k:<key>" / "s:<sid>" -> (seq, name) of its last event
        self._recent: collections.OrderedDict[str, tuple[int, str]] = collections.OrderedDict()
        self._deadlines: collections.OrderedDict[str, float | None] = collections.OrderedDict()  # sid -> expiry
        self._ttls: collections.OrderedDict[str, float] = collections.OrderedDict()  # sid -> its ttl in seconds
        self._mode: str | None = None  # "events" while subscribed, "poll" while polling, None: neither yet
        self._error: DiscoveryError | None = None
        self._pubsub: Any = None
        self._client: Any = None
        self._primary: tuple[str, int] | None = None
        self._heard = 0.0  # when the pub/sub connection last delivered anything
        self._pinged: float | None = None  # when a PING went unanswered so far
        self._thread: threading.Thread | None = None
        self._idle_since: float | None = None
        self._closed = False

    # -- the callers' side ---------------------------------------------------------------------------------

    def ready(self) -> None:
        """Start the thread if need be and wait (up to the URL's timeout) until it subscribed or chose to poll."""
        with self._cond:
            if self._closed:
                raise DiscoveryError("redis discovery is closed")
            self._start()
            self._cond.wait_for(
                lambda: self._mode is not None or self._error is not None or self._closed, self._timeout
            )
            if self._mode is not None:
                return
            error = self._error
        raise error or DiscoveryUnavailable(
            f"redis at {self._link.target.where}: no subscription within {self._timeout}s"
        )

    def add(self, watch: RedisWatch, seq: int) -> bool:
        """Serve ``watch``, whose caller's read was made when the hub had received ``seq`` events. False: events
        since then leave its state unknown, and the caller must read the key and :meth:`RedisWatch.observe` it."""
        with self._cond:
            if self._closed:
                watch.fail(DiscoveryError("redis discovery is closed"))
                return True
            self._by_key.setdefault(watch.key, set()).add(watch)
            holder = watch.holder
            if holder is not None:
                self._by_session.setdefault(holder, set()).add(watch)
            self._start()
            if holder is not None and (
                self._deadlines.get(holder, 0.0) is None or self._recent.get("s:" + holder, (0, ""))[0] > seq
            ):
                return watch.gone(holder)
            if seq < self.floor:
                return False
            last, event = self._recent.get("k:" + watch.key, (0, ""))
            if last <= seq:
                return True
            return watch.gone() if event in _GONE else watch.written()

    def remove(self, watch: RedisWatch) -> None:
        with self._cond:
            for index, name in ((self._by_key, watch.key), (self._by_session, watch.holder)):
                if name is None:
                    continue
                group = index.get(name)
                if group is not None:
                    group.discard(watch)
                    if not group:
                        del index[name]

    def session_deadline(self, sid: str) -> float | None:
        """When session ``sid`` expires by the server's PTTL (monotonic, plus a little), or None if it is gone.

        Asks the server only when the last answer has run out: its renewals (``expire`` events) move the answer
        on by the session's ttl, which the first question also read (the session key holds it)."""
        with self._cond:
            if sid in self._deadlines:
                known = self._deadlines[sid]
                if known is None or known > time.monotonic():
                    return known
        sent = time.monotonic()
        pttl, ttl_ms = self._check(sid)
        deadline = None if pttl == -2 else sent + (pttl / 1000.0 if pttl >= 0 else self.poll) + GRACE
        self.note_session(sid, deadline, ttl_ms)
        return deadline

    def note_session(self, sid: str, deadline: float | None, ttl_ms: int | None = None) -> None:
        """Remember when ``sid`` expires (None: it is gone; a gone session stays gone) and its ttl if known."""
        with self._cond:
            if ttl_ms is not None:
                self._ttls[sid] = ttl_ms / 1000.0
                self._ttls.move_to_end(sid)
                while len(self._ttls) > _REMEMBER:
                    self._ttls.popitem(last=False)
            if sid in self._deadlines and self._deadlines[sid] is None:
                return
            self._deadlines[sid] = deadline
            self._deadlines.move_to_end(sid)
            while len(self._deadlines) > _REMEMBER:
                self._deadlines.popitem(last=False)

    def close(self) -> None:
        """Fail every watch, stop the thread (aborting its read) and wait for it. Idempotent."""
        with self._cond:
            self._closed = True
            watches = [w for group in self._by_key.values() for w in group]
            thread, self._thread = self._thread, None
            pubsub = self._pubsub
            self._cond.notify_all()
        for w in watches:
            w.close()
        if pubsub is not None:
            _abort(pubsub)
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    # -- the thread ----------------------------------------------------------------------------------------

    def _start(self) -> None:
        """Start the thread if it is not running (caller holds the lock)."""
        self._idle_since = None
        if self._thread is None and not self._closed:
            self._error = None  # of an earlier thread: this one tries afresh
            scope = self._ns[:-2] or "*"
            self._thread = threading.Thread(target=self._run, name=f"swarmha-redis-watch[{scope}]", daemon=True)
            self._thread.start()

    def _watches(self) -> list[RedisWatch]:
        with self._cond:
            return [w for group in self._by_key.values() for w in group]

    def _run(self) -> None:
        outage = Outage(self._timeout)
        try:
            while self._keep_running():
                try:
                    if self._mode is None:
                        self._connect()
                        outage.ok()
                    if self._mode == "events":
                        self._listen()
                    else:
                        self._poll()
                except (DiscoveryError, rx.RedisError, OSError, ValueError, AttributeError) as e:
                    if self._closed:
                        return
                    self._broke(e)
                    if outage.failed(time.monotonic()):
                        self._fail_all(e)
                    outage.pause(self._cond, lambda: self._closed)
        finally:
            if self._closed:
                self._disconnect()

    def _keep_running(self) -> bool:
        with self._cond:
            if self._closed:
                return False
            if self._by_key:
                self._idle_since = None
                return True
            now = time.monotonic()
            if self._idle_since is None:
                self._idle_since = now
            if now - self._idle_since < HUB_IDLE:
                return True
            # Disconnect under the lock: a watch added right after this starts a new thread with a new connection.
            self._disconnect()
            self._thread = None
            self._mode = None
            return False

    def _connect(self) -> None:
        """Subscribe (after asking the server for keyspace events), or choose to poll; wake every watch."""
        events = self._link.target.events
        use_events = events == "server" or (events == "auto" and enable_events(self._link))
        if use_events:
            self._primary = self._link.primary()
            # Keep the client: when it is garbage-collected it closes its pool, the subscription's connection included.
            self._client = client = self._link.new_client(retry=False)
            pubsub = client.pubsub()
            self._pubsub = pubsub
            pubsub.psubscribe(self._pattern)
            deadline = time.monotonic() + self._timeout
            while True:  # the subscription is in force once the server confirmed it
                message = pubsub.get_message(timeout=max(0.01, deadline - time.monotonic()))
                if message is not None and message.get("type") == "psubscribe":
                    break
                if time.monotonic() >= deadline:
                    raise DiscoveryUnavailable(f"redis at {self._link.target.where} did not confirm PSUBSCRIBE")
        self._heard, self._pinged = time.monotonic(), None
        with self._cond:
            self.seq += 1
            self.floor = self.seq
            self._mode = "events" if use_events else "poll"
            self._error = None
            watches = [w for group in self._by_key.values() for w in group] if use_events else []
            self._cond.notify_all()
        for w in watches:  # events may have been missed while there was no subscription
            w.hint()

    def _listen(self) -> None:
        """Handle the events of up to one second (then look at idleness, and at the primary with Sentinel).

        A connection that went silent (a peer or a middlebox that vanished without a reset) is found by a PING
        after :data:`PING_IDLE` quiet seconds: no answer within the URL's timeout counts as a break."""
        assert self._pubsub is not None
        now = time.monotonic()
        end = now + (min(1.0, self.poll) if self._primary is not None else 1.0)
        if self._pinged is not None and now - self._pinged > self._timeout:
            raise DiscoveryUnavailable(
                f"redis at {self._link.target.where}: no answer to PING on the pub/sub connection"
            )
        if self._pinged is None and now - self._heard > PING_IDLE:
            self._pubsub.ping()
            self._pinged = now
        while time.monotonic() < end and not self._closed:
            message = self._pubsub.get_message(timeout=max(0.0, end - time.monotonic()))
            if message is None:
                continue
            self._heard, self._pinged = time.monotonic(), None
            if message.get("type") == "pmessage":
                self._event(str(message["channel"]), str(message["data"]))
        if self._primary is not None:
            try:
                primary = self._link.primary()
            except DiscoveryError as e:  # the Sentinels are out of reach: the primary still serves this subscription
                log.debug("asking the Sentinels for the primary failed: %s", e)
                return
            if primary != self._primary:
                self._link.follow_primary()
                raise DiscoveryUnavailable(f"the Sentinels name a new primary {primary}")

    def _event(self, channel: str, event: str) -> None:
        name = channel.partition(":")[2]
        session_prefix = self._ns + "session/"
        if name.startswith(session_prefix):
            sid = name[len(session_prefix) :]
            if event not in _GONE:
                ttl = self._ttls.get(sid)
                if event == "expire" and ttl is not None:  # a renewal: it expires a ttl from now at the latest
                    self.note_session(sid, time.monotonic() + ttl + GRACE)
                return
            self.note_session(sid, None)
            for w in self._note("s:" + sid, event, self._by_session.get(sid)):
                w.gone(sid)
        elif not name.startswith(self._ns):  # a data key (the namespace's own keys start with "<prefix>//")
            watches = self._note("k:" + name, event, self._by_key.get(name))
            if event in _GONE:
                for w in watches:
                    w.gone()
                return
            unsure = [w for w in watches if not w.written()]
            if unsure:  # they saw a record: is this write a change, or the late event of the write they saw?
                try:
                    record = self._read_many([name])[0]
                except DiscoveryError:
                    for w in unsure:
                        w.hint()
                    return
                for w in unsure:
                    w.observe(record)

    def _note(self, label: str, event: str, group: set[RedisWatch] | None) -> list[RedisWatch]:
        """Number the event and remember it for ``label``; the watches to tell (a copy of ``group``)."""
        with self._cond:
            self.seq += 1
            self._recent[label] = (self.seq, event)
            self._recent.move_to_end(label)
            while len(self._recent) > _REMEMBER:
                _, (dropped, _) = self._recent.popitem(last=False)
                self.floor = max(self.floor, dropped)
            return list(group or ())

    def _poll(self) -> None:
        """Read every watched key (in batches) and wake the watches whose key differs; then wait ``poll``."""
        keys = sorted({w.key for w in self._watches()})
        for start in range(0, len(keys), _READ_BATCH):
            batch = keys[start : start + _READ_BATCH]
            records = self._read_many(batch)
            with self._cond:
                groups = [list(self._by_key.get(k, ())) for k in batch]
            for group, record in zip(groups, records, strict=True):
                for w in group:
                    w.observe(record)
        with self._cond:
            self._cond.wait_for(lambda: self._closed, self.poll)

    def _broke(self, error: BaseException) -> None:
        """The subscription (or a poll) failed: drop the connection and wake every watch to read again."""
        log.info("redis watch on %s broke: %s", self._pattern, error)
        was = self._mode
        self._disconnect()
        with self._cond:
            self._mode = None
        if was == "events":
            for w in self._watches():
                w.hint()

    def _fail_all(self, error: BaseException) -> None:
        failure = error if isinstance(error, DiscoveryError) else DiscoveryUnavailable(str(error))
        with self._cond:
            self._error = failure
            self._cond.notify_all()
        for w in self._watches():
            w.fail(failure)

    def _disconnect(self) -> None:
        pubsub, self._pubsub, self._client = self._pubsub, None, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                pubsub.close()
            with contextlib.suppress(Exception):
                pubsub.connection_pool.disconnect()


def _abort(pubsub: Any) -> None:
    """Wake the hub's thread from a blocking read on ``pubsub``'s socket (any thread; never raises)."""
    with contextlib.suppress(Exception):
        pubsub.connection._sock.shutdown(socket.SHUT_RDWR)
