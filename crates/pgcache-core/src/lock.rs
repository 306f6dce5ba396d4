//! Advisory locks, released on every path.
//!
//! - [`LockSession`]: `get_or_load`'s locks. One connection per cache instance multiplexes the session
//!   locks of every key being filled (tokio-postgres pipelines the statements), and the fill's re-check
//!   and write go through it too. So a burst of cold keys never waits for, nor holds, a pooled
//!   connection: the loader runs while the key's lock is held on the lock session, and unrelated traffic
//!   keeps the whole pool.
//! - [`AdvisoryLock`]: a session lock held on a pooled connection for a short batch of work (the sweeper).
//!
//! Where session advisory locks do not hold (the probe at connect found so: a transaction pooler on
//! `listen_dsn`, an engine without them, or `assume_without(Capability::SessionLocks)`), the lock
//! session takes **lease rows** instead (`{prefix}cache_leases`, `sql/005_capabilities.sql`): an upsert
//! that overwrites only an expired lease, renewed every [`LEASE`]` / 3` by the holder while its loader
//! runs, released by DELETE. A lease row works through any pooler and on any engine with `INSERT ... ON
//! CONFLICT`; a transaction-level advisory lock would need a transaction (and a pinned server connection)
//! open for the loader's whole run, and does not exist on every engine either. One loader per key holds
//! while the holder lives; a holder that dies stops renewing, and its lease ends within [`LEASE`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;

use crate::conn::{build_pool, statement_bound, Conn, Db};
use crate::error::{Error, Result};
use crate::settings::CacheSettings;
use crate::store::{self, LeaseStatements, LoadRow, Statements};

/// How long a lease row lasts without renewal: a dead holder's lease ends within it.
pub(crate) const LEASE: std::time::Duration = std::time::Duration::from_secs(10);

/// How the lock session takes a key's lock.
enum Locking {
    /// Session advisory locks on the lock session's connection.
    Session,
    /// Lease rows, held by `holder` (this cache instance).
    Lease { holder: String, leases: LeaseStatements },
}

/// Connections the lock session's pool may hold: one in use, plus ones being retired after a failure
/// (still referenced by holders finishing on them).
const LOCK_SESSION_CONNECTIONS: usize = 3;

/// The one connection of a cache instance on which `get_or_load` takes its keys' advisory locks.
///
/// Session locks are re-entrant within a session, so two callers of this process could otherwise both
/// "get" a key's lock: the `held` set makes a key taken here look taken to the next local caller too.
/// A key stays in the set until its unlock has completed. If the connection breaks, PostgreSQL frees
/// every lock it held; the next call opens a new connection.
pub(crate) struct LockSession {
    pool: Pool,
    bound: std::time::Duration,
    current: tokio::sync::Mutex<Option<Arc<Conn>>>,
    held: Mutex<HashSet<i64>>,
    locking: Locking,
    /// The statements its own locking sends (prepared or not, as the settings say).
    sql: Box<Statements>,
}

impl LockSession {
    /// The lock session of a cache instance (connects on first use): on `listen_dsn` when set, since
    /// session locks need a direct connection, not one through a transaction pooler.
    ///
    /// `session_locks`: whether session advisory locks hold there (the probe at connect); lease rows
    /// otherwise.
    pub(crate) fn new(settings: &CacheSettings, session_locks: bool) -> Result<Self> {
        let (name, dsn) = match &settings.listen_dsn {
            Some(dsn) => ("listen_dsn", dsn.as_str()),
            None => ("dsn", settings.dsn.as_str()),
        };
        let locking = if session_locks {
            Locking::Session
        } else {
            let prefix = &settings.schema_prefix;
            Locking::Lease {
                holder: format!("{}-{:016x}", settings.application_name, fastrand::u64(..)),
                leases: LeaseStatements::new(prefix),
            }
        };
        Ok(Self {
            pool: build_pool(settings, name, dsn, LOCK_SESSION_CONNECTIONS)?,
            bound: statement_bound(settings),
            current: tokio::sync::Mutex::new(None),
            held: Mutex::new(HashSet::new()),
            locking,
            sql: Box::new(Statements::new(
                &settings.schema_prefix,
                !settings.disable_notify,
                settings.prepared_statements,
            )),
        })
    }

    /// Takes `key`'s lock on `conn` (one statement); true when taken.
    async fn take(&self, conn: &Conn, key: i64) -> Result<bool> {
        match &self.locking {
            Locking::Session => conn.bounded(store::try_advisory_lock(conn.client()?, &self.sql, key)).await,
            Locking::Lease { holder, leases } => {
                conn.bounded(store::take_lease(conn.client()?, &self.sql, leases, key, holder, LEASE)).await
            }
        }
    }

    /// Renews `key`'s lease every [`LEASE`]` / 3` on `conn` until aborted (lease mode only).
    fn keep_alive(self: &Arc<Self>, conn: &Arc<Conn>, key: i64) -> Option<tokio::task::JoinHandle<()>> {
        if matches!(self.locking, Locking::Session) {
            return None;
        }
        let (session, conn) = (Arc::clone(self), Arc::clone(conn));
        Some(tokio::spawn(async move {
            let Locking::Lease { holder, leases } = &session.locking else { return };
            let sql = &session.sql;
            loop {
                tokio::time::sleep(LEASE / 3).await;
                let renewed = match conn.client() {
                    Ok(client) => conn.bounded(store::renew_lease(client, sql, leases, key, holder, LEASE)).await,
                    Err(e) => Err(e),
                };
                match renewed {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(target: "pgcache::lock", key, "lease lost (expired before its renewal)");
                        return;
                    }
                    // Tried again at the next renewal: the lease lasts three of them.
                    Err(e) => tracing::warn!(target: "pgcache::lock", key, error = %e, "lease renewal failed"),
                }
            }
        }))
    }

    /// Tries to take `key`'s lock; `None` when another session, or another caller of this process,
    /// holds it.
    pub(crate) async fn try_lock(self: &Arc<Self>, key: i64) -> Result<Option<KeyLock>> {
        if !self.held_set().insert(key) {
            return Ok(None);
        }
        let conn = match self.conn().await {
            Ok(conn) => conn,
            Err(e) => {
                self.held_set().remove(&key);
                return Err(e);
            }
        };
        // The guard exists before the statement is sent: if this future is dropped mid-statement, its Drop
        // unlocks (a no-op when the lock was not taken) before the key leaves the held set.
        let mut lock = KeyLock { session: Arc::clone(self), conn: Some(conn), key, renewal: None };
        let acquired = match lock.conn.as_deref() {
            Some(conn) => self.take(conn, key).await,
            None => Ok(false),
        };
        match acquired {
            Ok(true) => {
                lock.renewal = lock.conn.as_ref().and_then(|conn| self.keep_alive(conn, key));
                Ok(Some(lock))
            }
            Ok(false) => {
                lock.conn = None;
                self.held_set().remove(&key);
                Ok(None)
            }
            Err(e) => {
                if let Some(conn) = lock.conn.take() {
                    self.retire(&conn, &e).await;
                }
                self.held_set().remove(&key);
                Err(e)
            }
        }
    }

    /// Reads `key`'s row for `get_or_load` and, when it is not live, tries its lock `lock` in the same
    /// statement (one round trip for a miss). The lock is `None` when the row is live, or when another
    /// session or another caller of this process holds it (then the read is made without trying it).
    pub(crate) async fn read_or_lock(
        self: &Arc<Self>,
        sql: &Statements,
        key: &str,
        lock: i64,
    ) -> Result<(Option<LoadRow>, Option<KeyLock>)> {
        if !self.held_set().insert(lock) {
            let conn = self.conn().await?;
            let row = conn.bounded(store::get_for_load(conn.client()?, sql, key)).await;
            if let Err(e) = &row {
                self.retire(&conn, e).await;
            }
            return Ok((row?, None));
        }
        let conn = match self.conn().await {
            Ok(conn) => conn,
            Err(e) => {
                self.held_set().remove(&lock);
                return Err(e);
            }
        };
        // As in `try_lock`: the guard exists before the statement is sent.
        let mut guard = KeyLock { session: Arc::clone(self), conn: Some(conn), key: lock, renewal: None };
        let read = match (guard.conn.as_deref(), &self.locking) {
            (Some(conn), Locking::Session) => conn.bounded(store::get_or_lock(conn.client()?, sql, key, lock)).await,
            (Some(conn), Locking::Lease { holder, leases }) => {
                let read = store::get_or_lease(conn.client()?, sql, leases, key, (lock, holder, LEASE));
                conn.bounded(read).await
            }
            (None, _) => Ok((None, false)),
        };
        match read {
            Ok((row, true)) => {
                guard.renewal = guard.conn.as_ref().and_then(|conn| self.keep_alive(conn, lock));
                Ok((row, Some(guard)))
            }
            Ok((row, false)) => {
                guard.conn = None;
                self.held_set().remove(&lock);
                Ok((row, None))
            }
            Err(e) => {
                // The lock may have been taken before the statement failed: the guard's Drop unlocks (a
                // no-op otherwise), then frees the key locally.
                guard.failed(&e).await;
                drop(guard);
                Err(e)
            }
        }
    }

    /// Closes the connection (at `close`): every lock it still holds is freed.
    pub(crate) fn close(&self) {
        if let Ok(mut current) = self.current.try_lock() {
            *current = None;
        }
        self.pool.close();
    }

    fn held_set(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current connection, opening one when there is none or it broke; for statements that need no
    /// lock (a `get_or_load` read when every pooled connection is busy).
    pub(crate) async fn conn(&self) -> Result<Arc<Conn>> {
        let mut current = self.current.lock().await;
        if let Some(conn) = current.as_ref() {
            if conn.client().is_ok_and(|client| !client.is_closed()) {
                return Ok(Arc::clone(conn));
            }
        }
        *current = None;
        let object = self.pool.get().await.map_err(Error::from_pool)?;
        let conn = Arc::new(Conn::new(object, self.bound));
        *current = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Stops using `conn` after `err` when the error means the connection is gone or wedged (its locks
    /// are then freed by PostgreSQL, or will be when the last holder lets go of it).
    async fn retire(&self, conn: &Arc<Conn>, err: &Error) {
        if !err.is_unavailable() {
            return;
        }
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *current = None;
        }
    }
}

/// A key's advisory lock held on the [`LockSession`]. Release it with [`release`](Self::release); if it is
/// dropped instead, a task unlocks it (or, without a runtime, the key stays marked held locally until the
/// connection is gone, which is the safe side).
pub(crate) struct KeyLock {
    session: Arc<LockSession>,
    /// `None` once released.
    conn: Option<Arc<Conn>>,
    key: i64,
    /// Lease mode: the task renewing the lease while it is held.
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl KeyLock {
    /// The connection holding the lock, for the re-check and the write made under it.
    pub(crate) fn conn(&self) -> Option<&Conn> {
        self.conn.as_deref()
    }

    /// Marks the connection unusable after `err` (when it is an outage or a timeout).
    pub(crate) async fn failed(&self, err: &Error) {
        if let Some(conn) = &self.conn {
            self.session.retire(conn, err).await;
        }
    }

    /// Unlocks on the lock session, then lets the key be taken again by this process.
    pub(crate) async fn release(mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        if let Some(conn) = self.conn.take() {
            unlock(&self.session, &conn, self.key).await;
        }
    }
}

async fn unlock(session: &LockSession, conn: &Arc<Conn>, key: i64) {
    let unlocked = match (conn.client(), &session.locking) {
        (Ok(client), Locking::Session) => {
            conn.bounded(store::advisory_unlock(client, &session.sql, key)).await.map(|_| ())
        }
        (Ok(client), Locking::Lease { holder, leases }) => {
            conn.bounded(store::release_lease(client, &session.sql, leases, key, holder)).await
        }
        (Err(e), _) => Err(e),
    };
    if let Err(e) = unlocked {
        // The session is retired: its locks are freed with it.
        tracing::warn!(target: "pgcache::lock", error = %e, "unlock failed; retiring the lock connection");
        session.retire(conn, &e).await;
    }
    session.held_set().remove(&key);
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        let Some(conn) = self.conn.take() else { return };
        let (session, key) = (Arc::clone(&self.session), self.key);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { unlock(&session, &conn, key).await });
            }
            Err(_) => {
                tracing::warn!(target: "pgcache::lock", "lock guard dropped outside a runtime; the lock is freed with its connection")
            }
        }
    }
}

/// A held session-level advisory lock on a pooled connection.
///
/// Release it with [`release`](Self::release). If the guard is dropped instead (the future was cancelled,
/// or a panic unwound), the connection is detached from the pool and closed, which makes PostgreSQL free
/// the lock: a session lock must never go back to the pool with the lock still held.
pub(crate) struct AdvisoryLock<'a> {
    /// `None` once released (or handed back because the lock was not taken).
    conn: Option<Conn>,
    key: i64,
    /// Its statements, prepared or not as the settings say: the lock pool is `dsn` when there is no
    /// `listen_dsn`, which may be a transaction pooler.
    sql: &'a Statements,
}

impl<'a> AdvisoryLock<'a> {
    /// Tries to take the lock on a connection from the lock pool; `None` when another session holds it.
    pub(crate) async fn try_acquire(db: &Db, sql: &'a Statements, key: i64) -> Result<Option<Self>> {
        // Hand the connection to the guard before awaiting: if this future is dropped (or the statement
        // overruns) while the statement is in flight, the guard's Drop discards the connection, lock or not.
        let mut guard = Self { conn: Some(db.lock_conn().await?), key, sql };
        let acquired = match &guard.conn {
            Some(conn) => conn.bounded(store::try_advisory_lock(conn.client()?, sql, key)).await?,
            None => false,
        };
        if acquired {
            Ok(Some(guard))
        } else {
            // Not locked: the connection may go back to the pool.
            drop(guard.conn.take());
            Ok(None)
        }
    }

    /// The connection holding the lock, for work under it.
    pub(crate) fn conn(&self) -> Option<&Conn> {
        self.conn.as_ref()
    }

    /// Unlocks on the same connection and returns it to the pool; on failure the connection is discarded.
    ///
    /// The connection stays in the guard until the unlock has succeeded: if this future is dropped while
    /// the unlock is in flight, the guard's `Drop` closes the connection, lock or not.
    pub(crate) async fn release(mut self) {
        let Some(conn) = self.conn.as_ref() else { return };
        let unlocked = match conn.client() {
            Ok(client) => conn.bounded(store::advisory_unlock(client, self.sql, self.key)).await,
            Err(e) => Err(e),
        };
        match unlocked {
            // Unlocked: the connection may go back to the pool.
            Ok(_) => drop(self.conn.take()),
            // Drop discards the connection, which frees the lock.
            Err(e) => tracing::warn!(target: "pgcache::lock", error = %e, "unlock failed; closing the connection"),
        }
    }
}

impl Drop for AdvisoryLock<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // The session ends and PostgreSQL releases its locks.
            conn.discard();
        }
    }
}
