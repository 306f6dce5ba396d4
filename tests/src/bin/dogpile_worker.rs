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

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgcache_core::prelude::*;
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

    let settings = CacheSettings::new(dsn.as_str())
        .schema_prefix(prefix.as_str())
        .notify_channel(channel.as_str())
        .heartbeat_interval(Duration::from_millis(250))
        // Exactly-once is under test, not the fallback after a lock-wait timeout.
        .lock_wait_timeout(Duration::from_secs(60))
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
                    .get_or_set(
                        &key,
                        move || async move {
                            tokio::time::sleep(sleep).await;
                            let n = runs.fetch_add(1, Ordering::SeqCst);
                            counter.execute(insert.as_str(), &[&loader_key, &i64::from(pid)]).await?;
                            Ok::<_, anyhow::Error>(format!("{loader_key}@{pid}#{n}"))
                        },
                        Ttl::Never,
                    )
                    .await;
                (key, round, result)
            }));
        }
    }
    let mut out = String::new();
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
    if failed {
        std::process::exit(1);
    }
    Ok(())
}
