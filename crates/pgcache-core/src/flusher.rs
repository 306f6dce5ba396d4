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
//! **Sleeping.** After [`IDLE`] of empty polls the flusher falls asleep: it takes the lock
//! [`wake_key`] in exclusive mode, without waiting, drains once more, and then only listens on
//! [`wake_channel`]. Every statement that appends to the log takes that lock in share mode for its
//! transaction when it can, and notifies the wake channel when it cannot (the log's trigger,
//! `sql/006_flusher_wake.sql`, which explains why no write can slip by). The flusher wakes on that
//! notification, lets the lock go, drains, and polls again. So an idle cluster sends one statement per
//! [`ASLEEP_POLL`] for it instead of one per [`POLL`], and the first write after an idle spell costs its
//! writer one NOTIFY and is sent without waiting for a poll.
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
/// How long the log must stay empty before the flusher falls asleep.
pub(crate) const IDLE: Duration = Duration::from_millis(200);
/// How often a sleeping flusher drains anyway. Nothing should be there (a write wakes it): this only
/// bounds what an unforeseen lost wake-up could cost, and the listeners' stall bound (at least a second)
/// already stops every node serving local copies while a log row waits that long.
pub(crate) const ASLEEP_POLL: Duration = Duration::from_secs(5);

/// The advisory lock key of the flusher of `prefix`.
pub(crate) fn flusher_key(prefix: &str) -> i64 {
    lock_key(prefix, "\u{0}pgcache:flusher")
}

/// The advisory lock key a sleeping flusher of `prefix` holds (exclusive), and writers take in share mode.
pub(crate) fn wake_key(prefix: &str) -> i64 {
    lock_key(prefix, "\u{0}pgcache:flusher-awake")
}

/// The channel writers notify to wake the sleeping flusher of `prefix` (named from [`wake_key`], so it
/// is a valid identifier whatever the prefix, and the same for every node).
pub(crate) fn wake_channel(prefix: &str) -> String {
    format!("pgcache_wake_{:016x}", wake_key(prefix))
}

/// The flusher's statements, prepared on the listener's connection.
#[derive(Clone, Copy)]
pub(crate) struct FlusherStatements<'a> {
    /// `pg_try_advisory_lock($1)`.
    pub(crate) try_lock: &'a Statement,
    /// `pg_advisory_unlock($1)`.
    pub(crate) unlock: &'a Statement,
    /// The batch ([`store::CoherenceStatements::drain`]).
    pub(crate) drain: &'a Statement,
}

/// Whether the elected flusher polls or sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Polling every [`POLL`]; the log has been empty since this instant (`None`: the last batch had rows).
    Awake { empty_since: Option<Instant> },
    /// Holding [`wake_key`] and listening on [`wake_channel`]; `woken` once a writer notified it.
    Asleep { woken: bool },
}

/// One listener session's part in the flusher election, and its flushing while elected.
pub(crate) struct Flusher {
    key: i64,
    wake_key: i64,
    wake_channel: String,
    elected: bool,
    state: State,
    next: Instant,
}

impl Flusher {
    /// A candidate for the flusher of `prefix`, due to run for election now.
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            key: flusher_key(prefix),
            wake_key: wake_key(prefix),
            wake_channel: wake_channel(prefix),
            elected: false,
            state: State::Awake { empty_since: None },
            next: Instant::now(),
        }
    }

    /// When [`step`](Self::step) is due next.
    pub(crate) fn due(&self) -> Instant {
        self.next
    }

    /// The channel this flusher listens on once elected.
    pub(crate) fn wake_channel(&self) -> &str {
        &self.wake_channel
    }

    /// A writer notified the wake channel: the next step is due now, and wakes the flusher.
    pub(crate) fn wake(&mut self) {
        if let State::Asleep { woken } = &mut self.state {
            *woken = true;
            self.next = Instant::now();
        }
    }

    /// One step: while elected, one batch (again at once if it was full, else after [`POLL`], and asleep
    /// after [`IDLE`] of empty batches, see the module notes); else one try of the lock (again after
    /// [`ELECTION`] if someone else holds it). Returns the rows flushed.
    ///
    /// # Errors
    /// A statement failed: the session is in trouble and ends (its locks go with it).
    pub(crate) async fn step(&mut self, client: &Client, sql: FlusherStatements<'_>) -> crate::Result<u64> {
        if !self.elected {
            self.elected = store::try_lock(client, sql.try_lock, self.key).await?;
            if !self.elected {
                self.next = Instant::now() + ELECTION;
                return Ok(0);
            }
            let listen = format!("LISTEN \"{}\"", self.wake_channel);
            client.batch_execute(&listen).await.map_err(crate::Error::from_pg)?;
            tracing::info!(target: "pgcache::flusher", "elected invalidation flusher");
        }
        if let State::Asleep { woken } = self.state {
            let flushed = store::drain(client, sql.drain, BATCH).await?;
            if woken || flushed > 0 {
                if !woken {
                    tracing::warn!(target: "pgcache::flusher", flushed, "the sleeping flusher found log rows no writer woke it for");
                }
                store::unlock(client, sql.unlock, self.wake_key).await?;
                self.state = State::Awake { empty_since: None };
                tracing::debug!(target: "pgcache::flusher", flushed, "woke up");
                self.next = Instant::now();
            } else {
                self.next = Instant::now() + ASLEEP_POLL;
            }
            return Ok(flushed);
        }
        let flushed = store::drain(client, sql.drain, BATCH).await?;
        let now = Instant::now();
        self.next = now + POLL;
        if flushed >= BATCH.unsigned_abs() {
            self.next = now;
        }
        if flushed > 0 {
            self.state = State::Awake { empty_since: None };
            return Ok(flushed);
        }
        let empty_since = match self.state {
            State::Awake { empty_since: Some(since) } => since,
            _ => now,
        };
        self.state = State::Awake { empty_since: Some(empty_since) };
        if now.duration_since(empty_since) >= IDLE {
            self.fall_asleep(client, sql).await?;
        }
        Ok(0)
    }

    /// Takes the wake lock if no writer that found the flusher awake is still in its transaction, drains
    /// what those writers committed, and sleeps if that was nothing; else stays awake.
    async fn fall_asleep(&mut self, client: &Client, sql: FlusherStatements<'_>) -> crate::Result<()> {
        if !store::try_lock(client, sql.try_lock, self.wake_key).await? {
            // A writer is in its transaction: try again after another idle spell.
            self.state = State::Awake { empty_since: Some(Instant::now()) };
            return Ok(());
        }
        if store::drain(client, sql.drain, BATCH).await? > 0 {
            store::unlock(client, sql.unlock, self.wake_key).await?;
            self.state = State::Awake { empty_since: None };
            self.next = Instant::now();
            return Ok(());
        }
        self.state = State::Asleep { woken: false };
        self.next = Instant::now() + ASLEEP_POLL;
        tracing::debug!(target: "pgcache::flusher", "asleep until a write");
        Ok(())
    }

    /// Drains the whole log now, if elected (before a session trusts its local cache).
    ///
    /// # Errors
    /// As [`step`](Self::step).
    pub(crate) async fn drain_all(&mut self, client: &Client, sql: FlusherStatements<'_>) -> crate::Result<()> {
        loop {
            let flushed = self.step(client, sql).await?;
            if !self.elected || flushed < BATCH.unsigned_abs() {
                return Ok(());
            }
        }
    }
}
