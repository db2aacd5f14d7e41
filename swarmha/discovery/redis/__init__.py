"""``redis://``, ``rediss://`` and ``redis+sentinel://``: Discovery on Redis (5.0 or later; tested on 7.0), redis-py.

URL forms (``user:password@`` optional, for ``AUTH``/ACL users)::

    redis://[user:password@]HOST[:6379]/PREFIX[?options]
    rediss://[user:password@]HOST[:6380]/PREFIX[?ca=PATH&cert=PATH&key=PATH&verify=0|1]      (TLS)
    redis+sentinel://[user:password@]SENTINEL[:26379][,SENTINEL[:PORT]...]/SERVICE[/PREFIX][?options]

The path is the key prefix, as in every swarmha URL (not redis-py's database number: that is ``?db=N``). With
Sentinel the first path segment names the monitored service (``sentinel monitor SERVICE ...``) and the rest is the
prefix; ``user:password@`` authenticates to the primary, ``sentinel_user``/``sentinel_password`` to the Sentinels.
Options: ``db=N`` (default 0); ``timeout=5`` (bound of every request, seconds); ``poll=1`` (the watches' poll
period where keyspace events are off, seconds); ``events=auto|server|poll`` (see below). Unknown options are
refused. One server per ``redis://`` URL (several hosts: use Sentinel); Redis Cluster is not supported.

What it creates, for a prefix ``P`` (``NS`` = ``P//``, a name no relative key can produce):

* ``P/<key>``: a hash ``value``, ``token`` and ``session`` (absent for a key put without a session);
* ``NS session/<id>``: one per session, a string with a server-side expiry (``SET ... PX ttl``; renewals are
  ``PEXPIRE``); ``NS keys/<id>``: the set of keys bound to it, expiring with it;
* ``NS token/P/<key>``: the key's fencing-token counter, never deleted; ``NS index``: a sorted set of the data
  keys (for ``list``).

How the contract maps to Redis (the scripts are in :mod:`._scripts`, each one atomic, sent with EVALSHA and loaded
on NOSCRIPT):

* TTLs are the server's: a session is its key's ``PX`` expiry; nothing compares client clocks. A session nobody
  renews is gone ``ttl`` after its last renewal, with no client alive. A data key whose session key is gone is
  absent to every script (the first that meets it deletes it), so no key outlives its session's expiry on the
  server, whether or not anyone cleaned it up. ``Session.close`` (and ``release``, one script) delete the session
  and every key still bound to it; a successor's key has a session of its own.
* ``create`` checks the session and the key and writes the key, its token and its session binding in one script.
  The fencing token is ``max(counter + 1, server time in microseconds)`` stored back in the key's counter: strictly
  increasing on one server (restarts included, with or without persistence as long as the server clock does not
  go back past the last token), and across a Sentinel failover that lost writes unless the new primary's clock is
  behind the old one's by more than the failover took (docs/guarantees.md states the limits).
* ``delete`` is a compare-and-delete on the token in one script.
* Watches: keyspace notifications on one pub/sub connection (:mod:`._watch`). With ``events=auto`` (default) the
  client reads ``notify-keyspace-events`` and adds the classes it needs (``Kghxe``) with ``CONFIG SET``, again
  after every reconnect (a restarted server forgot it); where CONFIG is refused, the watches poll every ``poll``
  seconds instead. ``events=server``: the server is configured already (CONFIG is not touched); ``events=poll``:
  always poll. Each watch also asks the server (``PTTL``) when its holder's session should have expired, because
  Redis publishes ``expired`` only when it actually removes a key, which can lag.
* ``prepare`` gives a ticket: a session the claiming ``create`` stores (one round trip for a waiting candidate).

Connections and threads, whatever the number of keys and candidates: **two connections per Discovery** (one for
requests, which the election engine's workers share, one for pub/sub while a watch is open; with Sentinel, plus
the connections to the Sentinels it asks for the primary), and **one thread**, ``swarmha-redis-watch[PREFIX]``,
while a watch is open (it ends 2 s after the last one closed; ``close`` joins it).

Failure modes: every request is bounded by ``timeout`` (a dead connection is retried once at once); unreachable,
timed out or loading -> :class:`~swarmha.errors.DiscoveryUnavailable`; a wrong password, a read-only replica as the
target, a server without scripting (EVAL renamed away), a missing ACL permission -> a
:class:`~swarmha.errors.DiscoveryError` that says so. A Redis with ``maxmemory-policy`` ``volatile-*`` or
``allkeys-*`` may evict session keys under memory pressure (a lost session: its keys go); use ``noeviction``.
"""

from swarmha.discovery.redis._client import DEFAULT_PORT, SENTINEL_PORT
from swarmha.discovery.redis._discovery import RedisDiscovery

__all__ = ["DEFAULT_PORT", "SENTINEL_PORT", "RedisDiscovery"]
