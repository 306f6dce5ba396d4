//! Test helper for the cross-process dogpile tests (`tests/tests/dogpile.rs`): one OS process, many
//! tasks, all calling `get_or_set` on the same cold keys.
//!
//! ```text
//! dogpile_worker DSN PREFIX CHANNEL KEYS TASKS_PER_KEY SLEEP_MS
//! ```
//! Connects a cache (the schema must exist), prints `ready`, waits for a line on stdin (so that every
//! process starts at the same moment), then runs `KEYS x TASKS_PER_KEY` tasks calling `get_or_set` on
//! `key:0 .. key:{KEYS-1}` with a loader that sleeps `SLEEP_MS`, records its run with
//! `INSERT INTO "{PREFIX}loads"(key, pid)`, and returns `"{key}@{pid}#{n}"`. Prints one line
//! `{key}\t{value}` per call (`ERR\t{key}\t{error}` for a failed call, and exits with status 1).
//!
//! Optional environment:
//! - `DOGPILE_POOL`: `max_pool_size` (default 16);
//! - `DOGPILE_LOCK_WAIT_MS`: `lock_wait_timeout` (default 60 s);
//! - `DOGPILE_SETS`: that many unrelated `set`s run during the burst; prints `SET\tok` or `SET\t{error}`
//!   for each;
//! - `DOGPILE_LOADER=fail`: the loader fails (after recording its run); a call is answered only from a
//!   fail-safe (stale) value;
//! - `DOGPILE_STALE_MS`: fills carry this fail-safe window;
//! - `DOGPILE_TOLERATE_ERRORS=1`: failed calls are printed but the exit status stays 0.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgcache_core::prelude::*;
use pgcache_core::{Fill, SetOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dsn, prefix, channel, keys, tasks, sleep_ms] = args.as_slice() else {
        bail!("usage: dogpile_worker DSN PREFIX CHANNEL KEYS TASKS_PER_KEY SLEEP_MS");
    };
    let keys: usize = keys.parse().context("KEYS")?;
    let tasks: usize = tasks.parse().context("TASKS_PER_KEY")?;
    let sleep = Duration::from_millis(sleep_ms.parse().context("SLEEP_MS")?);
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let pool: usize = env("DOGPILE_POOL").map(|v| v.parse()).transpose().context("DOGPILE_POOL")?.unwrap_or(16);
    let lock_wait_ms: u64 =
        env("DOGPILE_LOCK_WAIT_MS").map(|v| v.parse()).transpose().context("DOGPILE_LOCK_WAIT_MS")?.unwrap_or(60_000);
    let sets: usize = env("DOGPILE_SETS").map(|v| v.parse()).transpose().context("DOGPILE_SETS")?.unwrap_or(0);
    let failing = env("DOGPILE_LOADER").as_deref() == Some("fail");
    let stale: Option<Duration> = env("DOGPILE_STALE_MS")
        .map(|v| v.parse().map(Duration::from_millis))
        .transpose()
        .context("DOGPILE_STALE_MS")?;
    let tolerate_errors = env("DOGPILE_TOLERATE_ERRORS").is_some();

    let settings = CacheSettings::new(dsn.as_str())
        .schema_prefix(prefix.as_str())
        .notify_channel(channel.as_str())
        .heartbeat_interval(Duration::from_millis(250))
        .max_pool_size(pool)
        .min_pool_size(1)
        .lock_wait_timeout(Duration::from_millis(lock_wait_ms))
        .application_name(format!("{prefix}worker"));
    let cache = PostgresCache::connect(settings).await?;
    let counter = Arc::new(pgcache_tests::sql_client(dsn).await?);
    let insert = Arc::new(format!("INSERT INTO \"{prefix}loads\" (key, pid) VALUES ($1, $2)"));
    let pid = std::process::id();
    let runs = Arc::new(AtomicU32::new(0));

    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"ready\n").await?;
    stdout.flush().await?;
    let mut go = String::new();
    BufReader::new(tokio::io::stdin()).read_line(&mut go).await?;

    let mut handles = Vec::with_capacity(keys * tasks);
    for round in 0..tasks {
        for k in 0..keys {
            let (cache, counter, insert, runs) =
                (cache.clone(), Arc::clone(&counter), Arc::clone(&insert), Arc::clone(&runs));
            let key = format!("key:{k}");
            handles.push(tokio::spawn(async move {
                let loader_key = key.clone();
                let result = cache
                    .get_or_load(&key, move || async move {
                        tokio::time::sleep(sleep).await;
                        let n = runs.fetch_add(1, Ordering::SeqCst);
                        counter.execute(insert.as_str(), &[&loader_key, &i64::from(pid)]).await?;
                        if failing {
                            bail!("loader of {loader_key} failed on purpose");
                        }
                        let value = serde_json::to_vec(&format!("{loader_key}@{pid}#{n}"))?;
                        let mut fill = Fill::new(value, Ttl::Never);
                        if let Some(stale) = stale {
                            fill.options = SetOptions::ttl(Duration::from_secs(60)).stale_for(stale);
                        }
                        Ok::<_, anyhow::Error>(fill)
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .and_then(|loaded| Ok(serde_json::from_slice::<String>(&loaded.value)?));
                (key, round, result)
            }));
        }
    }
    let writes: Vec<_> = (0..sets)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.set(&format!("unrelated:{pid}:{i}"), &i, None).await })
        })
        .collect();
    let mut out = String::new();
    for write in writes {
        match write.await {
            Ok(Ok(())) => out.push_str("SET\tok\n"),
            Ok(Err(e)) => out.push_str(&format!("SET\t{e}\n")),
            Err(e) => out.push_str(&format!("SET\ttask failed: {e}\n")),
        }
    }
    let mut failed = false;
    for handle in handles {
        match handle.await {
            Ok((key, _, Ok(value))) => out.push_str(&format!("{key}\t{value}\n")),
            Ok((key, _, Err(e))) => {
                failed = true;
                out.push_str(&format!("ERR\t{key}\t{e}\n"));
            }
            Err(e) => {
                failed = true;
                out.push_str(&format!("ERR\t?\ttask failed: {e}\n"));
            }
        }
    }
    stdout.write_all(out.as_bytes()).await?;
    stdout.flush().await?;
    cache.close().await;
    if failed && !tolerate_errors {
        std::process::exit(1);
    }
    Ok(())
}
