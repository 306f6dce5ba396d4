//! The admin command's connection and every SQL statement it runs (reads of the operator views and of
//! PostgreSQL's statistics). Writes go through `PostgresCache`, never through SQL here.
//!
//! Identifiers come from validated [`CacheSettings`] (`schema_prefix` is checked by
//! `CacheSettings::validate` before it is formatted into SQL); everything else is a bind parameter.

use std::sync::Arc;

use anyhow::{Context, Result};
use pgcache_core::CacheSettings;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Row};

/// A plain client for the settings' database: verified TLS when the DSN says `sslmode=require` (the
/// platform's root certificates), plain otherwise, as the library does.
pub(crate) async fn connect(settings: &CacheSettings) -> Result<Client> {
    let config: tokio_postgres::Config = settings.dsn.parse().context("PGCACHE_DSN/--dsn does not parse")?;
    let client = if config.get_ssl_mode() == SslMode::Require {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (client, connection) =
            config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls)).await.context("connecting")?;
        tokio::spawn(connection);
        client
    } else {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.context("connecting")?;
        tokio::spawn(connection);
        client
    };
    Ok(client)
}

/// `"{prefix}{object}"`, quoted.
fn object(settings: &CacheSettings, object: &str) -> String {
    format!("\"{}{object}\"", settings.schema_prefix)
}

/// The `cache_stats` view's one row, as (column, value) text pairs.
pub(crate) async fn stats(client: &Client, settings: &CacheSettings) -> Result<Vec<(String, String)>> {
    let sql = format!("SELECT * FROM {}", object(settings, "cache_stats"));
    let row = client.query_one(&sql, &[]).await.context("reading the cache_stats view (run init_db first)")?;
    Ok(row_as_text(&row))
}

/// One listed key.
pub(crate) struct KeyRow {
    pub(crate) key: String,
    pub(crate) value_bytes: i32,
    pub(crate) expires_in_s: Option<f64>,
    pub(crate) tags: Vec<String>,
}

/// Keys matching the SQL `LIKE` pattern, in key order, at most `limit`.
pub(crate) async fn keys(client: &Client, settings: &CacheSettings, pattern: &str, limit: i64) -> Result<Vec<KeyRow>> {
    let sql = format!(
        "SELECT key, octet_length(value), extract(epoch FROM expires_at - now())::float8, tags FROM {} \
         WHERE key LIKE $1 ORDER BY key LIMIT $2",
        object(settings, "cache_entries")
    );
    let rows = client.query(&sql, &[&pattern, &limit]).await?;
    rows.iter()
        .map(|r| {
            Ok(KeyRow {
                key: r.try_get(0)?,
                value_bytes: r.try_get(1)?,
                expires_in_s: r.try_get(2)?,
                tags: r.try_get(3)?,
            })
        })
        .collect()
}

/// One entry, expired or not.
pub(crate) struct EntryRow {
    pub(crate) value: Vec<u8>,
    pub(crate) version: i64,
    pub(crate) expires_in_s: Option<f64>,
    pub(crate) tags: Vec<String>,
}

/// The row of `key`, if any.
pub(crate) async fn entry(client: &Client, settings: &CacheSettings, key: &str) -> Result<Option<EntryRow>> {
    let sql = format!(
        "SELECT value, version, extract(epoch FROM expires_at - now())::float8, tags FROM {} WHERE key = $1",
        object(settings, "cache_entries")
    );
    let row = client.query_opt(&sql, &[&key]).await?;
    row.map(|r| {
        Ok(EntryRow { value: r.try_get(0)?, version: r.try_get(1)?, expires_in_s: r.try_get(2)?, tags: r.try_get(3)? })
    })
    .transpose()
}

/// The channel the installed notification function notifies, read from its source.
pub(crate) async fn notified_channel(client: &Client, settings: &CacheSettings) -> Result<Option<String>> {
    let function = object(settings, "cache_notify");
    let row = client.query_opt("SELECT prosrc FROM pg_proc WHERE oid = to_regproc($1)", &[&function]).await?;
    let Some(row) = row else { return Ok(None) };
    let source: String = row.try_get(0)?;
    // Schema 4 records it in a comment ("Installed for channel <name> ("); older schemas notified it.
    if let Some(rest) = source.split("Installed for channel ").nth(1) {
        return Ok(rest.split(' ').next().map(str::to_owned));
    }
    Ok(source.split("pg_notify('").nth(1).and_then(|rest| rest.split('\'').next()).map(str::to_owned))
}

/// Backends that look like a pgcache listener of this prefix and channel. PostgreSQL does not show who
/// listens on what, so they are recognised by their last statement: `LISTEN "channel"`, or the
/// listener's heartbeat or reconcile reads of this prefix's tables, which pooled connections never run.
pub(crate) async fn listeners(client: &Client, settings: &CacheSettings) -> Result<i64> {
    let listen = format!("LISTEN \"{}\"%", settings.notify_channel);
    let heartbeat = format!("%{}%pg_control_system()%", object(settings, "cache_incarnation"));
    let reconcile = format!("SELECT key, version FROM {}%", object(settings, "cache_entries"));
    // The flusher's statements on the listener connection (schema 4): `/* pgcache listener <prefix> */ ...`.
    let flusher = format!("/* pgcache listener {} */%", settings.schema_prefix);
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND (query LIKE $1 OR query LIKE $2 OR query LIKE $3 OR query LIKE $4)",
            &[&listen, &heartbeat, &reconcile, &flusher],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// `pg_notification_queue_usage()`: the fraction of the NOTIFY queue in use (0 to 1).
pub(crate) async fn notify_queue_usage(client: &Client) -> Result<f64> {
    Ok(client.query_one("SELECT pg_notification_queue_usage()", &[]).await?.try_get(0)?)
}

/// Dead-tuple figures and vacuum times of the entries table.
pub(crate) struct TableHealth {
    pub(crate) live: i64,
    pub(crate) dead: i64,
    pub(crate) last_autovacuum: Option<String>,
    pub(crate) last_vacuum: Option<String>,
    pub(crate) bytes: i64,
}

/// What `pg_stat_user_tables` says of the entries table (`None` when it does not exist).
pub(crate) async fn table_health(client: &Client, settings: &CacheSettings) -> Result<Option<TableHealth>> {
    let row = client
        .query_opt(
            "SELECT n_live_tup, n_dead_tup, last_autovacuum::text, last_vacuum::text, \
             pg_total_relation_size(relid) FROM pg_stat_user_tables WHERE relid = to_regclass($1)",
            &[&object(settings, "cache_entries")],
        )
        .await?;
    row.map(|r| {
        Ok(TableHealth {
            live: r.try_get(0)?,
            dead: r.try_get(1)?,
            last_autovacuum: r.try_get(2)?,
            last_vacuum: r.try_get(3)?,
            bytes: r.try_get(4)?,
        })
    })
    .transpose()
}

/// Connections: (max_connections, reserved for superusers, in use).
pub(crate) async fn connections(client: &Client) -> Result<(i64, i64, i64)> {
    let row = client
        .query_one(
            "SELECT current_setting('max_connections')::bigint, \
             current_setting('superuser_reserved_connections')::bigint, \
             (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
            &[],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}

/// Every column of a row as text (NULL as `-`), for the views whose columns are numbers and times.
fn row_as_text(row: &Row) -> Vec<(String, String)> {
    use tokio_postgres::types::Type;
    row.columns()
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let value = match *column.type_() {
                Type::INT8 => row.try_get::<_, Option<i64>>(i).ok().flatten().map(|v| v.to_string()),
                Type::INT4 => row.try_get::<_, Option<i32>>(i).ok().flatten().map(|v| v.to_string()),
                Type::FLOAT8 => row.try_get::<_, Option<f64>>(i).ok().flatten().map(|v| format!("{v:.1}")),
                Type::TEXT => row.try_get::<_, Option<String>>(i).ok().flatten(),
                _ => Some(format!("({})", column.type_().name())),
            };
            (column.name().to_owned(), value.unwrap_or_else(|| "-".to_owned()))
        })
        .collect()
}
