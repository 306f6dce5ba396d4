//! The background sweeper: deletes expired rows in small batches, one sweeper per prefix at a time, and
//! trims invalidation-log rows that no flusher took for a minute, and change-history rows past the
//! polling mode's retention window.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::conn::Db;
use crate::error::Result;
use crate::lock::AdvisoryLock;
use crate::lock_key::lock_key;
use crate::store::{self, Statements};

/// Deletes every expired row in batches of `batch` (each its own short, bounded statement), under a
/// `pg_try_advisory_lock` so that one process sweeps a prefix at a time. Returns the rows removed
/// (0 when another process holds the sweeper lock).
pub(crate) async fn sweep(db: &Db, sql: &Statements, prefix: &str, batch: u32) -> Result<u64> {
    let Some(guard) = AdvisoryLock::try_acquire(db, sql, lock_key(prefix, "\u{0}pgcache:sweeper")).await? else {
        return Ok(0);
    };
    let mut total = 0;
    while let Some(conn) = guard.conn() {
        // On error the guard drops, which closes the connection and so frees the lock.
        let n = conn.bounded(store::sweep_batch(conn.client()?, sql, i64::from(batch))).await?;
        total += n;
        if n < u64::from(batch) {
            break;
        }
    }
    // Invalidation-log rows no flusher took for a minute (see `Statements::trim_log`).
    if let Some(conn) = guard.conn() {
        let trimmed = conn.bounded(store::trim_log(conn.client()?, sql, i64::from(batch))).await?;
        if trimmed > 0 {
            tracing::warn!(target: "pgcache::sweeper", trimmed, "dropped invalidation-log rows no flusher took for a minute");
        }
    }
    // Change-history rows older than the retention window, and lapsed poller registrations (poller.rs).
    if let Some(conn) = guard.conn() {
        let polls = store::PollStatements::new(prefix);
        let trim = store::trim_changes(conn.client()?, &polls, i64::from(batch), crate::poller::RETENTION);
        conn.bounded(trim).await?;
    }
    guard.release().await;
    crate::telemetry::swept(prefix, total);
    Ok(total)
}

/// Runs [`sweep`] every `interval` until `shutdown` flips; runs when the cache is otherwise idle too.
pub(crate) async fn run(
    db: Arc<Db>,
    sql: Arc<Statements>,
    prefix: String,
    batch: u32,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        match sweep(&db, &sql, &prefix, batch).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(target: "pgcache::sweeper", removed = n, "swept expired rows"),
            Err(e) => tracing::warn!(target: "pgcache::sweeper", error = %e, "sweep failed"),
        }
    }
}
