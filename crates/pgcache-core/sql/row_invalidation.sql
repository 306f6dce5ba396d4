-- pgcache invalidation by the application's own rows: installed by `PostgresCache::invalidate_on`.
--
-- Placeholders (validated identifiers only, quoted): __PREFIX__ (schema_prefix), __TABLE__ (the application
-- table, `"schema"."table"` or `"table"`), __TRIGGER__ (the trigger base name, `{prefix}inv_{hash of the
-- template}`), __ARGS__ (the tag template as string literals: literal, column, literal, ..., literal),
-- __CACHE_SCHEMA__ (the cache table's schema, quoted by the server's `quote_ident`).
--
-- Statement-level triggers with transition tables: one DELETE of the tagged cache entries per statement,
-- whatever its row count, in the statement's own transaction (so it commits or rolls back with the change).
-- The cache table's own triggers then notify every node at commit. INSERT evicts the new rows' tags, DELETE
-- the old rows', UPDATE both (a changed key column moves the row from one tag to another), TRUNCATE every
-- entry with a tag of the template's shape. SECURITY DEFINER with a pinned search_path (`pg_catalog`, the cache
-- table's schema, `pg_temp` last, so no temporary or user-created object can stand in for the cache's):
-- any role that may write the application table invalidates, without rights on the cache table and
-- whatever its own search_path.

CREATE OR REPLACE FUNCTION "__PREFIX__cache_invalidate_rows"() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, __CACHE_SCHEMA__, pg_temp AS $fn$
DECLARE
    tag_expr text := '';
    pattern  text := '';
    doomed   text[];
    i        integer := 0;
BEGIN
    -- TG_ARGV alternates literal text (even positions) and column names (odd positions).
    WHILE i < TG_NARGS LOOP
        IF i % 2 = 0 THEN
            tag_expr := tag_expr || quote_literal(TG_ARGV[i]);
            pattern := pattern || replace(replace(replace(TG_ARGV[i], '\', '\\'), '%', '\%'), '_', '\_');
        ELSE
            tag_expr := tag_expr || ' || ' || quote_ident(TG_ARGV[i]) || '::text || ';
            pattern := pattern || '%';
        END IF;
        i := i + 1;
    END LOOP;
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM "__PREFIX__cache_entries" e
         WHERE EXISTS (SELECT 1 FROM unnest(e.tags) AS t(tag) WHERE t.tag LIKE pattern ESCAPE '\');
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' THEN
        EXECUTE format('SELECT array_agg(DISTINCT t) FROM (SELECT %s AS t FROM new_rows) s WHERE t IS NOT NULL',
                       tag_expr) INTO doomed;
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE format('SELECT array_agg(DISTINCT t) FROM (SELECT %s AS t FROM old_rows) s WHERE t IS NOT NULL',
                       tag_expr) INTO doomed;
    ELSE
        EXECUTE format('SELECT array_agg(DISTINCT t) FROM (SELECT %s AS t FROM old_rows UNION ALL '
                       'SELECT %s FROM new_rows) s WHERE t IS NOT NULL', tag_expr, tag_expr) INTO doomed;
    END IF;
    IF doomed IS NOT NULL THEN
        DELETE FROM "__PREFIX__cache_entries" WHERE tags && doomed;
    END IF;
    RETURN NULL;
END
$fn$;

DROP TRIGGER IF EXISTS "__TRIGGER___ins" ON __TABLE__;
CREATE TRIGGER "__TRIGGER___ins" AFTER INSERT ON __TABLE__
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION "__PREFIX__cache_invalidate_rows"(__ARGS__);

DROP TRIGGER IF EXISTS "__TRIGGER___upd" ON __TABLE__;
CREATE TRIGGER "__TRIGGER___upd" AFTER UPDATE ON __TABLE__
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION "__PREFIX__cache_invalidate_rows"(__ARGS__);

DROP TRIGGER IF EXISTS "__TRIGGER___del" ON __TABLE__;
CREATE TRIGGER "__TRIGGER___del" AFTER DELETE ON __TABLE__
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION "__PREFIX__cache_invalidate_rows"(__ARGS__);

DROP TRIGGER IF EXISTS "__TRIGGER___trn" ON __TABLE__;
CREATE TRIGGER "__TRIGGER___trn" AFTER TRUNCATE ON __TABLE__
    FOR EACH STATEMENT EXECUTE FUNCTION "__PREFIX__cache_invalidate_rows"(__ARGS__);
