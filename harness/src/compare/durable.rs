//! The run's durability: what the cluster's `fsync`, `synchronous_commit` and `full_page_writes` are, and
//! with `--durable` all three on, as production runs.
//!
//! `fsync` and `full_page_writes` are server-wide and `scripts/with-postgres` sets them on the server's
//! command line, where `ALTER SYSTEM` cannot override them: a durable run needs a cluster started durable,
//! `PGCACHE_PG_DURABLE=1 scripts/with-postgres …`. `--durable` checks that it is (and fails with that hint
//! otherwise); every run's header and compare.json carry the three settings as the server reported them.

use std::future::Future;

use anyhow::{bail, Context};

use crate::load::connect_raw;

/// The settings that decide whether a commit waits for its WAL flush.
const SETTINGS: [&str; 3] = ["fsync", "synchronous_commit", "full_page_writes"];

/// The cluster's durability settings during the run, as the server reported them.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Durability {
    pub(crate) fsync: String,
    pub(crate) synchronous_commit: String,
    pub(crate) full_page_writes: String,
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fsync={} synchronous_commit={} full_page_writes={}",
            self.fsync, self.synchronous_commit, self.full_page_writes
        )
    }
}

impl Durability {
    fn is_durable(&self) -> bool {
        [&self.fsync, &self.synchronous_commit, &self.full_page_writes].iter().all(|v| v.as_str() == "on")
    }
}

async fn read(dsn: &str) -> anyhow::Result<Durability> {
    let client = connect_raw(dsn).await?;
    let mut values = Vec::new();
    for name in SETTINGS {
        let row = client.query_one(&format!("SHOW {name}"), &[]).await.with_context(|| format!("SHOW {name}"))?;
        values.push(row.try_get::<_, String>(0)?);
    }
    let [fsync, synchronous_commit, full_page_writes]: [String; 3] =
        values.try_into().map_err(|_| anyhow::anyhow!("three settings read"))?;
    Ok(Durability { fsync, synchronous_commit, full_page_writes })
}

/// Runs `body` with the run's durability; with `durable`, only on a cluster where all three are on.
pub(crate) async fn with_durability<F, Fut>(dsn: &str, durable: bool, body: F) -> anyhow::Result<()>
where
    F: FnOnce(Durability) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let durability = read(dsn).await?;
    if durable && !durability.is_durable() {
        bail!(
            "--durable needs a cluster running with fsync, synchronous_commit and full_page_writes on; this one \
             runs with {durability}. Start it with `PGCACHE_PG_DURABLE=1 scripts/with-postgres …` (settings \
             given on the server's command line, as scripts/with-postgres does, win over ALTER SYSTEM)"
        );
    }
    body(durability).await
}
