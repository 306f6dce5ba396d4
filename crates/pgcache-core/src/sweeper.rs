//! The background sweeper: deletes expired rows in small batches, one sweeper per prefix at a time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::lock::{lock_key, AdvisoryLock};
use crate::store::{self, Statements};

/// Deletes every expired row in batches of `batch` (each its own short statement), under a
/// `pg_try_advisory_lock` so that one process sweeps a prefix at a time. Returns the rows removed
/// (0 when another process holds the sweeper lock).
/// Each statement is bounded by `bound` on the client side; a connection that overran is closed.
pub(crate) async fn sweep(
    pool: &deadpool_postgres::Pool,
    sql: &Statements,
    prefix: &str,
    batch: u32,
    bound: Duration,
) -> Result<u64> {
    let key = lock_key(prefix, "\u{0}pgcache:sweeper");
    let Some(guard) = AdvisoryLock::try_acquire(pool, key, bound).await? else {
        return Ok(0);
    };
    let mut total = 0;
    let result = async {
        while let Some(client) = guard.client() {
            let n = tokio::time::timeout(bound, store::sweep_batch(client, sql, i64::from(batch)))
                .await
                .map_err(|_| Error::Timeout { what: "sweeper statement", after: bound })??;
            total += n;
            if n < u64::from(batch) {
                break;
            }
        }
        Ok::<_, Error>(total)
    }
    .await;
    match result {
        Ok(n) => {
            guard.release().await;
            Ok(n)
        }
        // Dropping the guard closes the connection, which frees the lock whatever state it is in.
        Err(e) => Err(e),
    }
}

/// Runs [`sweep`] every `interval` until `shutdown` flips; runs when the cache is otherwise idle too.
pub(crate) async fn run(
    pool: deadpool_postgres::Pool,
    sql: Arc<Statements>,
    prefix: String,
    batch: u32,
    interval: Duration,
    bound: Duration,
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
        match sweep(&pool, &sql, &prefix, batch, bound).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(target: "pgcache::sweeper", removed = n, "swept expired rows"),
            Err(e) => tracing::warn!(target: "pgcache::sweeper", error = %e, "sweep failed"),
        }
    }
}
