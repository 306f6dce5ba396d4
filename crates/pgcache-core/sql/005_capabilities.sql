-- pgcache schema, migration 5: what the polling invalidation mode needs (issue 14), for engines or
-- connections without a working LISTEN.
--
-- Applied by `PostgresCache::init_db` after migrations 1-4, in the same transaction; idempotent.
-- Placeholder: __PREFIX__ (the validated schema_prefix).
--
-- Every log row carries the id of the transaction that wrote it (`pg_current_xact_id()`, the writer's
-- own: the column default runs inside the writing transaction). A polling node keeps as its watermark the
-- `xmin` of the snapshot of its previous poll and reads the rows whose writer id is at or above it: a
-- transaction not yet visible to one poll has an id at or above that poll's xmin, so the next poll sees
-- it once it commits. No invalidation is lost to a writer that commits late, unlike a timestamp or a
-- sequence watermark.
ALTER TABLE "__PREFIX__cache_invalidations" ADD COLUMN IF NOT EXISTS xid xid8 NOT NULL DEFAULT pg_current_xact_id();

-- The change history pollers read: the flusher's batch moves its log rows here (keeping the writer's
-- id) while any poller is registered, in the same statement that deletes them from the log, so a
-- poll's snapshot sees every row in exactly one of the two tables. `t` is when the row was moved: the
-- sweeper deletes rows older than the retention window (`poller.rs`), never a flusher.
CREATE UNLOGGED TABLE IF NOT EXISTS "__PREFIX__cache_changes" (
    key      text,
    version  bigint,
    deleted  boolean     NOT NULL DEFAULT false,
    xid      xid8        NOT NULL,
    t        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS "__PREFIX__cache_changes_xid_idx" ON "__PREFIX__cache_changes" (xid);

-- Nodes in polling mode, each until its registration lapses (renewed well within the retention window).
-- While one is registered, the flusher keeps the history; when none is, it only deletes, as before.
CREATE UNLOGGED TABLE IF NOT EXISTS "__PREFIX__cache_pollers" (
    node   text        PRIMARY KEY,
    until  timestamptz NOT NULL
);

-- Lease rows: `get_or_set`'s lock across processes where session advisory locks do not hold (through a
-- transaction pooler, or an engine without them; `lock.rs`). A lease is taken by an upsert that only
-- overwrites an expired one, renewed by its holder while the loader runs, released by DELETE; a holder
-- that dies stops renewing, and its lease expires. The key is the same 64-bit lock key as the advisory
-- lock's (`lock_key`).
CREATE UNLOGGED TABLE IF NOT EXISTS "__PREFIX__cache_leases" (
    key        bigint      PRIMARY KEY,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);
