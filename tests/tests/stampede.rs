//! Stampede protection that holds when connections run out (issue 12, items 3 and 4): `get_or_load`
//! takes every key's advisory lock on one lock connection per cache instance and writes the fill there,
//! so a burst of cold keys neither waits for nor holds pooled connections; nobody loads beside a live
//! holder; every wait is bounded by `lock_wait_timeout`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgcache_core::prelude::*;
use pgcache_core::{Error, Fill, LoadError, Source};
use pgcache_tests::workers::{loads, prepare_loads, Workers};
use pgcache_tests::{connect, eventually, settings_for, Parked};

const EXE: &str = env!("CARGO_BIN_EXE_dogpile_worker");

/// Every key's callers got one value; returns it per key, with the `SET` and `ERR` lines apart.
fn by_key(lines: &[(String, String)]) -> (HashMap<String, String>, Vec<String>, Vec<String>) {
    let (mut values, mut sets, mut errors) = (HashMap::new(), Vec::new(), Vec::new());
    for (key, value) in lines {
        match key.as_str() {
            "SET" => sets.push(value.clone()),
            "ERR" => errors.push(value.clone()),
            _ => {
                assert!(value.starts_with(&format!("{key}@")), "{key} got {value}");
                let first = values.entry(key.clone()).or_insert_with(|| value.clone());
                assert_eq!(first, value, "callers of {key} got different values");
            }
        }
    }
    (values, sets, errors)
}

/// 500 distinct cold keys at once on 3 processes whose pools hold 4 connections each, a 200 ms loader:
/// each key is loaded exactly once, every call is answered, and unrelated writes made during the burst
/// all succeed (the fills hold no pooled connection).
#[tokio::test]
async fn five_hundred_cold_keys_on_four_connections_load_each_once_across_three_processes() -> anyhow::Result<()> {
    let settings = settings_for("st_burst");
    let sql = prepare_loads(&settings).await?;
    let (processes, keys, tasks_per_key) = (3, 500, 2);
    let env = vec![("DOGPILE_POOL", "4".to_owned()), ("DOGPILE_SETS", "20".to_owned())];
    let lines = Workers { exe: EXE, processes, keys, tasks_per_key, loader_ms: 200, env }.run(&settings).await?;
    let (values, sets, errors) = by_key(&lines);
    assert!(errors.is_empty(), "failed calls: {:?}", &errors[..errors.len().min(5)]);
    assert_eq!(values.len(), keys, "every key answered");
    assert_eq!(lines.len() - sets.len(), processes * keys * tasks_per_key, "every call answered");
    let failed_sets: Vec<_> = sets.iter().filter(|s| *s != "ok").collect();
    assert!(failed_sets.is_empty(), "unrelated writes failed during the burst: {failed_sets:?}");
    assert_eq!(sets.len(), processes * 20);
    let loads = loads(&sql, &settings).await?;
    assert_eq!(loads.len(), keys, "every key loaded");
    let twice: Vec<_> = loads.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "{} keys loaded more than once: {:?}", twice.len(), &twice[..twice.len().min(5)]);
    Ok(())
}

/// A loader slower than `lock_wait_timeout` (1.5 s against 300 ms), 3 processes x 4 callers of one cold
/// key: the loader runs once across the cluster. The callers that gave up waiting got
/// `Error::LockTimeout`, never a second loader run.
#[tokio::test]
async fn a_loader_slower_than_lock_wait_timeout_runs_once_across_the_cluster() -> anyhow::Result<()> {
    let settings = settings_for("st_slow");
    let sql = prepare_loads(&settings).await?;
    let env = vec![("DOGPILE_LOCK_WAIT_MS", "300".to_owned()), ("DOGPILE_TOLERATE_ERRORS", "1".to_owned())];
    let workers = Workers { exe: EXE, processes: 3, keys: 1, tasks_per_key: 4, loader_ms: 1500, env };
    let lines = workers.run(&settings).await?;
    let (values, _, errors) = by_key(&lines);
    assert_eq!(lines.len(), 12, "every call answered: {lines:?}");
    assert_eq!(values.len(), 1, "the holder's callers got the value: {lines:?}");
    assert!(!errors.is_empty(), "some callers gave up waiting: {lines:?}");
    for error in &errors {
        assert!(error.contains("lock_wait_timeout"), "a lock-wait timeout, not another failure: {error}");
    }
    assert_eq!(loads(&sql, &settings).await?.get("key:0"), Some(&1), "the loader ran once");
    Ok(())
}

/// Callers waiting in-process for their local leader are bounded too: with a loader that does not finish,
/// they get `Error::LockTimeout` after `lock_wait_timeout`, and the loader still runs once.
#[tokio::test]
async fn in_process_waiters_are_bounded_by_lock_wait_timeout() -> anyhow::Result<()> {
    let settings = settings_for("st_local").lock_wait_timeout(Duration::from_millis(200));
    let cache = connect(&settings).await?;
    let runs = Arc::new(AtomicU32::new(0));
    let (open, gate) = tokio::sync::watch::channel(false);
    let load = |runs: Arc<AtomicU32>, mut gate: tokio::sync::watch::Receiver<bool>| {
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let _ = gate.wait_for(|open| *open).await;
            Ok::<_, std::io::Error>(Fill::new("finally", Ttl::Default))
        }
    };
    let leader = tokio::spawn({
        let (cache, loader) = (cache.clone(), load(Arc::clone(&runs), gate.clone()));
        async move { cache.get_or_load("stuck", loader).await }
    });
    eventually(Duration::from_secs(5), || async { runs.load(Ordering::SeqCst) == 1 }).await?;
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let (cache, loader) = (cache.clone(), load(Arc::clone(&runs), gate.clone()));
        waiters.push(tokio::spawn(async move { cache.get_or_load("stuck", loader).await }));
    }
    for waiter in waiters {
        let answer = tokio::time::timeout(Duration::from_secs(10), waiter).await??;
        assert!(matches!(answer, Err(LoadError::Cache(Error::LockTimeout { .. }))), "{answer:?}");
    }
    open.send(true)?;
    let loaded = leader.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!((loaded.source, &loaded.value[..]), (Source::Loaded, &b"finally"[..]));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    cache.close().await;
    Ok(())
}

/// A fill holds no pooled connection while its loader runs: with a pool of one connection and loaders
/// of several keys in flight, unrelated reads and writes go through, and the pool is idle.
#[tokio::test]
async fn fills_hold_no_pooled_connection_while_the_loader_runs() -> anyhow::Result<()> {
    let settings = settings_for("st_pool").max_pool_size(1).pool_timeout(Duration::from_millis(500));
    let cache = connect(&settings).await?;
    let (open, gate) = tokio::sync::watch::channel(false);
    let parked = Parked::default();
    let runs = Arc::new(AtomicU32::new(0));
    let mut fills = Vec::new();
    for i in 0..8 {
        let (cache, mut gate, runs) = (cache.clone(), gate.clone(), Arc::clone(&runs));
        fills.push(tokio::spawn(parked.track(async move {
            cache
                .get_or_load(&format!("cold:{i}"), move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.wait_for(|open| *open).await;
                    Ok::<_, std::io::Error>(Fill::new(format!("v{i}"), Ttl::Default))
                })
                .await
        })));
    }
    eventually(Duration::from_secs(5), || async { runs.load(Ordering::SeqCst) == 8 }).await?;
    for i in 0..10 {
        cache.set(&format!("other:{i}"), &i, None).await?;
        assert_eq!(cache.get::<i32>(&format!("other:{i}")).await?, Some(i));
    }
    let status = cache.status();
    assert_eq!(status.pool_available, status.pool_size, "no pooled connection held by the 8 fills: {status:?}");
    open.send(true)?;
    for (i, fill) in fills.into_iter().enumerate() {
        let loaded = fill.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!((loaded.source, loaded.stored), (Source::Loaded, true));
        assert_eq!(loaded.value, format!("v{i}").into_bytes());
    }
    cache.close().await;
    Ok(())
}
