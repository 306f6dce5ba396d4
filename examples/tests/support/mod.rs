//! Starts the example binaries as real OS processes against a fresh database of the test server.

// Each test file uses a different subset.
#![allow(dead_code)]

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A database of its own for one test (its own `profiles` table and cache schema).
pub(crate) struct TestDatabase {
    /// Its DSN.
    pub(crate) dsn: String,
    name: String,
}

impl TestDatabase {
    /// Drops the database (call it after the examples using it have exited).
    pub(crate) async fn drop_now(self) -> Result<()> {
        let client = pgcache_tests::sql_client(&pgcache_tests::test_dsn()).await?;
        client.batch_execute(&format!("DROP DATABASE \"{}\" WITH (FORCE)", self.name)).await?;
        Ok(())
    }
}

/// Creates a [`TestDatabase`] on the test server.
pub(crate) async fn fresh_database(name: &str) -> Result<TestDatabase> {
    let server = pgcache_tests::test_dsn();
    let db = pgcache_tests::unique_name(name).trim_end_matches('_').to_owned();
    let client = pgcache_tests::sql_client(&server).await?;
    client.batch_execute(&format!("CREATE DATABASE \"{db}\"")).await?;
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (server.as_str(), String::new()),
    };
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let root = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    Ok(TestDatabase { dsn: format!("{root}/{db}{query}"), name: db })
}

/// One running example process.
pub(crate) struct Example {
    child: Child,
    /// `http://127.0.0.1:PORT`, as printed by the example.
    pub(crate) url: String,
    output: Arc<Mutex<Vec<String>>>,
}

impl Example {
    /// Starts `bin --port 0 ARGS` with `PGCACHE_DSN=dsn` and waits (30 s at most) for its
    /// `listening on URL` line.
    pub(crate) async fn start(bin: &str, dsn: &str, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(bin)
            .args(["--port", "0"])
            .args(args)
            .env("PGCACHE_DSN", dsn)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("listening on ") {
                    return Ok(url.trim().to_owned());
                }
            }
            bail!("{bin} exited before listening")
        })
        .await
        .with_context(|| format!("{bin} did not print `listening on` within 30 s"))??;
        // Keep draining stdout so the process never blocks on a full pipe.
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&output);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut sink) = sink.lock() {
                    sink.push(line);
                }
            }
        });
        Ok(Self { child, url, output })
    }

    /// Sends SIGTERM and waits (10 s at most) for a graceful exit.
    pub(crate) async fn terminate(mut self) -> Result<(ExitStatus, Vec<String>)> {
        let pid = self.child.id().context("already exited")?;
        let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        let exit = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .context("no exit within 10 s of SIGTERM")??;
        // Let the drain task see the last lines.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let output = self.output.lock().map(|o| o.clone()).unwrap_or_default();
        Ok((exit, output))
    }
}
