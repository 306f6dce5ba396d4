//! Early refresh with one refresher per cluster (issue 12, item 2): entries written with
//! `SetOptions::refresh_after` (deterministic) or `SetOptions::early_refresh` (XFetch, from the loader's
//! measured run time) are reloaded in the background under a try-lock while every caller is answered at
//! once with the current value; at most one refresh runs per key per period (per row version) across
//! the cluster.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgcache_core::prelude::*;
use pgcache_core::{Fill, SetOptions, Source};
use pgcache_tests::{connect, entries_table, node, settings_for, sql_client};

/// What the loader saw of the row it replaced: `(version, age in ms)`.
type Seen = Arc<Mutex<Vec<(i64, f64)>>>;

/// Runs `get_or_load(key)` from 3 tasks on each of `nodes` until the loader has run `runs` times; returns
/// every answer's source and what each loader run saw of the row it replaced.
async fn steady_load(
    nodes: &[PostgresCache],
    key: &'static str,
    options: SetOptions,
    compute: Duration,
    runs: u32,
) -> anyhow::Result<(Vec<Source>, Vec<(i64, f64)>)> {
    let sql = Arc::new(sql_client(&nodes[0].settings().dsn).await?);
    let age = Arc::new(format!(
        "SELECT version, (extract(epoch FROM now() - updated_at) * 1000)::float8 FROM {} WHERE key = $1",
        entries_table(nodes[0].settings())
    ));
    let (count, seen): (Arc<AtomicU32>, Seen) = (Arc::default(), Arc::default());
    let mut tasks = Vec::new();
    for cache in nodes.iter().flat_map(|n| [n.clone(), n.clone(), n.clone()]) {
        let (sql, age, count, seen, options) =
            (Arc::clone(&sql), Arc::clone(&age), Arc::clone(&count), Arc::clone(&seen), options.clone());
        tasks.push(tokio::spawn(async move {
            let mut sources = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            while count.load(Ordering::SeqCst) < runs {
                tick.tick().await;
                let (sql, age, count, seen, options) =
                    (Arc::clone(&sql), Arc::clone(&age), Arc::clone(&count), Arc::clone(&seen), options.clone());
                let loaded = cache
                    .get_or_load(key, move || async move {
                        if let Some(row) = sql.query_opt(age.as_str(), &[&key]).await? {
                            seen.lock()
                                .map_err(|_| anyhow::anyhow!("poisoned"))?
                                .push((row.try_get(0)?, row.try_get(1)?));
                        }
                        tokio::time::sleep(compute).await; // the loader's work
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        let mut fill = Fill::new(format!("v{n}"), Ttl::Default);
                        fill.options = options;
                        Ok::<_, anyhow::Error>(fill)
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                sources.push(loaded.source);
            }
            anyhow::Ok(sources)
        }));
    }
    let mut sources = Vec::new();
    for task in tasks {
        sources.extend(tokio::time::timeout(Duration::from_secs(30), task).await???);
    }
    let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    Ok((sources, seen))
}

async fn nodes(name: &str) -> anyhow::Result<Vec<PostgresCache>> {
    let settings = settings_for(name);
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(connect(&node(&settings, &format!("n{i}"))).await?);
    }
    Ok(nodes)
}

/// `refresh_after(300 ms)` on an entry living 60 s, 3 nodes x 3 tasks calling all along: the entry is
/// reloaded in the background, each reload at least 300 ms after the write it replaces (one per period
/// across the cluster, each on its own version), and no caller ever ran or waited for the loader after
/// the first fill.
#[tokio::test]
async fn refresh_after_reloads_once_per_period_across_nodes_and_nobody_waits() -> anyhow::Result<()> {
    let nodes = nodes("er_after").await?;
    let options = SetOptions::ttl(Duration::from_secs(60)).refresh_after(Duration::from_millis(300));
    let (sources, seen) = steady_load(&nodes, "feed", options, Duration::from_millis(20), 4).await?;
    let loaded = sources.iter().filter(|s| **s == Source::Loaded).count();
    assert_eq!(loaded, 1, "only the first fill ran in a caller: {sources:?}");
    assert!(!sources.contains(&Source::Stale));
    assert!(seen.len() >= 3, "refreshed in the background: {seen:?}");
    for (version, age_ms) in &seen {
        assert!(*age_ms >= 300.0, "refreshed version {version} only {age_ms} ms after its write");
    }
    let mut versions: Vec<i64> = seen.iter().map(|(v, _)| *v).collect();
    versions.dedup();
    assert_eq!(versions.len(), seen.len(), "one refresh per version: {seen:?}");
    for n in nodes {
        n.close().await;
    }
    Ok(())
}

/// XFetch (`early_refresh`) on an entry living 400 ms with a 50 ms loader, 3 nodes x 3 tasks calling all
/// along: every reload happens before expiry in the background (no caller misses after the first
/// fill), one per version across the cluster.
#[tokio::test]
async fn early_refresh_reloads_before_expiry_once_per_version_and_nobody_waits() -> anyhow::Result<()> {
    let nodes = nodes("er_xfetch").await?;
    let options = SetOptions::ttl(Duration::from_millis(400)).early_refresh();
    let (sources, seen) = steady_load(&nodes, "hot", options, Duration::from_millis(50), 5).await?;
    let loaded = sources.iter().filter(|s| **s == Source::Loaded).count();
    assert_eq!(loaded, 1, "only the first fill ran in a caller: {sources:?}");
    assert!(seen.len() >= 4, "refreshed in the background: {seen:?}");
    for (version, age_ms) in &seen {
        assert!(*age_ms < 400.0, "version {version} refreshed after it expired ({age_ms} ms)");
    }
    let mut versions: Vec<i64> = seen.iter().map(|(v, _)| *v).collect();
    versions.dedup();
    assert_eq!(versions.len(), seen.len(), "one refresh per version: {seen:?}");
    for n in nodes {
        n.close().await;
    }
    Ok(())
}
