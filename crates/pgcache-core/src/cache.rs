//! [`PostgresCache`]: the local cache (L1) in front of the shared table (L2), kept coherent by the
//! listener, dogpile-safe through advisory locks. Every operation is orchestrated here, `get_or_load`
//! included (its in-process and cross-process halves); SQL is in `store.rs`, connections in `conn.rs`,
//! what keeps local copies honest in `coherence.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{oneshot, watch, OnceCell};
use tokio::task::JoinHandle;

use crate::cache_store::{
    CacheStatus, CacheStore, DynLoader, DynOutput, Entry, Fill, ListenerState, LoadError, Loaded, SetOptions, Source,
};
use crate::capability::{self, Capabilities, InvalidationMode};
use crate::codec::{Codec, JsonCodec};
use crate::coherence::{Coherence, Lease, Snapshot};
use crate::conn::{Conn, Db};
use crate::error::{excerpt, Error, Result};
use crate::flight::Flights;
use crate::group_commit::{GroupCommit, Write, Written};
use crate::local::LocalCache;
use crate::lock::{KeyLock, LockSession};
use crate::lock_key::lock_key;
use crate::refresh::Plans;
use crate::replica::{Answer, Replicas};
use crate::settings::CacheSettings;
use crate::store::{self, LoadRow, Statements, UpsertRow, WriteMeta};
use crate::telemetry::{LockWait, Op, Outcome, Telemetry};
use crate::transaction::CacheTx;
use crate::ttl::{Expiry, Ttl};
use crate::typed::TypedCache;
use crate::{listener, poller, row_triggers, schema, sweeper, telemetry, validate};

/// How long a lazily connected cache waits after a failed connection attempt before the next one.
const RETRY_CONNECT_AFTER: Duration = Duration::from_secs(1);
/// First and longest pause of a `get_or_load` caller waiting for another caller's fill (woken early by
/// the listener when the key is written).
const FILL_POLL: (Duration, Duration) = (Duration::from_millis(2), Duration::from_millis(50));

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
    shared: Arc<Shared>,
    codec: C,
}

impl<C: Clone> Clone for PostgresCache<C> {
    fn clone(&self) -> Self {
        Self { shared: Arc::clone(&self.shared), codec: self.codec.clone() }
    }
}

impl<C> std::fmt::Debug for PostgresCache<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCache")
            .field("schema_prefix", &self.shared.settings.schema_prefix)
            .field("notify_channel", &self.shared.settings.notify_channel)
            .field("connected", &self.shared.node.initialized())
            .finish_non_exhaustive()
    }
}

/// What every clone of one cache shares.
struct Shared {
    settings: CacheSettings,
    /// The connected instance: set by `connect`, or on first use after `connect_lazy`.
    node: OnceCell<Node>,
    /// The last failed lazy connection attempt.
    last_failure: Mutex<Option<ConnectFailure>>,
    closed: AtomicBool,
    telemetry: Telemetry,
}

/// A connected cache instance: pools, the coherent local cache, the background tasks.
struct Node {
    db: Arc<Db>,
    sql: Arc<Statements>,
    coherence: Arc<Coherence>,
    flights: Flights,
    /// The connection multiplexing `get_or_load`'s advisory locks (and the re-checks made under them).
    locks: Arc<LockSession>,
    /// Where writes go: group commit, or one statement per write.
    writes: Arc<GroupCommit>,
    /// Read replicas for shared-table reads (`read_dsns`), fenced.
    replicas: Option<Replicas>,
    /// What each entry asked for in early refresh.
    plans: Plans,
    default_ttl: Duration,
    /// What the probe at connect found, and the invalidation mode chosen from it.
    capabilities: Capabilities,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    /// `Err(ConnectBackoff)` within a second of a failed lazy connection attempt.
    fn backoff(&self) -> Result<()> {
        let recent = self.last_failure.lock().ok().and_then(|failure| failure.clone());
        match recent {
            Some(failure) if failure.at.elapsed() < RETRY_CONNECT_AFTER => Err(Error::ConnectBackoff {
                retry_in: RETRY_CONNECT_AFTER.saturating_sub(failure.at.elapsed()),
                last_error: failure.error,
                outage: failure.outage,
            }),
            _ => Ok(()),
        }
    }

    /// Why a loaded fill cannot be stored (bad tags, a value over `max_value_bytes`), if it cannot.
    fn unstorable<T>(&self, key: &str, fill: &Fill<T>) -> Option<Error> {
        validate::tags(&fill.options.tags)
            .and_then(|()| validate::value(key, fill.value.len(), self.settings.max_value_bytes))
            .err()
    }

    /// Turns a read error into `fallback` when failing open and the database is out of reach.
    fn read_failed<T>(&self, err: Error, fallback: T) -> Result<T> {
        if self.fails_open(&err) {
            Ok(fallback)
        } else {
            Err(err)
        }
    }

    /// Whether a read that failed with `err` fails open (logged when it does).
    fn fails_open(&self, err: &Error) -> bool {
        let open = self.settings.fail_open && err.is_unavailable();
        if open {
            tracing::warn!(target: "pgcache::cache", error = %err, "shared cache unavailable; treating as a miss");
        }
        open
    }

    /// Records a failed lazy connection attempt.
    fn failed(&self, err: &Error) {
        tracing::warn!(target: "pgcache::cache", error = %err, "could not connect; retrying on a later call");
        if let Ok(mut failure) = self.last_failure.lock() {
            *failure =
                Some(ConnectFailure { at: Instant::now(), error: err.to_string(), outage: err.is_unavailable() });
        }
    }
}

/// A failed lazy connection attempt.
#[derive(Clone)]
struct ConnectFailure {
    at: Instant,
    error: String,
    /// Whether it failed because the database is out of reach (reads then fail open), not a set-up error.
    outage: bool,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Ok(tasks) = self.tasks.get_mut() {
            tasks.drain(..).for_each(|t| t.abort());
        }
    }
}

impl Node {
    /// Connects: the pools, the schema check, the warm connections, then the background tasks.
    async fn start(settings: &CacheSettings) -> Result<Self> {
        let db = Arc::new(Db::new(settings)?);
        check_schema(&db, settings).await?;
        db.warm(settings.min_pool_size).await?;
        let capabilities = capability::probe(settings).await?;
        let coherence = Arc::new(coherence_for(settings, capabilities.invalidation));
        let (shutdown, _) = watch::channel(false);
        let sql =
            Arc::new(Statements::new(&settings.schema_prefix, !settings.disable_notify, settings.prepared_statements));
        let node = Self {
            writes: GroupCommit::new(Arc::clone(&db), Arc::clone(&sql), settings),
            replicas: Replicas::new(settings)?,
            sql,
            flights: Flights::default(),
            locks: Arc::new(LockSession::new(settings, capabilities.session_locks)?),
            plans: Plans::new(usize::try_from(settings.local_max_entries).unwrap_or(usize::MAX).clamp(1024, 1 << 20)),
            default_ttl: settings.default_ttl,
            capabilities,
            tasks: Mutex::new(Vec::new()),
            db,
            coherence,
            shutdown,
        };
        let first_listen = node.start_tasks(settings);
        node.listener_ready(first_listen, settings.pool_timeout.saturating_mul(2)).await?;
        Ok(node)
    }

    /// Starts the listener (and its lease watch) and the sweeper; returns how the listener's first
    /// attempt went, when there is a listener.
    fn start_tasks(&self, settings: &CacheSettings) -> Option<oneshot::Receiver<Result<()>>> {
        let mut tasks = Vec::new();
        let mut first_listen = None;
        let (tx, rx) = oneshot::channel();
        let (coherence, shutdown) = (Arc::clone(&self.coherence), self.shutdown.subscribe());
        match self.capabilities.invalidation {
            InvalidationMode::Listen => {
                tasks.push(tokio::spawn(listener::run(settings.clone(), coherence, shutdown, tx)))
            }
            InvalidationMode::Poll => tasks.push(tokio::spawn(poller::run(settings.clone(), coherence, shutdown, tx))),
            InvalidationMode::Off => {}
        }
        if self.capabilities.invalidation != InvalidationMode::Off {
            tasks.push(tokio::spawn(Arc::clone(&self.coherence.lease).watch(self.shutdown.subscribe())));
            first_listen = Some(rx);
        }
        tasks.push(tokio::spawn(telemetry::sample_usage(
            telemetry::UsageGauges::new(&settings.schema_prefix)
                .with_capabilities(&settings.schema_prefix, &self.capabilities),
            Arc::clone(&self.db),
            Arc::clone(&self.coherence),
            self.shutdown.subscribe(),
        )));
        if let Some(interval) = settings.sweeper_interval {
            tasks.push(tokio::spawn(sweeper::run(
                Arc::clone(&self.db),
                Arc::clone(&self.sql),
                settings.schema_prefix.clone(),
                settings.cleanup_batch_size,
                interval,
                self.shutdown.subscribe(),
            )));
        }
        if let Ok(mut all) = self.tasks.lock() {
            all.extend(tasks);
        }
        first_listen
    }

    /// A listener that cannot connect at all (no free slots, bad credentials) is a set-up error: report
    /// it. One that is merely slow keeps retrying in the background while the local cache is bypassed.
    async fn listener_ready(&self, first: Option<oneshot::Receiver<Result<()>>>, wait: Duration) -> Result<()> {
        let Some(first) = first else { return Ok(()) };
        match tokio::time::timeout(wait, first).await {
            Ok(Ok(Err(e))) => Err(e),
            _ => Ok(()),
        }
    }

    async fn stop(&self) {
        let _ = self.shutdown.send(true);
        let tasks: Vec<_> = match self.tasks.lock() {
            Ok(mut tasks) => tasks.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for task in tasks {
            let _ = task.await;
        }
        self.coherence.evict_all();
        self.locks.close();
        if let Some(replicas) = &self.replicas {
            replicas.close();
        }
        self.db.close();
    }

    /// Reads the shared table (a fenced replica when there are any, else the primary), installing a
    /// hit locally.
    async fn read_shared(&self, key: &str) -> Result<Option<Entry>> {
        let snapshot = self.coherence.snapshot(key);
        let row = match self.read_replica(key).await {
            Some(row) => row.map(|row| row.entry),
            None => {
                let conn = self.db.conn().await?;
                conn.bounded(store::get(conn.client()?, &self.sql, key)).await?
            }
        };
        if let Some(row) = &row {
            self.coherence.install(key, row.value.clone(), row.version, row.expiry, snapshot).await;
        }
        Ok(row)
    }

    /// The live row of `key` on a fenced replica (`Some(None)`: none there), or `None` when no replica
    /// answers and the primary must. Call it *after* taking the key's snapshot: an invalidation is then
    /// either covered by the fence or refused at install. Installs nothing.
    async fn read_replica(&self, key: &str) -> Option<Option<LoadRow>> {
        let replicas = self.replicas.as_ref()?;
        let generation = self.fence_generation(replicas)?;
        match replicas.get(&self.db, &self.sql, key, generation).await {
            Answer::Replica(row) => Some(row),
            Answer::Primary => None,
        }
    }

    /// The live rows of `keys` on a fenced replica, or `None` when no replica answers and the primary
    /// must. Called after the keys' snapshots, like [`read_replica`](Self::read_replica).
    async fn read_many_replica(&self, keys: &[&str]) -> Option<Vec<(String, Entry)>> {
        let replicas = self.replicas.as_ref()?;
        let generation = self.fence_generation(replicas)?;
        match replicas.get_many(&self.db, &self.sql, keys, generation).await {
            Answer::Replica(rows) => Some(rows),
            Answer::Primary => None,
        }
    }

    /// The invalidation generation a replica read must be fenced at, or `None` when the listener is not
    /// trusted (invalidations may be missing: the primary answers).
    fn fence_generation(&self, replicas: &Replicas) -> Option<u64> {
        let generation = self.coherence.epochs.generation();
        if self.coherence.lease.trusted() {
            Some(generation)
        } else {
            replicas.not_trusted();
            None
        }
    }

    /// Reads the row `get_or_load` may use and, when it is not live, tries the key's advisory lock `lock`
    /// in the same statement, on the lock session (one round trip for a miss; see
    /// [`LockSession::read_or_lock`]). A live row is installed locally.
    async fn read_or_lock(
        &self,
        key: &str,
        lock: i64,
        snapshot: Snapshot,
    ) -> Result<(Option<LoadRow>, Option<KeyLock>)> {
        let (row, guard) = self.locks.read_or_lock(&self.sql, key, lock).await?;
        if let Some(row) = &row {
            self.found_for_load(key, row, snapshot).await;
        }
        Ok((row, guard))
    }

    /// Reads the row `get_or_load` may use (live, or within its stale window), installing a live one
    /// locally. On a pooled connection when one is free at once, else on the lock session (pipelined):
    /// a burst of misses never queues for the pool, so unrelated traffic keeps it.
    async fn read_for_load(&self, key: &str, snapshot: Snapshot) -> Result<Option<LoadRow>> {
        let conn = match self.db.conn_if_free().await {
            Ok(conn) => Arc::new(conn),
            Err(e) if e.is_pool_busy() => self.locks.conn().await?,
            Err(e) => return Err(e),
        };
        let row = conn.bounded(store::get_for_load(conn.client()?, &self.sql, key)).await?;
        if let Some(row) = &row {
            self.found_for_load(key, row, snapshot).await;
        }
        Ok(row)
    }

    /// A row read for `get_or_load`: a live one is installed locally and its refresh plan recorded.
    async fn found_for_load(&self, key: &str, row: &LoadRow, snapshot: Snapshot) {
        if row.fresh {
            let entry = &row.entry;
            self.coherence.install(key, entry.value.clone(), entry.version, entry.expiry, snapshot).await;
            self.plans.record(key, entry.version, row.compute, row.refresh_in, entry.expiry);
        }
    }

    /// Writes through `conn` and installs the value locally at `snapshot`; returns the new version.
    /// A refresh (`origin.replaces`) writes only over the version it refreshed, else
    /// [`Error::Superseded`].
    async fn write(
        &self,
        conn: &Conn,
        key: &str,
        value: &Bytes,
        options: &SetOptions,
        snapshot: Snapshot,
        origin: Origin,
    ) -> Result<i64> {
        let ttl_ms = options.ttl.to_sql_millis(self.default_ttl);
        let meta = WriteMeta::new(ttl_ms, options, origin.compute);
        let client = conn.client()?;
        let version = match origin.replaces {
            None => conn.bounded(store::upsert(client, &self.sql, key, value, ttl_ms, &options.tags, meta)).await?,
            Some(seen) => {
                let replace = store::replace(client, &self.sql, key, value, ttl_ms, &options.tags, meta, seen);
                conn.bounded(replace).await?.ok_or_else(|| Error::Superseded { key: excerpt(key) })?
            }
        };
        let expiry = options.ttl.expiry(self.default_ttl);
        self.coherence.install(key, value.clone(), version, expiry, snapshot).await;
        self.plans.record(key, version, meta.compute(), options.refresh_after, expiry);
        Ok(version)
    }

    /// Writes through group commit (a refresh, which writes only over the version it refreshed, alone
    /// on a pooled connection) and installs the value locally at `snapshot`; returns the new version.
    async fn write_pooled(
        &self,
        key: &str,
        value: &Bytes,
        options: &SetOptions,
        snapshot: Snapshot,
        origin: Origin,
    ) -> Result<i64> {
        if origin.replaces.is_some() {
            let conn = self.db.conn().await?;
            return self.write(&conn, key, value, options, snapshot, origin).await;
        }
        let ttl_ms = options.ttl.to_sql_millis(self.default_ttl);
        let meta = WriteMeta::new(ttl_ms, options, origin.compute);
        let row = UpsertRow { key: key.to_owned(), value: value.clone(), ttl_ms, tags: options.tags.clone(), meta };
        let (version, stored) = match self.writes.submit(Write::Upsert(vec![row])).await? {
            Written::Upserted(rows) => rows.first().copied().ok_or(Error::Closed)?,
            _ => return Err(Error::Closed),
        };
        if stored {
            let expiry = options.ttl.expiry(self.default_ttl);
            self.coherence.install(key, value.clone(), version, expiry, snapshot).await;
            self.plans.record(key, version, meta.compute(), options.refresh_after, expiry);
        } else {
            // A later write of the key in the same batch replaced this value, and `version` is what the
            // batch stored: that write installs it. A copy older than it goes (this caller must not read
            // the value from before its write), and fills that read an older version are refused.
            self.coherence.superseded(key, version).await;
        }
        Ok(version)
    }

    /// A write of keys, deletes or TTLs through group commit.
    async fn submit(&self, write: Write) -> Result<Written> {
        self.writes.submit(write).await
    }
}

/// Where a written value comes from: a loader's run time, and for a background refresh the version it
/// replaces.
#[derive(Clone, Copy, Debug, Default)]
struct Origin {
    /// The loader's run time, when a loader produced the value (for early refresh).
    compute: Option<Duration>,
    /// The row version a refresh reloaded: the write happens only if the row is still at it.
    replaces: Option<i64>,
}

/// The coherent local cache the settings ask for.
fn coherence_for(settings: &CacheSettings, mode: InvalidationMode) -> Coherence {
    let evictions = telemetry::Evictions::new(&settings.schema_prefix);
    let local = settings.local_enabled().then(|| {
        LocalCache::new(settings.local_max_entries, settings.local_max_bytes, move |cause| evictions.removed(cause))
    });
    let lease = match mode {
        InvalidationMode::Listen => Lease::new(true, settings.heartbeat_interval.saturating_mul(2)),
        InvalidationMode::Poll => Lease::new(true, poller::lease_length(settings)),
        InvalidationMode::Off => Lease::new(false, settings.heartbeat_interval.saturating_mul(2)),
    };
    Coherence::new(local, settings.local_ttl, lease)
}

/// Checks that the schema is installed, current and intact before anything relies on it.
async fn check_schema(db: &Db, settings: &CacheSettings) -> Result<()> {
    // On the direct connection when there is one: the checks are plain (unprepared-by-us) queries.
    let conn = db.lock_conn().await?;
    conn.bounded(schema::verify(&***conn.client()?, settings)).await
}

impl PostgresCache<JsonCodec> {
    /// Creates, upgrades or repairs the schema (table, sequence, functions, triggers) for the settings'
    /// prefix and channel. Run it once at deploy or start-up, before [`connect`](Self::connect).
    /// Idempotent and safe when several processes run it at once; when the schema is current and intact
    /// it changes nothing. It does not trust the version row alone: a table, trigger or function dropped
    /// or changed by hand is re-created.
    ///
    /// # Errors
    /// Invalid settings; the database is unreachable or does not answer within the configured timeouts;
    /// [`Error::SchemaTooNew`] when the schema is newer than this library.
    pub async fn init_db(settings: &CacheSettings) -> Result<()> {
        schema::init_db(settings).await
    }

    /// The installed schema version for the prefix (0 when not installed).
    ///
    /// # Errors
    /// Invalid settings; the database is unreachable or does not answer within the configured timeouts.
    pub async fn schema_version(settings: &CacheSettings) -> Result<i32> {
        schema::schema_version(settings).await
    }

    /// Whether the installed schema is the one this library needs, and intact.
    ///
    /// # Errors
    /// As [`schema_version`](Self::schema_version).
    pub async fn schema_is_current(settings: &CacheSettings) -> Result<bool> {
        schema::schema_is_current(settings).await
    }

    /// The schema version this library needs.
    pub const SCHEMA_VERSION: i32 = schema::SCHEMA_VERSION;

    /// Connects: validates the settings, opens the pool (and `min_pool_size` connections), checks the
    /// schema (version, table, triggers, and the channel the notification function notifies), and starts
    /// the listener and the sweeper. Waits up to `pool_timeout` for the listener to be listening, so a
    /// write made right after `connect` returns is heard.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`]/[`Error::InvalidDsn`]; [`Error::SchemaOutdated`] when `init_db` was not
    /// run; [`Error::SchemaDamaged`]; [`Error::TooManyConnections`] and other database errors.
    pub async fn connect(settings: CacheSettings) -> Result<Self> {
        settings.validate()?;
        reject_shards(&settings)?;
        let node = Node::start(&settings).await?;
        let cache = Self::unconnected(settings);
        // A fresh cell: cannot be set already.
        let _ = cache.shared.node.set(node);
        Ok(cache)
    }

    /// A cache that connects on first use instead of now (no I/O here, no migrations ever). Until it is
    /// connected, operations connect first; after a failed attempt they fail fast with
    /// [`Error::ConnectBackoff`] for a second, then try again. Reads fail open meanwhile (when
    /// `fail_open`), so an HTTP layer or an app can start before its database.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), pgcache_core::Error> {
    /// use pgcache_core::prelude::*;
    ///
    /// let cache = PostgresCache::connect_lazy(CacheSettings::new("postgresql://localhost/app"))?;
    /// let v: Option<String> = cache.get("greeting").await?; // connects here
    /// # let _ = v; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidSetting`]/[`Error::InvalidDsn`].
    pub fn connect_lazy(settings: CacheSettings) -> Result<Self> {
        settings.validate()?;
        reject_shards(&settings)?;
        Ok(Self::unconnected(settings))
    }

    /// What the probe at connect found on `listen_dsn` (or `dsn`), after
    /// [`CacheSettings::assume_without`], and the invalidation mode chosen from it; `None` until this
    /// instance has connected (see [`connect_lazy`](Self::connect_lazy)).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), pgcache_core::Error> {
    /// use pgcache_core::{prelude::*, InvalidationMode};
    ///
    /// let cache = PostgresCache::connect(CacheSettings::new("postgresql://localhost/app")).await?;
    /// if cache.capabilities().is_some_and(|c| c.invalidation == InvalidationMode::Poll) {
    ///     println!("no LISTEN/NOTIFY here: polling the change history");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn capabilities(&self) -> Option<Capabilities> {
        self.shared.node.get().map(|node| node.capabilities)
    }

    /// Connects with settings from `PGCACHE_*` environment variables ([`CacheSettings::from_env`]).
    ///
    /// # Errors
    /// As [`CacheSettings::from_env`] and [`connect`](Self::connect).
    pub async fn from_env() -> Result<Self> {
        Self::connect(CacheSettings::from_env()?).await
    }

    fn unconnected(settings: CacheSettings) -> Self {
        let telemetry = Telemetry::new(&settings.schema_prefix);
        let shared = Shared {
            settings,
            node: OnceCell::new(),
            last_failure: Mutex::new(None),
            closed: AtomicBool::new(false),
            telemetry,
        };
        Self { shared: Arc::new(shared), codec: JsonCodec }
    }
}

/// A `PostgresCache` talks to one server: settings naming shards belong to a
/// [`ShardedCache`](crate::ShardedCache).
fn reject_shards(settings: &CacheSettings) -> Result<()> {
    if settings.shard_dsns.is_empty() {
        return Ok(());
    }
    Err(Error::InvalidSetting {
        name: "shard_dsns",
        reason: "a PostgresCache uses `dsn` only: connect a ShardedCache for several shards".to_owned(),
    })
}

impl<C> PostgresCache<C> {
    /// The same cache with another codec for typed values.
    pub fn with_codec<D: Codec + Clone>(self, codec: D) -> PostgresCache<D> {
        PostgresCache { shared: self.shared, codec }
    }

    /// The settings this cache runs with.
    pub fn settings(&self) -> &CacheSettings {
        &self.shared.settings
    }

    /// The advisory lock key `get_or_load` uses for `key` (see [`lock_key`](crate::lock_key)).
    pub fn lock_key(&self, key: &str) -> i64 {
        lock_key(&self.shared.settings.schema_prefix, key)
    }

    /// Entries and weighted bytes in the local cache after pending maintenance (`(0, 0)` when disabled
    /// or not connected).
    pub async fn local_usage(&self) -> (u64, u64) {
        match self.shared.node.get() {
            Some(node) => node.coherence.usage().await,
            None => (0, 0),
        }
    }

    /// Makes every change to a row of `table` (`"table"` or `"schema.table"`) delete, in the same
    /// transaction, the entries tagged by `tag_template` filled with that row's columns: with
    /// `"order:{id}"`, a change to order 42 deletes the entries tagged `order:42`, on every node. Any
    /// writer counts: this service, another one, a person with `psql`. INSERT, UPDATE (old and new
    /// rows), DELETE and TRUNCATE (every entry with a tag of the template's shape) are covered, by
    /// statement-level triggers: a bulk update costs one `DELETE` of the cache, not one per row.
    ///
    /// Idempotent (run it at every start-up); [`stop_invalidating_on`](Self::stop_invalidating_on)
    /// removes it. Run `init_db` first. The triggers' function is `SECURITY DEFINER`: roles writing
    /// `table` need no rights on the cache table. Tag the entries with
    /// [`SetOptions::tags`](crate::SetOptions::tags).
    ///
    /// ```no_run
    /// # async fn demo(cache: pgcache_core::PostgresCache) -> Result<(), pgcache_core::Error> {
    /// use pgcache_core::{CacheStore, SetOptions};
    /// cache.invalidate_on("public.orders", "order:{id}").await?;
    /// let options = SetOptions::ttl(None).tags(["order:42"]);
    /// cache.set_entry("order-page:42", bytes::Bytes::from_static(b"..."), &options).await?;
    /// // UPDATE orders SET status = 'paid' WHERE id = 42;  -- from anywhere: the entry is gone
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] (named `invalidate_on`) for a table or template that is not valid, a
    /// table that does not exist or lacks a column the template names; database errors.
    pub async fn invalidate_on(&self, table: &str, tag_template: &str) -> Result<()> {
        self.check_open()?;
        row_triggers::install(&self.shared.settings, table, tag_template).await
    }

    /// Removes what [`invalidate_on`](Self::invalidate_on) installed for this table and template;
    /// returns whether it was installed.
    ///
    /// # Errors
    /// As [`invalidate_on`](Self::invalidate_on).
    pub async fn stop_invalidating_on(&self, table: &str, tag_template: &str) -> Result<bool> {
        self.check_open()?;
        row_triggers::remove(&self.shared.settings, table, tag_template).await
    }

    /// Cache writes on the caller's open transaction (anything that implements tokio-postgres'
    /// `GenericClient`): they commit or roll back with it. See [`CacheTx`] for the guarantees.
    ///
    /// ```no_run
    /// # async fn demo(cache: pgcache_core::PostgresCache, mut client: tokio_postgres::Client)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// let tx = client.transaction().await?;
    /// let mut cached = cache.in_transaction(&tx);
    /// cached.set("order:42", &"paid", None).await?;
    /// let pending = cached.finish();
    /// tx.commit().await?;
    /// pending.committed().await;
    /// # Ok(()) }
    /// ```
    pub fn in_transaction<'a, G: tokio_postgres::GenericClient + Sync>(&self, client: &'a G) -> CacheTx<C, &'a G>
    where
        C: Clone,
    {
        CacheTx::new(self.clone(), client)
    }

    /// Cache writes on the caller's open sqlx transaction (or connection): they commit or roll back with
    /// it. Pass `&mut *tx` for a `sqlx::Transaction<'_, Postgres>`. See [`CacheTx`] for the guarantees.
    ///
    /// ```no_run
    /// # async fn demo(cache: pgcache_core::PostgresCache, pool: sqlx::PgPool)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("UPDATE orders SET status = 'paid' WHERE id = 42").execute(&mut *tx).await?;
    /// let mut cached = cache.in_sqlx_transaction(&mut *tx);
    /// cached.delete("order:42").await?;
    /// let pending = cached.finish();
    /// tx.commit().await?;
    /// pending.committed().await;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "sqlx")]
    pub fn in_sqlx_transaction<'a>(&self, conn: &'a mut sqlx::PgConnection) -> CacheTx<C, &'a mut sqlx::PgConnection>
    where
        C: Clone,
    {
        CacheTx::new(self.clone(), conn)
    }

    // ---- what writes in the caller's transaction (transaction.rs) need ----

    /// The codec for typed values.
    pub(crate) fn codec_ref(&self) -> &C {
        &self.codec
    }

    /// Checks a key and a value length for a write.
    pub(crate) fn check_write(&self, key: &str, len: usize) -> Result<()> {
        self.check_key(key)?;
        validate::value(key, len, self.shared.settings.max_value_bytes)
    }

    /// The statements of this cache's table, connecting first after `connect_lazy`.
    pub(crate) async fn statements(&self) -> Result<Arc<Statements>> {
        Ok(Arc::clone(&self.node().await?.sql))
    }

    /// A transaction that wrote `keys` (or deleted by tag: `flush`) committed: evicts this node's copies.
    pub(crate) async fn evict_committed(&self, keys: &[String], flush: bool) {
        let Some(node) = self.shared.node.get() else { return };
        if flush {
            node.coherence.evict_all();
        }
        for key in keys {
            node.coherence.evict(key).await;
        }
    }

    /// Stops the listener and sweeper and closes every connection. Later calls return [`Error::Closed`].
    /// Other clones of this cache are closed too.
    pub async fn close(&self) {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(node) = self.shared.node.get() {
            node.stop().await;
        }
    }

    /// Reads a value; the same as [`CacheStore::get_bytes`], without the trait's boxed future, so a local
    /// hit on a concrete `PostgresCache` allocates nothing.
    ///
    /// # Errors
    /// Bad key; database errors only when the cache is configured to fail closed.
    #[tracing::instrument(name = "pgcache.get", level = "debug", target = "pgcache::cache", skip_all, fields(cache.operation = "get", cache.key_hash = %telemetry::key_hash(key), cache.outcome = tracing::field::Empty, db.system = "postgresql"))]
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        self.check_key(key)?;
        if let Some(node) = self.shared.node.get() {
            if let Some(hit) = node.coherence.hit(key).await {
                self.shared.telemetry.read(Op::Get, Outcome::L1Hit, 1);
                return Ok(Some(hit.value.clone()));
            }
        }
        // Boxed so that the (small) hit path does not carry the miss path's state.
        Ok(Box::pin(self.get_shared(key)).await?.map(|entry| entry.value))
    }

    fn check_open(&self) -> Result<()> {
        if self.shared.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn check_key(&self, key: &str) -> Result<()> {
        self.check_open()?;
        validate::key(key, self.shared.settings.max_key_bytes)
    }

    /// The connected instance, connecting first after `connect_lazy`.
    async fn node(&self) -> Result<&Node> {
        self.check_open()?;
        match self.shared.node.get() {
            Some(node) => Ok(node),
            None => Box::pin(self.connect_now()).await,
        }
    }

    async fn connect_now(&self) -> Result<&Node> {
        let shared = &self.shared;
        // Checked again inside the initialiser: tasks queued behind a failed attempt each run one of their
        // own, and must meet the back-off instead of connecting one after another.
        shared.backoff()?;
        let start = || async {
            shared.backoff()?;
            Node::start(&shared.settings).await.inspect_err(|e| shared.failed(e))
        };
        let node = shared.node.get_or_try_init(start).await?;
        if shared.closed.load(Ordering::SeqCst) {
            // Closed while this attempt was connecting: stop what it started.
            node.stop().await;
            return Err(Error::Closed);
        }
        Ok(node)
    }

    /// A read of the local then the shared cache that fails open.
    async fn get_shared(&self, key: &str) -> Result<Option<Entry>> {
        let read = match self.node().await {
            Ok(node) => node.read_shared(key).await,
            Err(e) => Err(e),
        };
        match read {
            Err(e) => {
                let answer = self.shared.read_failed(e, None);
                self.shared.telemetry.get_failed(&answer);
                answer
            }
            read => {
                self.shared.telemetry.get(&read);
                read
            }
        }
    }

    // ---- get_or_load: the in-process half, then the cross-process half ----

    /// One caller per key per process runs the cross-process path; the others wait for its answer, up to
    /// `lock_wait_timeout`. A hit whose entry is due for an early refresh starts one in the background.
    async fn load(&self, key: &str, loader: DynLoader) -> Result<Loaded<DynOutput>, LoadError<DynOutput>> {
        self.check_key(key)?;
        let node = match self.node().await {
            Ok(node) => node,
            Err(e) if self.shared.fails_open(&e) => return self.load_uncached(key, loader, e).await,
            Err(e) => return Err(e.into()),
        };
        if let Some(hit) = node.coherence.hit_entry(key).await {
            if node.plans.due(key, hit.version) {
                Shared::refresh_in_background(&self.shared, key, loader, hit.version);
            }
            return Ok(Loaded::found(hit, Source::Local));
        }
        let wait = self.shared.settings.lock_wait_timeout;
        let Ok(mut flight) = tokio::time::timeout(wait, node.flights.join(key)).await else {
            // This process's leader for the key is still at it.
            return self.waited_out(node, key).await;
        };
        if flight.waited {
            if let Some(entry) = flight.landed(&node.coherence.epochs) {
                return Ok(Loaded::found(entry, Source::Collapsed));
            }
            if let Some(hit) = node.coherence.hit_entry(key).await {
                return Ok(Loaded::found(hit, Source::Collapsed));
            }
        }
        let snapshot = node.coherence.snapshot(key);
        // With replicas, a live row on a fenced replica is the answer; anything else (a miss, a row in its
        // stale window, no replica answering) goes to the primary's read-and-try-lock.
        let read = match node.read_replica(key).await {
            Some(Some(row)) if row.fresh => {
                node.found_for_load(key, &row, snapshot).await;
                Ok((Some(row), None))
            }
            _ => node.read_or_lock(key, self.lock_key(key), snapshot).await,
        };
        let loaded = match read {
            Ok((Some(row), _)) if row.fresh => {
                if node.plans.due(key, row.entry.version) {
                    Shared::refresh_in_background(&self.shared, key, loader, row.entry.version);
                }
                Loaded::found(row.entry, if flight.waited { Source::Collapsed } else { Source::Shared })
            }
            Ok((row, lock)) => {
                let stale = row.map(|r| r.entry);
                match lock {
                    Some(guard) => {
                        self.fill_under_lock(node, key, loader, snapshot, (guard, Instant::now()), stale).await?
                    }
                    None => self.fill_across_processes(node, key, loader, snapshot, stale).await?,
                }
            }
            Err(e) if self.shared.fails_open(&e) => self.load_uncached(key, loader, e).await?,
            Err(e) => return Err(e.into()),
        };
        if loaded.source != Source::Stale {
            flight.land(loaded.entry(), snapshot);
        }
        Ok(loaded)
    }

    /// Called when the first try of the key's advisory lock (with the read) found it taken: waits for the
    /// holder's fill, woken by the listener when another process writes the key, polling the lock with
    /// back-off, up to `lock_wait_timeout`; a caller that gets the lock fills (re-check, load, write,
    /// unlock). It never loads while another caller holds the lock: past the
    /// wait it answers with the stale value (`stale`, from the entry's fail-safe window) or
    /// [`Error::LockTimeout`]. With a stale value it does not wait at all: the holder is refreshing it.
    async fn fill_across_processes(
        &self,
        node: &Node,
        key: &str,
        loader: DynLoader,
        snapshot: Snapshot,
        stale: Option<Entry>,
    ) -> Result<Loaded<DynOutput>, LoadError<DynOutput>> {
        let settings = &self.shared.settings;
        let lock = self.lock_key(key);
        let written = settings.listener_enabled().then(|| node.coherence.fills.subscribe(key));
        let waiting = Instant::now();
        let deadline = waiting + settings.lock_wait_timeout;
        let mut backoff = FILL_POLL.0;
        let waited = |how| self.shared.telemetry.lock_waited(waiting, how);
        // The read already tried the lock once.
        let mut tried = true;
        loop {
            let attempt = if std::mem::take(&mut tried) { Ok(None) } else { node.locks.try_lock(lock).await };
            match attempt {
                Ok(Some(guard)) => {
                    return self.fill_under_lock(node, key, loader, snapshot, (guard, waiting), stale).await;
                }
                Ok(None) => {}
                Err(e) => {
                    waited(LockWait::Failed);
                    if self.shared.fails_open(&e) {
                        return self.load_uncached(key, loader, e).await;
                    }
                    return Err(e.into());
                }
            }
            if let Some(stale) = stale {
                return Ok(Loaded::found(stale, Source::Stale));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                waited(LockWait::TimedOut);
                tracing::warn!(target: "pgcache::cache", key, waited = ?settings.lock_wait_timeout, "gave up waiting for another caller's fill");
                return Err(LoadError::Cache(Error::LockTimeout {
                    key: excerpt(key),
                    waited: settings.lock_wait_timeout,
                }));
            }
            let pause = backoff.min(left);
            match &written {
                Some(written) => written.written_or(pause).await,
                None => tokio::time::sleep(pause).await,
            }
            backoff = (backoff * 2).min(FILL_POLL.1);
        }
    }

    /// Holding the lock (`guard`, taken after waiting since `waiting`): re-check the table on the lock
    /// session, then run the fill in a task of its own
    /// (so it completes, and unlocks, whatever happens to this caller). The caller waits for it, or, when
    /// the entry has a stale value, at most `loader_soft_timeout`, and gets the stale value when the loader
    /// fails or overruns.
    async fn fill_under_lock(
        &self,
        node: &Node,
        key: &str,
        loader: DynLoader,
        snapshot: Snapshot,
        (guard, waiting): (KeyLock, Instant),
        stale: Option<Entry>,
    ) -> Result<Loaded<DynOutput>, LoadError<DynOutput>> {
        // Another caller may have filled the key between our read and our lock.
        let recheck = match guard.conn() {
            Some(conn) => async { conn.bounded(store::get_for_load(conn.client()?, &node.sql, key)).await }.await,
            None => Ok(None),
        };
        let stale = match recheck {
            Ok(Some(row)) if row.fresh => {
                self.shared.telemetry.lock_waited(waiting, LockWait::Filled);
                guard.release().await;
                node.found_for_load(key, &row, snapshot).await;
                return Ok(Loaded::found(row.entry, Source::Collapsed));
            }
            Ok(row) => {
                self.shared.telemetry.lock_waited(waiting, LockWait::Acquired);
                row.map(|row| row.entry)
            }
            Err(e) => {
                guard.failed(&e).await;
                stale
            }
        };
        let fill = tokio::spawn(Shared::fill(Arc::clone(&self.shared), key.to_owned(), loader, snapshot, guard, None));
        // A caller that goes away cancels its fill (the lock is released and a waiter takes over), except
        // past the soft timeout, where the fill goes on for the callers to come.
        let mut fill = CancelOnDrop(Some(fill));
        let filled = match (&stale, self.shared.settings.loader_soft_timeout) {
            (Some(fallback), Some(soft)) => match tokio::time::timeout(soft, fill.join()).await {
                Ok(filled) => filled,
                Err(_) => {
                    tracing::debug!(target: "pgcache::cache", key, "loader past its soft timeout; serving the stale value");
                    fill.detach();
                    return Ok(Loaded::found(fallback.clone(), Source::Stale));
                }
            },
            _ => fill.join().await,
        };
        let filled =
            filled.unwrap_or_else(|e| Err(LoadError::Cache(Error::Loader(format!("the loader panicked: {e}").into()))));
        match (filled, stale) {
            (Ok(loaded), _) => Ok(loaded),
            (Err(e), Some(stale)) => {
                tracing::warn!(target: "pgcache::cache", key, error = %LoadFailure(&e), "loader failed; serving the stale value");
                Ok(Loaded::found(stale, Source::Stale))
            }
            (Err(e), None) => Err(e),
        }
    }

    /// The local leader did not finish within `lock_wait_timeout`: a stale value if the entry has one,
    /// else [`Error::LockTimeout`].
    async fn waited_out(&self, node: &Node, key: &str) -> Result<Loaded<DynOutput>, LoadError<DynOutput>> {
        let waited = self.shared.settings.lock_wait_timeout;
        if let Ok(Some(row)) = node.read_for_load(key, node.coherence.snapshot(key)).await {
            return Ok(Loaded::found(row.entry, if row.fresh { Source::Collapsed } else { Source::Stale }));
        }
        tracing::warn!(target: "pgcache::cache", key, ?waited, "gave up waiting for this process's fill");
        Err(LoadError::Cache(Error::LockTimeout { key: excerpt(key), waited }))
    }

    /// The database is out of reach (`cause`, failing open): the loader runs, nothing is stored.
    async fn load_uncached(
        &self,
        key: &str,
        loader: DynLoader,
        cause: Error,
    ) -> Result<Loaded<DynOutput>, LoadError<DynOutput>> {
        let fill = self.shared.telemetry.load(loader.run()).await.map_err(LoadError::Loader)?;
        let why = self.shared.unstorable(key, &fill).unwrap_or(cause);
        Ok(self.shared.loaded_by_loader(fill, Err(why)))
    }
}

/// A spawned fill that is aborted if its caller's future is dropped before it finishes.
struct CancelOnDrop<T>(Option<JoinHandle<T>>);

impl<T> CancelOnDrop<T> {
    /// Waits for the fill (a fill that panicked is reported as `Err`).
    async fn join(&mut self) -> std::result::Result<T, tokio::task::JoinError> {
        match self.0.as_mut() {
            Some(task) => {
                let done = task.await;
                self.0 = None;
                done
            }
            None => std::future::pending().await,
        }
    }

    /// Lets the fill go on without its caller.
    fn detach(mut self) {
        self.0 = None;
    }
}

impl<T> Drop for CancelOnDrop<T> {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// A loader's failure, for the log (the loader's own error is type-erased here).
struct LoadFailure<'a>(&'a LoadError<DynOutput>);

impl std::fmt::Display for LoadFailure<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            LoadError::Loader(_) => f.write_str("the loader returned an error"),
            LoadError::Cache(e) => e.fmt(f),
        }
    }
}

/// The parts of `get_or_load` that run in tasks of their own.
impl Shared {
    /// Runs the loader under `guard` (bounded by `loader_hard_timeout`), writes its value on the lock
    /// session with the loader's run time, and unlocks.
    async fn fill(
        shared: Arc<Shared>,
        key: String,
        loader: DynLoader,
        snapshot: Snapshot,
        guard: KeyLock,
        replaces: Option<i64>,
    ) -> Result<Loaded<DynOutput>, LoadError<DynOutput>> {
        let Some(node) = shared.node.get() else {
            guard.release().await;
            return Err(LoadError::Cache(Error::Closed));
        };
        let started = Instant::now();
        let run = shared.telemetry.load(loader.run());
        let ran = match shared.settings.loader_hard_timeout {
            Some(after) => match tokio::time::timeout(after, run).await {
                Ok(ran) => ran,
                Err(_) => {
                    guard.release().await;
                    return Err(LoadError::Cache(Error::LoaderTimeout { key: excerpt(&key), after }));
                }
            },
            None => run.await,
        };
        let fill = match ran {
            Ok(fill) => fill,
            Err(e) => {
                guard.release().await;
                return Err(LoadError::Loader(e));
            }
        };
        let origin = Origin { compute: Some(started.elapsed()), replaces };
        let written = match (shared.unstorable(&key, &fill), guard.conn()) {
            (Some(e), _) => Err(e),
            // A refresh writes on the lock session, only over the version it refreshed.
            (None, Some(conn)) if replaces.is_some() => {
                node.write(conn, &key, &fill.value, &fill.options, snapshot, origin).await
            }
            (None, _) => node.write_pooled(&key, &fill.value, &fill.options, snapshot, origin).await,
        };
        if let Err(e) = &written {
            guard.failed(e).await;
        }
        guard.release().await;
        let written = match written {
            Err(e) if e.is_unavailable() => {
                // The lock session broke (e.g. terminated): try once through the pool.
                tracing::warn!(target: "pgcache::cache", error = %e, "could not store the loaded value; retrying through the pool");
                node.write_pooled(&key, &fill.value, &fill.options, snapshot, origin).await
            }
            written => written,
        };
        Ok(shared.loaded_by_loader(fill, written))
    }

    /// Starts one background refresh of `key` with `loader`: under a try-lock (another node or caller
    /// refreshing means this one does nothing), and only if the row is still at `seen` (else someone
    /// refreshed or rewrote it already: one refresh per version across the cluster).
    fn refresh_in_background(shared: &Arc<Shared>, key: &str, loader: DynLoader, seen: i64) {
        let (shared, key) = (Arc::clone(shared), key.to_owned());
        tokio::spawn(async move {
            let Some(node) = shared.node.get() else { return };
            let refreshed = Self::refresh(&shared, node, &key, loader, seen).await;
            node.plans.finished(&key);
            match refreshed {
                Ok(true) => tracing::debug!(target: "pgcache::cache", key, "refreshed early"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(target: "pgcache::cache", key, error = %LoadFailure(&e), "early refresh failed")
                }
            }
        });
    }

    /// The background refresh itself; `Ok(false)` when another caller refreshes or refreshed.
    async fn refresh(
        shared: &Arc<Shared>,
        node: &Node,
        key: &str,
        loader: DynLoader,
        seen: i64,
    ) -> Result<bool, LoadError<DynOutput>> {
        let Some(guard) = node.locks.try_lock(lock_key(&shared.settings.schema_prefix, key)).await? else {
            return Ok(false);
        };
        let snapshot = node.coherence.snapshot(key);
        let current = match guard.conn() {
            Some(conn) => conn.bounded(store::get_for_load(conn.client()?, &node.sql, key)).await,
            None => Ok(None),
        };
        match current {
            Ok(Some(row)) if row.entry.version == seen => {}
            _ => {
                guard.release().await;
                return Ok(false);
            }
        }
        let loaded = Self::fill(Arc::clone(shared), key.to_owned(), loader, snapshot, guard, Some(seen)).await?;
        Ok(loaded.store_error.is_none())
    }

    /// The answer of a caller that ran the loader, whether or not its value could be stored: once the
    /// loader has run its value is served, with the reason it was not stored.
    fn loaded_by_loader(&self, fill: Fill<DynOutput>, written: Result<i64>) -> Loaded<DynOutput> {
        let expiry = fill.options.ttl.expiry(self.settings.default_ttl);
        let written = written.map_err(|e| {
            if matches!(e, Error::Superseded { .. }) {
                tracing::debug!(target: "pgcache::cache", error = %e, "refresh superseded");
            } else {
                tracing::warn!(target: "pgcache::cache", error = %e, "could not store the loaded value; serving it uncached");
            }
            Some(e)
        });
        Loaded::by_loader(fill, written, expiry)
    }
}

#[async_trait]
impl<C: Send + Sync + 'static> CacheStore for PostgresCache<C> {
    #[tracing::instrument(name = "pgcache.get", level = "debug", target = "pgcache::cache", skip_all, fields(cache.operation = "get", cache.key_hash = %telemetry::key_hash(key), cache.outcome = tracing::field::Empty, db.system = "postgresql"))]
    async fn get_entry(&self, key: &str) -> Result<Option<Entry>> {
        self.check_key(key)?;
        if let Some(node) = self.shared.node.get() {
            if let Some(hit) = node.coherence.hit_entry(key).await {
                self.shared.telemetry.read(Op::Get, Outcome::L1Hit, 1);
                return Ok(Some(hit));
            }
        }
        // Boxed so that the (small) hit path does not carry the miss path's state.
        Box::pin(self.get_shared(key)).await
    }

    fn peek_local(&self, key: &str) -> Option<Entry> {
        self.check_key(key).ok()?;
        let hit = self.shared.node.get()?.coherence.peek_entry(key)?;
        self.shared.telemetry.read(Op::Get, Outcome::L1Hit, 1);
        Some(hit)
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        PostgresCache::get_bytes(self, key).await
    }

    #[tracing::instrument(name = "pgcache.get_many", level = "debug", target = "pgcache::cache", skip_all, fields(cache.operation = "get_many", cache.outcome = tracing::field::Empty, db.system = "postgresql"))]
    async fn get_many_bytes(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        for key in keys {
            self.check_key(key)?;
        }
        let telemetry = &self.shared.telemetry;
        let node = match self.node().await {
            Ok(node) => node,
            Err(e) => return telemetry.get_many_failed(self.shared.read_failed(e, vec![None; keys.len()])),
        };
        let mut out = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let hit = node.coherence.hit(key).await.map(|e| e.value.clone());
            if hit.is_none() {
                missing.push(i);
            }
            out.push(hit);
        }
        telemetry.read(Op::GetMany, Outcome::L1Hit, (keys.len() - missing.len()) as u64);
        if missing.is_empty() {
            return Ok(out);
        }
        let wanted: Vec<&str> = missing.iter().filter_map(|&i| keys.get(i).copied()).collect();
        let snapshots: Vec<Snapshot> = wanted.iter().map(|k| node.coherence.snapshot(k)).collect();
        let read = async {
            if let Some(rows) = node.read_many_replica(&wanted).await {
                return Ok(rows);
            }
            let conn = node.db.conn().await?;
            conn.bounded(store::get_many(conn.client()?, &node.sql, &wanted)).await
        };
        let rows = match read.await {
            Ok(rows) => rows,
            Err(e) => return telemetry.get_many_failed(self.shared.read_failed(e, out)),
        };
        let found: HashMap<String, Entry> = rows.into_iter().collect();
        telemetry.read(Op::GetMany, Outcome::L2Hit, found.len() as u64);
        telemetry.read(Op::GetMany, Outcome::Miss, missing.len().saturating_sub(found.len()) as u64);
        for (slot, (key, snapshot)) in missing.iter().zip(wanted.iter().zip(snapshots)) {
            if let (Some(row), Some(out)) = (found.get(*key), out.get_mut(*slot)) {
                node.coherence.install(key, row.value.clone(), row.version, row.expiry, snapshot).await;
                *out = Some(row.value.clone());
            }
        }
        Ok(out)
    }

    #[tracing::instrument(name = "pgcache.set", level = "debug", target = "pgcache::cache", skip_all, fields(cache.operation = "set", cache.key_hash = %telemetry::key_hash(key), cache.outcome = tracing::field::Empty, db.system = "postgresql"))]
    async fn set_entry(&self, key: &str, value: Bytes, options: &SetOptions) -> Result<i64> {
        self.check_key(key)?;
        validate::value(key, value.len(), self.shared.settings.max_value_bytes)?;
        validate::tags(&options.tags)?;
        let node = self.node().await?;
        let snapshot = node.coherence.snapshot(key);
        node.write_pooled(key, &value, options, snapshot, Origin::default()).await
    }

    #[tracing::instrument(name = "pgcache.set_many", level = "debug", target = "pgcache::cache", skip_all, fields(cache.operation = "set_many", cache.outcome = tracing::field::Empty, db.system = "postgresql"))]
    async fn set_many_bytes(&self, items: &[(&str, Bytes)], ttl: Ttl) -> Result<()> {
        let mut latest: Vec<(&str, &[u8])> = Vec::with_capacity(items.len());
        let mut seen = HashMap::with_capacity(items.len());
        for (key, value) in items {
            self.check_key(key)?;
            validate::value(key, value.len(), self.shared.settings.max_value_bytes)?;
            // The last write of a key in the batch wins (one statement cannot update a row twice).
            match seen.get(key) {
                Some(&i) => latest[i] = (*key, &value[..]),
                None => {
                    seen.insert(*key, latest.len());
                    latest.push((*key, &value[..]));
                }
            }
        }
        if latest.is_empty() {
            return Ok(());
        }
        let node = self.node().await?;
        let ttl_ms = ttl.to_sql_millis(node.default_ttl);
        let rows = latest
            .iter()
            .map(|(key, value)| UpsertRow {
                key: (*key).to_owned(),
                value: Bytes::copy_from_slice(value),
                ttl_ms,
                tags: Vec::new(),
                meta: WriteMeta::default(),
            })
            .collect();
        let result = node.submit(Write::Upsert(rows)).await;
        for (key, _) in &latest {
            node.coherence.evict(key).await;
        }
        result.map(drop)
    }

    #[tracing::instrument(name = "pgcache.delete", level = "debug", target = "pgcache::cache", skip_all, fields(cache.operation = "delete", cache.key_hash = %telemetry::key_hash(key), cache.outcome = tracing::field::Empty, db.system = "postgresql"))]
    async fn delete(&self, key: &str) -> Result<bool> {
        self.check_key(key)?;
        let node = self.node().await?;
        // Evicted locally whatever happened: a delete that may not have reached the table must not leave
        // this node serving the old value.
        let result = node.submit(Write::Delete(vec![key.to_owned()])).await;
        node.coherence.evict(key).await;
        result.map(|written| matches!(written, Written::Deleted(n) if n > 0))
    }

    #[tracing::instrument(name = "pgcache.delete_many", level = "debug", target = "pgcache::cache", skip_all, fields(cache.operation = "delete_many", cache.outcome = tracing::field::Empty, db.system = "postgresql"))]
    async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        for key in keys {
            self.check_key(key)?;
        }
        if keys.is_empty() {
            return Ok(0);
        }
        let node = self.node().await?;
        let result = node.submit(Write::Delete(keys.iter().map(|k| (*k).to_owned()).collect())).await;
        for key in keys {
            node.coherence.evict(key).await;
        }
        result.map(|written| match written {
            Written::Deleted(n) => n,
            _ => 0,
        })
    }

    #[tracing::instrument(name = "pgcache.delete_tags", level = "debug", target = "pgcache::cache", skip_all, fields(cache.operation = "delete_tags", cache.outcome = tracing::field::Empty, db.system = "postgresql"))]
    async fn delete_tags(&self, tags: &[&str]) -> Result<u64> {
        self.check_open()?;
        validate::tags(tags)?;
        if tags.is_empty() {
            return Ok(0);
        }
        let node = self.node().await?;
        let result =
            node.submit(Write::DeleteTags(tags.iter().map(|t| (*t).to_owned()).collect())).await.map(|written| {
                match written {
                    Written::TagsDeleted(n) => n,
                    _ => 0,
                }
            });
        // Which keys carried the tags is only known to the database (the trigger tells the other nodes):
        // flush this node's copies unless the delete is known to have removed nothing.
        if !matches!(result, Ok(0)) {
            node.coherence.evict_all();
        }
        result
    }

    #[tracing::instrument(name = "pgcache.clear", level = "debug", target = "pgcache::cache", skip_all, fields(cache.operation = "clear", cache.outcome = tracing::field::Empty, db.system = "postgresql"))]
    async fn clear(&self) -> Result<u64> {
        let node = self.node().await?;
        let clear = async {
            let conn = node.db.conn().await?;
            conn.bounded(store::clear(conn.client()?, &node.sql)).await
        };
        let result = clear.await;
        node.coherence.evict_all();
        result
    }

    #[tracing::instrument(name = "pgcache.ttl", level = "debug", target = "pgcache::cache", skip_all, fields(cache.operation = "ttl", cache.key_hash = %telemetry::key_hash(key), cache.outcome = tracing::field::Empty, db.system = "postgresql"))]
    async fn ttl(&self, key: &str) -> Result<Option<Expiry>> {
        self.check_key(key)?;
        let node = self.node().await?;
        let conn = node.db.conn().await?;
        conn.bounded(store::ttl(conn.client()?, &node.sql, key)).await
    }

    #[tracing::instrument(name = "pgcache.touch", level = "debug", target = "pgcache::cache", skip_all, fields(cache.operation = "touch", cache.key_hash = %telemetry::key_hash(key), cache.outcome = tracing::field::Empty, db.system = "postgresql"))]
    async fn touch(&self, key: &str, ttl: Ttl) -> Result<bool> {
        self.check_key(key)?;
        let node = self.node().await?;
        let ttl_ms = ttl.to_sql_millis(node.default_ttl);
        let result = node.submit(Write::Touch { key: key.to_owned(), ttl_ms }).await;
        node.coherence.evict(key).await;
        result.map(|written| matches!(written, Written::Touched(true)))
    }

    #[tracing::instrument(name = "pgcache.cleanup_expired", level = "debug", target = "pgcache::cache", skip_all, fields(cache.operation = "cleanup_expired", cache.outcome = tracing::field::Empty, db.system = "postgresql"))]
    async fn cleanup_expired(&self) -> Result<u64> {
        let node = self.node().await?;
        let settings = &self.shared.settings;
        sweeper::sweep(&node.db, &node.sql, &settings.schema_prefix, settings.cleanup_batch_size).await
    }

    #[tracing::instrument(name = "pgcache.get_or_load", level = "debug", target = "pgcache::cache", skip_all, fields(cache.operation = "get_or_load", cache.key_hash = %telemetry::key_hash(key), cache.outcome = tracing::field::Empty, db.system = "postgresql"))]
    async fn get_or_load_dyn(
        &self,
        key: &str,
        loader: DynLoader,
    ) -> std::result::Result<Loaded<DynOutput>, LoadError<DynOutput>> {
        let answer = self.load(key, loader).await;
        self.shared.telemetry.loaded(&answer);
        answer
    }

    fn status(&self) -> CacheStatus {
        let closed = self.shared.closed.load(Ordering::SeqCst);
        let listener_enabled = self.shared.settings.listener_enabled();
        let Some(node) = self.shared.node.get() else {
            // Not connected yet (connect_lazy).
            return CacheStatus {
                listener: if listener_enabled { ListenerState::Reconnecting } else { ListenerState::Disabled },
                pool_size: 0,
                pool_available: 0,
                pool_max_size: self.shared.settings.max_pool_size,
                pool_waiting: 0,
                local_entries: 0,
                local_bytes: 0,
                closed,
                replica_reads: 0,
                replica_fallbacks: 0,
            };
        };
        let pool = node.db.status();
        let (local_entries, local_bytes) = node.coherence.usage_now();
        let (replica_reads, replica_fallbacks) = node.replicas.as_ref().map_or((0, 0), Replicas::counts);
        let listener = if !listener_enabled {
            ListenerState::Disabled
        } else if node.coherence.lease.trusted() {
            ListenerState::Listening
        } else {
            ListenerState::Reconnecting
        };
        CacheStatus {
            listener,
            pool_size: pool.size,
            pool_available: pool.available,
            pool_max_size: pool.max_size,
            pool_waiting: pool.waiting,
            local_entries,
            local_bytes,
            closed,
            replica_reads,
            replica_fallbacks,
        }
    }

    fn default_ttl(&self) -> Duration {
        self.shared.settings.default_ttl
    }
}

impl<C: Codec + Clone> TypedCache for PostgresCache<C> {
    type Codec = C;

    fn codec(&self) -> &C {
        &self.codec
    }
}
