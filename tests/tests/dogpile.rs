//! Dogpile safety across OS processes: several `dogpile_worker` processes x many tasks each call
//! `get_or_set` on cold keys at the same moment, with a loader that sleeps 200 ms and counts its runs in
//! a table: every key is loaded exactly once and every caller gets that value. The same holds inside one
//! process with several cache instances, and a holder process that crashes mid-load blocks nobody.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgcache_core::prelude::*;
use pgcache_core::CacheSettings;
use pgcache_tests::workers::{loads, prepare_loads, Workers};
use pgcache_tests::{advisory_lock_holder, connect, eventually, node, settings_for, Parked};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const LOADER_MS: u64 = 200;

/// Starts `processes` workers with a 200 ms loader (see [`Workers::run`]).
async fn run_workers(
    settings: &CacheSettings,
    processes: usize,
    keys: usize,
    tasks_per_key: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let exe = env!("CARGO_BIN_EXE_dogpile_worker");
    Workers { exe, processes, keys, tasks_per_key, loader_ms: LOADER_MS, env: Vec::new() }.run(settings).await
}

async fn prepare(settings: &CacheSettings) -> anyhow::Result<tokio_postgres::Client> {
    prepare_loads(settings).await
}

/// Every caller of a key got the same value, and it is the one stored.
async fn check_answers(
    lines: &[(String, String)],
    expected_calls: usize,
    settings: &CacheSettings,
) -> anyhow::Result<HashMap<String, String>> {
    assert_eq!(lines.len(), expected_calls, "every call must answer");
    let mut by_key: HashMap<String, String> = HashMap::new();
    for (key, value) in lines {
        assert!(value.starts_with(&format!("{key}@")), "{key} got {value}");
        let first = by_key.entry(key.clone()).or_insert_with(|| value.clone());
        assert_eq!(first, value, "callers of {key} got different values");
    }
    let reader = connect(&node(settings, "check")).await?;
    for (key, value) in &by_key {
        assert_eq!(reader.get::<String>(key).await?.as_ref(), Some(value), "stored value of {key}");
    }
    reader.close().await;
    Ok(by_key)
}

#[tokio::test]
async fn one_cold_key_many_processes_loads_once() -> anyhow::Result<()> {
    let settings = settings_for("dp_one");
    let sql = prepare(&settings).await?;
    let (processes, tasks) = (4, 16);
    let lines = run_workers(&settings, processes, 1, tasks).await?;
    check_answers(&lines, processes * tasks, &settings).await?;
    let loads = loads(&sql, &settings).await?;
    assert_eq!(
        loads.get("key:0"),
        Some(&1),
        "the loader must run exactly once across {processes} processes: {loads:?}"
    );
    Ok(())
}

#[tokio::test]
async fn many_cold_keys_many_processes_load_each_once() -> anyhow::Result<()> {
    let settings = settings_for("dp_many");
    let sql = prepare(&settings).await?;
    let (processes, keys, tasks) = (4, 64, 2);
    let lines = run_workers(&settings, processes, keys, tasks).await?;
    let by_key = check_answers(&lines, processes * keys * tasks, &settings).await?;
    assert_eq!(by_key.len(), keys);
    let loads = loads(&sql, &settings).await?;
    assert_eq!(loads.len(), keys, "every key loaded");
    let twice: Vec<_> = loads.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "keys loaded more than once: {twice:?}");
    Ok(())
}

/// The same in one process: several cache instances (nodes) x many tasks, one loader run.
#[tokio::test]
async fn one_cold_key_many_nodes_in_one_process_loads_once() -> anyhow::Result<()> {
    let settings = settings_for("dp_nodes");
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(connect(&node(&settings, &format!("n{i}"))).await?);
    }
    let runs = Arc::new(AtomicU32::new(0));
    // The loader is held until it has started and all 60 calls are seen in flight (each has parked, and
    // none can finish before the held loader's value exists).
    let (open, gate) = tokio::sync::watch::channel(false);
    let parked = Parked::default();
    let mut handles = Vec::new();
    for task in 0..60 {
        let cache = nodes[task % nodes.len()].clone();
        let (runs, mut gate) = (Arc::clone(&runs), gate.clone());
        handles.push(tokio::spawn(parked.track(async move {
            cache
                .get_or_set(
                    "cold",
                    move || async move {
                        let n = runs.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.wait_for(|open| *open).await;
                        Ok::<_, std::io::Error>(format!("loaded#{n}"))
                    },
                    None,
                )
                .await
        })));
    }
    eventually(Duration::from_secs(5), || async { parked.count() == 60 && runs.load(Ordering::SeqCst) > 0 }).await?;
    open.send(true)?;
    for handle in handles {
        assert_eq!(handle.await??, "loaded#0");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    for n in nodes {
        n.close().await;
    }
    Ok(())
}

/// A worker process dies (SIGKILL) while it holds a key's lock mid-load: PostgreSQL frees the lock with
/// its session, and a second process loads the key promptly instead of hanging.
#[tokio::test]
async fn a_crashed_holder_process_does_not_block_the_others() -> anyhow::Result<()> {
    let settings = settings_for("dp_crash");
    let sql = prepare(&settings).await?;
    let mut holder = Command::new(env!("CARGO_BIN_EXE_dogpile_worker"))
        .args([settings.dsn.as_str(), &settings.schema_prefix, &settings.notify_channel, "1", "4", "60000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdout = BufReader::new(holder.stdout.take().context("stdout")?);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line)).await??;
    assert_eq!(line.trim(), "ready");
    holder.stdin.as_mut().context("stdin")?.write_all(b"go\n").await?;
    let lock = pgcache_core::lock_key(&settings.schema_prefix, "key:0");
    eventually(Duration::from_secs(10), || async { advisory_lock_holder(&sql, lock).await.ok().flatten().is_some() })
        .await?;

    holder.kill().await?;
    let killed = Instant::now();
    let lines = run_workers(&settings, 2, 1, 4).await?;
    eprintln!("holder process killed mid-load: the other processes answered {:?} later", killed.elapsed());
    // Far under the workers' 60 s lock-wait timeout: the lock was freed, not waited out.
    assert!(killed.elapsed() < Duration::from_secs(10), "waited for the dead holder");
    check_answers(&lines, 8, &settings).await?;
    let loads = loads(&sql, &settings).await?;
    assert_eq!(loads.get("key:0"), Some(&1), "only a survivor's load completes: {loads:?}");
    Ok(())
}
