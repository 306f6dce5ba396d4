-- pgcache schema, migration 3: the deterministic refresh time of an entry (`SetOptions::refresh_after`).
--
-- Applied by `PostgresCache::init_db` after `001_init.sql` and `002_incarnation.sql`, in the same transaction;
-- idempotent.
-- Placeholder: __PREFIX__ (the validated schema_prefix).
-- `stale_until` (fail-safe window) and `compute_ms` (the loader's run time, for early refresh) were reserved
-- by migration 1; `refresh_at` is when a `get_or_load` hit starts one background refresh of the entry.

ALTER TABLE "__PREFIX__cache_entries" ADD COLUMN IF NOT EXISTS refresh_at timestamptz;
