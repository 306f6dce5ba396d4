//! The schema is checked, repaired and installed quietly, in bounded time:
//!
//! - `init_db` repairs what was dropped or changed by hand (the entries table, notification triggers,
//!   the notification function): until then `schema_is_current` is false and `connect` refuses with
//!   `Error::SchemaDamaged` naming what is wrong; afterwards values round-trip and a write on one node
//!   evicts another node's local copy again;
//! - `init_db` sends no server NOTICE to the client, on a first run or a repeated one;
//! - `init_db`, `schema_version`, `schema_is_current` and `connect` return a typed error within their
//!   timeouts when the server accepts the connection and never answers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgcache_core::prelude::*;
use pgcache_core::{CacheSettings, Error};
use pgcache_tests::{
    connect, entries_table, eventually, make_local, node, settings_for, settings_on, sql_client, with_options,
};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Generous deadline for an invalidation to travel.
const DEADLINE: Duration = Duration::from_secs(5);

/// `connect`'s error, which must be [`Error::SchemaDamaged`]; returns its message.
async fn refused_as_damaged(settings: &CacheSettings) -> anyhow::Result<String> {
    match PostgresCache::connect(settings.clone()).await {
        Err(err @ Error::SchemaDamaged { .. }) => Ok(err.to_string()),
        Err(other) => anyhow::bail!("expected SchemaDamaged, got {other:?}"),
        Ok(_) => anyhow::bail!("connect accepted a damaged schema"),
    }
}

/// A write on `a` evicts `b`'s local copy (an update, then a delete), within [`DEADLINE`].
async fn coherent(a: &PostgresCache, b: &PostgresCache, key: &str) -> anyhow::Result<()> {
    a.set(key, &"v1", None).await?;
    make_local(b, key).await?;
    a.set(key, &"v2", None).await?;
    eventually(DEADLINE, || async { b.get::<String>(key).await.ok().flatten().as_deref() == Some("v2") }).await?;
    make_local(b, key).await?;
    assert!(a.delete(key).await?);
    eventually(DEADLINE, || async { matches!(b.get::<String>(key).await, Ok(None)) }).await?;
    Ok(())
}

/// The non-internal triggers on the entries table of `settings`' prefix.
async fn triggers(sql: &tokio_postgres::Client, settings: &CacheSettings) -> anyhow::Result<Vec<String>> {
    let rows = sql
        .query(
            "SELECT tgname::text FROM pg_trigger WHERE tgrelid = to_regclass($1) AND NOT tgisinternal ORDER BY 1",
            &[&entries_table(settings)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?)
}

#[tokio::test]
async fn init_db_recreates_a_dropped_entries_table() -> anyhow::Result<()> {
    let settings = settings_for("sch_table");
    let cache = connect(&settings).await?;
    cache.set("before", &"v", None).await?;
    cache.close().await;
    let sql = sql_client(&settings.dsn).await?;
    sql.batch_execute(&format!("DROP TABLE {} CASCADE", entries_table(&settings))).await?;

    assert!(!PostgresCache::schema_is_current(&settings).await?);
    let message = refused_as_damaged(&settings).await?;
    let table = format!("{}cache_entries", settings.schema_prefix);
    assert!(message.contains(&table), "the error should name {table}: {message}");
    assert!(message.contains("init_db"), "the error should say how to repair: {message}");

    PostgresCache::init_db(&settings).await?;
    assert!(PostgresCache::schema_is_current(&settings).await?);
    let cache = PostgresCache::connect(settings.clone()).await?;
    assert_eq!(cache.get::<String>("before").await?, None, "the dropped rows are gone, not resurrected");
    cache.set("after", &"repaired", None).await?;
    let other = PostgresCache::connect(node(&settings, "b")).await?;
    assert_eq!(other.get::<String>("after").await?.as_deref(), Some("repaired"));
    coherent(&cache, &other, "k").await?;
    cache.close().await;
    other.close().await;
    Ok(())
}

#[tokio::test]
async fn init_db_recreates_dropped_triggers() -> anyhow::Result<()> {
    let settings = settings_for("sch_trig");
    PostgresCache::init_db(&settings).await?;
    let sql = sql_client(&settings.dsn).await?;
    let intact = triggers(&sql, &settings).await?;
    assert_eq!(intact.len(), 5, "{intact:?}");
    let (p, table) = (&settings.schema_prefix, entries_table(&settings));
    sql.batch_execute(&format!(
        "DROP TRIGGER \"{p}cache_notify_update\" ON {table}; DROP TRIGGER \"{p}cache_notify_delete\" ON {table};"
    ))
    .await?;
    assert_eq!(triggers(&sql, &settings).await?.len(), 3);

    assert!(!PostgresCache::schema_is_current(&settings).await?);
    let message = refused_as_damaged(&settings).await?;
    for dropped in ["cache_notify_update", "cache_notify_delete"] {
        assert!(message.contains(&format!("{p}{dropped}")), "the error should name {p}{dropped}: {message}");
    }

    PostgresCache::init_db(&settings).await?;
    assert_eq!(triggers(&sql, &settings).await?, intact, "all five triggers are back");
    assert!(PostgresCache::schema_is_current(&settings).await?);
    let a = PostgresCache::connect(node(&settings, "a")).await?;
    let b = PostgresCache::connect(node(&settings, "b")).await?;
    coherent(&a, &b, "k").await?;
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn init_db_restores_a_changed_notify_function() -> anyhow::Result<()> {
    let settings = settings_for("sch_func");
    PostgresCache::init_db(&settings).await?;
    let sql = sql_client(&settings.dsn).await?;
    let p = &settings.schema_prefix;
    // Notifies another channel: the nodes would never hear of a write.
    sql.batch_execute(&format!(
        "CREATE OR REPLACE FUNCTION \"{p}cache_notify\"() RETURNS trigger LANGUAGE plpgsql AS $fn$ \
         BEGIN PERFORM pg_notify('{p}elsewhere', 'changed'); RETURN NULL; END $fn$"
    ))
    .await?;

    assert!(!PostgresCache::schema_is_current(&settings).await?);
    let message = refused_as_damaged(&settings).await?;
    assert!(message.contains(&format!("{p}cache_notify")), "the error should name the function: {message}");

    PostgresCache::init_db(&settings).await?;
    assert!(PostgresCache::schema_is_current(&settings).await?);
    let source: String = sql
        .query_one("SELECT prosrc FROM pg_proc WHERE proname = $1", &[&format!("{p}cache_notify")])
        .await?
        .try_get(0)?;
    assert!(source.contains(&format!("Installed for channel {} ", settings.notify_channel)), "{source}");
    let a = PostgresCache::connect(node(&settings, "a")).await?;
    let b = PostgresCache::connect(node(&settings, "b")).await?;
    coherent(&a, &b, "k").await?;
    a.close().await;
    b.close().await;
    Ok(())
}

/// Counts the library's "server notice" events (target `pgcache::conn`), keeping their text.
#[derive(Clone, Default)]
struct Notices(Arc<Mutex<Vec<String>>>);

impl Notices {
    fn seen(&self) -> Vec<String> {
        self.0.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

/// The `message` fields of one event (the format string and, for a notice, the server's text).
#[derive(Default)]
struct Messages(Vec<String>);

impl tracing::field::Visit for Messages {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.push(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.push(format!("{value:?}"));
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Notices {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != "pgcache::conn" {
            return;
        }
        let mut messages = Messages::default();
        event.record(&mut messages);
        if messages.0.iter().any(|m| m == "server notice") {
            if let Ok(mut seen) = self.0.lock() {
                seen.push(messages.0.join(" | "));
            }
        }
    }
}

/// The library logs every notice the server sends on a schema connection at DEBUG ("server notice",
/// target `pgcache::conn`), so counting those events counts the notices that reached the client. The
/// test runs on a current-thread runtime: the connection task runs on this thread, under this
/// thread's subscriber.
#[tokio::test]
async fn init_db_sends_no_notice_on_a_first_or_repeated_run() -> anyhow::Result<()> {
    let notices = Notices::default();
    let _guard = tracing_subscriber::registry().with(notices.clone()).set_default();
    let base = settings_for("sch_quiet");

    // The capture works: with `client_min_messages = debug5` the server sends DEBUG messages for every
    // statement, and `schema_version` (which does not quieten its session) passes them on.
    let chatty = with_options(&base.dsn, "-c client_min_messages=debug5");
    PostgresCache::schema_version(&settings_on(&chatty, "sch_quiet_ctl")).await?;
    let control = notices.seen();
    assert!(!control.is_empty(), "the notice capture saw nothing from a debug5 session");
    notices.0.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clear();

    // The real thing, with notices explicitly on: a first run creates everything (`DROP TRIGGER IF
    // EXISTS` on missing triggers), a repeated one finds it all in place (`CREATE TABLE IF NOT EXISTS`).
    let dsn = with_options(&base.dsn, "-c client_min_messages=notice");
    let settings = settings_on(&dsn, "sch_quiet");
    PostgresCache::init_db(&settings).await?;
    assert_eq!(notices.seen(), Vec::<String>::new(), "notices on the first init_db");
    PostgresCache::init_db(&settings).await?;
    assert_eq!(notices.seen(), Vec::<String>::new(), "notices on a repeated init_db");
    // And a repair (a dropped trigger re-created) is just as quiet.
    let sql = sql_client(&base.dsn).await?;
    let (p, table) = (&settings.schema_prefix, entries_table(&settings));
    sql.batch_execute(&format!("DROP TRIGGER \"{p}cache_notify_insert\" ON {table}")).await?;
    PostgresCache::init_db(&settings).await?;
    assert_eq!(notices.seen(), Vec::<String>::new(), "notices on a repairing init_db");
    assert!(PostgresCache::schema_is_current(&settings).await?);
    Ok(())
}

/// A "server" that accepts TCP connections and never says a word; returns its DSN.
async fn silent_server() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok(format!("postgresql://postgres@127.0.0.1:{port}/postgres"))
}

#[tokio::test]
async fn schema_calls_and_connect_are_bounded_against_a_silent_server() -> anyhow::Result<()> {
    let settings = settings_on(&silent_server().await?, "sch_silent")
        .pool_timeout(Duration::from_millis(500))
        .statement_timeout(Duration::from_secs(1));
    // pool_timeout + statement_timeout + the client's 0.5 s slack, plus a margin for a busy machine.
    let bound = settings.pool_timeout + settings.statement_timeout + Duration::from_millis(1500);
    let outer = Duration::from_secs(10);
    let check = |what: &str, took: Duration, err: &Error| {
        eprintln!("silent server: {what} failed after {took:?}: {err}");
        assert!(took <= bound, "{what} took {took:?}, over {bound:?}");
        assert!(
            matches!(err, Error::Timeout { .. } | Error::Pool(_)) && err.is_unavailable(),
            "{what}: expected a typed timeout, got {err:?}"
        );
    };

    let start = Instant::now();
    let err = tokio::time::timeout(outer, PostgresCache::init_db(&settings)).await?.err();
    check("init_db", start.elapsed(), &err.ok_or_else(|| anyhow::anyhow!("init_db succeeded"))?);
    let start = Instant::now();
    let err = tokio::time::timeout(outer, PostgresCache::schema_version(&settings)).await?.err();
    check("schema_version", start.elapsed(), &err.ok_or_else(|| anyhow::anyhow!("schema_version succeeded"))?);
    let start = Instant::now();
    let err = tokio::time::timeout(outer, PostgresCache::schema_is_current(&settings)).await?.err();
    check("schema_is_current", start.elapsed(), &err.ok_or_else(|| anyhow::anyhow!("schema_is_current succeeded"))?);
    let start = Instant::now();
    let err = tokio::time::timeout(outer, PostgresCache::connect(settings.clone())).await?.err();
    check("connect", start.elapsed(), &err.ok_or_else(|| anyhow::anyhow!("connect succeeded"))?);
    Ok(())
}
