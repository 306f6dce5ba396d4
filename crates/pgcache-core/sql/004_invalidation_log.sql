-- pgcache schema, migration 4: the invalidation log (issue 9).
--
-- Applied by `PostgresCache::init_db` after migrations 1-3, in the same transaction; idempotent.
-- Placeholder: __PREFIX__ (the validated schema_prefix).
--
-- Every write appends `(key, version, deleted)` here in its own transaction, atomically with the change:
-- library statements from a CTE of the statement itself, every other writer through the triggers of
-- `notify_function.sql`. Nobody sends NOTIFY at its own commit any more (that took a cluster-wide lock
-- through the commit and woke every listener per write). One flusher per prefix, elected with an advisory
-- lock among the nodes' listener sessions, drains the log (`DELETE ... RETURNING` and `pg_notify` in one
-- statement, so a flusher killed mid-batch neither deletes nor sends it) and sends one notification per
-- batch. A row with a NULL key means "every key" (TRUNCATE, or a statement that changed too many rows).
--
-- UNLOGGED: rows live for milliseconds, and a crash that empties this table also restarts the server,
-- which changes the incarnation every node checks, so every node empties its local cache then anyway.
-- No index: the flusher reads the whole (small) table. Autovacuum is told to keep up with the churn.
CREATE UNLOGGED TABLE IF NOT EXISTS "__PREFIX__cache_invalidations" (
    key      text,
    version  bigint,
    deleted  boolean     NOT NULL DEFAULT false,
    t        timestamptz NOT NULL DEFAULT clock_timestamp()
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 1000);

-- The version trigger (plpgsql, once per updated row) skips this library's sessions, which run with
-- `pgcache.library = on`: every UPDATE the library sends sets `version = nextval(...)` and `updated_at`
-- itself. Every other writer still gets a new version from the trigger. Measured with pgbench (16 clients,
-- 64 keys): +23 % upserts per second for the library's statement.
DROP TRIGGER IF EXISTS "__PREFIX__cache_bump_version" ON "__PREFIX__cache_entries";
CREATE TRIGGER "__PREFIX__cache_bump_version"
    BEFORE UPDATE ON "__PREFIX__cache_entries"
    FOR EACH ROW WHEN (current_setting('pgcache.library', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION "__PREFIX__cache_bump_version"();
