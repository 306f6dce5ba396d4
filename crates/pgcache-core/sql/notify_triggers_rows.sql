-- pgcache invalidation triggers without transition tables (issue 14): applied by `init_db` instead of the
-- statement-level triggers of `notify_function.sql` when the engine refuses those, or when told so
-- (`CacheSettings::assume_without(Capability::TransitionTables)`). Same names, same function (its
-- `TG_LEVEL = 'ROW'` branch): one invalidation-log row per changed row, so a bulk statement logs every
-- row instead of one "every key" row past 256. TRUNCATE stays a statement trigger (it has no rows,
-- and no transition table).
--
-- Placeholder: __PREFIX__ (schema_prefix).

DROP TRIGGER IF EXISTS "__PREFIX__cache_notify_insert" ON "__PREFIX__cache_entries";
CREATE TRIGGER "__PREFIX__cache_notify_insert"
    AFTER INSERT ON "__PREFIX__cache_entries"
    FOR EACH ROW WHEN (current_setting('pgcache.skip_notify', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION "__PREFIX__cache_notify"();

DROP TRIGGER IF EXISTS "__PREFIX__cache_notify_update" ON "__PREFIX__cache_entries";
CREATE TRIGGER "__PREFIX__cache_notify_update"
    AFTER UPDATE ON "__PREFIX__cache_entries"
    FOR EACH ROW WHEN (current_setting('pgcache.skip_notify', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION "__PREFIX__cache_notify"();

DROP TRIGGER IF EXISTS "__PREFIX__cache_notify_delete" ON "__PREFIX__cache_entries";
CREATE TRIGGER "__PREFIX__cache_notify_delete"
    AFTER DELETE ON "__PREFIX__cache_entries"
    FOR EACH ROW WHEN (current_setting('pgcache.skip_notify', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION "__PREFIX__cache_notify"();

DROP TRIGGER IF EXISTS "__PREFIX__cache_notify_truncate" ON "__PREFIX__cache_entries";
CREATE TRIGGER "__PREFIX__cache_notify_truncate"
    AFTER TRUNCATE ON "__PREFIX__cache_entries"
    FOR EACH STATEMENT WHEN (current_setting('pgcache.skip_notify', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION "__PREFIX__cache_notify"();
