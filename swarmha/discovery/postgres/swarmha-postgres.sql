-- swarmha's PostgreSQL schema (tables and functions), for a role that may not create them itself.
-- Run it once as a role that may: psql -d DBNAME -f swarmha-postgres.sql (schema public; for
-- another schema replace the schema name, and set schema=NAME in the discovery URL). Then grant the
-- application's role: SELECT, INSERT, UPDATE, DELETE on both tables, USAGE on the sequence
-- swarmha_token and EXECUTE on the functions.
-- Schema version 3.

CREATE TABLE IF NOT EXISTS "public".swarmha_sessions (
    id text PRIMARY KEY,
    ttl interval NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS "public".swarmha_keys (
    key text PRIMARY KEY,
    value text,
    token bigint NOT NULL DEFAULT 0,
    session text
);

CREATE SEQUENCE IF NOT EXISTS "public".swarmha_token;

CREATE INDEX IF NOT EXISTS swarmha_keys_session ON "public".swarmha_keys (session);

CREATE INDEX IF NOT EXISTS swarmha_sessions_expires_at ON "public".swarmha_sessions (expires_at);

CREATE OR REPLACE FUNCTION "public".swarmha_claim(
    p_key text, p_value text, p_session text, p_channel text, p_new_ttl float8 DEFAULT NULL)
RETURNS TABLE (claimed boolean, value text, token bigint, session text)
LANGUAGE plpgsql AS $fn$
DECLARE
    r record;
    n bigint;
BEGIN
    -- p_new_ttl: the session is new (a ticket); it is created with the claim, and only if the claim succeeds.
    IF p_new_ttl IS NULL THEN
        PERFORM 1 FROM "public".swarmha_sessions s WHERE s.id = p_session AND s.expires_at > clock_timestamp();
        IF NOT FOUND THEN
            RAISE EXCEPTION 'swarmha session % has expired', p_session USING ERRCODE = 'SWSE1';
        END IF;
    END IF;
    INSERT INTO "public".swarmha_keys AS k (key) VALUES (p_key) ON CONFLICT (key) DO NOTHING;
    SELECT k.value, k.token, k.session INTO r FROM "public".swarmha_keys k WHERE k.key = p_key FOR UPDATE;
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
        DELETE FROM "public".swarmha_sessions s WHERE s.id = r.session AND s.expires_at <= clock_timestamp();
        IF NOT FOUND THEN
            PERFORM 1 FROM "public".swarmha_sessions s WHERE s.id = r.session;
            IF FOUND THEN
                RETURN QUERY SELECT false, r.value, r.token, r.session;
                RETURN;
            END IF;
        END IF;
    END IF;
    IF p_new_ttl IS NOT NULL THEN
        INSERT INTO "public".swarmha_sessions (id, ttl, expires_at)
        VALUES (p_session, make_interval(secs => p_new_ttl), clock_timestamp() + make_interval(secs => p_new_ttl));
    END IF;
    UPDATE "public".swarmha_keys k SET value = p_value, session = p_session,
        token = GREATEST(k.token + 1, nextval('"public".swarmha_token'))
        WHERE k.key = p_key RETURNING k.token INTO n;
    PERFORM pg_notify(p_channel, CASE WHEN octet_length(p_key) < 7000 THEN 'C' || p_key ELSE '' END);
    RETURN QUERY SELECT true, p_value, n, p_session;
END
$fn$;

CREATE OR REPLACE FUNCTION "public".swarmha_put(p_key text, p_value text, p_session text, p_channel text)
RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    r record;
    live boolean;
    n bigint;
BEGIN
    IF p_session IS NOT NULL THEN
        PERFORM 1 FROM "public".swarmha_sessions s WHERE s.id = p_session AND s.expires_at > clock_timestamp();
        IF NOT FOUND THEN
            RAISE EXCEPTION 'swarmha session % has expired', p_session USING ERRCODE = 'SWSE1';
        END IF;
    END IF;
    INSERT INTO "public".swarmha_keys AS k (key) VALUES (p_key) ON CONFLICT (key) DO NOTHING;
    SELECT k.value, k.token, k.session INTO r FROM "public".swarmha_keys k WHERE k.key = p_key FOR UPDATE;
    live := r.value IS NOT NULL AND (r.session IS NULL OR EXISTS (
        SELECT 1 FROM "public".swarmha_sessions s WHERE s.id = r.session AND s.expires_at > clock_timestamp()));
    UPDATE "public".swarmha_keys k SET value = p_value, session = p_session,
        token = CASE WHEN live THEN k.token ELSE GREATEST(k.token + 1, nextval('"public".swarmha_token')) END
        WHERE k.key = p_key RETURNING k.token INTO n;
    PERFORM pg_notify(p_channel, CASE WHEN octet_length(p_key) < 7000 THEN 'C' || p_key ELSE '' END);
    RETURN n;
END
$fn$;

CREATE OR REPLACE FUNCTION "public".swarmha_close(p_session text, p_channel text) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    k text;
BEGIN
    -- The keys first, then the session: the order in which a claim takes the same row locks (no deadlock).
    FOR k IN UPDATE "public".swarmha_keys SET value = NULL, session = NULL
             WHERE session = p_session AND value IS NOT NULL RETURNING key LOOP
        PERFORM pg_notify(p_channel, CASE WHEN octet_length(k) < 7000 THEN 'D' || k ELSE '' END);
    END LOOP;
    DELETE FROM "public".swarmha_sessions s WHERE s.id = p_session;
END
$fn$;

CREATE OR REPLACE FUNCTION "public".swarmha_schema_version() RETURNS integer
LANGUAGE sql IMMUTABLE AS $fn$ SELECT 3 $fn$;
