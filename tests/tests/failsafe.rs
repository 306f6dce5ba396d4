//! Fail-safe stored in L2 (issue 12, item 1): an entry written with a stale window
//! (`SetOptions::stale_for`) is served by `get_or_load` past its expiry when the loader fails or is slow,
//! by every node, including one that never saw the value; plain reads stay strict; the sweeper keeps
//! the row until the window ends; past the window (or without one) the caller gets the error.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgcache_core::prelude::*;
use pgcache_core::{Error, Fill, LoadError, Loaded, SetOptions, Source};
use pgcache_tests::workers::{prepare_loads, Workers};
use pgcache_tests::{connect, eventually, node, row_count, settings_for, sql_client};

/// A fill of `value` living `ttl`, kept `stale` longer as a fallback.
fn fill(value: &str, ttl: Duration, stale: Duration) -> Fill {
    let mut fill = Fill::new(value.to_owned(), ttl);
    fill.options = SetOptions::ttl(ttl).stale_for(stale);
    fill
}

async fn failing(cache: &PostgresCache, key: &str) -> Result<Loaded, LoadError<std::io::Error>> {
    cache.get_or_load(key, || async { Err(std::io::Error::other("the source is down")) }).await
}

/// Waits (polling) until `key` has expired for plain reads.
async fn expired(cache: &PostgresCache, key: &str) -> anyhow::Result<()> {
    eventually(Duration::from_secs(5), || async { matches!(cache.get_bytes(key).await, Ok(None)) }).await?;
    Ok(())
}

#[tokio::test]
async fn a_failing_loader_is_answered_with_the_stale_value_on_every_node() -> anyhow::Result<()> {
    let settings = settings_for("fs_nodes");
    let a = connect(&node(&settings, "a")).await?;
    let first = a
        .get_or_load("rates", || async {
            Ok::<_, std::io::Error>(fill("\"rates@v1\"", Duration::from_millis(300), Duration::from_secs(60)))
        })
        .await?;
    assert_eq!(first.source, Source::Loaded);
    expired(&a, "rates").await?;

    // The node that loaded it, and a node that never saw it.
    let b = connect(&node(&settings, "b")).await?;
    for cache in [&a, &b] {
        let stale = failing(cache, "rates").await.map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!((stale.source, &stale.value[..]), (Source::Stale, &b"\"rates@v1\""[..]));
        assert_eq!(stale.output, None);
    }
    // Plain reads stay strict.
    assert_eq!(b.get_bytes("rates").await?, None);
    assert_eq!(b.ttl("rates").await?, None);
    // The sweeper keeps the row while its window lasts.
    a.cleanup_expired().await?;
    assert_eq!(row_count(&sql_client(&settings.dsn).await?, &settings).await?, 1);

    // The first success replaces the value everywhere.
    let fresh =
        b.get_or_load("rates", || async { Ok::<_, std::io::Error>(Fill::new("\"rates@v2\"", Ttl::Default)) }).await?;
    assert_eq!(fresh.source, Source::Loaded);
    eventually(Duration::from_secs(5), || async {
        a.get_bytes("rates").await.ok().flatten().as_deref() == Some(&b"\"rates@v2\""[..])
    })
    .await?;
    for cache in [a, b] {
        cache.close().await;
    }
    Ok(())
}

/// A process that never saw the value (a fresh OS process) serves the stale value when its loader fails.
#[tokio::test]
async fn a_process_that_never_saw_the_value_serves_it_stale() -> anyhow::Result<()> {
    let settings = settings_for("fs_proc");
    let sql = prepare_loads(&settings).await?;
    let cache = connect(&settings).await?;
    cache
        .get_or_load("key:0", || async {
            Ok::<_, std::io::Error>(fill("\"key:0@v1\"", Duration::from_millis(200), Duration::from_secs(60)))
        })
        .await?;
    expired(&cache, "key:0").await?;
    let env = vec![("DOGPILE_LOADER", "fail".to_owned())];
    let exe = env!("CARGO_BIN_EXE_dogpile_worker");
    let lines = Workers { exe, processes: 2, keys: 1, tasks_per_key: 3, loader_ms: 0, env }.run(&settings).await?;
    assert_eq!(lines.len(), 6, "{lines:?}");
    for (key, value) in &lines {
        assert_eq!((key.as_str(), value.as_str()), ("key:0", "key:0@v1"), "{lines:?}");
    }
    // The loader was tried (and failed), yet nothing failed.
    let tried: i64 =
        sql.query_one(&format!("SELECT count(*) FROM \"{}loads\"", settings.schema_prefix), &[]).await?.try_get(0)?;
    assert!(tried >= 1);
    cache.close().await;
    Ok(())
}

/// Past its soft timeout the loader is left running in the background: the caller gets the stale value
/// at once, and the loader's value replaces it when it is done.
#[tokio::test]
async fn a_slow_loader_past_the_soft_timeout_answers_stale_and_finishes_in_the_background() -> anyhow::Result<()> {
    let settings = settings_for("fs_soft").loader_soft_timeout(Some(Duration::from_millis(50)));
    let cache = connect(&settings).await?;
    cache
        .get_or_load("page", || async {
            Ok::<_, std::io::Error>(fill("old", Duration::from_millis(200), Duration::from_secs(60)))
        })
        .await?;
    expired(&cache, "page").await?;
    let (open, mut gate) = tokio::sync::watch::channel(false);
    let runs = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&runs);
    let answer = cache
        .get_or_load("page", move || async move {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = gate.wait_for(|open| *open).await;
            Ok::<_, std::io::Error>(fill("new", Duration::from_secs(60), Duration::from_secs(60)))
        })
        .await?;
    assert_eq!((answer.source, &answer.value[..]), (Source::Stale, &b"old"[..]));
    // Other callers meanwhile: stale at once (the refresh holds the lock), never a second loader run.
    let other = failing(&cache, "page").await.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(other.source, Source::Stale);
    open.send(true)?;
    eventually(Duration::from_secs(5), || async {
        cache.get_bytes("page").await.ok().flatten().as_deref() == Some(&b"new"[..])
    })
    .await?;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    cache.close().await;
    Ok(())
}

/// The hard timeout bounds every loader: past it the caller gets `Error::LoaderTimeout` (no stale
/// value) or the stale value, and the key's lock is free again.
#[tokio::test]
async fn the_hard_timeout_bounds_the_loader() -> anyhow::Result<()> {
    let settings = settings_for("fs_hard").loader_hard_timeout(Some(Duration::from_millis(100)));
    let cache = connect(&settings).await?;
    let never = || std::future::pending::<Result<Fill, std::io::Error>>();
    let answer = cache.get_or_load("cold", never).await;
    assert!(matches!(answer, Err(LoadError::Cache(Error::LoaderTimeout { .. }))), "{answer:?}");
    // The lock was released: the next caller loads at once.
    let loaded = cache.get_or_load("cold", || async { Ok::<_, std::io::Error>(Fill::new("ok", Ttl::Default)) }).await?;
    assert_eq!(loaded.source, Source::Loaded);

    cache
        .get_or_load("warm", || async {
            Ok::<_, std::io::Error>(fill("kept", Duration::from_millis(200), Duration::from_secs(60)))
        })
        .await?;
    expired(&cache, "warm").await?;
    let answer = cache.get_or_load("warm", never).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!((answer.source, &answer.value[..]), (Source::Stale, &b"kept"[..]));
    cache.close().await;
    Ok(())
}

/// Past the stale window (or without one) a failing loader is an error again, and the sweeper removes
/// the row.
#[tokio::test]
async fn past_the_stale_window_the_loader_error_reaches_the_caller() -> anyhow::Result<()> {
    let settings = settings_for("fs_end");
    let cache = connect(&settings).await?;
    cache
        .get_or_load("short", || async {
            Ok::<_, std::io::Error>(fill("brief", Duration::from_millis(100), Duration::from_millis(300)))
        })
        .await?;
    cache
        .get_or_load("plain", || async { Ok::<_, std::io::Error>(Fill::new("p", Duration::from_millis(100))) })
        .await?;
    expired(&cache, "plain").await?;
    assert!(matches!(failing(&cache, "plain").await, Err(LoadError::Loader(_))), "no window, no fallback");
    eventually(Duration::from_secs(5), || async {
        matches!(failing(&cache, "short").await, Err(LoadError::Loader(_)))
    })
    .await?;
    assert_eq!(cache.cleanup_expired().await?, 2);
    cache.close().await;
    Ok(())
}
