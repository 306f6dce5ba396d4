-- pgcache operator views: read-only views over the entries table, re-applied by every `init_db` that
-- installs or repairs the schema. Placeholder (validated identifier only): __PREFIX__ (schema_prefix).
--
-- They add no trigger, index or column, so writes cost exactly what they cost without them; each query
-- on a view scans the table (run them by hand, not in a hot loop).
--
--   SELECT * FROM "__PREFIX__cache_stats";                     -- entries, bytes, expired, ages
--   SELECT * FROM "__PREFIX__cache_ages";                      -- age distribution
--   SELECT * FROM "__PREFIX__cache_largest" LIMIT 20;          -- the largest keys
--   SELECT * FROM "__PREFIX__cache_tags" ORDER BY entries DESC; -- entries by tag
--   SELECT * FROM "__PREFIX__cache_http" WHERE status >= 400;   -- what an HTTP entry is

-- One row: how much is cached, how much of it is expired but not yet swept, and how old it is
-- (age = time since the entry was last written).
CREATE OR REPLACE VIEW "__PREFIX__cache_stats" AS
SELECT count(*)                                                             AS entries,
       count(*) FILTER (WHERE expires_at IS NULL OR expires_at > now())    AS live_entries,
       count(*) FILTER (WHERE expires_at <= now())                         AS expired_unswept,
       count(*) FILTER (WHERE expires_at IS NULL)                          AS without_ttl,
       coalesce(sum(octet_length(value)), 0)::bigint                       AS value_bytes,
       coalesce(sum(octet_length(key)), 0)::bigint                         AS key_bytes,
       pg_total_relation_size(to_regclass('"__PREFIX__cache_entries"'))    AS table_bytes,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM now() - updated_at)) AS age_p50_s,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM now() - updated_at)) AS age_p90_s,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM now() - updated_at)) AS age_p99_s,
       extract(epoch FROM now() - min(updated_at))::float8                 AS age_max_s
  FROM "__PREFIX__cache_entries";

-- Entries and bytes by age since the last write, one row per bucket (empty buckets included).
CREATE OR REPLACE VIEW "__PREFIX__cache_ages" AS
SELECT b.bucket, b.from_s, b.to_s,
       count(e.key)                                   AS entries,
       coalesce(sum(octet_length(e.value)), 0)::bigint AS value_bytes
  FROM (VALUES ('< 1 min', 0, 60), ('1-10 min', 60, 600), ('10-60 min', 600, 3600),
               ('1-24 h', 3600, 86400), ('>= 1 day', 86400, NULL)) AS b(bucket, from_s, to_s)
  LEFT JOIN "__PREFIX__cache_entries" e
    ON extract(epoch FROM now() - e.updated_at) >= b.from_s
   AND (b.to_s IS NULL OR extract(epoch FROM now() - e.updated_at) < b.to_s)
 GROUP BY b.bucket, b.from_s, b.to_s
 ORDER BY b.from_s;

-- Every key with its size, largest first (add a LIMIT).
CREATE OR REPLACE VIEW "__PREFIX__cache_largest" AS
SELECT key,
       octet_length(value)                           AS value_bytes,
       tags,
       expires_at,
       (expires_at IS NOT NULL AND expires_at <= now()) AS expired,
       updated_at,
       version
  FROM "__PREFIX__cache_entries"
 ORDER BY octet_length(value) DESC, key;

-- Entries and bytes by tag (an entry with several tags counts under each).
CREATE OR REPLACE VIEW "__PREFIX__cache_tags" AS
SELECT tag,
       count(*)                                                          AS entries,
       count(*) FILTER (WHERE e.expires_at IS NULL OR e.expires_at > now()) AS live_entries,
       sum(octet_length(e.value))::bigint                                AS value_bytes
  FROM "__PREFIX__cache_entries" e, unnest(e.tags) AS tag
 GROUP BY tag;

-- What an HTTP response record (pgcache-tower's `PGH3` encoding) answers: its request method, its target
-- (authority, path and query) and the request headers it varies on, comma separated; NULLs for anything
-- else or anything malformed. Reads the fixed header, the Vary list and the request line only.
CREATE OR REPLACE FUNCTION "__PREFIX__cache_http_request"(v bytea, OUT method text, OUT uri text, OUT vary text)
LANGUAGE plpgsql IMMUTABLE STRICT AS $fn$
DECLARE
    n bigint;
    pos integer := 64;         -- magic 4, kind 1, status 2, 7 x u64 56, no_cache 1: the Vary count
    len bigint;
    names text[] := '{}';
    line text[] := '{}';
BEGIN
    IF octet_length(v) < 68 OR substring(v FROM 1 FOR 4) <> '\x50474833'::bytea OR get_byte(v, 4) <> 0 THEN
        RETURN;
    END IF;
    n := (get_byte(v, pos)::bigint << 24) | (get_byte(v, pos + 1) << 16) | (get_byte(v, pos + 2) << 8) | get_byte(v, pos + 3);
    pos := pos + 4;
    IF n > 64 THEN RETURN; END IF;
    FOR i IN 1 .. n LOOP
        IF pos + 4 > octet_length(v) THEN RETURN; END IF;
        len := (get_byte(v, pos)::bigint << 24) | (get_byte(v, pos + 1) << 16) | (get_byte(v, pos + 2) << 8) | get_byte(v, pos + 3);
        IF pos + 4 + len + 1 > octet_length(v) THEN RETURN; END IF;
        names := names || convert_from(substring(v FROM pos + 5 FOR len::integer), 'UTF8');
        pos := pos + 4 + len::integer;
        IF get_byte(v, pos) = 1 THEN
            IF pos + 5 > octet_length(v) THEN RETURN; END IF;
            len := (get_byte(v, pos + 1)::bigint << 24) | (get_byte(v, pos + 2) << 16) | (get_byte(v, pos + 3) << 8) | get_byte(v, pos + 4);
            pos := pos + 5 + len::integer;
        ELSE
            pos := pos + 1;
        END IF;
    END LOOP;
    -- The request line: method, then target, each length-prefixed.
    FOR i IN 1 .. 2 LOOP
        IF pos + 4 > octet_length(v) THEN RETURN; END IF;
        len := (get_byte(v, pos)::bigint << 24) | (get_byte(v, pos + 1) << 16) | (get_byte(v, pos + 2) << 8) | get_byte(v, pos + 3);
        IF pos + 4 + len > octet_length(v) THEN RETURN; END IF;
        line := line || convert_from(substring(v FROM pos + 5 FOR len::integer), 'UTF8');
        pos := pos + 4 + len::integer;
    END LOOP;
    method := line[1];
    uri := line[2];
    vary := array_to_string(names, ', ');
EXCEPTION WHEN others THEN
    method := NULL; uri := NULL; vary := NULL;
END
$fn$;

-- What each HTTP layer entry is: a response (the request method and target it answers, its status and
-- the request headers it varies on), a Vary index, or a hit-for-pass marker. Keys are digests; `tags`
-- holds the layer's URI tag. Rows that are not pgcache-tower records are left out.
CREATE OR REPLACE VIEW "__PREFIX__cache_http" AS
SELECT key,
       CASE get_byte(value, 4) WHEN 0 THEN 'response' WHEN 1 THEN 'vary_index' WHEN 2 THEN 'pass' END AS kind,
       CASE WHEN get_byte(value, 4) = 0 THEN (get_byte(value, 5) << 8) | get_byte(value, 6) END      AS status,
       r.vary,
       octet_length(value)                                                                          AS value_bytes,
       tags,
       expires_at,
       updated_at,
       r.method,
       r.uri
  FROM "__PREFIX__cache_entries", LATERAL "__PREFIX__cache_http_request"(value) AS r
 WHERE octet_length(value) >= 7 AND substring(value FROM 1 FOR 4) = '\x50474833'::bytea;

-- Version 2 of this file parsed only the Vary list (the view above no longer uses it).
DROP FUNCTION IF EXISTS "__PREFIX__cache_http_vary"(bytea);
