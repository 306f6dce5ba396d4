//! Cache writes inside the caller's own transaction: [`CacheTx`] and [`Pending`].
//!
//! The cache change is a statement of the application's transaction, so it commits or rolls back with
//! the data change that caused it: no window in which the data is new and the cache old, and no lost
//! delete when the process dies between the two. The invalidation goes into the invalidation log in the
//! same transaction, and the elected flusher sends it once it is committed, so every other node evicts
//! after the transaction commits and not before (and never, on a rollback). This node's own local copies
//! are evicted by [`Pending::committed`], called after the commit (its listener hears the notification
//! too, within the usual bound, if the call is skipped).
//!
//! Works on anything that implements tokio-postgres' [`GenericClient`] (a `Transaction`, a `Client`, a
//! deadpool connection or transaction), and with the `sqlx` feature on a sqlx
//! `PgConnection` (a `sqlx::Transaction<'_, Postgres>` dereferences to one).
//!
//! ```no_run
//! # async fn demo(cache: pgcache_core::PostgresCache, mut client: tokio_postgres::Client)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! let tx = client.transaction().await?;
//! tx.execute("UPDATE orders SET status = 'paid' WHERE id = $1", &[&42_i64]).await?;
//! let mut cached = cache.in_transaction(&tx);
//! cached.delete("order:42").await?;
//! let pending = cached.finish();
//! tx.commit().await?;
//! pending.committed().await; // this node's copy goes now; every other node's went at the commit
//! # Ok(()) }
//! ```

use bytes::Bytes;
use serde::Serialize;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::GenericClient;

use crate::cache::PostgresCache;
use crate::cache_store::SetOptions;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::store;
use crate::ttl::Ttl;
use crate::validate;

/// Cache writes on the caller's open transaction (or connection) `E`, made by
/// [`PostgresCache::in_transaction`] (or `in_sqlx_transaction` with the `sqlx` feature). Nothing is
/// evicted locally until [`Pending::committed`]: a rollback leaves every node's value in place.
///
/// # Cancel safety
/// Each method is one statement on the caller's transaction; dropping its future mid-way leaves that
/// transaction in whatever state the driver leaves it (roll it back).
#[must_use = "finish() hands back the Pending eviction to run after the commit"]
pub struct CacheTx<C, E> {
    cache: PostgresCache<C>,
    exec: E,
    pending: Changes,
}

impl<C, E> std::fmt::Debug for CacheTx<C, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheTx").field("pending", &self.pending).finish_non_exhaustive()
    }
}

/// What this node evicts once the transaction committed.
#[derive(Debug, Default)]
struct Changes {
    keys: Vec<String>,
    /// A tag delete removed rows whose keys only the database knows: flush this node's local cache.
    flush: bool,
}

/// The local evictions of a [`CacheTx`], to run once its transaction has committed.
#[must_use = "call committed() after the commit, or drop it after a rollback"]
pub struct Pending<C> {
    cache: PostgresCache<C>,
    changes: Changes,
}

impl<C> std::fmt::Debug for Pending<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("changes", &self.changes).finish_non_exhaustive()
    }
}

impl<C> Pending<C> {
    /// The transaction committed: evicts this node's local copies of what it changed now (every other
    /// node evicted when it heard the commit's notification).
    pub async fn committed(self) {
        self.cache.evict_committed(&self.changes.keys, self.changes.flush).await;
    }

    /// The keys the transaction wrote or deleted.
    pub fn keys(&self) -> &[String] {
        &self.changes.keys
    }
}

impl<C, E> CacheTx<C, E> {
    pub(crate) fn new(cache: PostgresCache<C>, exec: E) -> Self {
        Self { cache, exec, pending: Changes::default() }
    }

    /// Ends the use of the transaction, handing back what to evict locally after the commit.
    pub fn finish(self) -> Pending<C> {
        Pending { cache: self.cache, changes: self.pending }
    }
}

/// What a write needs from the cache, checked before the statement is sent.
struct Checked {
    sql: std::sync::Arc<store::Statements>,
    ttl_ms: Option<i64>,
}

/// Checks a write (key, value size, tags) and gets the SQL, connecting first after `connect_lazy`.
async fn checked_write<C>(cache: &PostgresCache<C>, key: &str, value: &[u8], options: &SetOptions) -> Result<Checked> {
    cache.check_write(key, value.len())?;
    validate::tags(&options.tags)?;
    Ok(Checked { sql: cache.statements().await?, ttl_ms: options.ttl.to_sql_millis(cache.settings().default_ttl) })
}

impl<C: Codec, G: GenericClient + Sync> CacheTx<C, &G> {
    /// Encodes and writes a value in the transaction; returns the row's new version.
    ///
    /// # Errors
    /// Bad key, [`Error::Codec`], value too large, the statement's database error (the transaction is
    /// then aborted: roll it back).
    pub async fn set<T: Serialize + ?Sized>(&mut self, key: &str, value: &T, ttl: impl Into<Ttl>) -> Result<i64> {
        let bytes = crate::typed::encode(self.cache.codec_ref(), key, value)?;
        self.set_entry(key, bytes, &SetOptions::ttl(ttl)).await
    }

    /// Writes raw bytes with options (TTL, tags) in the transaction; returns the row's new version.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub async fn set_entry(&mut self, key: &str, value: Bytes, options: &SetOptions) -> Result<i64> {
        let checked = checked_write(&self.cache, key, &value, options).await?;
        let meta = crate::store::WriteMeta::new(checked.ttl_ms, options, None);
        let params: [(&(dyn ToSql + Sync), Type); 7] = [
            (&key, Type::TEXT),
            (&&value[..], Type::BYTEA),
            (&checked.ttl_ms, Type::INT8),
            (&options.tags, Type::TEXT_ARRAY),
            (&meta.stale_ms, Type::INT8),
            (&meta.compute_ms, Type::INT4),
            (&meta.refresh_ms, Type::INT8),
        ];
        let row = self.exec.query_typed_one(&checked.sql.upsert, &params).await.map_err(Error::from_pg)?;
        let version = row.try_get(0).map_err(Error::from_pg)?;
        self.pending.keys.push(key.to_owned());
        Ok(version)
    }

    /// Deletes a key in the transaction; returns whether a live row existed.
    ///
    /// # Errors
    /// Bad key; the statement's database error.
    pub async fn delete(&mut self, key: &str) -> Result<bool> {
        self.cache.check_write(key, 0)?;
        let sql = self.cache.statements().await?;
        let row = self.exec.query_typed_opt(&sql.delete, &[(&key, Type::TEXT)]).await.map_err(Error::from_pg)?;
        self.pending.keys.push(key.to_owned());
        match row {
            Some(row) => row.try_get(0).map_err(Error::from_pg),
            None => Ok(false),
        }
    }

    /// Deletes keys in the transaction in one statement; returns how many live rows existed.
    ///
    /// # Errors
    /// Bad key; the statement's database error.
    pub async fn delete_many(&mut self, keys: &[&str]) -> Result<u64> {
        for key in keys {
            self.cache.check_write(key, 0)?;
        }
        let sql = self.cache.statements().await?;
        let n = count(self.exec.query_typed_one(&sql.delete_many, &[(&keys, Type::TEXT_ARRAY)]).await)?;
        self.pending.keys.extend(keys.iter().map(|k| (*k).to_owned()));
        Ok(n)
    }

    /// Deletes every entry carrying any of `tags` in the transaction; returns how many live rows existed.
    ///
    /// # Errors
    /// Bad tag; the statement's database error.
    pub async fn delete_tags(&mut self, tags: &[&str]) -> Result<u64> {
        validate::tags(tags)?;
        let sql = self.cache.statements().await?;
        let n = count(self.exec.query_typed_one(&sql.delete_tags, &[(&tags, Type::TEXT_ARRAY)]).await)?;
        self.pending.flush |= n > 0;
        Ok(n)
    }
}

#[cfg(feature = "sqlx")]
impl<C: Codec> CacheTx<C, &mut sqlx::PgConnection> {
    /// Encodes and writes a value in the sqlx transaction; returns the row's new version.
    ///
    /// # Errors
    /// Bad key, [`Error::Codec`], value too large, [`Error::Sqlx`] (the transaction is then aborted:
    /// roll it back).
    pub async fn set<T: Serialize + ?Sized>(&mut self, key: &str, value: &T, ttl: impl Into<Ttl>) -> Result<i64> {
        let bytes = crate::typed::encode(self.cache.codec_ref(), key, value)?;
        self.set_entry(key, bytes, &SetOptions::ttl(ttl)).await
    }

    /// Writes raw bytes with options (TTL, tags) in the sqlx transaction; returns the row's new version.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub async fn set_entry(&mut self, key: &str, value: Bytes, options: &SetOptions) -> Result<i64> {
        let checked = checked_write(&self.cache, key, &value, options).await?;
        let meta = crate::store::WriteMeta::new(checked.ttl_ms, options, None);
        let version = sqlx::query_scalar::<_, i64>(&checked.sql.upsert)
            .bind(key)
            .bind(&value[..])
            .bind(checked.ttl_ms)
            .bind(&options.tags)
            .bind(meta.stale_ms)
            .bind(meta.compute_ms)
            .bind(meta.refresh_ms)
            .fetch_one(&mut *self.exec)
            .await
            .map_err(Error::Sqlx)?;
        self.pending.keys.push(key.to_owned());
        Ok(version)
    }

    /// Deletes a key in the sqlx transaction; returns whether a live row existed.
    ///
    /// # Errors
    /// Bad key; [`Error::Sqlx`].
    pub async fn delete(&mut self, key: &str) -> Result<bool> {
        self.cache.check_write(key, 0)?;
        let sql = self.cache.statements().await?;
        let live = sqlx::query_scalar::<_, bool>(&sql.delete)
            .bind(key)
            .fetch_optional(&mut *self.exec)
            .await
            .map_err(Error::Sqlx)?;
        self.pending.keys.push(key.to_owned());
        Ok(live.unwrap_or(false))
    }

    /// Deletes keys in the sqlx transaction in one statement; returns how many live rows existed.
    ///
    /// # Errors
    /// Bad key; [`Error::Sqlx`].
    pub async fn delete_many(&mut self, keys: &[&str]) -> Result<u64> {
        for key in keys {
            self.cache.check_write(key, 0)?;
        }
        let sql = self.cache.statements().await?;
        let n = sqlx::query_scalar::<_, i64>(&sql.delete_many)
            .bind(keys)
            .fetch_one(&mut *self.exec)
            .await
            .map_err(Error::Sqlx)?;
        self.pending.keys.extend(keys.iter().map(|k| (*k).to_owned()));
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Deletes every entry carrying any of `tags` in the sqlx transaction; returns how many live rows
    /// existed.
    ///
    /// # Errors
    /// Bad tag; [`Error::Sqlx`].
    pub async fn delete_tags(&mut self, tags: &[&str]) -> Result<u64> {
        validate::tags(tags)?;
        let sql = self.cache.statements().await?;
        let n = sqlx::query_scalar::<_, i64>(&sql.delete_tags)
            .bind(tags)
            .fetch_one(&mut *self.exec)
            .await
            .map_err(Error::Sqlx)?;
        self.pending.flush |= n > 0;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

fn count(row: std::result::Result<tokio_postgres::Row, tokio_postgres::Error>) -> Result<u64> {
    let n: i64 = row.and_then(|row| row.try_get(0)).map_err(Error::from_pg)?;
    Ok(u64::try_from(n).unwrap_or(0))
}
