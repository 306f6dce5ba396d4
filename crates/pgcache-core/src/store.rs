//! All SQL of the shared table (L2): the statements, formatted once per prefix, and one function per
//! operation. Schema objects are created by `schema.rs` from the files in `sql/`.
//!
//! Identifiers (`schema_prefix`) are validated by [`CacheSettings::validate`] before they are formatted
//! into SQL here; keys, values, TTLs and tags are always bind parameters. Every statement goes through
//! [`query_rows`]/[`execute`]: `prepare_cached` by default, or, with `prepared_statements` off (a transaction
//! pooler that cannot track prepared statements), an unnamed statement with its parameter types given,
//! parsed, bound and run in one round trip (`query_typed`), so that no statement outlives its transaction.

use bytes::Bytes;
use deadpool_postgres::Client;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

use crate::cache_store::Entry;
use crate::error::{Error, Result};
use crate::telemetry;
use crate::ttl::Expiry;

/// A live row: not expired by the database clock.
const LIVE: &str = "(expires_at IS NULL OR expires_at > now())";
/// Remaining TTL in milliseconds, `NULL` for never.
const TTL_MS: &str = "(EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::bigint";
/// A row `get_or_load` may use: live, or expired but within its fail-safe (stale) window.
const USABLE: &str = "(expires_at IS NULL OR expires_at > now() OR stale_until > now())";
/// The WAL position a hot standby has replayed, in bytes (0 on a server that is not in recovery).
const REPLAYED: &str = "COALESCE((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, 0)";
/// Milliseconds until the row's deterministic refresh is due (`NULL`: none).
const REFRESH_MS: &str = "(EXTRACT(EPOCH FROM (refresh_at - now())) * 1000)::bigint";

/// SQL text of every statement, formatted once per cache with the validated table name.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) get: String,
    pub(crate) get_for_load: String,
    /// [`get_for_load`](Self::get_for_load) that also takes the key's advisory lock (`$2`) when the row
    /// is not live: a miss learns in one round trip whether it is the one to load.
    pub(crate) get_or_lock: String,
    pub(crate) get_many: String,
    pub(crate) upsert: String,
    pub(crate) replace: String,
    pub(crate) delete: String,
    pub(crate) delete_many: String,
    pub(crate) delete_tags: String,
    pub(crate) clear: String,
    pub(crate) ttl: String,
    pub(crate) touch: String,
    pub(crate) sweep: String,
    pub(crate) trim_log: String,
    /// Group commit: the upsert of many rows, each with its own TTL, tags and refresh columns.
    pub(crate) upsert_batch: String,
    /// Group commit: the delete of many keys, telling which were live.
    pub(crate) delete_batch: String,
    /// Group commit: new TTLs for many keys, telling which were live.
    pub(crate) touch_batch: String,
    /// Group commit: the delete of every row carrying any of the tags, with the tags of the live ones.
    pub(crate) delete_tags_batch: String,
    /// `GET` on a read replica, with the WAL position the replica has replayed (see `replica.rs`); the
    /// columns of [`get_for_load`](Self::get_for_load), so that `get_or_load` can use it too.
    pub(crate) get_on_replica: String,
    /// [`get_many`](Self::get_many) on a read replica, with the WAL position the replica has replayed.
    pub(crate) get_many_on_replica: String,
    /// Server-side prepared statements (`prepare_cached`), or unnamed typed ones (`query_typed`).
    pub(crate) prepared: bool,
}

/// Rows a library statement logs one by one; beyond this it logs one "every key" row. Above a group-commit
/// batch's default row bound (1000), so a full batch of writes evicts its keys rather than every key.
const LOG_ROWS_MAX: usize = 10_000;

/// How a library statement logs its own invalidation (issue 9): a CTE appending the changed rows to the
/// invalidation log in the statement's own transaction, or nothing when notifications are disabled.
/// Pool sessions run with `pgcache.skip_notify = on`, so the table's triggers skip these statements.
struct Log {
    table: Option<String>,
}

impl Log {
    /// Like [`with`](Self::with) for a statement that changes at most one row (no row count to check).
    fn with_one(&self, cte: &str, modify: &str, extra: &str, deleted: bool, filter: &str) -> String {
        let Some(log) = &self.table else {
            return format!("WITH {cte} AS ({modify} RETURNING key, version{extra})");
        };
        format!(
            "WITH {cte} AS ({modify} RETURNING key, version{extra}), \
             l AS (INSERT INTO {log} (key, version, deleted) SELECT key, version, {deleted} FROM {cte} WHERE {filter})"
        )
    }

    /// `WITH <cte> AS (<modify> RETURNING key, version, <extra>), l AS (INSERT INTO log ...)`, where the
    /// changed rows are `cte`; `deleted` tells deletes, `filter` which returned rows are logged.
    fn with(&self, cte: &str, modify: &str, extra: &str, deleted: bool, filter: &str) -> String {
        let Some(log) = &self.table else {
            return format!("WITH {cte} AS ({modify} RETURNING key, version{extra})");
        };
        let n = LOG_ROWS_MAX;
        format!(
            "WITH {cte} AS ({modify} RETURNING key, version{extra}), \
             l AS (INSERT INTO {log} (key, version, deleted) \
             SELECT key, version, {deleted} FROM {cte} WHERE {filter} AND (SELECT count(*) FROM {cte} WHERE {filter}) <= {n} \
             UNION ALL SELECT NULL, NULL, {deleted} WHERE (SELECT count(*) FROM {cte} WHERE {filter}) > {n})"
        )
    }
}

impl Statements {
    /// The statements of `prefix`; with `log_invalidations` every write also appends its own invalidation
    /// to the log (off when notifications are disabled: such a cache sends nothing); `prepared`: server-side
    /// prepared statements, or unnamed typed ones.
    pub(crate) fn new(prefix: &str, log_invalidations: bool, prepared: bool) -> Self {
        let t = format!("\"{prefix}cache_entries\"");
        // Every UPDATE of a library statement takes its new version itself: the version trigger (plpgsql,
        // once per row) skips library sessions (`sql/004_invalidation_log.sql`).
        let bump = format!("version = nextval('\"{prefix}cache_version_seq\"'), updated_at = now()");
        let log = Log { table: log_invalidations.then(|| format!("\"{prefix}cache_invalidations\"")) };
        let expires = "now() + $3::bigint * interval '1 millisecond'";
        let upsert = format!(
            "INSERT INTO {t} (key, value, expires_at, tags, stale_until, compute_ms, refresh_at) \
             VALUES ($1, $2, {expires}, $4, now() + $5::bigint * interval '1 millisecond', $6, \
             now() + $7::bigint * interval '1 millisecond') \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, \
             tags = EXCLUDED.tags, stale_until = EXCLUDED.stale_until, compute_ms = EXCLUDED.compute_ms, \
             refresh_at = EXCLUDED.refresh_at, {bump}"
        );
        let replace = format!(
            "UPDATE {t} SET value = $2, expires_at = {expires}, tags = $4, \
             stale_until = now() + $5::bigint * interval '1 millisecond', compute_ms = $6, \
             refresh_at = now() + $7::bigint * interval '1 millisecond', {bump} \
             WHERE key = $1 AND version = $8"
        );
        // Tags travel as one array literal per row (`{"a","b"}`, see `tags_literal`): unnest cannot
        // take an array of arrays of different lengths.
        // Batches lock their rows in key order (the upsert's input sorted, deletes and TTL changes through
        // a sorted `FOR UPDATE` first), so two batches of other processes that share keys wait for each
        // other instead of deadlocking (which PostgreSQL would only break after `deadlock_timeout`, 1 s).
        let lock_in_key_order = format!("SELECT key FROM {t} WHERE key = ANY($1) ORDER BY key FOR UPDATE");
        let upsert_batch = format!(
            "INSERT INTO {t} (key, value, expires_at, tags, stale_until, compute_ms, refresh_at) \
             SELECT k, v, now() + ttl * interval '1 millisecond', tg::text[], \
             now() + st * interval '1 millisecond', cm, now() + rf * interval '1 millisecond' \
             FROM unnest($1::text[], $2::bytea[], $3::bigint[], $4::text[], $5::bigint[], $6::int4[], $7::bigint[]) \
             AS u(k, v, ttl, tg, st, cm, rf) ORDER BY k \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, \
             tags = EXCLUDED.tags, stale_until = EXCLUDED.stale_until, compute_ms = EXCLUDED.compute_ms, \
             refresh_at = EXCLUDED.refresh_at, {bump}"
        );
        let touch_batch = format!(
            "UPDATE {t} SET expires_at = now() + u.ttl * interval '1 millisecond', \
             stale_until = now() + u.ttl * interval '1 millisecond' + (stale_until - expires_at), {bump} \
             FROM unnest($1::text[], $2::bigint[]) AS u(k, ttl) WHERE key = u.k AND {LIVE} \
             AND key IN ({lock_in_key_order})"
        );
        let live = format!(", {LIVE} AS live");
        // The stale window keeps its length past the new expiry (none without an expiry).
        let touch = format!(
            "UPDATE {t} SET expires_at = now() + $2::bigint * interval '1 millisecond', \
             stale_until = now() + $2::bigint * interval '1 millisecond' + (stale_until - expires_at), {bump} \
             WHERE key = $1 AND {LIVE}"
        );
        Self {
            get: format!("SELECT value, version, {TTL_MS} FROM {t} WHERE key = $1 AND {LIVE}"),
            get_for_load: format!(
                "SELECT value, version, {TTL_MS}, {LIVE}, compute_ms, {REFRESH_MS} FROM {t} WHERE key = $1 AND {USABLE}"
            ),
            // One row always (the LEFT JOIN): the entry's columns (NULL when there is no usable row) and
            // whether the lock was taken (false when the row is live: CASE evaluates the lock only then).
            get_or_lock: format!(
                "SELECT r.value, r.version, r.ttl, r.live, r.compute_ms, r.refresh_ms, \
                 CASE WHEN r.live THEN false ELSE pg_try_advisory_lock($2) END \
                 FROM (SELECT 1) AS one LEFT JOIN (SELECT value, version, {TTL_MS} AS ttl, {LIVE} AS live, \
                 compute_ms, {REFRESH_MS} AS refresh_ms FROM {t} WHERE key = $1 AND {USABLE}) AS r ON true"
            ),
            get_many: format!("SELECT key, value, version, {TTL_MS} FROM {t} WHERE key = ANY($1) AND {LIVE}"),
            upsert: format!("{} SELECT version FROM w", log.with_one("w", &upsert, "", false, "true")),
            // A background refresh writes only over the version it refreshed: a write or delete that
            // landed while its loader ran wins (no deleted key comes back, no newer value is overwritten).
            replace: format!("{} SELECT version FROM w", log.with_one("w", &replace, "", false, "true")),
            delete: format!("{} SELECT live FROM d", log.with_one("d", &format!("DELETE FROM {t} WHERE key = $1"), &live, true, "live")),
            delete_many: format!(
                "{} SELECT count(*) FILTER (WHERE live) FROM d",
                log.with("d", &format!("DELETE FROM {t} WHERE key IN ({lock_in_key_order})"), &live, true, "live")
            ),
            delete_tags: format!(
                "{} SELECT count(*) FILTER (WHERE live) FROM d",
                log.with("d", &format!("DELETE FROM {t} WHERE tags && $1"), &live, true, "live")
            ),
            clear: format!(
                "{} SELECT count(*) FILTER (WHERE live) FROM d",
                log.with("d", &format!("DELETE FROM {t}"), &live, true, "live")
            ),
            ttl: format!("SELECT {TTL_MS} FROM {t} WHERE key = $1 AND {LIVE}"),
            touch: format!("{} SELECT count(*) FROM w", log.with_one("w", &touch, "", false, "true")),
            // Log rows nobody drained for a minute: no flusher ran (no node listens), or it stalled and
            // every listening node has long stopped serving its local copies and reconciles before it
            // serves them again (listener.rs), so these rows are of no use to anyone.
            trim_log: format!(
                "DELETE FROM \"{prefix}cache_invalidations\" WHERE ctid = ANY(ARRAY(SELECT ctid FROM \"{prefix}cache_invalidations\" \
                 WHERE t < clock_timestamp() - interval '1 minute' LIMIT $1))"
            ),
            // A row stays until its fail-safe window ends too.
            sweep: format!(
                "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE expires_at <= now() \
                 AND (stale_until IS NULL OR stale_until <= now()) LIMIT $1 FOR UPDATE SKIP LOCKED))"
            ),
            // Tags travel as one array literal per row (`{"a","b"}`, see `tags_literal`): unnest cannot
            // take an array of arrays of different lengths.
            upsert_batch: format!("{} SELECT key, version FROM w", log.with("w", &upsert_batch, "", false, "true")),
            delete_batch: format!(
                "{} SELECT key, live FROM d",
                log.with("d", &format!("DELETE FROM {t} WHERE key IN ({lock_in_key_order})"), &live, true, "live")
            ),
            touch_batch: format!("{} SELECT key FROM w", log.with("w", &touch_batch, "", false, "true")),
            delete_tags_batch: format!(
                "{} SELECT tags FROM d WHERE live",
                log.with("d", &format!("DELETE FROM {t} WHERE tags && $1"), &format!(", tags{live}"), true, "live")
            ),
            // One row always (the LEFT JOIN), so the replay position comes back with a miss too.
            get_on_replica: format!(
                "SELECT r.value, r.version, r.ttl, r.live, r.compute_ms, r.refresh_ms, {REPLAYED} \
                 FROM (SELECT 1) AS one LEFT JOIN (SELECT value, version, {TTL_MS} AS ttl, true AS live, \
                 compute_ms, {REFRESH_MS} AS refresh_ms FROM {t} WHERE key = $1 AND {LIVE}) AS r ON true"
            ),
            get_many_on_replica: format!(
                "SELECT {REPLAYED}, r.key, r.value, r.version, r.ttl FROM (SELECT 1) AS one LEFT JOIN \
                 (SELECT key, value, version, {TTL_MS} AS ttl FROM {t} WHERE key = ANY($1) AND {LIVE}) AS r ON true"
            ),
            prepared,
        }
    }
}

fn pg<T>(r: std::result::Result<T, tokio_postgres::Error>) -> Result<T> {
    r.map_err(Error::from_pg)
}

/// One bind parameter with its PostgreSQL type (needed by unnamed statements, which are not described
/// before they run).
type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// Runs `text` as `sql.prepared` says: through `$prepared` on a cached prepared statement, or through
/// `$typed` as an unnamed statement with typed parameters (one round trip, for poolers in transaction
/// mode that cannot keep prepared statements).
macro_rules! prepared_or_typed {
    ($client:expr, $sql:expr, $text:expr, $params:expr, $prepared:ident, $typed:ident) => {
        if $sql.prepared {
            let stmt = pg($client.prepare_cached($text).await)?;
            let values: Vec<&(dyn ToSql + Sync)> = $params.iter().map(|(value, _)| *value).collect();
            pg($client.$prepared(&stmt, &values).await)
        } else {
            pg($client.$typed($text, $params).await)
        }
    };
}

/// Runs `text` and returns its rows, prepared or not as `sql` says.
async fn query_rows(client: &Client, sql: &Statements, text: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
    prepared_or_typed!(client, sql, text, params, query, query_typed)
}

/// The only row of `text`, if any ([`Error::Postgres`] for more than one).
async fn row_opt(client: &Client, sql: &Statements, text: &str, params: &[Param<'_>]) -> Result<Option<Row>> {
    prepared_or_typed!(client, sql, text, params, query_opt, query_typed_opt)
}

/// The one row of `text`.
async fn row_one(client: &Client, sql: &Statements, text: &str, params: &[Param<'_>]) -> Result<Row> {
    prepared_or_typed!(client, sql, text, params, query_one, query_typed_one)
}

/// Runs `text`; returns how many rows it changed.
async fn execute(client: &Client, sql: &Statements, text: &str, params: &[Param<'_>]) -> Result<u64> {
    prepared_or_typed!(client, sql, text, params, execute, execute_typed)
}

fn row_of(row: &tokio_postgres::Row, offset: usize) -> Result<Entry> {
    let value: Vec<u8> = pg(row.try_get(offset))?;
    Ok(Entry {
        value: Bytes::from(value),
        version: pg(row.try_get(offset + 1))?,
        expiry: Expiry::from_sql_millis(pg(row.try_get(offset + 2))?),
    })
}

/// `GET`: the live row for `key`.
pub(crate) async fn get(client: &Client, sql: &Statements, key: &str) -> Result<Option<Entry>> {
    let _timer = telemetry::statement("get");
    match row_opt(client, sql, &sql.get, &[(&key, Type::TEXT)]).await? {
        Some(row) => row_of(&row, 0).map(Some),
        None => Ok(None),
    }
}

/// `GET` of many keys in one round trip; returns (key, row) pairs for the live ones.
pub(crate) async fn get_many(client: &Client, sql: &Statements, keys: &[&str]) -> Result<Vec<(String, Entry)>> {
    let _timer = telemetry::statement("get_many");
    let rows = query_rows(client, sql, &sql.get_many, &[(&keys, Type::TEXT_ARRAY)]).await?;
    rows.iter().map(|row| Ok((pg(row.try_get::<_, String>(0))?, row_of(row, 1)?))).collect()
}

/// What `get_or_load` reads: a row that is live or within its stale window, with its refresh data.
#[derive(Clone, Debug)]
pub(crate) struct LoadRow {
    pub(crate) entry: Entry,
    /// False when expired (only served as a fail-safe fallback).
    pub(crate) fresh: bool,
    /// The last loader run's duration, when the entry asked for early refresh.
    pub(crate) compute: Option<std::time::Duration>,
    /// Time until the deterministic refresh is due (zero when due), when the entry has one.
    pub(crate) refresh_in: Option<std::time::Duration>,
}

/// `GET` for `get_or_load`: the row for `key` if live or within its stale window.
pub(crate) async fn get_for_load(client: &Client, sql: &Statements, key: &str) -> Result<Option<LoadRow>> {
    let _timer = telemetry::statement("get_for_load");
    let Some(row) = row_opt(client, sql, &sql.get_for_load, &[(&key, Type::TEXT)]).await? else { return Ok(None) };
    load_row(&row).map(Some)
}

/// `GET` for `get_or_load` that takes the key's advisory lock `lock` in the same statement when the row
/// is not live; returns the row (live or within its stale window) and whether the lock was taken.
pub(crate) async fn get_or_lock(
    client: &Client,
    sql: &Statements,
    key: &str,
    lock: i64,
) -> Result<(Option<LoadRow>, bool)> {
    let _timer = telemetry::statement("get_or_lock");
    let row = row_one(client, sql, &sql.get_or_lock, &[(&key, Type::TEXT), (&lock, Type::INT8)]).await?;
    let locked: bool = pg(row.try_get(6))?;
    let found: Option<bool> = pg(row.try_get(3))?;
    let entry = match found {
        Some(_) => Some(load_row(&row)?),
        None => None,
    };
    Ok((entry, locked))
}

/// A [`LoadRow`] from columns `value, version, ttl, live, compute_ms, refresh_ms`.
fn load_row(row: &tokio_postgres::Row) -> Result<LoadRow> {
    let compute: Option<i32> = pg(row.try_get(4))?;
    let refresh_ms: Option<i64> = pg(row.try_get(5))?;
    let millis = |ms: i64| std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    Ok(LoadRow {
        entry: row_of(row, 0)?,
        fresh: pg(row.try_get(3))?,
        compute: compute.map(i64::from).map(millis),
        refresh_in: refresh_ms.map(millis),
    })
}

/// What a write stores beside the value and TTL: the fail-safe and refresh columns.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WriteMeta {
    /// Milliseconds from now until the stale window ends (`NULL`: no window).
    pub(crate) stale_ms: Option<i64>,
    /// The loader's run time in milliseconds, for early refresh (`NULL`: no early refresh).
    pub(crate) compute_ms: Option<i32>,
    /// Milliseconds from now until a refresh is due (`NULL`: none).
    pub(crate) refresh_ms: Option<i64>,
}

impl WriteMeta {
    /// The columns of a write of `options` with TTL `ttl_ms` (`None`: never expires); `compute` is the
    /// loader's run time when a loader produced the value. Windows are clamped like TTLs (to 2^31 s).
    pub(crate) fn new(ttl_ms: Option<i64>, options: &crate::SetOptions, compute: Option<std::time::Duration>) -> Self {
        let compute = compute.filter(|_| options.early_refresh);
        Self {
            stale_ms: ttl_ms.zip(options.stale_for).map(|(ttl, stale)| ttl.saturating_add(crate::ttl::millis(stale))),
            compute_ms: compute.map(|d| i32::try_from(d.as_millis()).unwrap_or(i32::MAX).max(1)),
            refresh_ms: options.refresh_after.map(crate::ttl::millis),
        }
    }

    /// The loader run time stored, as a duration.
    pub(crate) fn compute(&self) -> Option<std::time::Duration> {
        self.compute_ms.map(|ms| std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    }
}

/// Upsert of one entry; returns its new version.
pub(crate) async fn upsert(
    client: &Client,
    sql: &Statements,
    key: &str,
    value: &[u8],
    ttl_ms: Option<i64>,
    tags: &[String],
    meta: WriteMeta,
) -> Result<i64> {
    let _timer = telemetry::statement("upsert");
    let params: [Param<'_>; 7] = [
        (&key, Type::TEXT),
        (&value, Type::BYTEA),
        (&ttl_ms, Type::INT8),
        (&tags, Type::TEXT_ARRAY),
        (&meta.stale_ms, Type::INT8),
        (&meta.compute_ms, Type::INT4),
        (&meta.refresh_ms, Type::INT8),
    ];
    pg(row_one(client, sql, &sql.upsert, &params).await?.try_get(0))
}

/// Rewrite of one entry only if it is still at version `seen`; returns its new version, or `None`
/// when the row was rewritten or deleted since.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn replace(
    client: &Client,
    sql: &Statements,
    key: &str,
    value: &[u8],
    ttl_ms: Option<i64>,
    tags: &[String],
    meta: WriteMeta,
    seen: i64,
) -> Result<Option<i64>> {
    let _timer = telemetry::statement("replace");
    let params: [Param<'_>; 8] = [
        (&key, Type::TEXT),
        (&value, Type::BYTEA),
        (&ttl_ms, Type::INT8),
        (&tags, Type::TEXT_ARRAY),
        (&meta.stale_ms, Type::INT8),
        (&meta.compute_ms, Type::INT4),
        (&meta.refresh_ms, Type::INT8),
        (&seen, Type::INT8),
    ];
    match row_opt(client, sql, &sql.replace, &params).await? {
        Some(row) => pg(row.try_get(0)).map(Some),
        None => Ok(None),
    }
}

/// Delete of one key; returns whether a live row existed.
pub(crate) async fn delete(client: &Client, sql: &Statements, key: &str) -> Result<bool> {
    let _timer = telemetry::statement("delete");
    match row_opt(client, sql, &sql.delete, &[(&key, Type::TEXT)]).await? {
        Some(row) => pg(row.try_get(0)),
        None => Ok(false),
    }
}

async fn count(client: &Client, sql: &Statements, text: &str, params: &[Param<'_>]) -> Result<u64> {
    let n: i64 = pg(row_one(client, sql, text, params).await?.try_get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Delete of every row carrying any of `tags`.
pub(crate) async fn delete_tags(client: &Client, sql: &Statements, tags: &[&str]) -> Result<u64> {
    let _timer = telemetry::statement("delete_tags");
    count(client, sql, &sql.delete_tags, &[(&tags, Type::TEXT_ARRAY)]).await
}

/// Delete of every row of the prefix.
pub(crate) async fn clear(client: &Client, sql: &Statements) -> Result<u64> {
    let _timer = telemetry::statement("clear");
    count(client, sql, &sql.clear, &[]).await
}

/// Remaining TTL of a live key.
pub(crate) async fn ttl(client: &Client, sql: &Statements, key: &str) -> Result<Option<Expiry>> {
    let _timer = telemetry::statement("ttl");
    match row_opt(client, sql, &sql.ttl, &[(&key, Type::TEXT)]).await? {
        Some(row) => Ok(Some(Expiry::from_sql_millis(pg(row.try_get(0))?))),
        None => Ok(None),
    }
}

/// New TTL for a live key; returns whether it existed.
pub(crate) async fn touch(client: &Client, sql: &Statements, key: &str, ttl_ms: Option<i64>) -> Result<bool> {
    let _timer = telemetry::statement("touch");
    let n: i64 = pg(row_one(client, sql, &sql.touch, &[(&key, Type::TEXT), (&ttl_ms, Type::INT8)]).await?.try_get(0))?;
    Ok(n > 0)
}

// ---- Group commit (group_commit.rs): one statement for the writes of many callers ----

/// One row of a group-commit upsert.
#[derive(Clone, Debug)]
pub(crate) struct UpsertRow {
    pub(crate) key: String,
    pub(crate) value: Bytes,
    pub(crate) ttl_ms: Option<i64>,
    pub(crate) tags: Vec<String>,
    pub(crate) meta: WriteMeta,
}

/// `tags` as a PostgreSQL array literal (`{"a","b\"c"}`), every element quoted and escaped, so any
/// valid tag (non-empty, NUL-free) comes back exactly from `literal::text[]`.
pub(crate) fn tags_literal(tags: &[String]) -> String {
    let mut out = String::with_capacity(2 + tags.iter().map(|t| t.len() + 3).sum::<usize>());
    out.push('{');
    for (i, tag) in tags.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in tag.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// Upsert of many distinct keys in one statement; returns `(key, version)` of every row written.
pub(crate) async fn upsert_batch(client: &Client, sql: &Statements, rows: &[&UpsertRow]) -> Result<Vec<(String, i64)>> {
    let _timer = telemetry::statement("upsert_batch");
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let values: Vec<&[u8]> = rows.iter().map(|r| &r.value[..]).collect();
    let ttls: Vec<Option<i64>> = rows.iter().map(|r| r.ttl_ms).collect();
    let tags: Vec<String> = rows.iter().map(|r| tags_literal(&r.tags)).collect();
    let stale: Vec<Option<i64>> = rows.iter().map(|r| r.meta.stale_ms).collect();
    let compute: Vec<Option<i32>> = rows.iter().map(|r| r.meta.compute_ms).collect();
    let refresh: Vec<Option<i64>> = rows.iter().map(|r| r.meta.refresh_ms).collect();
    let params: [Param<'_>; 7] = [
        (&keys, Type::TEXT_ARRAY),
        (&values, Type::BYTEA_ARRAY),
        (&ttls, Type::INT8_ARRAY),
        (&tags, Type::TEXT_ARRAY),
        (&stale, Type::INT8_ARRAY),
        (&compute, Type::INT4_ARRAY),
        (&refresh, Type::INT8_ARRAY),
    ];
    let out = query_rows(client, sql, &sql.upsert_batch, &params).await?;
    out.iter().map(|row| Ok((pg(row.try_get(0))?, pg(row.try_get(1))?))).collect()
}

/// Delete of many distinct keys in one statement; returns `(key, was live)` of every row deleted.
pub(crate) async fn delete_batch(client: &Client, sql: &Statements, keys: &[&str]) -> Result<Vec<(String, bool)>> {
    let _timer = telemetry::statement("delete_batch");
    let out = query_rows(client, sql, &sql.delete_batch, &[(&keys, Type::TEXT_ARRAY)]).await?;
    out.iter().map(|row| Ok((pg(row.try_get(0))?, pg(row.try_get(1))?))).collect()
}

/// New TTLs for many distinct keys in one statement; returns the keys that were live.
pub(crate) async fn touch_batch(
    client: &Client,
    sql: &Statements,
    keys: &[&str],
    ttls: &[Option<i64>],
) -> Result<Vec<String>> {
    let _timer = telemetry::statement("touch_batch");
    let out =
        query_rows(client, sql, &sql.touch_batch, &[(&keys, Type::TEXT_ARRAY), (&ttls, Type::INT8_ARRAY)]).await?;
    out.iter().map(|row| pg(row.try_get(0))).collect()
}

/// Delete of every row carrying any of `tags`; returns the tags of each live row deleted.
pub(crate) async fn delete_tags_batch(client: &Client, sql: &Statements, tags: &[&str]) -> Result<Vec<Vec<String>>> {
    let _timer = telemetry::statement("delete_tags_batch");
    let out = query_rows(client, sql, &sql.delete_tags_batch, &[(&tags, Type::TEXT_ARRAY)]).await?;
    out.iter().map(|row| pg(row.try_get(0))).collect()
}

/// Deletes up to `batch` expired rows, skipping rows locked by others; returns how many.
pub(crate) async fn sweep_batch(client: &Client, sql: &Statements, batch: i64) -> Result<u64> {
    let _timer = telemetry::statement("sweep_batch");
    execute(client, sql, &sql.sweep, &[(&batch, Type::INT8)]).await
}

// ---- Read replicas (replica.rs): the fence and the fenced read ----

fn wal_position(row: &Row) -> Result<u64> {
    wal_position_at(row, 0)
}

/// A WAL position in bytes from column `column` (below zero, which PostgreSQL never returns, reads 0).
fn wal_position_at(row: &Row, column: usize) -> Result<u64> {
    let bytes: i64 = pg(row.try_get(column))?;
    Ok(u64::try_from(bytes).unwrap_or(0))
}

/// The primary's WAL insert position, in bytes: every commit that has sent its notification lies before
/// it (the insert position, not the write position: with `synchronous_commit = off` a commit's record may
/// not be written yet when its notification is delivered).
pub(crate) async fn current_wal_lsn(client: &Client) -> Result<u64> {
    let _timer = telemetry::statement("current_wal_lsn");
    let row = pg(client.query_typed_one("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint", &[]).await)?;
    wal_position(&row)
}

/// The WAL position a hot standby has replayed, in bytes (0 when it is not in recovery).
pub(crate) async fn replayed_wal_lsn(client: &Client) -> Result<u64> {
    let _timer = telemetry::statement("replayed_wal_lsn");
    let row = pg(client.query_typed_one(&format!("SELECT {REPLAYED}"), &[]).await)?;
    wal_position(&row)
}

/// `GET` on a replica: the live row for `key` (as `get_or_load` reads it), and the WAL position replayed
/// while the statement ran.
pub(crate) async fn get_on_replica(client: &Client, sql: &Statements, key: &str) -> Result<(Option<LoadRow>, u64)> {
    let _timer = telemetry::statement("get_on_replica");
    let row = row_one(client, sql, &sql.get_on_replica, &[(&key, Type::TEXT)]).await?;
    let replayed = wal_position_at(&row, 6)?;
    let version: Option<i64> = pg(row.try_get(1))?;
    let entry = match version {
        Some(_) => Some(load_row(&row)?),
        None => None,
    };
    Ok((entry, replayed))
}

/// `GET` of many keys on a replica: the live rows, and the furthest WAL position replayed while the
/// statement ran.
pub(crate) async fn get_many_on_replica(
    client: &Client,
    sql: &Statements,
    keys: &[&str],
) -> Result<(Vec<(String, Entry)>, u64)> {
    let _timer = telemetry::statement("get_many_on_replica");
    let rows = query_rows(client, sql, &sql.get_many_on_replica, &[(&keys, Type::TEXT_ARRAY)]).await?;
    let mut replayed = 0;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        replayed = replayed.max(wal_position(row)?);
        // The LEFT JOIN's row without a match carries only the replay position.
        if let Some(key) = pg(row.try_get::<_, Option<String>>(1))? {
            found.push((key, row_of(row, 2)?));
        }
    }
    Ok((found, replayed))
}

/// Deletes up to `batch` invalidation-log rows older than a minute; returns how many.
pub(crate) async fn trim_log(client: &Client, sql: &Statements, batch: i64) -> Result<u64> {
    let _timer = telemetry::statement("trim_log");
    execute(client, sql, &sql.trim_log, &[(&batch, Type::INT8)]).await
}

/// `pg_try_advisory_lock`: true when this session now holds the lock.
pub(crate) async fn try_advisory_lock(client: &Client, sql: &Statements, key: i64) -> Result<bool> {
    let _timer = telemetry::statement("try_advisory_lock");
    pg(row_one(client, sql, "SELECT pg_try_advisory_lock($1)", &[(&key, Type::INT8)]).await?.try_get(0))
}

/// `pg_advisory_unlock`: true when this session held the lock.
pub(crate) async fn advisory_unlock(client: &Client, sql: &Statements, key: i64) -> Result<bool> {
    let _timer = telemetry::statement("advisory_unlock");
    pg(row_one(client, sql, "SELECT pg_advisory_unlock($1)", &[(&key, Type::INT8)]).await?.try_get(0))
}

// ---- Coherence (issue 11): reconcile after a reconnect, the incarnation of L2 ----
//
// Kept apart from the entry operations above: these run on the listener's own connection (or any
// client), never on the hot path.

/// SQL text of the coherence statements, formatted once per cache with validated names.
#[derive(Debug)]
pub(crate) struct CoherenceStatements {
    /// `(key, version)` of the live rows among `$1`.
    pub(crate) versions: String,
    /// The incarnation row, the table's current oid, the server's system identifier and start time, and
    /// the database clock (for the expiry of values carried by notifications, `Coherence::clock`).
    pub(crate) incarnation: String,
    /// The flusher's batch (issue 9): deletes up to `$1` log rows and notifies them, in one statement
    /// (one transaction: a flusher killed mid-batch neither deletes nor sends it). Returns the rows taken.
    pub(crate) drain: String,
    /// Milliseconds since the oldest row of the log was written (`NULL`: the log is empty).
    pub(crate) log_age: String,
    /// `pg_try_advisory_lock($1)`: the flusher election, and the flusher falling asleep.
    pub(crate) try_lock: String,
    /// `pg_advisory_unlock($1)`: the flusher waking up.
    pub(crate) unlock: String,
}

/// How the listener's flusher statements start (then the prefix and ` */`), so that operators (and
/// `pgcache-admin`) can tell the listener's backend in `pg_stat_activity` by its last statement.
pub(crate) const LISTENER_TAG: &str = "/* pgcache listener ";

/// Bytes of keys (plus 24 per key for versions and quoting) per notification of a flusher batch; a
/// notification that still ends up over [`PAYLOAD_MAX`] (keys that escape to much longer JSON) is sent
/// as "every key" instead. PostgreSQL refuses payloads of 8000 bytes or more.
const CHUNK_BYTES: usize = 6000;
/// The longest payload the flusher sends as is.
const PAYLOAD_MAX: usize = 7900;

/// The longest value a flusher notification carries (see [`drain_sql`]); longer values are only evicted.
pub(crate) const CARRIED_VALUE_MAX: usize = 512;
/// Batches of more distinct keys than this carry no values, only evict. Measured (`bench --only
/// invalidation`, 2 x 16 writers over 1000 keys, batches of hundreds of keys): carrying every value took
/// the invalidation p99 under load from 15 ms to 65–88 ms (a longer batch statement, an install instead of
/// a removal per key on every node); Shape B's batches hold about 10 keys.
pub(crate) const CARRIED_KEYS_MAX: usize = 64;

/// The flusher's batch statement, see [`CoherenceStatements::drain`]. Payload version 2 (listener.rs):
/// `{"v":2,"p":prefix,"t":ms,"u":[[key,version],...],"d":[[key,version],...],"w":[[key,version,value,expires],...]}`
/// (written, deleted, and the new values of written keys) or `{"v":2,"p":prefix,"t":ms,"f":1}` (every key).
/// `t` is when the oldest change of the batch was written.
/// A key written several times in a batch is sent once, with its newest version; a delete wins over the
/// write of the same version (the deleted row's version is the one its last write gave it), else a node
/// holding that version would keep it. While a node polls instead of listening (a row of `cache_pollers`
/// not lapsed), the batch also moves its rows into the change history the pollers read (`poller.rs`),
/// in the same statement: a poll's snapshot sees each row in the log or in the history, never in neither.
///
/// `w` (issue 9, the re-read herd): in a batch of at most [`CARRIED_KEYS_MAX`] keys, for a written key
/// whose row still has that version, is live and holds at most [`CARRIED_VALUE_MAX`] bytes, the value (base64) and its expiry (epoch milliseconds by the
/// database clock, rounded down; `null`: never), read in this same statement. Every key of `w` is in `u`
/// too, so a node that does not read `w` (an older release) still evicts it. A node that holds the key at
/// an older version installs this value instead of evicting it (`Coherence::replace_notified`), so its
/// readers do not all read the key again from PostgreSQL. The entries are read in a lateral subquery
/// (`OFFSET 0` keeps it one) whose key-count condition gates it, so a larger batch probes no entry at all.
fn drain_sql(prefix: &str, channel: &str) -> String {
    let log = format!("\"{prefix}cache_invalidations\"");
    let entries = format!("\"{prefix}cache_entries\"");
    let (changes, pollers) = (format!("\"{prefix}cache_changes\""), format!("\"{prefix}cache_pollers\""));
    let flush = format!(r#"format('{{"v":2,"p":"{prefix}","t":%s,"f":1}}', (SELECT t FROM m))"#);
    let live = LIVE.replace("expires_at", "e.expires_at");
    format!(
        "WITH d AS (DELETE FROM {log} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {log} LIMIT $1)) \
         RETURNING key, version, deleted, t, xid), \
         h AS (INSERT INTO {changes} (key, version, deleted, xid) SELECT key, version, deleted, xid FROM d \
               WHERE EXISTS (SELECT 1 FROM {pollers} WHERE until > now())), \
         m AS (SELECT coalesce((EXTRACT(EPOCH FROM min(t)) * 1000)::bigint, 0) AS t, \
               coalesce(bool_or(key IS NULL), false) AS everything FROM d), \
         k AS (SELECT DISTINCT ON (key) key, version, deleted FROM d WHERE key IS NOT NULL \
         ORDER BY key, version DESC, deleted DESC), \
         kv AS (SELECT k.key, k.version, k.deleted, e.value, e.x FROM k LEFT JOIN LATERAL \
                (SELECT e.value, floor(EXTRACT(EPOCH FROM e.expires_at) * 1000)::bigint AS x FROM {entries} e \
                 WHERE (SELECT count(*) FROM k) <= {CARRIED_KEYS_MAX} AND NOT k.deleted AND e.key = k.key \
                 AND e.version = k.version AND octet_length(e.value) <= {CARRIED_VALUE_MAX} AND {live} \
                 OFFSET 0) e ON true), \
         c AS (SELECT key, version, deleted, value, x, \
               sum(octet_length(key) + 24 + coalesce(octet_length(key) + octet_length(value) * 4 / 3 + 48, 0)) \
               OVER (ORDER BY key) / {CHUNK_BYTES} AS chunk FROM kv), \
         p AS (SELECT json_build_object('v', 2, 'p', '{prefix}', 't', (SELECT t FROM m), \
                 'u', coalesce(json_agg(json_build_array(key, version)) FILTER (WHERE NOT deleted), '[]'), \
                 'd', coalesce(json_agg(json_build_array(key, version)) FILTER (WHERE deleted), '[]'), \
                 'w', coalesce(json_agg(json_build_array(key, version, translate(encode(value, 'base64'), E'\\n', ''), x)) \
                      FILTER (WHERE value IS NOT NULL), '[]'))::text AS payload \
               FROM c WHERE NOT (SELECT everything FROM m) GROUP BY chunk \
               UNION ALL SELECT {flush} FROM m WHERE everything) \
         SELECT (SELECT count(*) FROM d), \
                count(pg_notify('{channel}', CASE WHEN octet_length(payload) > {PAYLOAD_MAX} THEN {flush} ELSE payload END)) \
         FROM p"
    )
}

impl CoherenceStatements {
    pub(crate) fn new(prefix: &str, channel: &str) -> Self {
        let t = format!("\"{prefix}cache_entries\"");
        let incarnation = format!("\"{prefix}cache_incarnation\"");
        Self {
            versions: format!("SELECT key, version FROM {t} WHERE key = ANY($1) AND {LIVE}"),
            incarnation: format!(
                "SELECT (SELECT id FROM {incarnation} WHERE entries = to_regclass('{t}')::oid), \
                 to_regclass('{t}')::oid::bigint, \
                 CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE') \
                      THEN (SELECT system_identifier FROM pg_control_system()) END, \
                 (EXTRACT(EPOCH FROM pg_postmaster_start_time()) * 1000000)::bigint, \
                 (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint"
            ),
            drain: format!("{LISTENER_TAG}{prefix} */ {}", drain_sql(prefix, channel)),
            log_age: format!(
                "{LISTENER_TAG}{prefix} */ SELECT (EXTRACT(EPOCH FROM clock_timestamp() - min(t)) * 1000)::bigint \
                 FROM \"{prefix}cache_invalidations\""
            ),
            try_lock: format!("{LISTENER_TAG}{prefix} */ SELECT pg_try_advisory_lock($1)"),
            unlock: format!("{LISTENER_TAG}{prefix} */ SELECT pg_advisory_unlock($1)"),
        }
    }
}

/// The identity of the shared table's current life, as read by [`incarnation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Incarnation {
    /// The recorded id of this table's life (`None`: no row names the current table, e.g. it was
    /// recreated by hand and `init_db` has not run since).
    pub(crate) id: Option<String>,
    /// The entries table's oid (`None`: the table is gone).
    pub(crate) table: Option<i64>,
    /// The cluster's system identifier (`None` where the role may not read it: the start time still
    /// tells a new server life).
    pub(crate) system: Option<i64>,
    /// The server's start time, in microseconds since the epoch.
    pub(crate) started: Option<i64>,
}

/// Prepares one of the coherence statements on a connection that lives as long as it is used (the
/// listener's: prepared once per session, not per call).
pub(crate) async fn prepare(client: &tokio_postgres::Client, text: &str) -> Result<tokio_postgres::Statement> {
    pg(client.prepare(text).await)
}

/// Versions of the live rows among `keys`, in one round trip (`stmt`: [`CoherenceStatements::versions`]).
pub(crate) async fn versions(
    client: &tokio_postgres::Client,
    stmt: &tokio_postgres::Statement,
    keys: &[&str],
) -> Result<Vec<(String, i64)>> {
    let rows = pg(client.query(stmt, &[&keys]).await)?;
    rows.iter().map(|row| Ok((pg(row.try_get(0))?, pg(row.try_get(1))?))).collect()
}

/// The incarnation of the shared table (`stmt`: [`CoherenceStatements::incarnation`]), and the database
/// clock when it was read (microseconds since the epoch, `clock_timestamp()`).
pub(crate) async fn incarnation(
    client: &tokio_postgres::Client,
    stmt: &tokio_postgres::Statement,
) -> Result<(Incarnation, i64)> {
    let row = pg(client.query_one(stmt, &[]).await)?;
    let incarnation = Incarnation {
        id: pg(row.try_get(0))?,
        table: pg(row.try_get(1))?,
        system: pg(row.try_get(2))?,
        started: pg(row.try_get(3))?,
    };
    Ok((incarnation, pg(row.try_get(4))?))
}

/// One flusher batch of up to `limit` log rows (`stmt`: [`CoherenceStatements::drain`]); returns how
/// many rows it took.
pub(crate) async fn drain(
    client: &tokio_postgres::Client,
    stmt: &tokio_postgres::Statement,
    limit: i64,
) -> Result<u64> {
    let n: i64 = pg(pg(client.query_one(stmt, &[&limit]).await)?.try_get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// How long the oldest row of the invalidation log has waited (`stmt`: [`CoherenceStatements::log_age`]).
pub(crate) async fn log_age(
    client: &tokio_postgres::Client,
    stmt: &tokio_postgres::Statement,
) -> Result<Option<std::time::Duration>> {
    let ms: Option<i64> = pg(pg(client.query_one(stmt, &[]).await)?.try_get(0))?;
    Ok(ms.map(|ms| std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
}

/// `pg_try_advisory_lock` on a connection of its own (`stmt`: [`CoherenceStatements::try_lock`]).
pub(crate) async fn try_lock(
    client: &tokio_postgres::Client,
    stmt: &tokio_postgres::Statement,
    key: i64,
) -> Result<bool> {
    pg(pg(client.query_one(stmt, &[&key]).await)?.try_get(0))
}

/// `pg_advisory_unlock` of a session lock this connection holds (`stmt`: [`CoherenceStatements::unlock`]).
pub(crate) async fn unlock(client: &tokio_postgres::Client, stmt: &tokio_postgres::Statement, key: i64) -> Result<()> {
    let _held: bool = pg(pg(client.query_one(stmt, &[&key]).await)?.try_get(0))?;
    Ok(())
}

// ---- Capabilities and the polling invalidation mode (issue 14) ----
//
// Unnamed typed statements (`query_typed`, one round trip each): these run a few times a second at
// most, on connections that may go through a transaction pooler, where a prepared statement would not
// survive its transaction.

/// SQL text of the polling mode's statements and the capability probe, formatted once per node with
/// validated names.
#[derive(Debug)]
pub(crate) struct PollStatements {
    /// Registers (or renews) node `$1` as a poller for `$2` more seconds: the flusher keeps the history.
    pub(crate) register: String,
    /// Removes node `$1`'s registration (at close).
    pub(crate) unregister: String,
    /// The snapshot's `xmin`, then every change (history and log) whose writer id is at least `$1`:
    /// `(xmin, key, version, deleted, xid, in_log)`, one row with only `xmin` when there is none.
    pub(crate) changes: String,
    /// Deletes up to `$1` history rows moved more than `$2` seconds ago, and lapsed registrations.
    pub(crate) trim_changes: String,
    /// Whether the engine kept the log table UNLOGGED (`relpersistence`), and whether the notify
    /// triggers have transition tables.
    pub(crate) probe_schema: String,
}

impl PollStatements {
    pub(crate) fn new(prefix: &str) -> Self {
        let changes = format!("\"{prefix}cache_changes\"");
        let log = format!("\"{prefix}cache_invalidations\"");
        let pollers = format!("\"{prefix}cache_pollers\"");
        Self {
            register: format!(
                "INSERT INTO {pollers} (node, until) VALUES ($1, now() + make_interval(secs => $2)) \
                 ON CONFLICT (node) DO UPDATE SET until = EXCLUDED.until"
            ),
            unregister: format!("DELETE FROM {pollers} WHERE node = $1"),
            changes: format!(
                "SELECT s.xmin, c.key, c.version, c.deleted, c.xid, c.in_log \
                 FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin) AS s LEFT JOIN \
                 (SELECT key, version, deleted, xid::text::bigint AS xid, false AS in_log FROM {changes} \
                  WHERE xid >= $1::text::xid8 \
                  UNION ALL \
                  SELECT key, version, deleted, xid::text::bigint, true FROM {log} WHERE xid >= $1::text::xid8) AS c ON true"
            ),
            trim_changes: format!(
                "WITH p AS (DELETE FROM {pollers} WHERE until < now()) \
                 DELETE FROM {changes} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {changes} \
                 WHERE t < clock_timestamp() - make_interval(secs => $2) LIMIT $1))"
            ),
            probe_schema: format!(
                "SELECT coalesce((SELECT relpersistence = 'u' FROM pg_class WHERE oid = to_regclass('{log}')), false), \
                 EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass('\"{prefix}cache_entries\"') \
                         AND (tgnewtable IS NOT NULL OR tgoldtable IS NOT NULL))"
            ),
        }
    }
}

/// One change read by a poll: `key` `None` means every key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Change {
    pub(crate) key: Option<String>,
    pub(crate) version: i64,
    pub(crate) deleted: bool,
    /// The writing transaction's id.
    pub(crate) xid: i64,
}

/// Registers node `node` as a poller for `seconds` more ([`PollStatements::register`]).
pub(crate) async fn register_poller(
    client: &tokio_postgres::Client,
    sql: &PollStatements,
    node: &str,
    seconds: f64,
) -> Result<()> {
    let _timer = telemetry::statement("register_poller");
    pg(client.query_typed(&sql.register, &[(&node, Type::TEXT), (&seconds, Type::FLOAT8)]).await)?;
    Ok(())
}

/// Removes node `node`'s registration ([`PollStatements::unregister`]).
pub(crate) async fn unregister_poller(client: &tokio_postgres::Client, sql: &PollStatements, node: &str) -> Result<()> {
    pg(client.query_typed(&sql.unregister, &[(&node, Type::TEXT)]).await)?;
    Ok(())
}

/// What one poll read: the `xmin` of its snapshot (the next watermark), the changes, and whether any
/// of them was still in the log (not yet moved by a flusher: the log needs draining).
pub(crate) struct Polled {
    pub(crate) xmin: i64,
    pub(crate) changes: Vec<Change>,
    pub(crate) in_log: bool,
}

/// The changes written by transactions with an id at or above `watermark`, and the `xmin` of the
/// snapshot that read them: the next call's watermark ([`PollStatements::changes`]).
pub(crate) async fn poll_changes(
    client: &tokio_postgres::Client,
    sql: &PollStatements,
    watermark: i64,
) -> Result<Polled> {
    let _timer = telemetry::statement("poll_changes");
    let rows = pg(client.query_typed(&sql.changes, &[(&watermark, Type::INT8)]).await)?;
    let mut polled = Polled { xmin: watermark, changes: Vec::new(), in_log: false };
    for row in &rows {
        polled.xmin = pg(row.try_get(0))?;
        let xid: Option<i64> = pg(row.try_get(4))?;
        if let Some(xid) = xid {
            let version: Option<i64> = pg(row.try_get(2))?;
            polled.in_log |= pg::<Option<bool>>(row.try_get(5))?.unwrap_or(false);
            polled.changes.push(Change {
                key: pg(row.try_get(1))?,
                // A NULL version (a row written by hand into the log): newer than anything held.
                version: version.unwrap_or(i64::MAX),
                deleted: pg(row.try_get(3))?,
                xid,
            });
        }
    }
    Ok(polled)
}

/// Deletes up to `batch` history rows older than `retention`, and lapsed poller registrations.
pub(crate) async fn trim_changes(
    client: &tokio_postgres::Client,
    sql: &PollStatements,
    batch: i64,
    retention: std::time::Duration,
) -> Result<u64> {
    let _timer = telemetry::statement("trim_changes");
    let seconds = retention.as_secs_f64();
    pg(client.execute_typed(&sql.trim_changes, &[(&batch, Type::INT8), (&seconds, Type::FLOAT8)]).await)
}

/// `(unlogged kept, transition tables)` ([`PollStatements::probe_schema`]).
pub(crate) async fn probe_schema(client: &tokio_postgres::Client, sql: &PollStatements) -> Result<(bool, bool)> {
    let rows = pg(client.query_typed(&sql.probe_schema, &[]).await)?;
    match rows.first() {
        Some(row) => Ok((pg(row.try_get(0))?, pg(row.try_get(1))?)),
        None => Ok((false, false)),
    }
}

/// Runs `sql` (a statement without parameters returning one `bool` or nothing) unprepared; for the
/// capability probe, where the statement may fail on an engine that lacks the feature.
pub(crate) async fn probe_bool(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<Option<bool>> {
    let rows = pg(client.query_typed(sql, params).await)?;
    match rows.first() {
        Some(row) => Ok(pg(row.try_get(0))?),
        None => Ok(None),
    }
}

/// The probe's `pg_backend_pid()`, unprepared.
pub(crate) async fn backend_pid(client: &tokio_postgres::Client) -> Result<Option<i32>> {
    let rows = pg(client.query_typed("SELECT pg_backend_pid()", &[]).await)?;
    rows.first().map(|row| pg(row.try_get(0))).transpose()
}

/// Versions of the live rows among `keys`, unprepared (`sql`: [`CoherenceStatements::versions`]).
pub(crate) async fn versions_typed(
    client: &tokio_postgres::Client,
    sql: &str,
    keys: &[&str],
) -> Result<Vec<(String, i64)>> {
    let rows = pg(client.query_typed(sql, &[(&keys, Type::TEXT_ARRAY)]).await)?;
    rows.iter().map(|row| Ok((pg(row.try_get(0))?, pg(row.try_get(1))?))).collect()
}

/// The incarnation of the shared table, unprepared (`sql`: [`CoherenceStatements::incarnation`]).
pub(crate) async fn incarnation_typed(client: &tokio_postgres::Client, sql: &str) -> Result<Incarnation> {
    let rows = pg(client.query_typed(sql, &[]).await)?;
    // The statement has no FROM: one row always. None would read as "the table is gone": flush.
    let Some(row) = rows.first() else { return Ok(Incarnation { id: None, table: None, system: None, started: None }) };
    Ok(Incarnation {
        id: pg(row.try_get(0))?,
        table: pg(row.try_get(1))?,
        system: pg(row.try_get(2))?,
        started: pg(row.try_get(3))?,
    })
}

/// One flusher batch, unprepared (`sql`: [`CoherenceStatements::drain`]); returns the rows taken.
pub(crate) async fn drain_typed(client: &tokio_postgres::Client, sql: &str, limit: i64) -> Result<u64> {
    let rows = pg(client.query_typed(sql, &[(&limit, Type::INT8)]).await)?;
    let n: i64 = match rows.first() {
        Some(row) => pg(row.try_get(0))?,
        None => 0,
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

// ---- Lease rows: get_or_set's lock where session advisory locks do not hold (issue 14) ----

/// SQL text of the lease statements (`lock.rs`), formatted once per node with validated names.
#[derive(Debug)]
pub(crate) struct LeaseStatements {
    /// Takes lease `$1` for holder `$2` for `$3` seconds unless another holder's lease is live; returns a
    /// row when taken.
    pub(crate) take: String,
    /// As [`get_or_lock`](Statements::get_or_lock), with a lease (`$2` key, `$3` holder, `$4` seconds)
    /// instead of the advisory lock: taken only when the row is not live.
    pub(crate) get_or_take: String,
    /// Extends lease `$1` of holder `$2` by `$3` seconds; returns a row while it is still held.
    pub(crate) renew: String,
    /// Releases lease `$1` of holder `$2`.
    pub(crate) release: String,
}

impl LeaseStatements {
    pub(crate) fn new(prefix: &str) -> Self {
        let t = format!("\"{prefix}cache_entries\"");
        let leases = format!("\"{prefix}cache_leases\"");
        let upsert = |source: &str| {
            format!(
                "INSERT INTO {leases} AS l (key, holder, expires_at) {source} \
                 ON CONFLICT (key) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
                 WHERE l.expires_at < clock_timestamp() RETURNING true AS taken"
            )
        };
        Self {
            take: upsert("VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3))"),
            get_or_take: format!(
                "WITH r AS (SELECT r.value, r.version, r.ttl, r.live, r.compute_ms, r.refresh_ms \
                 FROM (SELECT 1) AS one LEFT JOIN (SELECT value, version, {TTL_MS} AS ttl, {LIVE} AS live, \
                 compute_ms, {REFRESH_MS} AS refresh_ms FROM {t} WHERE key = $1 AND {USABLE}) AS r ON true), \
                 k AS ({}) \
                 SELECT r.value, r.version, r.ttl, r.live, r.compute_ms, r.refresh_ms, EXISTS (SELECT 1 FROM k) FROM r",
                upsert("SELECT $2, $3, clock_timestamp() + make_interval(secs => $4) FROM r WHERE r.live IS NOT TRUE")
            ),
            renew: format!(
                "UPDATE {leases} SET expires_at = clock_timestamp() + make_interval(secs => $3) \
                 WHERE key = $1 AND holder = $2 RETURNING true"
            ),
            release: format!("DELETE FROM {leases} WHERE key = $1 AND holder = $2"),
        }
    }
}

/// Takes lease `key` for `holder` for `length` ([`LeaseStatements::take`]); true when taken.
pub(crate) async fn take_lease(
    client: &Client,
    sql: &Statements,
    leases: &LeaseStatements,
    key: i64,
    holder: &str,
    length: std::time::Duration,
) -> Result<bool> {
    let _timer = telemetry::statement("take_lease");
    let seconds = length.as_secs_f64();
    let params: [Param<'_>; 3] = [(&key, Type::INT8), (&holder, Type::TEXT), (&seconds, Type::FLOAT8)];
    Ok(row_opt(client, sql, &leases.take, &params).await?.is_some())
}

/// [`get_or_lock`] with a lease instead of the advisory lock ([`LeaseStatements::get_or_take`]).
pub(crate) async fn get_or_lease(
    client: &Client,
    sql: &Statements,
    leases: &LeaseStatements,
    key: &str,
    (lock, holder, length): (i64, &str, std::time::Duration),
) -> Result<(Option<LoadRow>, bool)> {
    let _timer = telemetry::statement("get_or_lease");
    let seconds = length.as_secs_f64();
    let params: [Param<'_>; 4] =
        [(&key, Type::TEXT), (&lock, Type::INT8), (&holder, Type::TEXT), (&seconds, Type::FLOAT8)];
    let row = row_one(client, sql, &leases.get_or_take, &params).await?;
    let taken: bool = pg(row.try_get(6))?;
    let found: Option<bool> = pg(row.try_get(3))?;
    let entry = match found {
        Some(_) => Some(load_row(&row)?),
        None => None,
    };
    Ok((entry, taken))
}

/// Extends lease `key` of `holder` ([`LeaseStatements::renew`]); false when it is no longer held.
pub(crate) async fn renew_lease(
    client: &Client,
    sql: &Statements,
    leases: &LeaseStatements,
    key: i64,
    holder: &str,
    length: std::time::Duration,
) -> Result<bool> {
    let seconds = length.as_secs_f64();
    let params: [Param<'_>; 3] = [(&key, Type::INT8), (&holder, Type::TEXT), (&seconds, Type::FLOAT8)];
    Ok(row_opt(client, sql, &leases.renew, &params).await?.is_some())
}

/// Releases lease `key` of `holder` ([`LeaseStatements::release`]).
pub(crate) async fn release_lease(
    client: &Client,
    sql: &Statements,
    leases: &LeaseStatements,
    key: i64,
    holder: &str,
) -> Result<()> {
    let _timer = telemetry::statement("release_lease");
    let params: [Param<'_>; 2] = [(&key, Type::INT8), (&holder, Type::TEXT)];
    execute(client, sql, &leases.release, &params).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_quote_the_table() {
        let st = Statements::new("a_", true, true);
        assert!(st.get.contains("FROM \"a_cache_entries\""));
        assert!(st.upsert_batch.contains("tg::text[]"));
    }

    #[test]
    fn tags_literal_quotes_and_escapes_every_element() {
        assert_eq!(tags_literal(&[]), "{}");
        let tags = ["a".to_owned(), "b\"c".to_owned(), "d\\e".to_owned(), "{x, y}".to_owned(), "NULL".to_owned()];
        assert_eq!(tags_literal(&tags), r#"{"a","b\"c","d\\e","{x, y}","NULL"}"#);
    }
}
