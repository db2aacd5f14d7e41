"""The SQL of the PostgreSQL backend, written once: the schema (what ``swarmha-postgres.sql`` holds) and every
statement a :class:`~swarmha.discovery.postgres.PostgresDiscovery` sends.

Every statement names its tables with the schema the URL chose (``schema=``, default ``public``): :func:`render`
puts the quoted schema name in. ``swarmha-postgres.sql`` next to this module is :func:`schema_sql` for ``public``
(a test keeps the two equal).

Two tables and five functions:

``swarmha_sessions (id, ttl, expires_at)``
    One row per TTL session; ``expires_at`` is the *server's* ``clock_timestamp() + ttl`` at the last renewal.
``swarmha_keys (key, value, token, session)``
    One row per key ever written, never deleted: ``value IS NULL`` means absent, ``token`` is the last fencing
    token the key was given (so the next one is larger, whatever happened in between). A new token is the larger
    of that plus one and the next value of the sequence ``swarmha_token``: store-wide, so tokens of different
    keys tell which was written first (the election's registry orders candidates of equal priority by it). A
    row whose ``session`` is missing or expired by the server's clock is absent to every read.
``swarmha_claim`` / ``swarmha_put``
    Create-if-absent and create-or-overwrite, as one call each (one round trip), with the row locks described
    in the package docstring. A claim may create its session too (a ticket, see ``PostgresDiscovery.prepare``).

Notifications on the schema's channel carry ``C<key>`` (claimed or overwritten: read it) or ``D<key>`` (deleted,
or its session closed: absent from that commit on); an empty payload (a key too long for one) means "read every
key".
``swarmha_close``
    Ends a session: its keys first (row locks in the order a claim takes them), then the session row.
``swarmha_schema_version()``
    What a Discovery asks first: the schema is there and of this version.
"""

from __future__ import annotations

from pathlib import Path

from psycopg import sql

__all__ = ["SCHEMA_VERSION", "SQL_FILE", "SessionExpiredState", "Statements", "render", "schema_sql"]

SCHEMA_VERSION = 3
#: The DDL for ``schema=public``, shipped with the package for a DBA to run (see the package docstring).
SQL_FILE = Path(__file__).with_name("swarmha-postgres.sql")
#: The SQLSTATE the functions raise for a session that is gone or expired.
SessionExpiredState = "SWSE1"

# {s} is the quoted schema name. Statements are separated by a line holding only ";;" (function bodies hold ';').
_DDL = f"""
CREATE TABLE IF NOT EXISTS {{s}}.swarmha_sessions (
    id text PRIMARY KEY,
    ttl interval NOT NULL,
    expires_at timestamptz NOT NULL
)
;;
CREATE TABLE IF NOT EXISTS {{s}}.swarmha_keys (
    key text PRIMARY KEY,
    value text,
    token bigint NOT NULL DEFAULT 0,
    session text
)
;;
CREATE SEQUENCE IF NOT EXISTS {{s}}.swarmha_token
;;
CREATE INDEX IF NOT EXISTS swarmha_keys_session ON {{s}}.swarmha_keys (session)
;;
CREATE INDEX IF NOT EXISTS swarmha_sessions_expires_at ON {{s}}.swarmha_sessions (expires_at)
;;
CREATE OR REPLACE FUNCTION {{s}}.swarmha_claim(
    p_key text, p_value text, p_session text, p_channel text, p_new_ttl float8 DEFAULT NULL)
RETURNS TABLE (claimed boolean, value text, token bigint, session text)
LANGUAGE plpgsql AS $fn$
DECLARE
    r record;
    n bigint;
BEGIN
    -- p_new_ttl: the session is new (a ticket); it is created with the claim, and only if the claim succeeds.
    IF p_new_ttl IS NULL THEN
        PERFORM 1 FROM {{s}}.swarmha_sessions s WHERE s.id = p_session AND s.expires_at > clock_timestamp();
        IF NOT FOUND THEN
            RAISE EXCEPTION 'swarmha session % has expired', p_session USING ERRCODE = '{SessionExpiredState}';
        END IF;
    END IF;
    INSERT INTO {{s}}.swarmha_keys AS k (key) VALUES (p_key) ON CONFLICT (key) DO NOTHING;
    SELECT k.value, k.token, k.session INTO r FROM {{s}}.swarmha_keys k WHERE k.key = p_key FOR UPDATE;
    IF r.value IS NOT NULL THEN
        IF r.session IS NULL THEN
            RETURN QUERY SELECT false, r.value, r.token, r.session;
            RETURN;
        END IF;
        IF r.session = p_session THEN
            RETURN QUERY SELECT r.value = p_value, r.value, r.token, r.session;
            RETURN;
        END IF;
        -- The holder's session goes only if it expired by this server's clock; the row lock the DELETE takes
        -- orders it with a concurrent renewal (which re-checks expires_at under the same lock).
        DELETE FROM {{s}}.swarmha_sessions s WHERE s.id = r.session AND s.expires_at <= clock_timestamp();
        IF NOT FOUND THEN
            PERFORM 1 FROM {{s}}.swarmha_sessions s WHERE s.id = r.session;
            IF FOUND THEN
                RETURN QUERY SELECT false, r.value, r.token, r.session;
                RETURN;
            END IF;
        END IF;
    END IF;
    IF p_new_ttl IS NOT NULL THEN
        INSERT INTO {{s}}.swarmha_sessions (id, ttl, expires_at)
        VALUES (p_session, make_interval(secs => p_new_ttl), clock_timestamp() + make_interval(secs => p_new_ttl));
    END IF;
    UPDATE {{s}}.swarmha_keys k SET value = p_value, session = p_session,
        token = GREATEST(k.token + 1, nextval('{{s}}.swarmha_token'))
        WHERE k.key = p_key RETURNING k.token INTO n;
    PERFORM pg_notify(p_channel, CASE WHEN octet_length(p_key) < 7000 THEN 'C' || p_key ELSE '' END);
    RETURN QUERY SELECT true, p_value, n, p_session;
END
$fn$
;;
CREATE OR REPLACE FUNCTION {{s}}.swarmha_put(p_key text, p_value text, p_session text, p_channel text)
RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    r record;
    live boolean;
    n bigint;
BEGIN
    IF p_session IS NOT NULL THEN
        PERFORM 1 FROM {{s}}.swarmha_sessions s WHERE s.id = p_session AND s.expires_at > clock_timestamp();
        IF NOT FOUND THEN
            RAISE EXCEPTION 'swarmha session % has expired', p_session USING ERRCODE = '{SessionExpiredState}';
        END IF;
    END IF;
    INSERT INTO {{s}}.swarmha_keys AS k (key) VALUES (p_key) ON CONFLICT (key) DO NOTHING;
    SELECT k.value, k.token, k.session INTO r FROM {{s}}.swarmha_keys k WHERE k.key = p_key FOR UPDATE;
    live := r.value IS NOT NULL AND (r.session IS NULL OR EXISTS (
        SELECT 1 FROM {{s}}.swarmha_sessions s WHERE s.id = r.session AND s.expires_at > clock_timestamp()));
    UPDATE {{s}}.swarmha_keys k SET value = p_value, session = p_session,
        token = CASE WHEN live THEN k.token ELSE GREATEST(k.token + 1, nextval('{{s}}.swarmha_token')) END
        WHERE k.key = p_key RETURNING k.token INTO n;
    PERFORM pg_notify(p_channel, CASE WHEN octet_length(p_key) < 7000 THEN 'C' || p_key ELSE '' END);
    RETURN n;
END
$fn$
;;
CREATE OR REPLACE FUNCTION {{s}}.swarmha_close(p_session text, p_channel text) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    k text;
BEGIN
    -- The keys first, then the session: the order in which a claim takes the same row locks (no deadlock).
    FOR k IN UPDATE {{s}}.swarmha_keys SET value = NULL, session = NULL
             WHERE session = p_session AND value IS NOT NULL RETURNING key LOOP
        PERFORM pg_notify(p_channel, CASE WHEN octet_length(k) < 7000 THEN 'D' || k ELSE '' END);
    END LOOP;
    DELETE FROM {{s}}.swarmha_sessions s WHERE s.id = p_session;
END
$fn$
;;
CREATE OR REPLACE FUNCTION {{s}}.swarmha_schema_version() RETURNS integer
LANGUAGE sql IMMUTABLE AS $fn$ SELECT {SCHEMA_VERSION} $fn$
"""

# A key's live row: its value, token, session and the seconds left of its session by the server's clock.
_LIVE = """
SELECT k.key, k.value, k.token, k.session, extract(epoch FROM s.expires_at - clock_timestamp())::float8
FROM {s}.swarmha_keys k LEFT JOIN {s}.swarmha_sessions s ON s.id = k.session
WHERE k.value IS NOT NULL AND (k.session IS NULL OR s.expires_at > clock_timestamp())
"""


def _statement(text: str, schema: str) -> sql.Composed:
    return sql.SQL(text.strip()).format(s=sql.Identifier(schema))


def render(schema: str) -> Statements:
    """Every statement for tables in ``schema``."""
    return Statements(schema)


def schema_sql(schema: str = "public") -> str:
    """The DDL as a script for ``psql`` (what ``swarmha-postgres.sql`` holds for ``public``)."""
    parts = [part.replace("{s}", _quote(schema)) for part in _ddl_parts()]
    header = (
        "-- swarmha's PostgreSQL schema (tables and functions), for a role that may not create them itself.\n"
        f"-- Run it once as a role that may: psql -d DBNAME -f swarmha-postgres.sql (schema {schema}; for\n"
        "-- another schema replace the schema name, and set schema=NAME in the discovery URL). Then grant the\n"
        "-- application's role: SELECT, INSERT, UPDATE, DELETE on both tables, USAGE on the sequence\n"
        "-- swarmha_token and EXECUTE on the functions.\n"
        f"-- Schema version {SCHEMA_VERSION}.\n"
    )
    return header + "\n" + ";\n\n".join(parts) + ";\n"


def _quote(schema: str) -> str:
    return '"' + schema.replace('"', '""') + '"'


class Statements:
    """The statements of one schema, composed once."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.ddl = [_statement(part, schema) for part in _ddl_parts()]
        self.version = _statement("SELECT {s}.swarmha_schema_version()", schema)
        self.session_open = _statement(
            """
            WITH purge AS (DELETE FROM {s}.swarmha_sessions WHERE expires_at < clock_timestamp() - interval '1 minute')
            INSERT INTO {s}.swarmha_sessions (id, ttl, expires_at)
            VALUES (%(id)s, make_interval(secs => %(ttl)s), clock_timestamp() + make_interval(secs => %(ttl)s))
            """,
            schema,
        )
        self.keepalive = _statement(
            "UPDATE {s}.swarmha_sessions SET expires_at = clock_timestamp() + ttl "
            "WHERE id = %(id)s AND expires_at > clock_timestamp()",
            schema,
        )
        # Ends a session: its keys go (each change announced), then the session row.
        self.session_close = _statement("SELECT {s}.swarmha_close(%(id)s, %(channel)s)", schema)
        self.claim = _statement(
            "SELECT claimed, value, token, session "
            "FROM {s}.swarmha_claim(%(key)s, %(value)s, %(id)s, %(channel)s, %(new_ttl)s)",
            schema,
        )
        self.put = _statement("SELECT {s}.swarmha_put(%(key)s, %(value)s, %(id)s, %(channel)s)", schema)
        self.delete = _statement(
            """
            WITH cleared AS (UPDATE {s}.swarmha_keys SET value = NULL, session = NULL
                             WHERE key = %(key)s AND token = %(token)s AND value IS NOT NULL RETURNING key)
            SELECT pg_notify(%(channel)s, CASE WHEN octet_length(key) < 7000 THEN 'D' || key ELSE '' END) FROM cleared
            """,
            schema,
        )
        self.get = _statement(_LIVE + " AND k.key = %(key)s", schema)
        self.get_many = _statement(_LIVE + " AND k.key = ANY(%(keys)s)", schema)
        self.list = _statement(_LIVE + " AND starts_with(k.key, %(prefix)s)", schema)
        self.lock = sql.SQL("SELECT pg_advisory_xact_lock(hashtext('swarmha-schema:' || {schema}))").format(
            schema=sql.Literal(schema)
        )
        self.create_schema = sql.SQL("CREATE SCHEMA IF NOT EXISTS {s}").format(s=sql.Identifier(schema))


def _ddl_parts() -> list[str]:
    return [part.strip() for part in _DDL.split("\n;;\n")]
