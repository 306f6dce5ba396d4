//! The advisory lock guard of `get_or_load`: a session lock held on a pooled connection and released on
//! every path (unlock on the same connection, or close the connection).

use crate::conn::{Conn, Db};
use crate::error::Result;
use crate::store;

/// A held session-level advisory lock on a pooled connection.
///
/// Release it with [`release`](Self::release). If the guard is dropped instead (the future was cancelled,
/// or a panic unwound), the connection is detached from the pool and closed, which makes PostgreSQL free
/// the lock: a session lock must never go back to the pool with the lock still held.
pub(crate) struct AdvisoryLock {
    /// `None` once released (or handed back because the lock was not taken).
    conn: Option<Conn>,
    key: i64,
}

impl AdvisoryLock {
    /// Tries to take the lock on a connection from the lock pool; `None` when another session holds it.
    pub(crate) async fn try_acquire(db: &Db, key: i64) -> Result<Option<Self>> {
        // Hand the connection to the guard before awaiting: if this future is dropped (or the statement
        // overruns) while the statement is in flight, the guard's Drop discards the connection, lock or not.
        let mut guard = Self { conn: Some(db.lock_conn().await?), key };
        let acquired = match &guard.conn {
            Some(conn) => conn.bounded(store::try_advisory_lock(conn.client()?, key)).await?,
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
            Ok(client) => conn.bounded(store::advisory_unlock(client, self.key)).await,
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

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // The session ends and PostgreSQL releases its locks.
            conn.discard();
        }
    }
}
