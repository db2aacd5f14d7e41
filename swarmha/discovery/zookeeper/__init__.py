"""``zk://h1:2181,h2:2181/prefix``: the ZooKeeper backend (kazoo; ZooKeeper 3.5 or later).

URL: ``zk://[user:password@]host[:port][,host[:port]...]/prefix[?timeout=SECONDS&prepare=0|1]``; the default
port is 2181 and the path is the znode prefix (keys live at ``/prefix/svc/leader``; parents are created as
persistent znodes on first use, so the prefix need not exist, unlike a kazoo chroot). ``user:password@`` adds
ZooKeeper ``digest`` auth to every connection and creates znodes with an ACL granting that identity all rights.
``timeout`` (default 5 s) bounds every request, including the wait for a connection. ``prepare=0`` turns off
tickets (default on).

Connections, whatever the number of keys: one kazoo client for reads and watches, plus one per distinct session
``ttl`` in use (usually exactly one): **two connections per Discovery** for a process campaigning for any number
of keys with one ttl. The modules, one concern each:

* :mod:`._connection`: a kazoo client, its state, bounded requests, shared keepalive round trips, deletes sent
  once the connection is back.
* :mod:`._core`: what the parts share, built once per Discovery: the connections, one lock, the timer, the watch
  hub and the read cache. The parts get it (and each other) at construction; none calls back into the facade.
* :mod:`._entry`: the queue layout (kazoo ``Lock``'s) and :class:`~._entry.Entry`, a session's place in a queue.
* :mod:`._session`: a :class:`~swarmha.discovery.Session` is a *logical* session on the connection of its ttl,
  with a local ttl guard (the design, its guarantees and its failure modes are stated there: in short, when the
  process dies or is cut off longer than ``ttl``, the connection's ZooKeeper session expires and every key held
  through it goes at once); :class:`~._session.Owners` records which Session owns which entry and plain key.
* :mod:`._queue`: election keys as queues of entries, tickets waiting in them.
* :mod:`._steering`: a ticket next in line watches the prefix its claim lists after a win (no read when it
  stayed empty).
* :mod:`._async` and :mod:`._handler`: pipelined multi-request operations; kazoo's handler with named threads
  and lighter results.
* :mod:`._hub`: one kazoo watcher per znode fanned out to every subscriber.
* :mod:`._watch`: a watch on one key, armed through the hub and re-armed after session loss.
* :mod:`._timer`: one thread per Discovery for every session deadline and ticket turn check.
* :mod:`._discovery`: the Discovery contract over those, and nothing else.

Imports point one way: ``_discovery`` → ``_watch`` → ``_queue`` → ``_session``, ``_steering`` → ``_core`` →
``_async``, ``_connection``, ``_hub``, ``_timer``, ``_entry``.

How the contract maps to ZooKeeper, briefly: ``create`` adds an entry ``lead-<session>-<sequence>`` to the key's
queue and holds the key when it is first; the token is the entry's ``czxid``. ``delete(key, token)`` of an
election key deletes the entry with that czxid by its name (never reused, so never a successor's). A key made
by ``put`` is a plain znode (ephemeral if put with a Session) and ``put`` refuses to overwrite a queue; a plain
ephemeral key is deleted only if one of this Discovery's live Sessions put it (data versions start at 0 in every
new znode, so a delete by version could remove a successor's znode). ``release`` deletes the leader's entry by
name (one round trip; the waiting tickets' watches fire on it) and closes the Session. A ticket
(``prepare``) is a Session whose entry is queued ahead: after the holder left, its ``create`` needs no request
at all when its watch saw the only entry ahead go, else one read; its ttl clock starts at that claim, or
``ttl`` after the predecessor left if nobody claims it (a stuck owner never blocks the key for longer).

Why not kazoo's ``Lock``/``Election`` recipes: they block a thread per waiter (``Election.run`` and
``Lock.acquire`` wait on a thread each), tie the lock's life to the whole client session with no ttl guard of
their own, and expose neither the winner's czxid (our fencing token) nor a way to hand over by compare-and-delete;
the queue layout is the same, so a swarmha key and a kazoo ``Lock`` look alike in the tree.

The server clamps session timeouts to ``[minSessionTimeout, maxSessionTimeout]`` (by default 4 s .. 40 s with
``tickTime=2000``): a ``ttl`` below ``minSessionTimeout`` keeps a crashed process's keys up to
``minSessionTimeout``; lower ``tickTime``/``minSessionTimeout`` on the server for short TTLs.

Failure modes: connection loss, timeouts, a closed client → ``DiscoveryUnavailable``; an expired Session →
``SessionExpired``; auth/ACL failures and other server errors → ``DiscoveryError``. No kazoo exception escapes.
Threads: kazoo's own (three per client) and one ``swarmha-zk-timer`` per Discovery.
"""

from swarmha.discovery.zookeeper._discovery import DEFAULT_PORT, DEFAULT_TIMEOUT, ZooKeeperDiscovery

__all__ = ["DEFAULT_PORT", "DEFAULT_TIMEOUT", "ZooKeeperDiscovery"]
