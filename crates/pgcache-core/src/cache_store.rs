//! [`CacheStore`]: the byte-level, object-safe interface every cache implements and every front end uses.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::error::{BoxError, Result};
use crate::ttl::{Expiry, Ttl};

/// A stored value with its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The stored bytes (shared, never copied on a local hit).
    pub value: Bytes,
    /// The row version (a sequence value, increasing with every write of the key); 0 for a `NullCache`.
    pub version: i64,
    /// Time left before the entry expires.
    pub expiry: Expiry,
}

/// Options for a write beyond the value itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// How long the entry lives.
    pub ttl: Ttl,
    /// Tags for group invalidation with [`CacheStore::delete_tags`].
    pub tags: Vec<String>,
}

impl SetOptions {
    /// Options with this TTL and no tags.
    pub fn ttl(ttl: impl Into<Ttl>) -> Self {
        Self { ttl: ttl.into(), tags: Vec::new() }
    }

    /// Adds tags.
    #[must_use]
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }
}

/// What a loader produced for [`CacheStore::get_or_load`]: the value and how to store it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fill {
    /// The value to store and return.
    pub value: Bytes,
    /// Write options (TTL, tags); decided by the loader, so it can depend on the value.
    pub options: SetOptions,
}

impl Fill {
    /// A fill with this value and TTL, no tags.
    pub fn new(value: impl Into<Bytes>, ttl: impl Into<Ttl>) -> Self {
        Self { value: value.into(), options: SetOptions::ttl(ttl) }
    }
}

/// The future a [`Loader`] returns.
pub type LoadFuture = BoxFuture<'static, std::result::Result<Fill, BoxError>>;

/// A type-erased loader for [`CacheStore::get_or_load`]; run at most once.
pub type Loader = Box<dyn FnOnce() -> LoadFuture + Send>;

/// Where a [`get_or_load`](CacheStore::get_or_load) answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// The local (L1) cache.
    Local,
    /// The shared table (L2), already there when asked.
    Shared,
    /// Another caller (in this process or another) loaded it while this one waited.
    Collapsed,
    /// This caller ran the loader.
    Loaded,
}

/// The answer of [`CacheStore::get_or_load`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Loaded {
    /// The value.
    pub value: Bytes,
    /// Where it came from.
    pub source: Source,
    /// Whether the value is in the shared table: true for every source but [`Source::Loaded`], where it
    /// says whether this caller's write succeeded.
    pub stored: bool,
    /// True when the shared cache could not be reached, so the value was loaded without its protection
    /// (fail open). False for a [`NullCache`](crate::NullCache), which stores nothing by design.
    pub unavailable: bool,
    /// The row version (0 when not stored).
    pub version: i64,
    /// Time left before the entry expires, by the database clock when it was read or written.
    pub expiry: Expiry,
}

impl Loaded {
    /// An answer found in a cache (local, shared, or filled by another caller).
    pub(crate) fn found(entry: Entry, source: Source) -> Self {
        Self {
            value: entry.value,
            source,
            stored: true,
            unavailable: false,
            version: entry.version,
            expiry: entry.expiry,
        }
    }

    /// An answer this caller loaded; `version` is `Some` when it was stored.
    pub(crate) fn by_loader(value: Bytes, version: Option<i64>, expiry: Expiry, unavailable: bool) -> Self {
        Self {
            value,
            source: Source::Loaded,
            stored: version.is_some(),
            unavailable,
            version: version.unwrap_or(0),
            expiry,
        }
    }

    /// The answer as an [`Entry`].
    pub fn entry(&self) -> Entry {
        Entry { value: self.value.clone(), version: self.version, expiry: self.expiry }
    }
}

/// State of the invalidation listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ListenerState {
    /// No listener: notifications disabled, local cache disabled, or a `NullCache`.
    Disabled,
    /// Connected, listening and heard from recently: local entries are served.
    Listening,
    /// Down or not proven alive: local entries are bypassed until it is back.
    Reconnecting,
}

/// A snapshot of a cache's health, for `/healthz` endpoints and metrics.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CacheStatus {
    /// The listener's state.
    pub listener: ListenerState,
    /// Connections currently open in the pool.
    pub pool_size: usize,
    /// Idle connections in the pool.
    pub pool_available: usize,
    /// Most connections the pool opens.
    pub pool_max_size: usize,
    /// Entries in the local cache (approximate).
    pub local_entries: u64,
    /// Weighted bytes in the local cache (approximate).
    pub local_bytes: u64,
    /// Whether the cache has been closed.
    pub closed: bool,
}

/// The byte-level cache interface, implemented by [`PostgresCache`](crate::PostgresCache) and
/// [`NullCache`](crate::NullCache). Object-safe: front ends hold an `Arc<dyn CacheStore>` or a generic.
///
/// Typed (serde) access is in [`TypedCache`](crate::TypedCache).
///
/// Every method validates its key (non-empty, no NUL, at most `max_key_bytes`) and returns a typed error
/// for bad input without touching the database.
#[async_trait]
pub trait CacheStore: Send + Sync + 'static {
    /// Reads an entry with its metadata; an expired entry is a miss.
    ///
    /// # Errors
    /// Bad key; database errors only when the cache is configured to fail closed.
    async fn get_entry(&self, key: &str) -> Result<Option<Entry>>;

    /// Reads a value; an expired entry is a miss.
    ///
    /// # Errors
    /// As [`get_entry`](Self::get_entry).
    async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.get_entry(key).await?.map(|e| e.value))
    }

    /// Reads many values in one round trip, in the order of `keys`.
    ///
    /// # Errors
    /// As [`get_entry`](Self::get_entry), for any key.
    async fn get_many_bytes(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>>;

    /// Writes a value with options (TTL, tags); returns the new row version.
    ///
    /// # Errors
    /// Bad key, value or tag; any database error (writes never fail silently).
    async fn set_entry(&self, key: &str, value: Bytes, options: &SetOptions) -> Result<i64>;

    /// Writes a value with a TTL.
    ///
    /// # Errors
    /// As [`set_entry`](Self::set_entry).
    async fn set_bytes(&self, key: &str, value: Bytes, ttl: Ttl) -> Result<()> {
        self.set_entry(key, value, &SetOptions::ttl(ttl)).await.map(drop)
    }

    /// Writes many values with one TTL in one statement.
    ///
    /// # Errors
    /// As [`set_entry`](Self::set_entry); nothing is written when any item is invalid.
    async fn set_many_bytes(&self, items: &[(&str, Bytes)], ttl: Ttl) -> Result<()>;

    /// Deletes a key on every node; returns whether a live row existed.
    ///
    /// # Errors
    /// Bad key; any database error.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Deletes many keys in one statement; returns how many rows existed.
    ///
    /// # Errors
    /// As [`delete`](Self::delete).
    async fn delete_many(&self, keys: &[&str]) -> Result<u64>;

    /// Deletes every entry carrying any of these tags; returns how many.
    ///
    /// # Errors
    /// Any database error.
    async fn delete_tags(&self, tags: &[&str]) -> Result<u64>;

    /// Deletes every entry of this cache's prefix, on every node; returns how many.
    ///
    /// # Errors
    /// Any database error.
    async fn clear(&self) -> Result<u64>;

    /// Time left for a key: `None` when absent or expired.
    ///
    /// # Errors
    /// Bad key; any database error.
    async fn ttl(&self, key: &str) -> Result<Option<Expiry>>;

    /// Gives a live key a new TTL; returns whether it existed.
    ///
    /// # Errors
    /// Bad key; any database error.
    async fn touch(&self, key: &str, ttl: Ttl) -> Result<bool>;

    /// Deletes expired rows now (the sweeper does this in the background); returns how many.
    ///
    /// # Errors
    /// Any database error.
    async fn cleanup_expired(&self) -> Result<u64>;

    /// Returns the value for `key`, running `loader` on a miss, at most once across every caller of every
    /// process sharing the database (advisory lock), and storing its [`Fill`].
    ///
    /// Loader errors reach this caller as [`Error::Loader`](crate::Error::Loader) and are never cached;
    /// the next call retries. If the database is unreachable the loader runs anyway (fail open).
    ///
    /// # Errors
    /// Bad key; the loader's error; database errors only when configured to fail closed.
    ///
    /// # Cancel safety
    /// Dropping the future releases the advisory lock (by closing its connection if need be); other
    /// waiters then load or read the value.
    async fn get_or_load(&self, key: &str, loader: Loader) -> Result<Loaded>;

    /// A snapshot of the cache's health.
    fn status(&self) -> CacheStatus;

    /// The TTL that [`Ttl::Default`] stands for.
    fn default_ttl(&self) -> Duration;
}
