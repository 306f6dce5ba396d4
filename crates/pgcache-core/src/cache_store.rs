//! [`CacheStore`]: the byte-level, object-safe interface every cache implements and every front end uses.

use std::any::Any;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::error::{Error, Result};
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
///
/// ```
/// use std::time::Duration;
/// use pgcache_core::SetOptions;
///
/// // Lives 60 s; a failing or slow loader may be answered with it for 10 more minutes (fail-safe);
/// // a hit after 45 s starts one background refresh across the cluster.
/// let options = SetOptions::ttl(Duration::from_secs(60))
///     .stale_for(Duration::from_secs(600))
///     .refresh_after(Duration::from_secs(45));
/// assert_eq!(options.stale_for, Some(Duration::from_secs(600)));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// How long the entry lives.
    pub ttl: Ttl,
    /// Tags for group invalidation with [`CacheStore::delete_tags`].
    pub tags: Vec<String>,
    /// Fail-safe window: how long after it expires the entry is kept in the shared table as a fallback
    /// that [`get_or_load`](CacheStore::get_or_load) serves when the loader fails or is slow (see
    /// [`stale_for`](Self::stale_for)). `None` (the default): no fallback. Ignored with [`Ttl::Never`].
    pub stale_for: Option<Duration>,
    /// Deterministic refresh: a [`get_or_load`](CacheStore::get_or_load) hit at least this long after the
    /// write starts one background refresh across the cluster (see [`refresh_after`](Self::refresh_after)).
    pub refresh_after: Option<Duration>,
    /// Probabilistic early refresh (XFetch) from the loader's measured run time (see
    /// [`early_refresh`](Self::early_refresh)). Only fills made by a loader carry a run time.
    pub early_refresh: bool,
}

impl SetOptions {
    /// Options with this TTL and no tags.
    pub fn ttl(ttl: impl Into<Ttl>) -> Self {
        Self { ttl: ttl.into(), ..Self::default() }
    }

    /// Keeps the entry for `window` after it expires as a fail-safe fallback. Plain reads still treat
    /// it as expired; [`get_or_load`](CacheStore::get_or_load) serves it (as [`Source::Stale`]) when the
    /// loader fails, overruns `loader_soft_timeout`, or another process holds the key's lock. Because the
    /// window is stored in the shared table, a process that never saw the value serves it too. The
    /// sweeper keeps the row until the window ends.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pgcache_core::Fill;
    ///
    /// let mut fill = Fill::new("rates", Duration::from_secs(30));
    /// fill.options = fill.options.stale_for(Duration::from_secs(3600));
    /// assert_eq!(fill.options.stale_for, Some(Duration::from_secs(3600)));
    /// ```
    #[must_use]
    pub fn stale_for(mut self, window: Duration) -> Self {
        self.stale_for = Some(window);
        self
    }

    /// Makes a [`get_or_load`](CacheStore::get_or_load) hit at least `after` past the write start one
    /// background refresh (the caller's loader, under a try-lock: one refresher per key across the
    /// cluster). The caller is answered at once with the current value.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pgcache_core::SetOptions;
    ///
    /// let options = SetOptions::ttl(Duration::from_secs(60)).refresh_after(Duration::from_secs(50));
    /// assert_eq!(options.refresh_after, Some(Duration::from_secs(50)));
    /// ```
    #[must_use]
    pub fn refresh_after(mut self, after: Duration) -> Self {
        self.refresh_after = Some(after);
        self
    }

    /// Turns on probabilistic early expiration (XFetch, Vattani et al., VLDB 2015) for an entry a loader
    /// fills: each [`get_or_load`](CacheStore::get_or_load) hit refreshes it in the background with
    /// probability `exp(-remaining / compute)`, where `compute` is the loader's measured run time (stored
    /// with the entry), so one caller refreshes shortly before expiry and nobody waits for the reload.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pgcache_core::SetOptions;
    ///
    /// let options = SetOptions::ttl(Duration::from_secs(60)).early_refresh();
    /// assert!(options.early_refresh);
    /// ```
    #[must_use]
    pub fn early_refresh(mut self) -> Self {
        self.early_refresh = true;
        self
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

/// What a loader of [`CacheStore::get_or_load`] produced: the bytes to store, how to store them, and an
/// `output` of any type that goes back to the caller that ran the loader (and only to it).
///
/// ```
/// use std::time::Duration;
/// use pgcache_core::Fill;
///
/// // Store the JSON, and hand the typed value back to this caller so it need not decode it again.
/// let user = ("Ava", 36);
/// let fill = Fill::new(r#"{"name":"Ava","age":36}"#, Duration::from_secs(60)).with_output(user);
/// assert_eq!(fill.output, ("Ava", 36));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fill<T = ()> {
    /// The value to store and return.
    pub value: Bytes,
    /// Write options (TTL, tags); decided by the loader, so they can depend on the value.
    pub options: SetOptions,
    /// What the loader hands back to its own caller beside the stored bytes.
    pub output: T,
}

impl Fill {
    /// A fill with this value and TTL, no tags, no output.
    pub fn new(value: impl Into<Bytes>, ttl: impl Into<Ttl>) -> Self {
        Self { value: value.into(), options: SetOptions::ttl(ttl), output: () }
    }
}

impl<T> Fill<T> {
    /// The same fill with another output for the caller.
    pub fn with_output<U>(self, output: U) -> Fill<U> {
        Fill { value: self.value, options: self.options, output }
    }
}

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
    /// An expired value within its fail-safe window ([`SetOptions::stale_for`]): the loader failed or
    /// overran `loader_soft_timeout`, or another caller is refreshing it.
    Stale,
}

/// The answer of [`CacheStore::get_or_load`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Loaded<T = ()> {
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
    /// The loader's [`Fill::output`]: `Some` exactly when this caller ran the loader.
    pub output: Option<T>,
    /// Why the value this caller loaded was not stored, when storing it failed: the database is out of
    /// reach ([`Error::is_unavailable`]), the server refused the write, or the value is over
    /// `max_value_bytes`. The value is served all the same: the loader's work is not lost.
    pub store_error: Option<Error>,
}

impl<T> Loaded<T> {
    /// An answer found in a cache (local, shared, or filled by another caller).
    pub(crate) fn found(entry: Entry, source: Source) -> Self {
        Self {
            value: entry.value,
            source,
            stored: true,
            unavailable: false,
            version: entry.version,
            expiry: entry.expiry,
            output: None,
            store_error: None,
        }
    }

    /// An answer this caller loaded: stored as `version`, or not stored because of `store_error` (or, with
    /// neither, by design: a [`NullCache`](crate::NullCache)).
    pub(crate) fn by_loader(fill: Fill<T>, stored: Result<i64, Option<Error>>, expiry: Expiry) -> Self {
        let (version, store_error) = match stored {
            Ok(version) => (Some(version), None),
            Err(error) => (None, error),
        };
        Self {
            value: fill.value,
            source: Source::Loaded,
            stored: version.is_some(),
            unavailable: store_error.as_ref().is_some_and(Error::is_unavailable),
            version: version.unwrap_or(0),
            expiry,
            output: Some(fill.output),
            store_error,
        }
    }

    /// The answer as an [`Entry`].
    pub fn entry(&self) -> Entry {
        Entry { value: self.value.clone(), version: self.version, expiry: self.expiry }
    }

    fn map_output<U>(self, f: impl FnOnce(T) -> Option<U>) -> Loaded<U> {
        Loaded {
            value: self.value,
            source: self.source,
            stored: self.stored,
            unavailable: self.unavailable,
            version: self.version,
            expiry: self.expiry,
            output: self.output.and_then(f),
            store_error: self.store_error,
        }
    }
}

/// The error of [`CacheStore::get_or_load`]: the loader's own error, typed, or the cache's.
///
/// Loader errors are never cached: the next call loads again.
#[derive(Debug)]
pub enum LoadError<E> {
    /// The loader failed with this error; nothing was stored.
    Loader(E),
    /// The cache failed (bad key, value too large, database errors when failing closed).
    Cache(Error),
}

impl<E> From<Error> for LoadError<E> {
    fn from(err: Error) -> Self {
        LoadError::Cache(err)
    }
}

impl<E: std::fmt::Display> std::fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Loader(e) => write!(f, "loader failed: {e}"),
            LoadError::Cache(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for LoadError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Loader(e) => Some(e),
            LoadError::Cache(e) => Some(e),
        }
    }
}

/// A loader's output or error with its type erased, as [`CacheStore::get_or_load_dyn`] carries it.
/// Only a [`DynLoader`] makes one; [`CacheStore::get_or_load`] turns it back into the loader's type.
pub struct DynOutput(Box<dyn Any + Send>);

impl std::fmt::Debug for DynOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DynOutput(..)")
    }
}

type DynLoadFuture = BoxFuture<'static, std::result::Result<Fill<DynOutput>, DynOutput>>;

/// A loader with its output and error types erased, for the object-safe [`CacheStore::get_or_load_dyn`].
/// Made by [`CacheStore::get_or_load`]; a [`CacheStore`] implementation runs it at most once.
pub struct DynLoader(Box<dyn FnOnce() -> DynLoadFuture + Send>);

impl std::fmt::Debug for DynLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DynLoader(..)")
    }
}

impl DynLoader {
    fn new<T, E, F, Fut>(loader: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Fill<T>, E>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        Self(Box::new(move || {
            Box::pin(async move {
                match loader().await {
                    Ok(fill) => {
                        Ok(Fill { value: fill.value, options: fill.options, output: DynOutput(Box::new(fill.output)) })
                    }
                    Err(e) => Err(DynOutput(Box::new(e))),
                }
            })
        }))
    }

    /// Runs the loader.
    ///
    /// # Errors
    /// The loader's own error, erased.
    pub async fn run(self) -> std::result::Result<Fill<DynOutput>, DynOutput> {
        (self.0)().await
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
    /// Callers waiting for a pooled connection: above zero, the pool is saturated.
    pub pool_waiting: usize,
    /// Entries in the local cache (approximate).
    pub local_entries: u64,
    /// Weighted bytes in the local cache (approximate).
    pub local_bytes: u64,
    /// Whether the cache has been closed.
    pub closed: bool,
    /// With read replicas (`read_dsns`): shared-table reads a replica answered.
    pub replica_reads: u64,
    /// With read replicas: shared-table reads sent to the primary instead (replica behind the fence,
    /// lagging past `max_replica_lag`, down, or the listener not trusted).
    pub replica_fallbacks: u64,
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

    /// The entry for `key` from this node's local cache (L1) alone, without waiting: `Some` only when
    /// [`get_entry`](Self::get_entry) would answer it from there now (the same coherence rules: nothing
    /// an invalidation evicted, nothing while the invalidation listener is not trusted). `None` says
    /// nothing about the key (not held locally, a bad key, or a read that would have had to wait): call
    /// `get_entry`. For front ends whose hit path is synchronous; the default (stores without a local
    /// cache) is always `None`.
    ///
    /// ```
    /// use pgcache_core::{CacheStore, NullCache};
    ///
    /// assert!(NullCache::new().peek_local("k").is_none());
    /// ```
    fn peek_local(&self, key: &str) -> Option<Entry> {
        let _ = key;
        None
    }

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

    /// The object-safe form of [`get_or_load`](Self::get_or_load), which is what callers use: the loader's
    /// output and error types are erased. Implementations run `loader` at most once.
    ///
    /// # Errors
    /// As [`get_or_load`](Self::get_or_load), with the loader's error erased.
    async fn get_or_load_dyn(
        &self,
        key: &str,
        loader: DynLoader,
    ) -> std::result::Result<Loaded<DynOutput>, LoadError<DynOutput>>;

    /// Returns the value for `key`, running `loader` on a miss, at most once across every caller of every
    /// process sharing the database (advisory lock), and storing the [`Fill`] it returns. The caller that
    /// ran the loader also gets the fill's typed [`output`](Fill::output) in [`Loaded::output`].
    ///
    /// Loader errors come back typed as [`LoadError::Loader`] and are never cached; the next call retries.
    /// If the database is unreachable the loader runs anyway (fail open). Once the loader has run, its
    /// value is returned even when it cannot be stored (`stored: false`, with the reason in
    /// [`Loaded::store_error`]): the database went away, refused the write, or the value is over
    /// `max_value_bytes`.
    ///
    /// ```no_run
    /// # async fn demo(cache: pgcache_core::PostgresCache) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use pgcache_core::{CacheStore, Fill, LoadError};
    ///
    /// let loaded = cache
    ///     .get_or_load("report:7", || async {
    ///         let rows: Vec<u32> = vec![1, 2, 3]; // the expensive query
    ///         let bytes = serde_json::to_vec(&rows)?;
    ///         Ok::<_, serde_json::Error>(Fill::new(bytes, Duration::from_secs(60)).with_output(rows))
    ///     })
    ///     .await;
    /// match loaded {
    ///     Ok(loaded) => println!("{:?} from {:?}", loaded.output, loaded.source),
    ///     Err(LoadError::Loader(e)) => eprintln!("query failed: {e}"),
    ///     Err(LoadError::Cache(e)) => eprintln!("cache failed: {e}"),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// Fail-safe and early refresh: an entry written with [`SetOptions::stale_for`] is answered stale
    /// ([`Source::Stale`]) when the loader fails or is slow; one written with
    /// [`SetOptions::refresh_after`] or [`SetOptions::early_refresh`] is refreshed in the background by one
    /// hit (this `loader` then runs after this call has returned with the current value).
    ///
    /// # Errors
    /// [`LoadError::Loader`] with the loader's error; [`LoadError::Cache`] for a bad key or bad tags,
    /// [`Error::LockTimeout`] when another caller's fill did not finish within `lock_wait_timeout`,
    /// [`Error::LoaderTimeout`] past `loader_hard_timeout`, or database errors when configured to fail
    /// closed. With a fail-safe value at hand, the loader's failures and timeouts answer with it instead.
    ///
    /// # Cancel safety
    /// Dropping the future cancels this caller's fill and releases the advisory lock; other waiters then
    /// load or read the value. Past `loader_soft_timeout` (the caller was answered stale) the fill goes on.
    fn get_or_load<T, E, F, Fut>(
        &self,
        key: &str,
        loader: F,
    ) -> impl Future<Output = std::result::Result<Loaded<T>, LoadError<E>>> + Send
    where
        Self: Sized,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Fill<T>, E>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let loader = DynLoader::new(loader);
        async move {
            match self.get_or_load_dyn(key, loader).await {
                Ok(loaded) => Ok(loaded.map_output(|out| out.0.downcast::<T>().ok().map(|t| *t))),
                Err(LoadError::Loader(err)) => match err.0.downcast::<E>() {
                    Ok(err) => Err(LoadError::Loader(*err)),
                    // Only a store answering with another call's loader error gets here.
                    Err(_) => Err(LoadError::Cache(Error::Loader("a loader error of another type".into()))),
                },
                Err(LoadError::Cache(err)) => Err(LoadError::Cache(err)),
            }
        }
    }

    /// A snapshot of the cache's health.
    fn status(&self) -> CacheStatus;

    /// The TTL that [`Ttl::Default`] stands for.
    fn default_ttl(&self) -> Duration;
}
