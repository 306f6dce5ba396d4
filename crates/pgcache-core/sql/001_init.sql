-- pgcache schema, migration 1: the entries table, its version sequence, and the notification triggers.
--
-- Applied by `PostgresCache::init_db` / `apply_migrations` inside one transaction. Placeholders, replaced by
-- the library with validated identifiers only (lowercase letters, digits, `_`):
--   __PREFIX__    the configured schema_prefix        __UNLOGGED__  `UNLOGGED` or nothing
-- The notify function itself (it names the channel) is in `notify_function.sql`, re-applied by every init_db.

CREATE SEQUENCE IF NOT EXISTS "__PREFIX__cache_version_seq";

-- One row per key. `value` is opaque bytes (the codec is the client's business: no jsonb parsing cost).
-- `version` increases with every write (the BEFORE UPDATE trigger takes a new one), so a notification
-- can tell a node whether its local copy is older. fillfactor 85 leaves room for HOT updates; no index
-- on expires_at, which would make every TTL refresh a non-HOT update (the sweeper scans instead).
CREATE __UNLOGGED__ TABLE IF NOT EXISTS "__PREFIX__cache_entries" (
    key         text        PRIMARY KEY,
    value       bytea       NOT NULL,
    version     bigint      NOT NULL DEFAULT nextval('"__PREFIX__cache_version_seq"'),
    expires_at  timestamptz,                      -- NULL: never expires
    stale_until timestamptz,                      -- reserved: fail-safe (serve stale on loader failure)
    compute_ms  integer,                          -- reserved: early refresh
    tags        text[]      NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 85);

CREATE INDEX IF NOT EXISTS "__PREFIX__cache_entries_tags_idx"
    ON "__PREFIX__cache_entries" USING gin (tags);

-- Every update, by the library or by hand, gets a new version.
CREATE OR REPLACE FUNCTION "__PREFIX__cache_bump_version"() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.version := nextval('"__PREFIX__cache_version_seq"');
    NEW.updated_at := now();
    RETURN NEW;
END
$fn$;

DROP TRIGGER IF EXISTS "__PREFIX__cache_bump_version" ON "__PREFIX__cache_entries";
CREATE TRIGGER "__PREFIX__cache_bump_version"
    BEFORE UPDATE ON "__PREFIX__cache_entries"
    FOR EACH ROW EXECUTE FUNCTION "__PREFIX__cache_bump_version"();
