//! All SQL of the shared table (L2): statements, pool, schema migrations, and one function per operation.
//!
//! Identifiers (`schema_prefix`) are validated by [`CacheSettings::validate`] before they are formatted
//! into SQL here; keys, values, TTLs and tags are always bind parameters. Every hot statement goes through
//! `prepare_cached`.

use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Client, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::GenericClient;
use tokio_postgres::NoTls;

use crate::error::{Error, Result};
use crate::settings::{parse_dsn, CacheSettings};
use crate::tls::Tls;
use crate::ttl::Expiry;

/// The schema version this library writes and expects.
pub(crate) const SCHEMA_VERSION: i32 = 1;

/// Versioned migrations, applied in order, each in its own transaction.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../../../sql/001_init.sql"))];

/// The notification function and triggers, re-applied when the channel changes.
const NOTIFY_FUNCTION: &str = include_str!("../../../sql/notify_function.sql");

/// A live row: not expired by the database clock.
const LIVE: &str = "(expires_at IS NULL OR expires_at > now())";
/// Remaining TTL in milliseconds, `NULL` for never.
const TTL_MS: &str = "(EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::bigint";

/// SQL text of every statement, formatted once per cache with the validated table name.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) get: String,
    pub(crate) get_many: String,
    pub(crate) upsert: String,
    pub(crate) upsert_many: String,
    pub(crate) delete: String,
    pub(crate) delete_many: String,
    pub(crate) delete_tags: String,
    pub(crate) clear: String,
    pub(crate) ttl: String,
    pub(crate) touch: String,
    pub(crate) sweep: String,
}

impl Statements {
    pub(crate) fn new(prefix: &str) -> Self {
        let t = format!("\"{prefix}cache_entries\"");
        let expires = "now() + $3::bigint * interval '1 millisecond'";
        Self {
            get: format!("SELECT value, version, {TTL_MS} FROM {t} WHERE key = $1 AND {LIVE}"),
            get_many: format!("SELECT key, value, version, {TTL_MS} FROM {t} WHERE key = ANY($1) AND {LIVE}"),
            upsert: format!(
                "INSERT INTO {t} (key, value, expires_at, tags) VALUES ($1, $2, {expires}, $4) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, \
                 tags = EXCLUDED.tags RETURNING version"
            ),
            upsert_many: format!(
                "INSERT INTO {t} (key, value, expires_at) SELECT k, v, {expires} FROM unnest($1::text[], $2::bytea[]) AS u(k, v) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, tags = '{{}}'"
            ),
            delete: format!("DELETE FROM {t} WHERE key = $1 RETURNING {LIVE}"),
            delete_many: format!(
                "WITH d AS (DELETE FROM {t} WHERE key = ANY($1) RETURNING {LIVE} AS live) \
                 SELECT count(*) FILTER (WHERE live) FROM d"
            ),
            delete_tags: format!(
                "WITH d AS (DELETE FROM {t} WHERE tags && $1 RETURNING {LIVE} AS live) \
                 SELECT count(*) FILTER (WHERE live) FROM d"
            ),
            clear: format!("WITH d AS (DELETE FROM {t} RETURNING {LIVE} AS live) SELECT count(*) FILTER (WHERE live) FROM d"),
            ttl: format!("SELECT {TTL_MS} FROM {t} WHERE key = $1 AND {LIVE}"),
            touch: format!("UPDATE {t} SET expires_at = now() + $2::bigint * interval '1 millisecond' WHERE key = $1 AND {LIVE}"),
            sweep: format!(
                "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE expires_at <= now() \
                 LIMIT $1 FOR UPDATE SKIP LOCKED))"
            ),
        }
    }
}

/// A row read from the table.
pub(crate) struct Row {
    pub(crate) value: Bytes,
    pub(crate) version: i64,
    pub(crate) expiry: Expiry,
}

/// Builds a driver config for `dsn` with this library's session settings.
pub(crate) fn pg_config(settings: &CacheSettings, name: &'static str, dsn: &str) -> Result<tokio_postgres::Config> {
    let mut config = parse_dsn(name, dsn)?;
    let mut options = config.get_options().unwrap_or_default().to_owned();
    options.push_str(&format!(" -c statement_timeout={}", settings.statement_timeout.as_millis()));
    if settings.disable_notify {
        options.push_str(" -c pgcache.skip_notify=on");
    }
    config.options(options.trim());
    if config.get_application_name().is_none() {
        config.application_name(&settings.application_name);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(settings.pool_timeout);
    }
    // Notice a dead peer within seconds, not the kernel's two hours.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(5));
    config.keepalives_interval(Duration::from_secs(2));
    config.keepalives_retries(3);
    config.tcp_user_timeout(Duration::from_secs(10));
    Ok(config)
}

/// A deadpool pool with every timeout set (deadpool's default is to wait forever).
pub(crate) fn build_pool(settings: &CacheSettings, name: &'static str, dsn: &str, max_size: usize) -> Result<Pool> {
    let mut config = pg_config(settings, name, dsn)?;
    let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    let manager = match Tls::for_config(settings, &mut config)? {
        Tls::Off => Manager::from_config(config, NoTls, manager_config),
        Tls::Rustls(tls) => Manager::from_config(config, tls, manager_config),
    };
    Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(settings.pool_timeout))
        .create_timeout(Some(settings.pool_timeout))
        .recycle_timeout(Some(settings.pool_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| Error::InvalidSetting { name: "max_pool_size", reason: e.to_string() })
}

/// Opens one unpooled connection for schema work.
async fn connect_once(settings: &CacheSettings) -> Result<tokio_postgres::Client> {
    let mut config = pg_config(settings, "dsn", &settings.dsn)?;
    let closed =
        |e: tokio_postgres::Error| tracing::debug!(target: "pgcache::store", error = %e, "schema connection closed");
    let client = match Tls::for_config(settings, &mut config)? {
        Tls::Off => {
            let (client, connection) = config.connect(NoTls).await.map_err(Error::from_pg)?;
            tokio::spawn(async move { connection.await.unwrap_or_else(closed) });
            client
        }
        Tls::Rustls(tls) => {
            let (client, connection) = config.connect(tls).await.map_err(Error::from_pg)?;
            tokio::spawn(async move { connection.await.unwrap_or_else(closed) });
            client
        }
    };
    Ok(client)
}

/// Replaces the placeholders of a SQL file with validated identifiers.
fn render(sql: &str, settings: &CacheSettings) -> String {
    sql.replace("__UNLOGGED__", if settings.unlogged { "UNLOGGED" } else { "" })
        .replace("__PREFIX__", &settings.schema_prefix)
        .replace("__CHANNEL__", &settings.notify_channel)
}

fn schema_table(settings: &CacheSettings) -> String {
    format!("\"{}cache_schema\"", settings.schema_prefix)
}

/// The advisory lock key that serialises migrations of one prefix across processes.
fn migration_lock_key(settings: &CacheSettings) -> i64 {
    crate::lock::lock_key(&settings.schema_prefix, "\u{0}pgcache:migrate")
}

/// Current schema version (0 when not installed).
pub(crate) async fn schema_version(settings: &CacheSettings) -> Result<i32> {
    settings.validate()?;
    let client = connect_once(settings).await?;
    read_version(&client, settings).await
}

/// Reads the schema version through any client (0 when not installed).
pub(crate) async fn read_version<C: GenericClient>(client: &C, settings: &CacheSettings) -> Result<i32> {
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&schema_table(settings)])
        .await
        .map_err(Error::from_pg)?
        .try_get(0)
        .map_err(Error::from_pg)?;
    if !exists {
        return Ok(0);
    }
    let sql = format!("SELECT coalesce(max(version), 0) FROM {}", schema_table(settings));
    client.query_one(&sql, &[]).await.map_err(Error::from_pg)?.try_get(0).map_err(Error::from_pg)
}

/// Applies every pending migration, each in its own transaction under a per-prefix advisory lock, then
/// makes sure the notification function uses the configured channel. Safe when many processes run it at
/// once. Returns the version reached.
pub(crate) async fn apply_migrations(settings: &CacheSettings) -> Result<i32> {
    settings.validate()?;
    let mut client = connect_once(settings).await?;
    let lock = migration_lock_key(settings);
    let mut version = 0;
    for (step, sql) in MIGRATIONS {
        let tx = client.transaction().await.map_err(Error::from_pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock]).await.map_err(Error::from_pg)?;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
            schema_table(settings)
        ))
        .await
        .map_err(Error::from_pg)?;
        version = read_version(&tx, settings).await?;
        if version > SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                prefix: settings.schema_prefix.clone(),
                found: version,
                expected: SCHEMA_VERSION,
            });
        }
        if version < *step {
            tx.batch_execute(&render(sql, settings)).await.map_err(Error::from_pg)?;
            tx.batch_execute(&render(NOTIFY_FUNCTION, settings)).await.map_err(Error::from_pg)?;
            tx.execute(&format!("INSERT INTO {} (version) VALUES ($1)", schema_table(settings)), &[step])
                .await
                .map_err(Error::from_pg)?;
            version = *step;
            tracing::info!(target: "pgcache::store", prefix = %settings.schema_prefix, version, "applied migration");
        }
        tx.commit().await.map_err(Error::from_pg)?;
    }
    ensure_notify_channel(&mut client, settings, lock).await?;
    Ok(version)
}

/// Re-creates the notification function when it names another channel than the configured one.
async fn ensure_notify_channel(client: &mut tokio_postgres::Client, settings: &CacheSettings, lock: i64) -> Result<()> {
    let expected = format!("pg_notify('{}'", settings.notify_channel);
    let function = format!("{}cache_notify", settings.schema_prefix);
    let tx = client.transaction().await.map_err(Error::from_pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock]).await.map_err(Error::from_pg)?;
    let current: Option<String> = tx
        .query_opt(
            "SELECT prosrc FROM pg_proc WHERE proname = $1 AND pronamespace = current_schema()::regnamespace",
            &[&function],
        )
        .await
        .map_err(Error::from_pg)?
        .and_then(|row| row.try_get(0).ok());
    if !current.is_some_and(|src| src.contains(&expected)) {
        tx.batch_execute(&render(NOTIFY_FUNCTION, settings)).await.map_err(Error::from_pg)?;
        tracing::info!(target: "pgcache::store", channel = %settings.notify_channel, "installed notify function");
    }
    tx.commit().await.map_err(Error::from_pg)
}

fn pg<T>(r: std::result::Result<T, tokio_postgres::Error>) -> Result<T> {
    r.map_err(Error::from_pg)
}

fn row_of(row: &tokio_postgres::Row, offset: usize) -> Result<Row> {
    let value: Vec<u8> = pg(row.try_get(offset))?;
    Ok(Row {
        value: Bytes::from(value),
        version: pg(row.try_get(offset + 1))?,
        expiry: Expiry::from_sql_millis(pg(row.try_get(offset + 2))?),
    })
}

/// `GET`: the live row for `key`.
pub(crate) async fn get(client: &Client, sql: &Statements, key: &str) -> Result<Option<Row>> {
    let stmt = pg(client.prepare_cached(&sql.get).await)?;
    match pg(client.query_opt(&stmt, &[&key]).await)? {
        Some(row) => row_of(&row, 0).map(Some),
        None => Ok(None),
    }
}

/// `GET` of many keys in one round trip; returns (key, row) pairs for the live ones.
pub(crate) async fn get_many(client: &Client, sql: &Statements, keys: &[&str]) -> Result<Vec<(String, Row)>> {
    let stmt = pg(client.prepare_cached(&sql.get_many).await)?;
    let rows = pg(client.query(&stmt, &[&keys]).await)?;
    rows.iter().map(|row| Ok((pg(row.try_get::<_, String>(0))?, row_of(row, 1)?))).collect()
}

/// Upsert of one entry; returns its new version.
pub(crate) async fn upsert(
    client: &Client,
    sql: &Statements,
    key: &str,
    value: &[u8],
    ttl_ms: Option<i64>,
    tags: &[String],
) -> Result<i64> {
    let stmt = pg(client.prepare_cached(&sql.upsert).await)?;
    pg(pg(client.query_one(&stmt, &[&key, &value, &ttl_ms, &tags]).await)?.try_get(0))
}

/// Upsert of many entries in one statement (keys must be distinct).
pub(crate) async fn upsert_many(
    client: &Client,
    sql: &Statements,
    keys: &[&str],
    values: &[&[u8]],
    ttl_ms: Option<i64>,
) -> Result<u64> {
    let stmt = pg(client.prepare_cached(&sql.upsert_many).await)?;
    pg(client.execute(&stmt, &[&keys, &values, &ttl_ms]).await)
}

/// Delete of one key; returns whether a live row existed.
pub(crate) async fn delete(client: &Client, sql: &Statements, key: &str) -> Result<bool> {
    let stmt = pg(client.prepare_cached(&sql.delete).await)?;
    match pg(client.query_opt(&stmt, &[&key]).await)? {
        Some(row) => pg(row.try_get(0)),
        None => Ok(false),
    }
}

async fn count(client: &Client, text: &str, param: &(dyn tokio_postgres::types::ToSql + Sync)) -> Result<u64> {
    let stmt = pg(client.prepare_cached(text).await)?;
    let n: i64 = pg(pg(client.query_one(&stmt, &[param]).await)?.try_get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Delete of many keys; returns how many live rows existed.
pub(crate) async fn delete_many(client: &Client, sql: &Statements, keys: &[&str]) -> Result<u64> {
    count(client, &sql.delete_many, &keys).await
}

/// Delete of every row carrying any of `tags`.
pub(crate) async fn delete_tags(client: &Client, sql: &Statements, tags: &[&str]) -> Result<u64> {
    count(client, &sql.delete_tags, &tags).await
}

/// Delete of every row of the prefix.
pub(crate) async fn clear(client: &Client, sql: &Statements) -> Result<u64> {
    let stmt = pg(client.prepare_cached(&sql.clear).await)?;
    let n: i64 = pg(pg(client.query_one(&stmt, &[]).await)?.try_get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Remaining TTL of a live key.
pub(crate) async fn ttl(client: &Client, sql: &Statements, key: &str) -> Result<Option<Expiry>> {
    let stmt = pg(client.prepare_cached(&sql.ttl).await)?;
    match pg(client.query_opt(&stmt, &[&key]).await)? {
        Some(row) => Ok(Some(Expiry::from_sql_millis(pg(row.try_get(0))?))),
        None => Ok(None),
    }
}

/// New TTL for a live key; returns whether it existed.
pub(crate) async fn touch(client: &Client, sql: &Statements, key: &str, ttl_ms: Option<i64>) -> Result<bool> {
    let stmt = pg(client.prepare_cached(&sql.touch).await)?;
    Ok(pg(client.execute(&stmt, &[&key, &ttl_ms]).await)? > 0)
}

/// Deletes up to `batch` expired rows, skipping rows locked by others; returns how many.
pub(crate) async fn sweep_batch(client: &Client, sql: &Statements, batch: i64) -> Result<u64> {
    let stmt = pg(client.prepare_cached(&sql.sweep).await)?;
    pg(client.execute(&stmt, &[&batch]).await)
}

/// `pg_try_advisory_lock`: true when this session now holds the lock.
pub(crate) async fn try_advisory_lock(client: &Client, key: i64) -> Result<bool> {
    let stmt = pg(client.prepare_cached("SELECT pg_try_advisory_lock($1)").await)?;
    pg(pg(client.query_one(&stmt, &[&key]).await)?.try_get(0))
}

/// `pg_advisory_unlock`: true when this session held the lock.
pub(crate) async fn advisory_unlock(client: &Client, key: i64) -> Result<bool> {
    let stmt = pg(client.prepare_cached("SELECT pg_advisory_unlock($1)").await)?;
    pg(pg(client.query_one(&stmt, &[&key]).await)?.try_get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_replaces_every_placeholder() {
        let s = CacheSettings::new("postgresql://x@y/z").schema_prefix("mk_").notify_channel("ev").unlogged(true);
        for (_, sql) in MIGRATIONS {
            let out = render(sql, &s);
            assert!(!out.contains("__"), "placeholder left in migration");
            assert!(out.contains("CREATE UNLOGGED TABLE IF NOT EXISTS \"mk_cache_entries\""));
        }
        let notify = render(NOTIFY_FUNCTION, &s);
        assert!(notify.contains("pg_notify('ev'"));
        assert!(!notify.contains("__CHANNEL__") && !notify.contains("__PREFIX__"));
    }

    #[test]
    fn statements_quote_the_table() {
        let st = Statements::new("a_");
        assert!(st.get.contains("FROM \"a_cache_entries\""));
        assert!(st.upsert_many.contains("tags = '{}'"));
    }
}
