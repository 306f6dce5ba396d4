//! Errors say what went wrong, and only outages are treated as misses:
//!
//! - a wrong password or a nonexistent database shows the server's own message, and is not an outage
//!   (a lazily connected cache does not fail open on it);
//! - a `main() -> Result<(), Box<dyn Error>>` that forgot `init_db` prints the advice to run it;
//! - with the server up but the table dropped by hand, reads and `get_or_set` return the error instead of
//!   a miss or a silent load; a write the server refuses is an error, not an outage;
//! - `connect_lazy` starts without a server: reads fail open, writes fail fast with
//!   `Error::ConnectBackoff` between attempts, and the same instance connects once the server is back.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgcache_core::prelude::*;
use pgcache_core::{Error, Fill, LoadError, Source};
use pgcache_tests::{
    advisory_lock_holder, blocking, connect, entries_table, eventually, login_role, settings_for, settings_on,
    sql_client, with_dbname, with_options, with_user, TestCluster,
};

/// A `get_or_set` whose loader counts its runs.
async fn counted_get_or_set(cache: &PostgresCache, key: &str, runs: &Arc<AtomicU32>) -> pgcache_core::Result<String> {
    let runs = Arc::clone(runs);
    cache
        .get_or_set(
            key,
            move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>("loaded".to_owned())
            },
            None,
        )
        .await
}

#[tokio::test]
async fn wrong_password_shows_the_servers_message() -> anyhow::Result<()> {
    let cluster = blocking(TestCluster::start).await?;
    let settings = settings_on(&cluster.dsn(), "err_pw");
    PostgresCache::init_db(&settings).await?;
    let good = login_role(&cluster.dsn(), &settings.schema_prefix, "", -1).await?;
    let role = settings.schema_prefix.trim_end_matches('_').to_owned();
    let wrong = with_user(&cluster.dsn(), &role, "not-the-password")?;
    let cluster = Arc::new(cluster);
    let reload = Arc::clone(&cluster);
    blocking(move || reload.require_passwords()).await?;
    let mut bad = settings.clone();
    bad.dsn = wrong;
    // The reload is asynchronous: wait until the server checks passwords.
    eventually(Duration::from_secs(10), || async { PostgresCache::schema_version(&bad).await.is_err() }).await?;

    let expected = format!("password authentication failed for user \"{role}\"");
    let errors = [
        ("init_db", PostgresCache::init_db(&bad).await.err()),
        ("schema_version", PostgresCache::schema_version(&bad).await.err()),
        ("connect", PostgresCache::connect(bad.clone()).await.err()),
    ];
    for (what, err) in errors {
        let err = err.ok_or_else(|| anyhow::anyhow!("{what} succeeded with a wrong password"))?;
        eprintln!("{what} with a wrong password: {err}");
        assert!(err.to_string().contains(&expected), "{what}: the server's message is missing: {err}");
        assert!(!err.is_unavailable(), "{what}: a wrong password is not an outage: {err:?}");
    }
    // Not an outage, so a lazily connected cache reports it instead of failing open.
    let lazy = PostgresCache::connect_lazy(bad)?;
    match lazy.get::<String>("k").await {
        Err(err) => assert!(err.to_string().contains(&expected), "{err}"),
        Ok(v) => panic!("a wrong password must not read as a miss, got {v:?}"),
    }
    // A write right after (answered from the back-off, without a new attempt) still names the cause.
    let err = lazy.set("k", &"v", None).await.err().ok_or_else(|| anyhow::anyhow!("a write got through"))?;
    assert!(err.to_string().contains(&expected), "{err}");
    // The right password works.
    let mut right = settings.clone();
    right.dsn = good;
    let cache = PostgresCache::connect(right).await?;
    cache.set("k", &"v", None).await?;
    assert_eq!(cache.get::<String>("k").await?.as_deref(), Some("v"));
    cache.close().await;
    blocking(move || drop(cluster)).await;
    Ok(())
}

#[tokio::test]
async fn nonexistent_database_shows_the_servers_message() -> anyhow::Result<()> {
    let settings = settings_for("err_nodb");
    let missing = format!("{}nowhere", settings.schema_prefix);
    let mut bad = settings.clone();
    bad.dsn = with_dbname(&settings.dsn, &missing)?;
    let expected = format!("database \"{missing}\" does not exist");
    for (what, err) in [
        ("init_db", PostgresCache::init_db(&bad).await.err()),
        ("connect", PostgresCache::connect(bad.clone()).await.err()),
    ] {
        let err = err.ok_or_else(|| anyhow::anyhow!("{what} succeeded on a missing database"))?;
        eprintln!("{what} on a missing database: {err}");
        assert!(err.to_string().contains(&expected), "{what}: the server's message is missing: {err}");
        assert!(!err.is_unavailable(), "{what}: {err:?}");
    }
    Ok(())
}

#[tokio::test]
async fn main_that_forgot_init_db_prints_the_advice() -> anyhow::Result<()> {
    // What a program's `main` returns when it connects without having run `init_db`.
    async fn app(settings: CacheSettings) -> Result<(), Box<dyn std::error::Error>> {
        let cache = PostgresCache::connect(settings).await?;
        cache.close().await;
        Ok(())
    }
    let settings = settings_for("err_main");
    let err = app(settings).await.err().ok_or_else(|| anyhow::anyhow!("connected without a schema"))?;
    assert!(matches!(err.downcast_ref::<Error>(), Some(Error::SchemaOutdated { found: 0, .. })), "{err:?}");
    // `main` returning Err prints `Error: {err:?}`.
    let printed = format!("Error: {err:?}");
    eprintln!("{printed}");
    assert!(printed.contains("PostgresCache::init_db(&settings)"), "no advice in {printed}");
    assert!(!printed.contains("SchemaOutdated {"), "a struct dump instead of the message: {printed}");
    Ok(())
}

/// The table dropped by hand under a connected cache: the server answers, with an error about the
/// request. That is not an outage: reads report it instead of missing, `get_or_set` reports it instead
/// of loading.
#[tokio::test]
async fn reads_report_a_dropped_table_instead_of_missing() -> anyhow::Result<()> {
    let settings = settings_for("err_droptable");
    let cache = connect(&settings).await?;
    cache.set("k", &"v", None).await?;
    assert_eq!(cache.get::<String>("other").await?, None, "the read statement is prepared");
    let sql = sql_client(&settings.dsn).await?;
    sql.batch_execute(&format!("DROP TABLE {} CASCADE", entries_table(&settings))).await?;

    match cache.get::<String>("never-read").await {
        Err(err) => {
            eprintln!("get after DROP TABLE: {err}");
            assert!(!err.is_unavailable(), "{err:?}");
        }
        Ok(v) => panic!("a dropped table must be an error, not {v:?}"),
    }
    assert!(cache.get_many::<String>(&["a", "b"]).await.is_err(), "get_many must report it too");
    let runs = Arc::new(AtomicU32::new(0));
    match counted_get_or_set(&cache, "never-read", &runs).await {
        Err(err) => assert!(!err.is_unavailable(), "{err:?}"),
        Ok(v) => panic!("get_or_set must report the error, not load {v:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the loader must not run when the table is gone");
    let load = cache.get_or_load("never-read", || async { Ok::<_, Error>(Fill::new("x", Ttl::Default)) }).await;
    assert!(matches!(&load, Err(LoadError::Cache(e)) if !e.is_unavailable()), "{load:?}");
    cache.close().await;
    Ok(())
}

/// The test's settings on a session where every transaction is read-only (as on a hot standby): the
/// server is up and answers every read, and refuses every write with SQLSTATE 25006.
async fn read_only(name: &str) -> anyhow::Result<CacheSettings> {
    let settings = settings_for(name);
    PostgresCache::init_db(&settings).await?;
    let mut read_only = settings.clone();
    read_only.dsn = with_options(&settings.dsn, "-c default_transaction_read_only=on");
    Ok(read_only)
}

/// A statement the server refuses (a write in a read-only session) is an error, not an outage; the
/// reads around it still work. (A key too long for the primary key's B-tree, the other refusal one
/// could think of, cannot get that far: `max_key_bytes` is capped below it, see `settings_limits.rs`.)
#[tokio::test]
async fn a_refused_write_is_an_error_not_an_outage() -> anyhow::Result<()> {
    let cache = PostgresCache::connect(read_only("err_ro").await?).await?;
    assert_eq!(cache.get::<String>("k").await?, None);
    let err = cache.set("k", &"v", None).await.err().ok_or_else(|| anyhow::anyhow!("the server took the write"))?;
    eprintln!("set in a read-only session: {err}");
    assert!(matches!(err, Error::Postgres(_)), "{err:?}");
    assert!(!err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains("read-only transaction"), "the server's message is missing: {err}");
    cache.close().await;
    Ok(())
}

/// The same refused write inside `get_or_set`: the loaded value cannot be stored although the server
/// is up, so the caller gets the server's error rather than a silent, unstored load reported as an
/// outage that did not happen.
#[tokio::test]
async fn get_or_set_reports_a_refused_write() -> anyhow::Result<()> {
    let settings = read_only("err_ro_load").await?;
    let cache = PostgresCache::connect(settings.clone()).await?;
    let admin = sql_client(&settings.dsn).await?;
    let runs = Arc::new(AtomicU32::new(0));
    let outcome = counted_get_or_set(&cache, "k", &runs).await;
    let load = cache.get_or_load("k2", || async { Ok::<_, Error>(Fill::new("x", Ttl::Default)) }).await;
    eprintln!("in a read-only session: get_or_set {outcome:?}; get_or_load {load:?}");
    assert!(matches!(&outcome, Err(e) if !e.is_unavailable()), "expected the server's error, got {outcome:?}");
    // get_or_load serves what its loader produced, and says why it was not stored.
    let load = load?;
    assert_eq!((load.source, load.stored, load.unavailable), (Source::Loaded, false, false));
    assert_eq!(load.value, "x");
    let why = load.store_error.ok_or_else(|| anyhow::anyhow!("no store_error on an unstored value"))?;
    assert!(why.to_string().contains("read-only"), "the server's reason: {why}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the loader ran once; its value could not be stored");
    for key in ["k", "k2"] {
        assert_eq!(advisory_lock_holder(&admin, cache.lock_key(key)).await?, None, "{key}'s lock is released");
    }
    cache.close().await;
    Ok(())
}

#[tokio::test]
async fn connect_lazy_starts_without_a_server_and_connects_when_it_is_back() -> anyhow::Result<()> {
    let cluster = Arc::new(blocking(TestCluster::start).await?);
    let settings = settings_on(&cluster.dsn(), "err_lazy")
        .pool_timeout(Duration::from_secs(1))
        .statement_timeout(Duration::from_secs(2));
    PostgresCache::init_db(&settings).await?;
    let stop = Arc::clone(&cluster);
    blocking(move || stop.stop()).await?;

    let cache = PostgresCache::connect_lazy(settings.clone())?;
    // The first use tries to connect, fails, and the read fails open.
    assert_eq!(cache.get::<String>("k").await?, None);
    let failed = Instant::now();
    // Within the next second calls do not try again: writes fail fast, reads still miss.
    let start = Instant::now();
    let write = cache.set("k", &"v", None).await;
    let took = start.elapsed();
    match &write {
        Err(Error::ConnectBackoff { retry_in, last_error, outage }) => {
            assert!(*outage, "a stopped server is an outage");
            eprintln!(
                "set during the back-off: answered in {took:?}: {}",
                write.as_ref().err().map(ToString::to_string).unwrap_or_default()
            );
            assert!(*retry_in <= Duration::from_secs(1), "{retry_in:?}");
            assert!(!last_error.is_empty());
        }
        // Only possible when the machine stalled for the whole second since the failed attempt.
        Err(e) if e.is_unavailable() && failed.elapsed() >= Duration::from_secs(1) => {}
        other => panic!("expected Error::ConnectBackoff, got {other:?}"),
    }
    assert!(write.as_ref().is_err_and(Error::is_unavailable));
    let start = Instant::now();
    assert_eq!(cache.get::<String>("k").await?, None);
    let read = start.elapsed();
    if failed.elapsed() < Duration::from_secs(1) {
        assert!(read < Duration::from_millis(500), "a read during the back-off took {read:?}");
        assert!(took < Duration::from_millis(500), "a write during the back-off took {took:?}");
    }
    // get_or_load runs the loader and says the value was not stored.
    let load = cache.get_or_load("fresh", || async { Ok::<_, Error>(Fill::new("raw", Ttl::Default)) }).await?;
    assert!(!load.stored && load.unavailable, "{load:?}");

    let start_again = Arc::clone(&cluster);
    blocking(move || start_again.start_server()).await?;
    let back = eventually(Duration::from_secs(30), || async { cache.set("k", &"v", None).await.is_ok() }).await?;
    eprintln!("server back: the lazy cache connected {back:?} later");
    assert_eq!(cache.get::<String>("k").await?.as_deref(), Some("v"));
    let other = PostgresCache::connect(settings.clone().application_name("err_lazy_b")).await?;
    assert_eq!(other.get::<String>("k").await?.as_deref(), Some("v"));
    other.close().await;
    cache.close().await;
    blocking(move || drop(cluster)).await;
    Ok(())
}
