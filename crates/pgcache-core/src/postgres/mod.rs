//! [`PostgresCache`]: the local cache (L1) in front of the shared table (L2), coherent through the
//! listener, dogpile-safe through advisory locks. This file orchestrates; SQL lives in `store.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_postgres::Pool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cache_store::{Entry, Fill, SetOptions};
use crate::codec::{Codec, JsonCodec};
use crate::error::{Error, Result};
use crate::flight::Flights;
use crate::listener::{self, ListenerConfig};
use crate::local::{Epochs, LocalCache, Snapshot, Trust};
use crate::lock::lock_key;
use crate::settings::CacheSettings;
use crate::store::{self, Statements, SCHEMA_VERSION};
use crate::sweeper;
use crate::ttl::{Expiry, Ttl};
use crate::validate;

/// Runs `$op`, an expression using `$conn: &Client`, on a pooled connection within the client-side bound
/// ([`PostgresCache::op_timeout`]). A connection whose statement overran is closed, never pooled again: a
/// frozen or partitioned server must not hang callers, nor hand a wedged connection to the next one.
macro_rules! with_conn {
    ($cache:expr, |$conn:ident| $op:expr) => {{
        let cache = $cache;
        let owned = cache.conn().await?;
        let outcome = {
            let $conn = &owned;
            tokio::time::timeout(cache.op_timeout(), $op).await
        };
        cache.settle(owned, outcome)
    }};
}

mod cache_store_impl;
mod fill;

/// A PostgreSQL-backed cache: cheap to clone (an `Arc` inside), `Send + Sync`.
///
/// Each instance owns a connection pool, a bounded local cache, a listener connection that evicts local
/// entries when any process (or any SQL) changes the table, and a sweeper for expired rows.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use pgcache_core::prelude::*;
/// use serde_json::json;
///
/// let settings = CacheSettings::new("postgresql://cache_user:cache_pass@localhost:5432/cache_proto")
///     .notify_channel("cache_events_marketing")
///     .schema_prefix("marketing_");
/// PostgresCache::init_db(&settings).await?;
/// let cache = PostgresCache::connect(settings).await?;
/// cache.set("profile:123", &json!({"name": "Ava"}), Some(Duration::from_secs(300))).await?;
/// let v: Option<serde_json::Value> = cache.get("profile:123").await?;
/// assert_eq!(v, Some(json!({"name": "Ava"})));
/// cache.close().await;
/// # Ok(()) }
/// ```
pub struct PostgresCache<C = JsonCodec> {
    inner: Arc<Inner>,
    codec: C,
}

impl<C: Clone> Clone for PostgresCache<C> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner), codec: self.codec.clone() }
    }
}

impl<C> std::fmt::Debug for PostgresCache<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCache")
            .field("schema_prefix", &self.inner.settings.schema_prefix)
            .field("notify_channel", &self.inner.settings.notify_channel)
            .finish_non_exhaustive()
    }
}

struct Inner {
    settings: CacheSettings,
    sql: Arc<Statements>,
    pool: Pool,
    /// Connections for advisory locks: `listen_dsn` when set (session locks need a direct connection).
    lock_pool: Pool,
    local: Option<Arc<LocalCache>>,
    trust: Arc<Trust>,
    epochs: Arc<Epochs>,
    flights: Flights,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Ok(tasks) = self.tasks.get_mut() {
            tasks.drain(..).for_each(|t| t.abort());
        }
    }
}

impl PostgresCache<JsonCodec> {
    /// Creates or upgrades the schema (table, sequence, functions, triggers) for the settings' prefix and
    /// channel. Idempotent, and safe when several processes run it at once.
    ///
    /// # Errors
    /// Invalid settings; the database is unreachable; the schema is newer than this library.
    pub async fn init_db(settings: &CacheSettings) -> Result<()> {
        store::apply_migrations(settings).await.map(drop)
    }

    /// Applies pending migrations (each in its own transaction) and returns the version reached.
    ///
    /// # Errors
    /// As [`init_db`](Self::init_db).
    pub async fn apply_migrations(settings: &CacheSettings) -> Result<i32> {
        store::apply_migrations(settings).await
    }

    /// The installed schema version for the prefix (0 when not installed).
    ///
    /// # Errors
    /// Invalid settings; the database is unreachable.
    pub async fn schema_version(settings: &CacheSettings) -> Result<i32> {
        store::schema_version(settings).await
    }

    /// Whether the installed schema is the one this library needs.
    ///
    /// # Errors
    /// As [`schema_version`](Self::schema_version).
    pub async fn schema_is_current(settings: &CacheSettings) -> Result<bool> {
        Ok(store::schema_version(settings).await? == SCHEMA_VERSION)
    }

    /// The schema version this library needs.
    pub const SCHEMA_VERSION: i32 = SCHEMA_VERSION;

    /// Connects: validates the settings, opens the pool (and `min_pool_size` connections), checks the
    /// schema, and starts the listener and the sweeper. Waits up to `pool_timeout` for the listener to
    /// be listening, so a write made right after `connect` returns is heard.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`]/[`Error::InvalidDsn`]; [`Error::SchemaOutdated`] when `init_db` was not
    /// run; [`Error::TooManyConnections`] and other database errors.
    pub async fn connect(settings: CacheSettings) -> Result<Self> {
        settings.validate()?;
        let pool = store::build_pool(&settings, "dsn", &settings.dsn, settings.max_pool_size)?;
        let lock_pool = match &settings.listen_dsn {
            Some(dsn) => store::build_pool(&settings, "listen_dsn", dsn, settings.max_pool_size.clamp(1, 8))?,
            None => pool.clone(),
        };
        let schema_bound = settings.statement_timeout + settings.pool_timeout;
        tokio::time::timeout(schema_bound, check_schema(&pool, &settings))
            .await
            .map_err(|_| Error::Timeout { what: "schema check", after: schema_bound })??;
        let mut warm = Vec::with_capacity(settings.min_pool_size);
        for _ in 0..settings.min_pool_size {
            warm.push(pool.get().await.map_err(Error::from_pool)?);
        }
        drop(warm);

        let epochs = Arc::new(Epochs::new());
        let trust = Arc::new(Trust::new(settings.listener_enabled(), settings.heartbeat_interval * 2));
        let local = settings.local_enabled().then(|| {
            Arc::new(LocalCache::new(
                settings.local_max_entries,
                settings.local_max_bytes,
                settings.local_ttl,
                Arc::clone(&epochs),
                Arc::clone(&trust),
            ))
        });
        let (shutdown, _) = watch::channel(false);
        let sql = Arc::new(Statements::new(&settings.schema_prefix));
        let mut tasks = Vec::new();
        let mut first_listen = None;
        if let (true, Some(local)) = (settings.listener_enabled(), &local) {
            let dsn = settings.listen_dsn.as_deref().unwrap_or(&settings.dsn);
            let mut pg = store::pg_config(&settings, "listen_dsn", dsn)?;
            let tls = crate::tls::Tls::for_config(&settings, &mut pg)?;
            let config = ListenerConfig {
                pg,
                tls,
                channel: settings.notify_channel.clone(),
                prefix: settings.schema_prefix.clone(),
                heartbeat: settings.heartbeat_interval,
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            tasks.push(tokio::spawn(listener::run(
                config,
                Arc::clone(local),
                Arc::clone(&trust),
                shutdown.subscribe(),
                tx,
            )));
            first_listen = Some(rx);
            tasks.push(tokio::spawn(crate::local::watch_lease(Arc::clone(&trust), shutdown.subscribe())));
        }
        if let Some(interval) = settings.sweeper_interval {
            tasks.push(tokio::spawn(sweeper::run(
                pool.clone(),
                Arc::clone(&sql),
                settings.schema_prefix.clone(),
                settings.cleanup_batch_size,
                interval,
                settings.statement_timeout + Duration::from_millis(500),
                shutdown.subscribe(),
            )));
        }
        let cache = Self {
            inner: Arc::new(Inner {
                flights: Flights::new(Arc::clone(&epochs)),
                settings,
                sql,
                pool,
                lock_pool,
                local,
                trust,
                epochs,
                shutdown,
                tasks: Mutex::new(tasks),
                closed: AtomicBool::new(false),
            }),
            codec: JsonCodec,
        };
        // A listener that cannot connect at all (no free slots, bad credentials) is a set-up error: report
        // it. One that is merely slow keeps retrying in the background while the local cache is bypassed.
        if let Some(first) = first_listen {
            let wait = cache.inner.settings.pool_timeout * 2;
            if let Ok(Ok(Err(e))) = tokio::time::timeout(wait, first).await {
                cache.close().await;
                return Err(e);
            }
        }
        Ok(cache)
    }

    /// Connects with settings from `PGCACHE_*` environment variables ([`CacheSettings::from_env`]).
    ///
    /// # Errors
    /// As [`CacheSettings::from_env`] and [`connect`](Self::connect).
    pub async fn from_env() -> Result<Self> {
        Self::connect(CacheSettings::from_env()?).await
    }
}

async fn check_schema(pool: &Pool, settings: &CacheSettings) -> Result<()> {
    let conn = pool.get().await.map_err(Error::from_pool)?;
    let found = store::read_version(&**conn, settings).await?;
    let (prefix, expected) = (settings.schema_prefix.clone(), SCHEMA_VERSION);
    match found.cmp(&SCHEMA_VERSION) {
        std::cmp::Ordering::Less => Err(Error::SchemaOutdated { prefix, found, expected }),
        std::cmp::Ordering::Greater => Err(Error::SchemaTooNew { prefix, found, expected }),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

impl<C> PostgresCache<C> {
    /// The same cache with another codec for typed values.
    pub fn with_codec<D: Codec + Clone>(self, codec: D) -> PostgresCache<D> {
        PostgresCache { inner: self.inner, codec }
    }

    /// The settings this cache runs with.
    pub fn settings(&self) -> &CacheSettings {
        &self.inner.settings
    }

    /// The advisory lock key `get_or_set` uses for `key` (see [`lock_key`](crate::lock_key)).
    pub fn lock_key(&self, key: &str) -> i64 {
        lock_key(&self.inner.settings.schema_prefix, key)
    }

    /// Entries and weighted bytes in the local cache after pending maintenance (`(0, 0)` when disabled).
    pub async fn local_usage(&self) -> (u64, u64) {
        match &self.inner.local {
            Some(local) => local.usage().await,
            None => (0, 0),
        }
    }

    /// Waits until the listener is listening, up to `timeout`; returns whether it is (true when no
    /// listener is configured).
    pub async fn wait_listening(&self, timeout: Duration) -> bool {
        if !self.inner.settings.listener_enabled() {
            return true;
        }
        let deadline = Instant::now() + timeout;
        while !self.inner.trust.listening() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Stops the listener and sweeper and closes every connection. Later calls return [`Error::Closed`].
    /// Other clones of this cache are closed too.
    pub async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.inner.shutdown.send(true);
        let tasks: Vec<_> = match self.inner.tasks.lock() {
            Ok(mut tasks) => tasks.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for task in tasks {
            let _ = task.await;
        }
        if let Some(local) = &self.inner.local {
            local.evict_all();
        }
        self.inner.pool.close();
        self.inner.lock_pool.close();
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn check_key(&self, key: &str) -> Result<()> {
        self.check_open()?;
        validate::key(key, self.inner.settings.max_key_bytes)
    }

    async fn conn(&self) -> Result<deadpool_postgres::Object> {
        self.inner.pool.get().await.map_err(Error::from_pool)
    }

    /// Client-side bound of one statement: `statement_timeout` (enforced by the server) plus 500 ms, for
    /// when the server cannot enforce it (frozen, partitioned).
    fn op_timeout(&self) -> Duration {
        self.inner.settings.statement_timeout + Duration::from_millis(500)
    }

    /// The result of a bounded statement; on overrun the connection is closed instead of pooled.
    fn settle<T>(
        &self,
        conn: deadpool_postgres::Object,
        outcome: std::result::Result<Result<T>, tokio::time::error::Elapsed>,
    ) -> Result<T> {
        match outcome {
            Ok(result) => result,
            Err(_) => {
                drop(deadpool_postgres::Object::take(conn));
                Err(Error::Timeout { what: "database statement", after: self.op_timeout() })
            }
        }
    }

    fn snapshot(&self, key: &str) -> Snapshot {
        self.inner.epochs.snapshot(key)
    }

    async fn local_hit(&self, key: &str) -> Option<Entry> {
        let entry = self.inner.local.as_ref()?.get(key).await?;
        Some(Entry { value: entry.value.clone(), version: entry.version, expiry: entry.expiry_now() })
    }

    async fn install(&self, key: &str, row: &Entry, snapshot: Snapshot) {
        if let Some(local) = &self.inner.local {
            local.install(key, row.value.clone(), row.version, row.expiry, snapshot).await;
        }
    }

    async fn evict_local(&self, key: &str) {
        match &self.inner.local {
            Some(local) => local.evict(key).await,
            None => self.inner.epochs.bump_key(key),
        }
    }

    fn evict_local_all(&self) {
        match &self.inner.local {
            Some(local) => local.evict_all(),
            None => self.inner.epochs.bump_all(),
        }
    }

    /// Reads the shared table, installing a hit locally.
    async fn read_shared(&self, key: &str) -> Result<Option<Entry>> {
        let snapshot = self.snapshot(key);
        let row = with_conn!(self, |c| store::get(c, &self.inner.sql, key))?;
        if let Some(row) = &row {
            self.install(key, row, snapshot).await;
        }
        Ok(row)
    }

    /// Reads a value; the same as [`CacheStore::get_bytes`](crate::CacheStore::get_bytes), without the trait's boxed future, so a
    /// local hit on a concrete `PostgresCache` allocates nothing.
    ///
    /// # Errors
    /// Bad key; database errors only when the cache is configured to fail closed.
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        self.check_key(key)?;
        if let Some(local) = &self.inner.local {
            if let Some(hit) = local.get(key).await {
                return Ok(Some(hit.value.clone()));
            }
        }
        // Boxed so that the (small) hit path does not carry the miss path's state.
        Ok(Box::pin(self.get_shared(key)).await?.map(|entry| entry.value))
    }

    /// A read of the shared table that fails open.
    async fn get_shared(&self, key: &str) -> Result<Option<Entry>> {
        match self.read_shared(key).await {
            Ok(row) => Ok(row),
            Err(e) => self.read_failed(e, None),
        }
    }

    /// Turns a read error into a miss when failing open.
    fn read_failed<T>(&self, err: Error, fallback: T) -> Result<T> {
        if self.inner.settings.fail_open && err.is_unavailable() {
            tracing::warn!(target: "pgcache::cache", error = %err, "shared cache unavailable; treating as a miss");
            Ok(fallback)
        } else {
            Err(err)
        }
    }

    fn ttl_ms(&self, ttl: Ttl) -> Option<i64> {
        ttl.to_sql_millis(self.inner.settings.default_ttl)
    }

    fn expiry_of(&self, ttl: Ttl) -> Expiry {
        match ttl.resolve(self.inner.settings.default_ttl) {
            Some(d) => Expiry::In(d),
            None => Expiry::Never,
        }
    }

    fn check_fill(&self, key: &str, fill: &Fill) -> Result<()> {
        validate::value(key, fill.value.len(), self.inner.settings.max_value_bytes)?;
        validate::tags(&fill.options.tags)
    }

    /// Writes `value` through `client` and installs it locally at `snapshot`.
    async fn write(
        &self,
        client: &deadpool_postgres::Client,
        key: &str,
        value: &Bytes,
        options: &SetOptions,
        snapshot: Snapshot,
    ) -> Result<i64> {
        let version =
            store::upsert(client, &self.inner.sql, key, value, self.ttl_ms(options.ttl), &options.tags).await?;
        if let Some(local) = &self.inner.local {
            local.install(key, value.clone(), version, self.expiry_of(options.ttl), snapshot).await;
        }
        Ok(version)
    }
}
