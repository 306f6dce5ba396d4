-- pgcache schema, migration 6: the invalidation flusher sleeps while the log stays empty, and the first
-- write after wakes it (`flusher.rs`), so an idle cluster no longer runs hundreds of drain statements a
-- second.
--
-- Applied by `PostgresCache::init_db` after migrations 1-5, in the same transaction; idempotent.
-- Placeholders: __PREFIX__ (the validated schema_prefix), __WAKE_KEY__ (the advisory lock key a sleeping
-- flusher holds, a bigint computed from the prefix) and __WAKE_CHANNEL__ (the channel it listens on).
--
-- The handshake, with no window in which a write can slip by unseen:
-- - Every statement that appends to the log (the library's own writes, the notify triggers, the
--   `invalidate_on` row triggers) takes the lock __WAKE_KEY__ in share mode, for its transaction, if it
--   can (`pg_try_advisory_xact_lock_shared`, in the trigger's WHEN, evaluated without calling plpgsql).
-- - An awake flusher does not hold the lock, so that always succeeds. To fall asleep, the flusher takes
--   it in exclusive mode, without waiting (`pg_try_advisory_lock`): that fails while any transaction that
--   found it awake has not ended, and once it holds the lock it drains the log once more, which then
--   holds every row those transactions wrote (locks are released after the commit is visible).
-- - A writer that finds the lock taken (the flusher sleeps) calls the function below, which queues a
--   notification on __WAKE_CHANNEL__ for its commit: the flusher wakes, drains and lets the lock go.
-- So the cost to a writer is one lock-table entry per transaction, and a NOTIFY only on the first writes
-- after an idle spell.

CREATE OR REPLACE FUNCTION "__PREFIX__cache_wake_flusher"() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify('__WAKE_CHANNEL__', '');
    RETURN NULL;
END
$fn$;

DROP TRIGGER IF EXISTS "__PREFIX__cache_wake_flusher" ON "__PREFIX__cache_invalidations";
CREATE TRIGGER "__PREFIX__cache_wake_flusher"
    AFTER INSERT ON "__PREFIX__cache_invalidations"
    FOR EACH STATEMENT WHEN (NOT pg_try_advisory_xact_lock_shared(__WAKE_KEY__))
    EXECUTE FUNCTION "__PREFIX__cache_wake_flusher"();
