//! The invalidation flusher (issue 9): one per prefix in the whole cluster, it turns the invalidation
//! log into notifications.
//!
//! Writers no longer notify at their own commit (NOTIFY takes a cluster-wide lock through the commit,
//! and every notification wakes every listening process). Each write appends `(key, version)` to the log
//! in its own transaction instead (`sql/004_invalidation_log.sql`), and the flusher sends the log in
//! batches: one statement deletes up to [`BATCH`] rows and notifies them (one notification per batch, a
//! few when the keys do not fit in one payload), so a flusher killed mid-batch rolls back both: nothing is
//! deleted, nothing is sent, and the next flusher sends it.
//!
//! The flusher runs on a node's listener connection, elected with the session advisory lock
//! [`lock_key`]`(prefix, "\0pgcache:flusher")`: the first listener to take it flushes until its session
//! ends (PostgreSQL then frees the lock), and every other listener tries again every [`ELECTION`]. The
//! holder polls the log every [`POLL`], and again at once while batches come back full. So a write is
//! notified within about `POLL` plus one statement after its commit, and within `ELECTION` more after the
//! flusher's session died. If no flusher drains the log (a stalled holder), listeners see the log's
//! oldest row age past their stall bound and stop serving local copies (see `listener.rs`).
//!
//! The batches do not wait for a WAL flush, with `synchronous_commit` on too: the log is `UNLOGGED`, so a
//! batch writes no WAL before its commit record, and PostgreSQL flushes the commit record only of
//! transactions that wrote WAL (`RecordTransactionCommit`). Measured on a cluster with `fsync` and
//! `synchronous_commit` on: 4,000 commits of log-only transactions (appends, and batches with
//! `pg_notify`) wrote 4,000 WAL records and 5 WAL syncs; 500 commits on a logged table, 500 syncs. So
//! `SET LOCAL synchronous_commit = off` here would change nothing, and a crash loses nothing the flusher
//! owes: the log is emptied with the restart, which changes the server's start time in the incarnation
//! every node checks, so every node empties its local cache then (`listener.rs`).

use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::{Client, Statement};

use crate::lock_key::lock_key;
use crate::store;

/// How often the elected flusher looks at the log when the last batch was not full.
pub(crate) const POLL: Duration = Duration::from_millis(2);
/// How often a listener that is not the flusher tries to become it.
pub(crate) const ELECTION: Duration = Duration::from_millis(200);
/// Log rows per batch statement.
pub(crate) const BATCH: i64 = 1000;

/// The advisory lock key of the flusher of `prefix`.
pub(crate) fn flusher_key(prefix: &str) -> i64 {
    lock_key(prefix, "\u{0}pgcache:flusher")
}

/// One listener session's part in the flusher election, and its flushing while elected.
pub(crate) struct Flusher {
    key: i64,
    elected: bool,
    next: Instant,
}

impl Flusher {
    /// A candidate for the flusher of `prefix`, due to run for election now.
    pub(crate) fn new(prefix: &str) -> Self {
        Self { key: flusher_key(prefix), elected: false, next: Instant::now() }
    }

    /// When [`step`](Self::step) is due next.
    pub(crate) fn due(&self) -> Instant {
        self.next
    }

    /// One step: while elected, one batch (again at once if it was full, else after [`POLL`]); else one
    /// try of the lock (again after [`ELECTION`] if someone else holds it). Returns the rows flushed.
    ///
    /// # Errors
    /// The statement failed: the session is in trouble and ends (its lock goes with it).
    pub(crate) async fn step(
        &mut self,
        client: &Client,
        try_lock: &Statement,
        drain: &Statement,
    ) -> crate::Result<u64> {
        if !self.elected {
            self.elected = store::try_lock(client, try_lock, self.key).await?;
            if !self.elected {
                self.next = Instant::now() + ELECTION;
                return Ok(0);
            }
            tracing::info!(target: "pgcache::flusher", "elected invalidation flusher");
        }
        let flushed = store::drain(client, drain, BATCH).await?;
        self.next = if flushed >= BATCH.unsigned_abs() { Instant::now() } else { Instant::now() + POLL };
        Ok(flushed)
    }

    /// Drains the whole log now, if elected (before a session trusts its local cache).
    ///
    /// # Errors
    /// As [`step`](Self::step).
    pub(crate) async fn drain_all(
        &mut self,
        client: &Client,
        try_lock: &Statement,
        drain: &Statement,
    ) -> crate::Result<()> {
        loop {
            let flushed = self.step(client, try_lock, drain).await?;
            if !self.elected || flushed < BATCH.unsigned_abs() {
                return Ok(());
            }
        }
    }
}
