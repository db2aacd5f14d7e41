"""``postgresql://user:pw@h1:5432,h2:5432/DBNAME?prefix=P``: elections in a PostgreSQL database (psycopg 3).

URL: libpq's URI form, ``postgresql://`` or ``postgres://``; the path is the database. Query options swarmha reads:

``prefix=P``        key prefix (``svc/leader`` is stored as ``P/svc/leader``); default none.
``schema=NAME``     schema of swarmha's tables and functions (default ``public``; created if missing and allowed).
``timeout=SECONDS`` bound of every request, connecting included (default 5).
``poll=SECONDS``    period of the watch thread's full re-read (default 5 s while notifications arrive, 0.1 s
                    behind a transaction pooler, where it is how changes are seen).
``listen=auto|0|1`` use ``LISTEN/NOTIFY`` (``auto``: unless a pooler is detected, see below).

Every other option goes to libpq as is (``sslmode``, ``sslrootcert``, ``application_name``, ...; an option libpq
does not know is refused, naming it). ``target_session_attrs`` defaults to ``read-write``: with several hosts,
libpq connects to the one that takes writes, so the URL can list a primary and its standbys.

Tables (two, plus five functions, all in ``schema``; see :mod:`swarmha.discovery.postgres._sql`) are created on
first use in one transaction under ``pg_advisory_xact_lock`` (several processes starting at once create them once).
A role that may not create them gets an error naming ``swarmha-postgres.sql``, shipped in this package, for a DBA
to run once.

Why this is safe (READ COMMITTED, the default isolation; every write is one statement in its own transaction):

* **Expiry by the server's clock.** A session row holds ``expires_at = clock_timestamp() + ttl`` of the server;
  a key whose session row is missing or past ``expires_at`` is absent to every read. No client clock is ever
  compared with anything, so skew between hosts cannot make two leaders, and a session nobody renews expires
  within its ttl even when every client is dead.
* **Claims.** ``swarmha_claim`` locks the key's row (``SELECT ... FOR UPDATE``, after an ``INSERT ... ON CONFLICT DO
  NOTHING`` made sure it exists), so claims of one key are serialised. If a holder is there, its session row is
  deleted *only if expired* (``DELETE ... WHERE expires_at <= clock_timestamp()``): the row lock of that DELETE
  orders it with a concurrent renewal, which re-checks ``expires_at > clock_timestamp()`` under the same lock.
  Either the renewal wins (the claim sees a live holder and fails) or the claim wins (the renewal finds no row and
  raises :class:`~swarmha.errors.SessionExpired`): never both.
* **Fencing token.** Every key has one row that is never deleted; its ``token`` column is incremented in the
  claim's transaction. So tokens of a key strictly increase across terms, sessions and server restarts, and across
  a failover to a standby that had the claim's commit (synchronous replication; with asynchronous replication a
  failover can lose the last commits, claims among them, as it loses any data).
* **No session state.** No session-level advisory lock, no ``SET``, no prepared statement (psycopg's
  ``prepare_threshold=None``), no transaction spanning two requests: every request is correct on whichever server
  connection a transaction pooler (PgBouncer in transaction mode) gives it.
* **Watches** (:mod:`swarmha.discovery.postgres._watch`): ``LISTEN/NOTIFY`` on the Discovery's second connection;
  every write announces its key at commit. Behind a pooler a ``LISTEN`` would stay on whichever server connection
  ran it, so it is not used: the watch thread polls instead. A pooler is detected at connect time: the backend
  pid the server reports differs from the one the pooler handed out at startup (``listen=0|1`` overrides).

Connections: two per Discovery, whatever the number of keys and candidates: one for requests (serialised by a
lock), one for the watch thread (opened while a watch is open). Threads: one (``swarmha-postgres-watch``).

Failure modes: a server that does not answer within ``timeout`` (stopped, paused, partitioned) or a broken
connection -> :class:`~swarmha.errors.DiscoveryUnavailable` (the connection is dropped and reopened at the next
request); a read-only standby as the only host -> ``DiscoveryUnavailable`` saying so; a wrong password, a missing
database or role, a role that may not create the tables -> :class:`~swarmha.errors.DiscoveryError` naming it.
"""

from swarmha.discovery.postgres._discovery import PostgresDiscovery
from swarmha.discovery.postgres._sql import SQL_FILE

__all__ = ["SQL_FILE", "PostgresDiscovery"]
