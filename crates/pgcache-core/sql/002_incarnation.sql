-- pgcache schema, migration 2: the incarnation of the entries table.
--
-- Placeholders (validated identifiers only): __PREFIX__ (schema_prefix).
--
-- One row naming this life of the entries table: a random id and the table's oid, written when the
-- table is created (by `init_db`: see schema.rs, which gives a new id whenever the oid it finds is not
-- the one recorded, i.e. the table was dropped and recreated). Each node reads it, with the server's
-- system identifier and start time, on every listener (re)connect and heartbeat; when any of them
-- changed, L2 was replaced (recreated table, crash that emptied an UNLOGGED table, failover, restored
-- backup) and the node empties its local cache instead of trusting versions from another life.
CREATE TABLE IF NOT EXISTS "__PREFIX__cache_incarnation" (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    id          text        NOT NULL,
    entries     oid         NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A new life when the table is new (or was recreated since the row was written); nothing otherwise.
INSERT INTO "__PREFIX__cache_incarnation" (id, entries)
VALUES (md5(random()::text || clock_timestamp()::text), to_regclass('"__PREFIX__cache_entries"')::oid)
ON CONFLICT (singleton) DO UPDATE SET id = EXCLUDED.id, entries = EXCLUDED.entries, created_at = now()
    WHERE "__PREFIX__cache_incarnation".entries IS DISTINCT FROM EXCLUDED.entries;
