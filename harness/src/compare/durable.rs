//! The run's durability: what the cluster's `fsync`, `synchronous_commit` and `full_page_writes` are, and
//! with `--durable` all three on, as production runs.
//!
//! A cluster started durable (`PGCACHE_PG_DURABLE=1 scripts/with-postgres …`) is used as it is. Otherwise
//! `--durable` turns them on for the run with `ALTER SYSTEM` + `pg_reload_conf()` (all three take effect on
//! reload; it needs a superuser, as the `scripts/with-postgres` DSN is) and resets them afterwards. The
//! table header says which was used.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::load::connect_raw;

/// The settings that decide whether a commit waits for its WAL flush.
const SETTINGS: [&str; 3] = ["fsync", "synchronous_commit", "full_page_writes"];

/// The cluster's durability settings during the run, and how they came to be.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Durability {
    pub(crate) fsync: String,
    pub(crate) synchronous_commit: String,
    pub(crate) full_page_writes: String,
    /// "as the cluster was started" or "set for this run by ALTER SYSTEM + pg_reload_conf()".
    pub(crate) how: &'static str,
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fsync={} synchronous_commit={} full_page_writes={} ({})",
            self.fsync, self.synchronous_commit, self.full_page_writes, self.how
        )
    }
}

impl Durability {
    fn is_durable(&self) -> bool {
        [&self.fsync, &self.synchronous_commit, &self.full_page_writes].iter().all(|v| v.as_str() == "on")
    }
}

async fn read(dsn: &str, how: &'static str) -> anyhow::Result<Durability> {
    let client = connect_raw(dsn).await?;
    let mut values = Vec::new();
    for name in SETTINGS {
        let row = client.query_one(&format!("SHOW {name}"), &[]).await.with_context(|| format!("SHOW {name}"))?;
        values.push(row.try_get::<_, String>(0)?);
    }
    let [fsync, synchronous_commit, full_page_writes]: [String; 3] =
        values.try_into().map_err(|_| anyhow::anyhow!("three settings read"))?;
    Ok(Durability { fsync, synchronous_commit, full_page_writes, how })
}

/// Sets (or with `value` None resets) the three settings cluster-wide and waits until new sessions see it.
async fn alter(dsn: &str, value: Option<&str>) -> anyhow::Result<()> {
    let client = connect_raw(dsn).await?;
    for name in SETTINGS {
        let sql = match value {
            Some(v) => format!("ALTER SYSTEM SET {name} = {v}"),
            None => format!("ALTER SYSTEM RESET {name}"),
        };
        client.batch_execute(&sql).await.with_context(|| format!("{sql} (needs a superuser)"))?;
    }
    client.batch_execute("SELECT pg_reload_conf()").await?;
    Ok(())
}

/// Runs `body` with the run's durability: with `durable`, all three settings on (see the module docs).
pub(crate) async fn with_durability<F, Fut>(dsn: &str, durable: bool, body: F) -> anyhow::Result<()>
where
    F: FnOnce(Durability) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let before = read(dsn, "as the cluster was started").await?;
    if !durable || before.is_durable() {
        return body(before).await;
    }
    alter(dsn, Some("on")).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let during = loop {
        let now = read(dsn, "set for this run by ALTER SYSTEM + pg_reload_conf()").await?;
        if now.is_durable() {
            break now;
        }
        if Instant::now() > deadline {
            let _ = alter(dsn, None).await;
            bail!("--durable: the cluster still reports {now} 10 s after pg_reload_conf()");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let result = body(during).await;
    let reset = alter(dsn, None).await.context("--durable: resetting the cluster's settings after the run");
    result.and(reset)
}
