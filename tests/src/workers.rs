//! Several OS processes calling `get_or_load` at the same moment: the `dogpile_worker` binary (see
//! `src/bin/dogpile_worker.rs`), started, released together and collected by [`Workers::run`].

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgcache_core::{CacheSettings, PostgresCache};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::sql_client;

/// Creates the schema and the `{prefix}loads` table in which every loader run records itself.
pub async fn prepare_loads(settings: &CacheSettings) -> Result<tokio_postgres::Client> {
    PostgresCache::init_db(settings).await?;
    let sql = sql_client(&settings.dsn).await?;
    sql.batch_execute(&format!(
        "CREATE TABLE \"{}loads\" (key text NOT NULL, pid bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())",
        settings.schema_prefix
    ))
    .await?;
    Ok(sql)
}

/// Loader runs per key, from the `{prefix}loads` table.
pub async fn loads(sql: &tokio_postgres::Client, settings: &CacheSettings) -> Result<HashMap<String, i64>> {
    let rows =
        sql.query(&format!("SELECT key, count(*) FROM \"{}loads\" GROUP BY key", settings.schema_prefix), &[]).await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

/// A run of `processes` worker processes, each calling `get_or_load` `tasks_per_key` times on each of
/// `keys` keys with a loader of `loader_ms`.
#[derive(Clone, Debug)]
pub struct Workers {
    /// Path of the `dogpile_worker` binary (`env!("CARGO_BIN_EXE_dogpile_worker")`).
    pub exe: &'static str,
    /// How many processes.
    pub processes: usize,
    /// Keys `key:0 ..`.
    pub keys: usize,
    /// Calls per key per process.
    pub tasks_per_key: usize,
    /// The loader's run time.
    pub loader_ms: u64,
    /// Extra environment of every worker (`DOGPILE_*`, see the binary's docs).
    pub env: Vec<(&'static str, String)>,
}

impl Workers {
    /// Starts the workers, releases them together once all are connected, and returns every
    /// `(key, value)` line they printed (`("ERR", ..)` and `("SET", ..)` lines included).
    pub async fn run(&self, settings: &CacheSettings) -> Result<Vec<(String, String)>> {
        let mut children = Vec::new();
        for _ in 0..self.processes {
            let mut child = Command::new(self.exe)
                .args([
                    settings.dsn.as_str(),
                    &settings.schema_prefix,
                    &settings.notify_channel,
                    &self.keys.to_string(),
                    &self.tasks_per_key.to_string(),
                    &self.loader_ms.to_string(),
                ])
                .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let stdout = BufReader::new(child.stdout.take().context("stdout")?);
            children.push((child, stdout));
        }
        // Barrier: every process connected before any starts calling.
        for (_, stdout) in &mut children {
            let mut line = String::new();
            tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line)).await??;
            if line.trim() != "ready" {
                bail!("worker did not get ready: {line:?}");
            }
        }
        for (child, _) in &mut children {
            child.stdin.as_mut().context("stdin")?.write_all(b"go\n").await?;
        }
        let started = Instant::now();
        let mut lines = Vec::new();
        for (mut child, mut stdout) in children {
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(120), stdout.read_to_string(&mut out)).await??;
            let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                stderr.read_to_string(&mut err).await?;
            }
            if !status.success() {
                bail!("worker failed ({status}):\n{out}\n{err}");
            }
            for line in out.lines() {
                let (key, value) = line.split_once('\t').with_context(|| format!("bad line {line:?}"))?;
                lines.push((key.to_owned(), value.to_owned()));
            }
        }
        eprintln!(
            "{} processes x {} keys x {} tasks: all answered {:?} after the start",
            self.processes,
            self.keys,
            self.tasks_per_key,
            started.elapsed()
        );
        Ok(lines)
    }
}
