-- pgcache notification function and triggers: re-applied by every `init_db`, so the channel can change.
--
-- Placeholders (validated identifiers only): __PREFIX__ (schema_prefix), __CHANNEL__ (notify_channel).
--
-- Statement-level triggers with transition tables: one NOTIFY per statement, whatever its row count.
-- Payload: {"p": prefix, "op": "insert"|"update"|"delete", "keys": [[key, version], ...], "t": ms}, or
-- {"p": prefix, "op": "flush", "t": ms} when the statement touched more than 256 live rows or the payload would
-- come near PostgreSQL's 8000-byte limit (each node then empties its local cache for this prefix).
-- Deleting rows that had already expired sends nothing: no node may hold them past their expiry anyway.
-- "t" is clock_timestamp() when the trigger ran, in epoch milliseconds by the database's clock: the end of
-- the writing statement, shortly before its commit (later statements of the same transaction come in
-- between). Receivers measure the invalidation lag from it against their own clock, so clock skew between
-- the database host and theirs adds to (or hides) lag.
-- Sessions with `pgcache.skip_notify = on` (caches configured with disable_notify) send nothing.

CREATE OR REPLACE FUNCTION "__PREFIX__cache_notify"() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    changed bigint;
    payload text;
    t bigint := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
BEGIN
    IF coalesce(current_setting('pgcache.skip_notify', true), '') = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('__CHANNEL__', format('{"p":"__PREFIX__","op":"flush","t":%s}', t));
        RETURN NULL;
    END IF;
    SELECT count(*),
           json_build_object('p', '__PREFIX__', 'op', lower(TG_OP),
                             'keys', coalesce(json_agg(json_build_array(c.key, c.version)), '[]'::json),
                             't', t)::text
      INTO changed, payload
      FROM changed_rows c
     WHERE TG_OP <> 'DELETE' OR c.expires_at IS NULL OR c.expires_at > now();
    IF changed = 0 THEN
        RETURN NULL;
    END IF;
    IF changed > 256 OR octet_length(payload) > 7800 THEN
        payload := format('{"p":"__PREFIX__","op":"flush","t":%s}', t);
    END IF;
    PERFORM pg_notify('__CHANNEL__', payload);
    RETURN NULL;
END
$fn$;

DROP TRIGGER IF EXISTS "__PREFIX__cache_notify_insert" ON "__PREFIX__cache_entries";
CREATE TRIGGER "__PREFIX__cache_notify_insert"
    AFTER INSERT ON "__PREFIX__cache_entries"
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION "__PREFIX__cache_notify"();

DROP TRIGGER IF EXISTS "__PREFIX__cache_notify_update" ON "__PREFIX__cache_entries";
CREATE TRIGGER "__PREFIX__cache_notify_update"
    AFTER UPDATE ON "__PREFIX__cache_entries"
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION "__PREFIX__cache_notify"();

DROP TRIGGER IF EXISTS "__PREFIX__cache_notify_delete" ON "__PREFIX__cache_entries";
CREATE TRIGGER "__PREFIX__cache_notify_delete"
    AFTER DELETE ON "__PREFIX__cache_entries"
    REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION "__PREFIX__cache_notify"();

DROP TRIGGER IF EXISTS "__PREFIX__cache_notify_truncate" ON "__PREFIX__cache_entries";
CREATE TRIGGER "__PREFIX__cache_notify_truncate"
    AFTER TRUNCATE ON "__PREFIX__cache_entries"
    FOR EACH STATEMENT EXECUTE FUNCTION "__PREFIX__cache_notify"();
