-- pgcache invalidation triggers: re-applied by every `init_db`, so the channel can change.
--
-- Placeholders (validated identifiers only): __PREFIX__ (schema_prefix), __CHANNEL__ (notify_channel).
--
-- Since schema version 4 the triggers no longer notify: they append the statement's changes to the
-- invalidation log (`004_invalidation_log.sql`), in the writer's transaction, and the elected flusher sends
-- them (see that file and the crate's `flusher.rs`). They serve every writer that is not this library:
-- SQL by hand, other programs, `invalidate_on` row triggers, `CacheTx` on the application's connection.
-- Library pool sessions run with `pgcache.skip_notify = on` and log their own changes from the statement
-- itself, so the `WHEN` condition skips the plpgsql call for them (caches configured with disable_notify
-- log nothing at all); any other session with that setting logs nothing either.
--
-- Statement-level triggers with transition tables: one INSERT into the log per statement. A statement that
-- touched more than 256 live rows logs one "every key" row (NULL key) instead, and so does TRUNCATE.
-- Deleting rows that had already expired logs nothing: no node may hold them past their expiry anyway.
-- The log row's `t` (clock_timestamp() by default) is when the statement ran, for the invalidation lag.

CREATE OR REPLACE FUNCTION "__PREFIX__cache_notify"() RETURNS trigger
LANGUAGE plpgsql AS $fn$
-- Installed for channel __CHANNEL__ (the flusher notifies the channel of the nodes; connect checks it).
DECLARE
    changed bigint;
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        -- Row-level triggers (`notify_triggers_rows.sql`: an engine without transition tables): one log
        -- row per changed row.
        IF TG_OP = 'DELETE' THEN
            IF OLD.expires_at IS NULL OR OLD.expires_at > now() THEN
                INSERT INTO "__PREFIX__cache_invalidations" (key, version, deleted) VALUES (OLD.key, OLD.version, true);
            END IF;
        ELSE
            INSERT INTO "__PREFIX__cache_invalidations" (key, version, deleted) VALUES (NEW.key, NEW.version, false);
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO "__PREFIX__cache_invalidations" (key) VALUES (NULL);
        RETURN NULL;
    END IF;
    SELECT count(*) INTO changed FROM changed_rows c
     WHERE TG_OP <> 'DELETE' OR c.expires_at IS NULL OR c.expires_at > now();
    IF changed = 0 THEN
        RETURN NULL;
    ELSIF changed > 256 THEN
        INSERT INTO "__PREFIX__cache_invalidations" (key) VALUES (NULL);
    ELSE
        INSERT INTO "__PREFIX__cache_invalidations" (key, version, deleted)
        SELECT c.key, c.version, TG_OP = 'DELETE' FROM changed_rows c
         WHERE TG_OP <> 'DELETE' OR c.expires_at IS NULL OR c.expires_at > now();
    END IF;
    RETURN NULL;
END
$fn$;

DROP TRIGGER IF EXISTS "__PREFIX__cache_notify_insert" ON "__PREFIX__cache_entries";
CREATE TRIGGER "__PREFIX__cache_notify_insert"
    AFTER INSERT ON "__PREFIX__cache_entries"
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT WHEN (current_setting('pgcache.skip_notify', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION "__PREFIX__cache_notify"();

DROP TRIGGER IF EXISTS "__PREFIX__cache_notify_update" ON "__PREFIX__cache_entries";
CREATE TRIGGER "__PREFIX__cache_notify_update"
    AFTER UPDATE ON "__PREFIX__cache_entries"
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT WHEN (current_setting('pgcache.skip_notify', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION "__PREFIX__cache_notify"();

DROP TRIGGER IF EXISTS "__PREFIX__cache_notify_delete" ON "__PREFIX__cache_entries";
CREATE TRIGGER "__PREFIX__cache_notify_delete"
    AFTER DELETE ON "__PREFIX__cache_entries"
    REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT WHEN (current_setting('pgcache.skip_notify', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION "__PREFIX__cache_notify"();

DROP TRIGGER IF EXISTS "__PREFIX__cache_notify_truncate" ON "__PREFIX__cache_entries";
CREATE TRIGGER "__PREFIX__cache_notify_truncate"
    AFTER TRUNCATE ON "__PREFIX__cache_entries"
    FOR EACH STATEMENT WHEN (current_setting('pgcache.skip_notify', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION "__PREFIX__cache_notify"();
