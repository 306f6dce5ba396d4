//! The background sweeper: deletes expired rows in small batches, one sweeper per prefix at a time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::lock::lock_key;
use crate::store::{self, Statements};

/// Deletes every expired row in batches of `batch` (each its own short statement), under a
/// `pg_try_advisory_lock` so that one process sweeps a prefix at a time. Returns the rows removed
/// (0 when another process holds the sweeper lock).
pub(crate) async fn sweep(pool: &deadpool_postgres::Pool, sql: &Statements, prefix: &str, batch: u32) -> Result<u64> {
    let conn = pool.get().await.map_err(Error::from_pool)?;
    let key = lock_key(prefix, "\u{0}pgcache:sweeper");
    if !store::try_advisory_lock(&conn, key).await? {
        return Ok(0);
    }
    let mut total = 0;
    let result = async {
        loop {
            let n = store::sweep_batch(&conn, sql, i64::from(batch)).await?;
            total += n;
            if n < u64::from(batch) {
                return Ok::<_, Error>(total);
            }
        }
    }
    .await;
    if store::advisory_unlock(&conn, key).await.is_err() {
        // Never return a connection that may still hold the lock.
        drop(deadpool_postgres::Object::take(conn));
    }
    result
}

/// Runs [`sweep`] every `interval` until `shutdown` flips; runs when the cache is otherwise idle too.
pub(crate) async fn run(
    pool: deadpool_postgres::Pool,
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
        match sweep(&pool, &sql, &prefix, batch).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(target: "pgcache::sweeper", removed = n, "swept expired rows"),
            Err(e) => tracing::warn!(target: "pgcache::sweeper", error = %e, "sweep failed"),
        }
    }
}
