//! Advisory locks for `get_or_set`: the key hash and a guard that releases the lock on every path.

use std::time::Duration;

use deadpool_postgres::{Object, Pool};

use crate::error::{Error, Result};
use crate::store;

/// The 64-bit advisory lock key of a cache key: `xxh3_64(schema_prefix ‖ 0x00 ‖ key)` (XXH3, seed 0),
/// reinterpreted as a signed `bigint`. Fixed and documented so other clients can take the same lock
/// (PostgreSQL's `hashtext` is 32-bit and not a stable interface).
///
/// ```
/// let a = pgcache_core::lock_key("app_", "user:1");
/// assert_eq!(a, pgcache_core::lock_key("app_", "user:1"));
/// assert_ne!(a, pgcache_core::lock_key("other_", "user:1"));
/// ```
pub fn lock_key(schema_prefix: &str, key: &str) -> i64 {
    let mut input = Vec::with_capacity(schema_prefix.len() + 1 + key.len());
    input.extend_from_slice(schema_prefix.as_bytes());
    input.push(0);
    input.extend_from_slice(key.as_bytes());
    i64::from_ne_bytes(xxhash_rust::xxh3::xxh3_64(&input).to_ne_bytes())
}

/// A held session-level advisory lock on a pooled connection.
///
/// Release it with [`release`](Self::release). If the guard is dropped instead (the future was cancelled,
/// or a panic unwound), the connection is detached from the pool and closed, which makes PostgreSQL free
/// the lock: a session lock must never go back to the pool with the lock still held.
pub(crate) struct AdvisoryLock {
    conn: Option<Object>,
    key: i64,
    /// Client-side bound of the lock and unlock statements.
    bound: Duration,
}

impl AdvisoryLock {
    /// Tries to take the lock on a connection from `pool`; `None` when another session holds it.
    pub(crate) async fn try_acquire(pool: &Pool, key: i64, bound: Duration) -> Result<Option<Self>> {
        let conn = pool.get().await.map_err(Error::from_pool)?;
        // Hand the connection to the guard before awaiting: if this future is dropped (or times out)
        // while the statement is in flight, the guard's Drop discards the connection, lock or not.
        let mut guard = Self { conn: Some(conn), key, bound };
        let acquired = match guard.conn.as_ref() {
            Some(conn) => tokio::time::timeout(bound, store::try_advisory_lock(conn, key))
                .await
                .map_err(|_| Error::Timeout { what: "pg_try_advisory_lock", after: bound })??,
            None => false,
        };
        if acquired {
            Ok(Some(guard))
        } else {
            // Not locked: the connection may go back to the pool.
            guard.conn.take();
            Ok(None)
        }
    }

    /// The connection holding the lock, for work under it.
    pub(crate) fn client(&self) -> Option<&deadpool_postgres::Client> {
        self.conn.as_ref()
    }

    /// Unlocks on the same connection and returns it to the pool; on failure the connection is discarded.
    pub(crate) async fn release(mut self) {
        if let Some(conn) = self.conn.as_ref() {
            match tokio::time::timeout(self.bound, store::advisory_unlock(conn, self.key)).await {
                Ok(Ok(_)) => {
                    self.conn.take();
                }
                Ok(Err(e)) => {
                    tracing::warn!(target: "pgcache::lock", error = %e, "unlock failed; closing the connection")
                }
                Err(_) => {
                    tracing::warn!(target: "pgcache::lock", after = ?self.bound, "unlock timed out; closing the connection")
                }
            }
        }
        // Drop discards a connection still present (unlock failed), which frees the lock.
    }
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Detach from the pool and drop: the session ends and PostgreSQL releases its locks.
            drop(Object::take(conn));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_key_is_stable_and_separated() {
        // Pinned value: changing the hash would let old and new processes take different locks.
        assert_eq!(lock_key("", ""), i64::from_ne_bytes(xxhash_rust::xxh3::xxh3_64(&[0]).to_ne_bytes()));
        assert_ne!(lock_key("a", "b"), lock_key("ab", ""));
        assert_ne!(lock_key("p_", "k1"), lock_key("p_", "k2"));
    }
}
