"""``consul://HOST[:PORT][,HOST[:PORT]...]/prefix``: Discovery on Consul's KV store and sessions (HTTP API).

URL parameters (all optional)::

    token=SECRET          ACL token, sent as the X-Consul-Token header
    dc=NAME               datacenter (default: the agent's)
    https=1               talk HTTPS (implied by ca= or cert=)
    ca=/path/ca.pem       CA bundle that verifies the agent's certificate
    cert=/path/c.pem      client certificate (with key=/path/k.pem) for agents with verify_incoming
    key=/path/k.pem
    timeout=5             seconds every request may take (blocking queries: their wait plus this)
    session_ttl_min=10s   the servers' ``session_ttl_min`` (Consul's default: 10s). Set it only when your
                          servers run with a lower one; the servers still refuse what their setting refuses.

Default port 8500; with several hosts, a host that fails at the transport level is skipped for the next call.

Connections and threads, whatever the number of keys: **at most five connections and one thread per Discovery**
-- a pool of at most four connections (as many as the election engine's workers; one while requests come one at
a time) for reads, writes and renewals, and one connection and one thread (``swarmha-consul-watch[PREFIX]``)
for every watch. The modules, one concern each:

* :mod:`._client`: the agents of a URL, an HTTP client whose connections another thread can abort, and the
  translation of every failure into :class:`~swarmha.errors.DiscoveryError`.
* :mod:`._session`: the session TTL rules and :class:`~swarmha.discovery.Session` over Consul sessions.
* :mod:`._watch`: the watch hub (one blocking recursive query on the prefix for every watch) and the watches.
* :mod:`._discovery`: the Discovery contract over those.

How the Discovery contract maps onto Consul:

* A :class:`Session` is a Consul session with ``Behavior=delete`` (an expired leader's key disappears instead
  of staying behind with a dead address), ``LockDelay=0s`` (no wait after a crash on top of the TTL), and the
  default ``serfHealth`` check of the agent it was created on.
* **Session TTL = ttl/2.** Consul invalidates a TTL session ``2 x TTL`` after its last renewal (the server
  multiplies every TTL by ``SessionTTLMultiplier = 2`` for grace; the documented contract only promises "not
  before TTL"). With TTL = ttl/2 the key vanishes ``ttl`` after the last renewal the server received, so the
  **crash failover bound is ttl** (plus one blocking-query round trip), while a leader that cannot renew demotes
  itself at ``renew_deadline`` (default 2/3 ttl) -- before the server lets anyone else in.
* Consul refuses session TTLs outside ``[session_ttl_min, 86400s]`` (``session_ttl_min`` defaults to 10s), so
  ``ttl`` must lie in ``[2 x session_ttl_min, 172800s]`` -- ``[20s, 48h]`` with default servers. Anything else
  raises :class:`~swarmha.errors.ConfigurationError` naming those numbers, before a request is sent; should the
  servers refuse a TTL anyway (their ``session_ttl_min`` is higher than the URL claims), that answer is turned
  into the same error.
* :meth:`ConsulDiscovery.create` is Consul's acquire (the ``lock`` verb of ``PUT /v1/txn``, the same state
  change as ``PUT /v1/kv/KEY?acquire=SESSION``, but answered with the entry, so one round trip yields the
  index), preceded in the same transaction by ``check-not-exists``: a key that exists without a lock (say, a
  leader key Swarm classic left behind with ``behavior=release``) is not taken over; delete it once.
* The fencing token is the key's ``ModifyIndex`` after the acquire: the Raft index of the acquiring write,
  larger than every index of any earlier term on the key (``CreateIndex`` would stay put if a key left behind
  unlocked were acquired again, and ``LockIndex`` restarts at 1 when a key is deleted and re-created).
  Any later write to the key changes it, so the token always names "the write that made the current state".
  An acquire refused because of Consul's lock-delay (set by some other client's session) raises
  :class:`~swarmha.errors.DiscoveryUnavailable` so that callers back off instead of spinning.
* :meth:`ConsulDiscovery.delete` is compare-and-delete in one transaction, ``check-index`` + ``delete``: one
  atomic write, so a waiter wakes once and finds the key gone (no release-then-delete window in which the key
  exists unlocked), and an absent key answers False (a plain ``DELETE ?cas=`` answers true for it).
* :meth:`ConsulDiscovery.watch`: every watch of a Discovery is served by one **hub** (:mod:`._watch`): one
  thread keeps one blocking query ``GET /v1/kv/PREFIX/?recurse&index=N&wait=5m`` in flight, keeps the snapshot
  Consul answers with (every entry under the prefix) and fires each watch whose key's Record differs from the
  one it saw. A watch compares only with snapshots at least as new as the caller's read (the ``X-Consul-Index``
  of a recursive answer is the highest index written under the prefix), so a change between that read and the
  watch is not missed. :meth:`Watch.notify` is supported: the election engine parks no thread per waiting
  candidate. An idle process sends one request per 5 minutes for all its watches (renewals aside); a leader
  waiting on its own key between renewals costs nothing more. A URL without a prefix gets one hub per first key
  segment (``svc/`` for ``svc/leader``) rather than one on the whole KV store.
* **The cost of a change**: each change under the prefix (an acquire, a release, an expiry, a ``put``) sends
  every process watching the prefix the whole prefix once: about 180 bytes per key, so ~55 KB with 300 keys and
  ~185 KB with 1,000 (measured against the double, entries with a 30-character value and a session). Changes
  that come faster than a round trip are coalesced into one answer. Session renewals change nothing in the KV
  store and wake nobody. For tens of thousands of keys that change often, split them over several prefixes
  (one Discovery each).
* A failed blocking query is retried with backoff and resumed at its index (nothing is missed); if the agents do
  not answer within ``timeout``, every open watch fails with :class:`~swarmha.errors.DiscoveryUnavailable`, and
  new watches work once an agent answers. :meth:`Watch.close` of the last watch aborts the query in flight
  (its socket is shut down); :meth:`ConsulDiscovery.close` does so at once and joins the thread.

Failure modes: every request is bounded (``timeout``); transport errors, timeouts, 5xx answers and "no cluster
leader" raise :class:`~swarmha.errors.DiscoveryUnavailable`; an unknown session (renew 404, acquire on an
invalidated session) raises :class:`~swarmha.errors.SessionExpired`; 403 and other 4xx answers raise
:class:`~swarmha.errors.DiscoveryError` with Consul's message. No httpx exception escapes.
"""

from swarmha.discovery.consul._discovery import DEFAULT_PORT, ConsulDiscovery
from swarmha.discovery.consul._session import SESSION_TTL_MAX, SESSION_TTL_MIN, session_ttl_for

__all__ = ["DEFAULT_PORT", "SESSION_TTL_MAX", "SESSION_TTL_MIN", "ConsulDiscovery", "session_ttl_for"]
