//! [`CacheSettings`]: every knob, its default, its bounds, its serde and env forms, and its validation.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest accepted `pool_timeout`, `statement_timeout`, `lock_wait_timeout` and `heartbeat_interval`.
///
/// One hour keeps every value derived from them small (`statement_timeout + 500 ms`,
/// `statement_timeout + pool_timeout`, `pool_timeout * 2`, `heartbeat_interval * 2`, `Instant::now() + ...`)
/// and `statement_timeout` in milliseconds far below PostgreSQL's 32-bit limit (2,147,483,647 ms).
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest accepted `local_ttl`: one year.
const MAX_LOCAL_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest accepted `default_ttl`: 2^31 seconds (~68 years), the longest TTL the cache gives an entry.
const MAX_DEFAULT_TTL: Duration = crate::ttl::MAX_TTL;
/// Longest accepted `sweeper_interval`: one day.
const MAX_SWEEPER_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Largest accepted `max_key_bytes` (see the field's docs for why).
const MAX_KEY_BYTES: usize = 2048;
/// Largest accepted `max_value_bytes`: PostgreSQL's `bytea` limit is 1 GB.
const MAX_VALUE_BYTES: usize = 1_000_000_000;
/// Most rows a group-commit batch may be allowed.
const MAX_BATCH_ROWS: usize = 100_000;
/// Most group-commit batches in flight that may be allowed.
const MAX_BATCHES_IN_FLIGHT: usize = 64;
/// Fewest bytes a group-commit batch may be allowed.
const MIN_BATCH_BYTES: usize = 1024;
/// Smallest non-zero duration, the lower bound of settings that must be "greater than zero".
const NONZERO: Duration = Duration::from_nanos(1);
/// One millisecond, the lower bound of settings PostgreSQL or the listener count in milliseconds.
const ONE_MS: Duration = Duration::from_millis(1);

/// Configuration of a [`PostgresCache`](crate::PostgresCache).
///
/// Build it from a DSN with consuming setters, from environment variables with
/// [`from_env`](Self::from_env), or deserialize it with serde (every field has a default except `dsn`).
/// [`validate`](Self::validate) runs on `connect` and `init_db`, so a bad value is a typed
/// [`Error::InvalidSetting`], never a panic. Each field documents its default and, where there is one, the
/// range `validate` accepts.
///
/// ```
/// use std::time::Duration;
/// use pgcache_core::CacheSettings;
///
/// let settings = CacheSettings::new("postgresql://cache_user:cache_pass@localhost:5432/cache_proto")
///     .notify_channel("cache_events_marketing")
///     .schema_prefix("marketing_")
///     .default_ttl(Duration::from_secs(120));
/// assert!(settings.validate().is_ok());
/// assert!(CacheSettings::new("postgresql://localhost/db").schema_prefix("x\"; DROP TABLE t; --").validate().is_err());
/// // Out of range is an error, not a panic later on.
/// assert!(settings.clone().heartbeat_interval(Duration::MAX).validate().is_err());
/// // Debug (and Serialize) never show the password.
/// assert!(!format!("{settings:?}").contains("cache_pass"));
/// ```
///
/// # Environment
/// [`from_env`](Self::from_env) reads `PGCACHE_DSN` (required) and, when set, `PGCACHE_LISTEN_DSN`, `PGCACHE_SHARDS` and `PGCACHE_READ_DSNS` (DSNs separated by commas or spaces), `PGCACHE_MAX_REPLICA_LAG`, `PGCACHE_PREPARED_STATEMENTS`,
/// `PGCACHE_NOTIFY_CHANNEL`, `PGCACHE_SCHEMA_PREFIX`, `PGCACHE_DISABLE_NOTIFY` (`true`/`false`),
/// `PGCACHE_LOCAL_MAX_ENTRIES`, `PGCACHE_LOCAL_MAX_BYTES`, `PGCACHE_LOCAL_TTL`, `PGCACHE_DEFAULT_TTL`,
/// `PGCACHE_MIN_POOL_SIZE`, `PGCACHE_MAX_POOL_SIZE`, `PGCACHE_POOL_TIMEOUT`, `PGCACHE_STATEMENT_TIMEOUT`,
/// `PGCACHE_LOCK_WAIT_TIMEOUT`, `PGCACHE_MAX_KEY_BYTES`, `PGCACHE_MAX_VALUE_BYTES`, `PGCACHE_UNLOGGED`,
/// `PGCACHE_SWEEPER_INTERVAL` (`0` disables), `PGCACHE_CLEANUP_BATCH_SIZE`, `PGCACHE_HEARTBEAT_INTERVAL`,
/// `PGCACHE_TLS_ROOT_CERT`, `PGCACHE_LOADER_SOFT_TIMEOUT` and `PGCACHE_LOADER_HARD_TIMEOUT` (`0`: none),
/// `PGCACHE_POLL_INTERVAL`.
///
/// # Durations
/// Durations are written `250ms`, `5s`, `10m`, `1h`; a bare number means seconds, and `us` and `ns` are
/// accepted for sub-millisecond values. serde uses the same form: it reads such a string or a bare integer
/// (seconds), and writes the largest unit that is exact (`250ms`, `5s`, `2m`, `1h`, `1500us`), so every
/// `Duration` survives a round trip unchanged. `sweeper_interval` is `null` (or `"0"`, as in the
/// environment) when disabled; when absent it keeps its default, like every other field.
///
/// ```
/// use std::time::Duration;
/// use pgcache_core::CacheSettings;
///
/// let s: CacheSettings =
///     serde_json::from_str(r#"{"dsn": "postgresql://localhost/db", "local_ttl": "250ms", "pool_timeout": 2}"#)?;
/// assert_eq!(s.local_ttl, Duration::from_millis(250));
/// assert_eq!(s.pool_timeout, Duration::from_secs(2));
/// assert!(serde_json::to_string(&s)?.contains(r#""local_ttl":"250ms""#));
/// # Ok::<(), serde_json::Error>(())
/// ```
///
/// # Secrets
/// `Debug` and `Serialize` replace the password of `dsn` and `listen_dsn` with `***`, in both DSN forms
/// (`postgresql://user:***@host/db`, `host=h password=***`), so settings can be logged. Serialized settings
/// are therefore not a way to store credentials: deserializing them gives a DSN whose password is `***`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct CacheSettings {
    /// libpq-style DSN (`postgresql://user:pass@host:5432/db` or `host=... dbname=...`) for the pool. No default.
    /// Its password is redacted in `Debug` and `Serialize`.
    #[serde(serialize_with = "serialize_redacted_dsn")]
    pub dsn: String,
    /// Optional direct DSN for the LISTEN connection, advisory locks and schema work (`init_db`, the
    /// schema check at connect, row triggers), for when `dsn` goes through a
    /// transaction pooler (PgBouncer in transaction mode breaks LISTEN and session locks). Default: `None` (use `dsn`).
    /// Its password is redacted in `Debug` and `Serialize`.
    #[serde(serialize_with = "serialize_redacted_listen_dsn")]
    pub listen_dsn: Option<String>,
    /// The primaries of a sharded cache ([`ShardedCache`](crate::ShardedCache)), one DSN each; keys map to
    /// them by rendezvous hashing. Empty (default): not sharded, `dsn` is the only server. A
    /// [`PostgresCache`](crate::PostgresCache) refuses settings with shards. Passwords are redacted in
    /// `Debug` and `Serialize`.
    #[serde(serialize_with = "serialize_redacted_dsns")]
    pub shard_dsns: Vec<String>,
    /// Read replicas (hot standbys of `dsn`'s primary) for the shared-table reads of `get`, `get_entry`,
    /// `get_many` and `get_or_set`/`get_or_load`; writes, advisory locks and the listener stay on the
    /// primary. A replica read is fenced: it is used only when the replica has replayed the primary's WAL
    /// up to a position taken after the last invalidation this node heard, else the primary answers.
    /// Trade-off for `get_or_set`/`get_or_load`: a live row on the replica is the answer, but a miss (or
    /// a row only within its stale window) then goes to the primary's read-and-try-lock, one more round
    /// trip than without replicas. Empty (default): no replicas. Passwords are redacted in `Debug` and
    /// `Serialize`.
    #[serde(serialize_with = "serialize_redacted_dsns")]
    pub read_dsns: Vec<String>,
    /// With `read_dsns`: the oldest the fence (the primary's WAL position) may be before it is taken
    /// again, even with no invalidation heard; a replica further behind answers no read. This bounds how
    /// stale a replica read can be when notifications are off. Default: 1 s. Accepted: 1 ms to 1 h.
    #[serde(with = "duration_format")]
    pub max_replica_lag: Duration,
    /// Use server-side prepared statements (`prepare_cached`, the fastest path). Turn it off when `dsn`
    /// goes through a transaction pooler that cannot track them (PgBouncer before 1.21, or 1.21+ without
    /// `max_prepared_statements`): each statement is then sent as an unnamed, typed statement in a single
    /// round trip. Default: `true`.
    pub prepared_statements: bool,
    /// LISTEN/NOTIFY channel for invalidations: lowercase letters, digits, `_`, at most 63 bytes.
    /// Default: `pgcache_events`.
    pub notify_channel: String,
    /// Prefix of every table, sequence, function and trigger: lowercase letters, digits, `_`, starting
    /// with a letter or `_`, at most 40 bytes (may be empty). Default: `pgcache_`.
    pub schema_prefix: String,
    /// Skip LISTEN/NOTIFY entirely: no listener connection, no trigger notifications from this library's
    /// writes. Local entries are then only bounded by `local_ttl`. Default: `false`.
    pub disable_notify: bool,
    /// Most entries in the local (L1) cache; `0` disables it (and the listener). Default: `10_000`.
    pub local_max_entries: u64,
    /// Byte budget of the local cache (keys + values + overhead). Default: 64 MiB.
    pub local_max_bytes: u64,
    /// Longest time a value lives in the local cache (also bounded by its remaining TTL). Default: 60 s.
    /// Accepted: 0 to 365 days.
    #[serde(with = "duration_format")]
    pub local_ttl: Duration,
    /// TTL used when a call passes `Ttl::Default` (or `None`). Default: 300 s.
    /// Accepted: greater than zero, at most 2^31 seconds (~68 years, the longest TTL an entry gets).
    #[serde(with = "duration_format")]
    pub default_ttl: Duration,
    /// Connections opened at start-up. Default: 1. Accepted: at most `max_pool_size`.
    pub min_pool_size: usize,
    /// Most pooled connections per cache instance. Default: 16. Accepted: at least 1.
    pub max_pool_size: usize,
    /// Longest wait for a pooled connection, and for opening one. Default: 2 s.
    /// Accepted: greater than zero, at most 1 h (`connect` waits up to twice this for the listener).
    #[serde(with = "duration_format")]
    pub pool_timeout: Duration,
    /// `statement_timeout` of every pooled connection, sent to the server in whole milliseconds.
    /// Default: 5 s. Accepted: 1 ms to 1 h (PostgreSQL takes at most 2,147,483,647 ms, and `0` would mean
    /// no timeout at all; client-side waits add 500 ms to it).
    #[serde(with = "duration_format")]
    pub statement_timeout: Duration,
    /// How long a `get_or_set` caller waits for another caller's fill (in this process or another) before
    /// giving up with [`Error::LockTimeout`] (or serving the entry's fail-safe value when it has one). It
    /// never loads without the lock while the holder is alive, so the loader runs once per key across the
    /// cluster however slow it is. Default: 5 s. Accepted: 0 (do not wait) to 1 h.
    #[serde(with = "duration_format")]
    pub lock_wait_timeout: Duration,
    /// Longest key in bytes. Default: 1024. Accepted: 1 to 2048.
    ///
    /// The key is the table's primary key, and a PostgreSQL B-tree entry must fit in about a third of a page:
    /// 2704 bytes with the default 8 KiB pages, tuple and length headers included. A key PostgreSQL cannot
    /// compress (random text) of about 2,700 bytes or more fails every write with "index row size exceeds
    /// maximum", so the entry would silently never be cached. 2048 bytes leaves room for the headers
    /// whatever the key's content.
    pub max_key_bytes: usize,
    /// Largest value in bytes. Default: 16 MiB. Accepted: 1 to 1,000,000,000 (PostgreSQL's `bytea` limit).
    pub max_value_bytes: usize,
    /// Create the table `UNLOGGED` (2-3x faster writes; emptied after a crash, not replicated).
    /// Only read by `init_db` when it creates the table. Default: `false`.
    pub unlogged: bool,
    /// How often the background sweeper deletes expired rows; `None` disables it. Default: 30 s.
    /// Accepted: greater than zero, at most 1 day. In serde, `null` and `"0"` mean `None`.
    #[serde(with = "optional_duration_format")]
    pub sweeper_interval: Option<Duration>,
    /// Rows deleted per sweeper statement. Default: 500. Accepted: at least 1.
    pub cleanup_batch_size: u32,
    /// How often the listener proves its connection alive. Local entries are not served while the last
    /// proof is older than twice this (the staleness bound while the listener is down). Default: 1 s.
    /// Accepted: 1 ms to 1 h.
    #[serde(with = "duration_format")]
    pub heartbeat_interval: Duration,
    /// Serve reads from the loader / as misses when PostgreSQL is unreachable (fail open). When `false`,
    /// `get` and `get_or_set` return the error instead. Default: `true`.
    pub fail_open: bool,
    /// `application_name` shown in `pg_stat_activity`. Default: `pgcache`.
    pub application_name: String,
    /// PEM file of the CA (or self-signed server certificate) to trust, on top of the platform's roots.
    /// Setting it makes TLS required; otherwise TLS is used when the DSN says `sslmode=require`. The server
    /// certificate is always verified. Default: `None`.
    pub tls_root_cert: Option<std::path::PathBuf>,
    /// Fail-safe soft timeout: when the entry has a stale value ([`SetOptions::stale_for`](crate::SetOptions::stale_for)),
    /// a `get_or_set` caller waits this long for the loader, then gets the stale value while the loader
    /// goes on in the background and stores its result. `None` (default): wait for the loader. Accepted:
    /// 1 ms to 1 h. In serde, `null` and `"0"` mean `None`.
    #[serde(with = "optional_duration_format")]
    pub loader_soft_timeout: Option<Duration>,
    /// Hard timeout of every loader run by `get_or_set`: past it the loader is dropped, the key's lock is
    /// released, and the caller gets [`Error::LoaderTimeout`] (or the stale value, when the entry has one).
    /// `None` (default): no bound. Accepted: 1 ms to 1 h. In serde, `null` and `"0"` mean `None`.
    #[serde(with = "optional_duration_format")]
    pub loader_hard_timeout: Option<Duration>,
    /// Group commit: concurrent writes of this instance (`set`, `set_many`, `delete`, `delete_many`,
    /// `touch`, `delete_tags`, `get_or_set` fills) share one statement and one commit, hence one
    /// invalidation. No timer: a batch leaves as soon as a connection is free and grows while others are
    /// in flight, so a lone write costs what it did. `false`: one statement per write. Default: `true`.
    pub group_commit: bool,
    /// Most rows in one group-commit batch. Default: 1000. Accepted: 1 to 100,000. A single call with
    /// more rows (`set_many`) is a batch of its own.
    pub write_batch_max_rows: usize,
    /// Most value and key bytes in one group-commit batch. Default: 8 MiB. Accepted: 1 KiB to 1 GB. A
    /// single call over it is a batch of its own.
    pub write_batch_max_bytes: usize,
    /// Group-commit batches of this instance in flight at once (each on a pooled connection).
    /// Default: 2. Accepted: 1 to 64; never more than `max_pool_size` are used.
    pub write_batches_in_flight: usize,
    /// How often a node in the polling invalidation mode (chosen at connect when LISTEN/NOTIFY does not
    /// deliver, see [`Capabilities`](crate::Capabilities)) reads the change history. Its staleness bound
    /// is this interval plus one statement. Default: 200 ms. Accepted: 10 ms to 10 s.
    #[serde(with = "duration_format")]
    pub poll_interval: Duration,
    /// Capabilities treated as missing whatever the probe at connect finds, so that the fallback for
    /// each is used: for tests, and for an engine the probe gets wrong. Default: none.
    /// See [`assume_without`](Self::assume_without).
    pub assume_without: Vec<crate::Capability>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            dsn: String::new(),
            listen_dsn: None,
            shard_dsns: Vec::new(),
            read_dsns: Vec::new(),
            max_replica_lag: Duration::from_secs(1),
            prepared_statements: true,
            notify_channel: "pgcache_events".to_owned(),
            schema_prefix: "pgcache_".to_owned(),
            disable_notify: false,
            local_max_entries: 10_000,
            local_max_bytes: 64 * 1024 * 1024,
            local_ttl: Duration::from_secs(60),
            default_ttl: Duration::from_secs(300),
            min_pool_size: 1,
            max_pool_size: 16,
            pool_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            lock_wait_timeout: Duration::from_secs(5),
            max_key_bytes: 1024,
            max_value_bytes: 16 * 1024 * 1024,
            unlogged: false,
            sweeper_interval: Some(Duration::from_secs(30)),
            cleanup_batch_size: 500,
            heartbeat_interval: Duration::from_secs(1),
            fail_open: true,
            application_name: "pgcache".to_owned(),
            tls_root_cert: None,
            loader_soft_timeout: None,
            loader_hard_timeout: None,
            group_commit: true,
            write_batch_max_rows: 1000,
            write_batch_max_bytes: 8 * 1024 * 1024,
            write_batches_in_flight: 2,
            poll_interval: Duration::from_millis(200),
            assume_without: Vec::new(),
        }
    }
}

impl fmt::Debug for CacheSettings {
    /// Every field, with the password of `dsn` and `listen_dsn` replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field cannot be forgotten here.
        let Self {
            dsn,
            listen_dsn,
            shard_dsns,
            read_dsns,
            max_replica_lag,
            prepared_statements,
            notify_channel,
            schema_prefix,
            disable_notify,
            local_max_entries,
            local_max_bytes,
            local_ttl,
            default_ttl,
            min_pool_size,
            max_pool_size,
            pool_timeout,
            statement_timeout,
            lock_wait_timeout,
            max_key_bytes,
            max_value_bytes,
            unlogged,
            sweeper_interval,
            cleanup_batch_size,
            heartbeat_interval,
            fail_open,
            application_name,
            tls_root_cert,
            loader_soft_timeout,
            loader_hard_timeout,
            group_commit,
            write_batch_max_rows,
            write_batch_max_bytes,
            write_batches_in_flight,
            poll_interval,
            assume_without,
        } = self;
        f.debug_struct("CacheSettings")
            .field("dsn", &redact_dsn(dsn))
            .field("listen_dsn", &listen_dsn.as_deref().map(redact_dsn))
            .field("shard_dsns", &shard_dsns.iter().map(|d| redact_dsn(d)).collect::<Vec<_>>())
            .field("read_dsns", &read_dsns.iter().map(|d| redact_dsn(d)).collect::<Vec<_>>())
            .field("max_replica_lag", max_replica_lag)
            .field("prepared_statements", prepared_statements)
            .field("notify_channel", notify_channel)
            .field("schema_prefix", schema_prefix)
            .field("disable_notify", disable_notify)
            .field("local_max_entries", local_max_entries)
            .field("local_max_bytes", local_max_bytes)
            .field("local_ttl", local_ttl)
            .field("default_ttl", default_ttl)
            .field("min_pool_size", min_pool_size)
            .field("max_pool_size", max_pool_size)
            .field("pool_timeout", pool_timeout)
            .field("statement_timeout", statement_timeout)
            .field("lock_wait_timeout", lock_wait_timeout)
            .field("max_key_bytes", max_key_bytes)
            .field("max_value_bytes", max_value_bytes)
            .field("unlogged", unlogged)
            .field("sweeper_interval", sweeper_interval)
            .field("cleanup_batch_size", cleanup_batch_size)
            .field("heartbeat_interval", heartbeat_interval)
            .field("fail_open", fail_open)
            .field("application_name", application_name)
            .field("tls_root_cert", tls_root_cert)
            .field("loader_soft_timeout", loader_soft_timeout)
            .field("loader_hard_timeout", loader_hard_timeout)
            .field("group_commit", group_commit)
            .field("write_batch_max_rows", write_batch_max_rows)
            .field("write_batch_max_bytes", write_batch_max_bytes)
            .field("write_batches_in_flight", write_batches_in_flight)
            .field("poll_interval", poll_interval)
            .field("assume_without", assume_without)
            .finish()
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        $(
            $(#[$doc])*
            #[must_use]
            pub fn $name(mut self, value: $ty) -> Self {
                self.$name = value;
                self
            }
        )*
    };
}

impl CacheSettings {
    /// Settings with every default and the given DSN.
    pub fn new(dsn: impl Into<String>) -> Self {
        Self { dsn: dsn.into(), ..Self::default() }
    }

    /// Sets [`shard_dsns`](Self::shard_dsns): the primaries of a [`ShardedCache`](crate::ShardedCache).
    #[must_use]
    pub fn shard_dsns<I, S>(mut self, dsns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.shard_dsns = dsns.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`read_dsns`](Self::read_dsns): read replicas of the primary.
    #[must_use]
    pub fn read_dsns<I, S>(mut self, dsns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.read_dsns = dsns.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`prepared_statements`](Self::prepared_statements).
    #[must_use]
    pub fn prepared_statements(mut self, on: bool) -> Self {
        self.prepared_statements = on;
        self
    }

    /// Sets [`listen_dsn`](Self::listen_dsn).
    #[must_use]
    pub fn listen_dsn(mut self, dsn: impl Into<String>) -> Self {
        self.listen_dsn = Some(dsn.into());
        self
    }

    /// Sets [`notify_channel`](Self::notify_channel).
    #[must_use]
    pub fn notify_channel(mut self, channel: impl Into<String>) -> Self {
        self.notify_channel = channel.into();
        self
    }

    /// Sets [`schema_prefix`](Self::schema_prefix).
    #[must_use]
    pub fn schema_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.schema_prefix = prefix.into();
        self
    }

    /// Sets [`application_name`](Self::application_name).
    #[must_use]
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Sets [`tls_root_cert`](Self::tls_root_cert) (and so requires TLS).
    #[must_use]
    pub fn tls_root_cert(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls_root_cert = Some(path.into());
        self
    }

    /// Sets [`sweeper_interval`](Self::sweeper_interval); `None` disables the sweeper.
    #[must_use]
    pub fn sweeper_interval(mut self, interval: Option<Duration>) -> Self {
        self.sweeper_interval = interval;
        self
    }

    /// Sets [`loader_soft_timeout`](Self::loader_soft_timeout); `None` waits for the loader.
    #[must_use]
    pub fn loader_soft_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.loader_soft_timeout = timeout;
        self
    }

    /// Sets [`loader_hard_timeout`](Self::loader_hard_timeout); `None` leaves loaders unbounded.
    #[must_use]
    pub fn loader_hard_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.loader_hard_timeout = timeout;
        self
    }

    /// Treats `capability` as missing whatever the probe at connect finds (see
    /// [`assume_without`](Self::assume_without)): the cache then uses its fallback. For tests, and for an
    /// engine the probe gets wrong.
    ///
    /// ```
    /// use pgcache_core::{CacheSettings, Capability};
    ///
    /// // Poll the change history every 100 ms instead of listening.
    /// let s = CacheSettings::new("postgresql://localhost/app")
    ///     .assume_without(Capability::Notify)
    ///     .poll_interval(std::time::Duration::from_millis(100));
    /// assert_eq!(s.assume_without, vec![Capability::Notify]);
    /// ```
    #[must_use]
    pub fn assume_without(mut self, capability: crate::Capability) -> Self {
        if !self.assume_without.contains(&capability) {
            self.assume_without.push(capability);
        }
        self
    }

    setters! {
        /// Sets [`disable_notify`](Self::disable_notify).
        disable_notify: bool,
        /// Sets [`poll_interval`](Self::poll_interval).
        poll_interval: Duration,
        /// Sets [`local_max_entries`](Self::local_max_entries); `0` disables the local cache.
        local_max_entries: u64,
        /// Sets [`local_max_bytes`](Self::local_max_bytes).
        local_max_bytes: u64,
        /// Sets [`local_ttl`](Self::local_ttl).
        local_ttl: Duration,
        /// Sets [`default_ttl`](Self::default_ttl).
        default_ttl: Duration,
        /// Sets [`min_pool_size`](Self::min_pool_size).
        min_pool_size: usize,
        /// Sets [`max_pool_size`](Self::max_pool_size).
        max_pool_size: usize,
        /// Sets [`pool_timeout`](Self::pool_timeout).
        pool_timeout: Duration,
        /// Sets [`statement_timeout`](Self::statement_timeout).
        statement_timeout: Duration,
        /// Sets [`lock_wait_timeout`](Self::lock_wait_timeout).
        lock_wait_timeout: Duration,
        /// Sets [`max_key_bytes`](Self::max_key_bytes).
        max_key_bytes: usize,
        /// Sets [`max_value_bytes`](Self::max_value_bytes).
        max_value_bytes: usize,
        /// Sets [`unlogged`](Self::unlogged).
        unlogged: bool,
        /// Sets [`cleanup_batch_size`](Self::cleanup_batch_size).
        cleanup_batch_size: u32,
        /// Sets [`heartbeat_interval`](Self::heartbeat_interval).
        heartbeat_interval: Duration,
        /// Sets [`max_replica_lag`](Self::max_replica_lag).
        max_replica_lag: Duration,
        /// Sets [`fail_open`](Self::fail_open).
        fail_open: bool,
        /// Sets [`group_commit`](Self::group_commit).
        group_commit: bool,
        /// Sets [`write_batch_max_rows`](Self::write_batch_max_rows).
        write_batch_max_rows: usize,
        /// Sets [`write_batch_max_bytes`](Self::write_batch_max_bytes).
        write_batch_max_bytes: usize,
        /// Sets [`write_batches_in_flight`](Self::write_batches_in_flight).
        write_batches_in_flight: usize,
    }

    /// Reads settings from `PGCACHE_*` environment variables (see the type's docs).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] when `PGCACHE_DSN` is missing or a variable does not parse.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env) with any variable source (used by tests).
    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let dsn = lookup("PGCACHE_DSN").ok_or_else(|| Error::InvalidSetting {
            name: "dsn",
            reason: "environment variable PGCACHE_DSN is not set".to_owned(),
        })?;
        let mut s = Self::new(dsn);
        let var = |name: &'static str| lookup(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = var("PGCACHE_LISTEN_DSN") {
            s.listen_dsn = Some(v);
        }
        if let Some(v) = var("PGCACHE_SHARDS") {
            s.shard_dsns =
                v.split([',', ' ', '\n']).filter(|d| !d.trim().is_empty()).map(|d| d.trim().to_owned()).collect();
        }
        if let Some(v) = var("PGCACHE_READ_DSNS") {
            s.read_dsns =
                v.split([',', ' ', '\n']).filter(|d| !d.trim().is_empty()).map(|d| d.trim().to_owned()).collect();
        }
        if let Some(v) = var("PGCACHE_PREPARED_STATEMENTS") {
            s.prepared_statements = parse_bool("prepared_statements", &v)?;
        }
        if let Some(v) = var("PGCACHE_NOTIFY_CHANNEL") {
            s.notify_channel = v;
        }
        if let Some(v) = var("PGCACHE_TLS_ROOT_CERT") {
            s.tls_root_cert = Some(v.into());
        }
        if let Some(v) = lookup("PGCACHE_SCHEMA_PREFIX") {
            s.schema_prefix = v;
        }
        if let Some(v) = var("PGCACHE_DISABLE_NOTIFY") {
            s.disable_notify = parse_bool("disable_notify", &v)?;
        }
        if let Some(v) = var("PGCACHE_UNLOGGED") {
            s.unlogged = parse_bool("unlogged", &v)?;
        }
        if let Some(v) = var("PGCACHE_GROUP_COMMIT") {
            s.group_commit = parse_bool("group_commit", &v)?;
        }
        macro_rules! number {
            ($env:literal, $field:ident) => {
                if let Some(v) = var($env) {
                    s.$field = v.trim().parse().map_err(|e| Error::InvalidSetting {
                        name: stringify!($field),
                        reason: format!("{}={v:?} is not a whole number: {e}", $env),
                    })?;
                }
            };
        }
        number!("PGCACHE_LOCAL_MAX_ENTRIES", local_max_entries);
        number!("PGCACHE_LOCAL_MAX_BYTES", local_max_bytes);
        number!("PGCACHE_MIN_POOL_SIZE", min_pool_size);
        number!("PGCACHE_MAX_POOL_SIZE", max_pool_size);
        number!("PGCACHE_MAX_KEY_BYTES", max_key_bytes);
        number!("PGCACHE_MAX_VALUE_BYTES", max_value_bytes);
        number!("PGCACHE_CLEANUP_BATCH_SIZE", cleanup_batch_size);
        number!("PGCACHE_WRITE_BATCH_MAX_ROWS", write_batch_max_rows);
        number!("PGCACHE_WRITE_BATCH_MAX_BYTES", write_batch_max_bytes);
        number!("PGCACHE_WRITE_BATCHES_IN_FLIGHT", write_batches_in_flight);
        macro_rules! duration {
            ($env:literal, $field:ident) => {
                if let Some(v) = var($env) {
                    s.$field = parse_duration(stringify!($field), &v)?;
                }
            };
        }
        duration!("PGCACHE_LOCAL_TTL", local_ttl);
        duration!("PGCACHE_DEFAULT_TTL", default_ttl);
        duration!("PGCACHE_POOL_TIMEOUT", pool_timeout);
        duration!("PGCACHE_STATEMENT_TIMEOUT", statement_timeout);
        duration!("PGCACHE_LOCK_WAIT_TIMEOUT", lock_wait_timeout);
        duration!("PGCACHE_HEARTBEAT_INTERVAL", heartbeat_interval);
        duration!("PGCACHE_MAX_REPLICA_LAG", max_replica_lag);
        duration!("PGCACHE_POLL_INTERVAL", poll_interval);
        if let Some(v) = var("PGCACHE_SWEEPER_INTERVAL") {
            let d = parse_duration("sweeper_interval", &v)?;
            s.sweeper_interval = (!d.is_zero()).then_some(d);
        }
        for (env, name, field) in [
            ("PGCACHE_LOADER_SOFT_TIMEOUT", "loader_soft_timeout", &mut s.loader_soft_timeout),
            ("PGCACHE_LOADER_HARD_TIMEOUT", "loader_hard_timeout", &mut s.loader_hard_timeout),
        ] {
            if let Some(v) = var(env) {
                let d = parse_duration(name, &v)?;
                *field = (!d.is_zero()).then_some(d);
            }
        }
        Ok(s)
    }

    /// Checks every field: identifiers, DSNs, limits, and the range of every duration (see each field's
    /// docs), so that nothing derived from the settings can overflow or panic later.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] or [`Error::InvalidDsn`] naming the first bad field; for a value out of
    /// range the reason states the accepted range.
    pub fn validate(&self) -> Result<()> {
        validate_identifier("schema_prefix", &self.schema_prefix, 0, 40)?;
        validate_identifier("notify_channel", &self.notify_channel, 1, 63)?;
        parse_dsn("dsn", &self.dsn)?;
        if let Some(listen) = &self.listen_dsn {
            parse_dsn("listen_dsn", listen)?;
        }
        for shard in &self.shard_dsns {
            parse_dsn("shard_dsns", shard)?;
        }
        for replica in &self.read_dsns {
            parse_dsn("read_dsns", replica)?;
        }
        let invalid = |name: &'static str, reason: String| Error::InvalidSetting { name, reason };
        if self.max_pool_size == 0 {
            return Err(invalid("max_pool_size", "must be at least 1".to_owned()));
        }
        if self.min_pool_size > self.max_pool_size {
            return Err(invalid("min_pool_size", "must not exceed max_pool_size".to_owned()));
        }
        if !(1..=MAX_KEY_BYTES).contains(&self.max_key_bytes) {
            return Err(invalid(
                "max_key_bytes",
                format!(
                    "is {}, must be between 1 and {MAX_KEY_BYTES} (a longer key may not fit PostgreSQL's \
                     primary-key index, whose entries are limited to 2704 bytes)",
                    self.max_key_bytes
                ),
            ));
        }
        if !(1..=MAX_VALUE_BYTES).contains(&self.max_value_bytes) {
            return Err(invalid(
                "max_value_bytes",
                format!(
                    "is {}, must be between 1 and {MAX_VALUE_BYTES} (PostgreSQL's bytea limit is 1 GB)",
                    self.max_value_bytes
                ),
            ));
        }
        if self.cleanup_batch_size == 0 {
            return Err(invalid("cleanup_batch_size", "must be at least 1".to_owned()));
        }
        for (name, value, min, max) in [
            ("write_batch_max_rows", self.write_batch_max_rows, 1, MAX_BATCH_ROWS),
            ("write_batch_max_bytes", self.write_batch_max_bytes, MIN_BATCH_BYTES, MAX_VALUE_BYTES),
            ("write_batches_in_flight", self.write_batches_in_flight, 1, MAX_BATCHES_IN_FLIGHT),
        ] {
            if !(min..=max).contains(&value) {
                return Err(invalid(name, format!("is {value}, must be between {min} and {max}")));
            }
        }
        for (name, value, min, max) in [
            ("local_ttl", self.local_ttl, Duration::ZERO, MAX_LOCAL_TTL),
            ("default_ttl", self.default_ttl, NONZERO, MAX_DEFAULT_TTL),
            ("pool_timeout", self.pool_timeout, NONZERO, MAX_TIMEOUT),
            ("statement_timeout", self.statement_timeout, ONE_MS, MAX_TIMEOUT),
            ("lock_wait_timeout", self.lock_wait_timeout, Duration::ZERO, MAX_TIMEOUT),
            ("heartbeat_interval", self.heartbeat_interval, ONE_MS, MAX_TIMEOUT),
            ("max_replica_lag", self.max_replica_lag, ONE_MS, MAX_TIMEOUT),
            ("poll_interval", self.poll_interval, Duration::from_millis(10), Duration::from_secs(10)),
        ] {
            check_range(name, value, min, max, "")?;
        }
        for (name, value) in
            [("loader_soft_timeout", self.loader_soft_timeout), ("loader_hard_timeout", self.loader_hard_timeout)]
        {
            if let Some(value) = value {
                check_range(name, value, ONE_MS, MAX_TIMEOUT, " (use None, or 0 in the environment, for no timeout)")?;
            }
        }
        if let Some(interval) = self.sweeper_interval {
            check_range(
                "sweeper_interval",
                interval,
                NONZERO,
                MAX_SWEEPER_INTERVAL,
                " (use None, or 0 in PGCACHE_SWEEPER_INTERVAL, to disable the sweeper)",
            )?;
        }
        Ok(())
    }

    /// True when this cache keeps a local (L1) cache.
    pub(crate) fn local_enabled(&self) -> bool {
        self.local_max_entries > 0 && self.local_max_bytes > 0
    }

    /// True when this cache runs a listener (local cache on and notifications on).
    pub(crate) fn listener_enabled(&self) -> bool {
        self.local_enabled() && !self.disable_notify
    }
}

/// Parses a DSN (URL or key=value form) into a driver config.
pub(crate) fn parse_dsn(name: &'static str, dsn: &str) -> Result<tokio_postgres::Config> {
    if dsn.trim().is_empty() {
        return Err(Error::InvalidSetting {
            name,
            reason: "is empty: pass a DSN such as postgresql://user@host/db".to_owned(),
        });
    }
    dsn.parse::<tokio_postgres::Config>().map_err(|source| Error::InvalidDsn { name, source })
}

/// Accepts `[a-z_][a-z0-9_]*` within the length bounds: such a name is safe to embed in SQL, quoted.
pub(crate) fn validate_identifier(name: &'static str, value: &str, min: usize, max: usize) -> Result<()> {
    let bad = |reason: String| Err(Error::InvalidSetting { name, reason });
    if value.len() < min || value.len() > max {
        return bad(format!("{value:?} must be {min} to {max} bytes long"));
    }
    let mut chars = value.chars();
    if let Some(first) = chars.next() {
        if !(first.is_ascii_lowercase() || first == '_') {
            return bad(format!("{value:?} must start with a lowercase letter or `_`"));
        }
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')) {
        return bad(format!("{value:?} contains {c:?}: only lowercase letters, digits and `_` are allowed"));
    }
    Ok(())
}

fn parse_bool(name: &'static str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(Error::InvalidSetting { name, reason: format!("{other:?} is not a boolean (true/false)") }),
    }
}

/// `Ok` when `min <= value <= max`; otherwise an [`Error::InvalidSetting`] stating the accepted range.
fn check_range(name: &'static str, value: Duration, min: Duration, max: Duration, hint: &str) -> Result<()> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    let (max_text, got) = (FormatDuration(max), FormatDuration(value));
    let range = if min.is_zero() {
        format!("must be at most {max_text}")
    } else if min == NONZERO {
        format!("must be greater than zero and at most {max_text}")
    } else {
        format!("must be between {} and {max_text}", FormatDuration(min))
    };
    Err(Error::InvalidSetting { name, reason: format!("is {got}, {range}{hint}") })
}

/// Parses `250ms`, `5s`, `10m`, `1h`, `1500us`, `20ns` or a bare number of seconds.
pub(crate) fn parse_duration(name: &'static str, value: &str) -> Result<Duration> {
    duration_from_str(value).map_err(|reason| Error::InvalidSetting { name, reason })
}

/// [`parse_duration`] without a setting name: the reason on error (also used by serde).
fn duration_from_str(value: &str) -> std::result::Result<Duration, String> {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at_checked(split).unwrap_or((v, ""));
    let bad = || format!("{value:?} is not a duration (e.g. 250ms, 5s, 10m, 1h; a bare number means seconds)");
    let nanos_per_unit: u128 = match unit {
        "ns" => 1,
        "us" => 1_000,
        "ms" => 1_000_000,
        "" | "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3600 * NANOS_PER_SEC,
        _ => return Err(bad()),
    };
    let n: u128 = digits.parse().map_err(|_| bad())?;
    let too_large = || format!("{value:?} is too large for a duration");
    let nanos = n.checked_mul(nanos_per_unit).ok_or_else(too_large)?;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| too_large())?;
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).map_err(|_| too_large())?;
    Ok(Duration::new(secs, subsec))
}

/// Displays a duration in the settings' format, in the largest unit that is exact (`250ms`, `5s`, `2m`,
/// `1h`, `1500us`, `7ns`; zero is `0s`), so that [`duration_from_str`] reads back the same value.
struct FormatDuration(Duration);

impl fmt::Display for FormatDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        const UNITS: [(&str, u128); 5] =
            [("h", 3_600_000_000_000), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)];
        match UNITS.iter().find(|(_, per)| nanos % per == 0) {
            Some((unit, per)) => write!(f, "{}{unit}", nanos / per),
            None => write!(f, "{nanos}ns"),
        }
    }
}

/// A duration in the settings' format for serde: a string such as `250ms` or a bare integer (seconds).
struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"250ms\", \"5s\", \"10m\", \"1h\", or a whole number of seconds")
    }

    fn visit_u64<E: serde::de::Error>(self, secs: u64) -> std::result::Result<Duration, E> {
        Ok(Duration::from_secs(secs))
    }

    fn visit_i64<E: serde::de::Error>(self, secs: i64) -> std::result::Result<Duration, E> {
        u64::try_from(secs)
            .map(Duration::from_secs)
            .map_err(|_| E::custom(format!("{secs} is negative: a duration must be zero or more")))
    }

    fn visit_f64<E: serde::de::Error>(self, secs: f64) -> std::result::Result<Duration, E> {
        Err(E::custom(format!("{secs} is not a whole number of seconds: write a string such as \"1500ms\"")))
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> std::result::Result<Duration, E> {
        duration_from_str(value).map_err(E::custom)
    }
}

/// `#[serde(with)]` for `Duration` fields: see [`CacheSettings`]' "Durations".
mod duration_format {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&super::FormatDuration(*value))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(super::DurationVisitor)
    }
}

/// `#[serde(with)]` for `sweeper_interval`: `null` (and zero, as in the environment) mean disabled.
mod optional_duration_format {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// A `Duration` in the settings' format, for the inside of an `Option`.
    struct Formatted(Duration);

    impl Serialize for Formatted {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            super::duration_format::serialize(&self.0, serializer)
        }
    }

    impl<'de> Deserialize<'de> for Formatted {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            super::duration_format::deserialize(deserializer).map(Formatted)
        }
    }

    pub(super) fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        value.map(Formatted).serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<Formatted>::deserialize(deserializer)?.map(|f| f.0).filter(|d| !d.is_zero()))
    }
}

fn serialize_redacted_dsn<S: serde::Serializer>(dsn: &str, serializer: S) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_dsn(dsn))
}

fn serialize_redacted_dsns<S: serde::Serializer>(
    dsns: &[String],
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.collect_seq(dsns.iter().map(|d| redact_dsn(d)))
}

fn serialize_redacted_listen_dsn<S: serde::Serializer>(
    dsn: &Option<String>,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    dsn.as_deref().map(redact_dsn).serialize(serializer)
}

/// What a redacted password reads as.
const REDACTED: &str = "***";

/// `dsn` with its password replaced by `***`: the `user:password@` part and any `password=` query parameter
/// of the URL form (`postgres://` or `postgresql://`), or the `password` value of the key=value form.
pub(crate) fn redact_dsn(dsn: &str) -> String {
    let start = dsn.trim_start().get(..13).unwrap_or(dsn.trim_start()).to_ascii_lowercase();
    if start.starts_with("postgresql://") || start.starts_with("postgres://") {
        redact_url(dsn)
    } else {
        redact_key_values(dsn)
    }
}

/// The URL form: `scheme://[user[:password]@]host[:port][/db][?password=..&..]`.
fn redact_url(dsn: &str) -> String {
    let Some((scheme, rest)) = dsn.split_once("://") else {
        return dsn.to_owned();
    };
    let mut out = format!("{scheme}://");
    let mut tail = rest;
    // The credentials end at the first `@` (as the driver reads them). If the host part after it holds
    // another `@` (an unescaped `@` in the password), everything up to the last one is the password.
    if let Some((user_info, after)) = rest.split_once('@') {
        let host_end = after.find(['/', '?']).unwrap_or(after.len());
        let (host, path) = after.split_at_checked(host_end).unwrap_or((after, ""));
        let host = match host.rsplit_once('@') {
            Some((_, real_host)) => real_host,
            None => host,
        };
        match user_info.split_once(':') {
            Some((user, _)) => out.push_str(&format!("{user}:{REDACTED}@")),
            None if host.len() < after.len() - path.len() => out.push_str(&format!("{user_info}:{REDACTED}@")),
            None => out.push_str(&format!("{user_info}@")),
        }
        out.push_str(host);
        tail = path;
    }
    match tail.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}={REDACTED}"),
                    _ => param.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(tail),
    }
    out
}

/// The key=value form: `key = value` pairs separated by whitespace, values optionally single-quoted with
/// backslash escapes (as libpq reads them).
fn redact_key_values(dsn: &str) -> String {
    fn split_while(s: &str, pred: impl Fn(char) -> bool) -> (&str, &str) {
        let end = s.find(|c: char| !pred(c)).unwrap_or(s.len());
        s.split_at_checked(end).unwrap_or((s, ""))
    }
    /// Splits off the value at the start of `s`: a quoted string (to its closing quote, or the end) or a
    /// word (to the next unescaped whitespace).
    fn split_value(s: &str) -> (&str, &str) {
        let quoted = s.starts_with('\'');
        let mut escaped = false;
        let mut end = s.len();
        for (i, c) in s.char_indices().skip(usize::from(quoted)) {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if quoted && c == '\'' {
                end = i + c.len_utf8();
                break;
            } else if !quoted && c.is_whitespace() {
                end = i;
                break;
            }
        }
        s.split_at_checked(end).unwrap_or((s, ""))
    }

    let mut out = String::with_capacity(dsn.len());
    let mut rest = dsn;
    while !rest.is_empty() {
        let (space, r) = split_while(rest, char::is_whitespace);
        out.push_str(space);
        let (key, r) = split_while(r, |c| c != '=' && !c.is_whitespace());
        out.push_str(key);
        let (space, r) = split_while(r, char::is_whitespace);
        out.push_str(space);
        let Some(r) = r.strip_prefix('=') else {
            rest = r;
            continue;
        };
        out.push('=');
        let (space, r) = split_while(r, char::is_whitespace);
        out.push_str(space);
        let (value, r) = split_value(r);
        if key.eq_ignore_ascii_case("password") {
            out.push_str(if value.starts_with('\'') { "'***'" } else { REDACTED });
        } else {
            out.push_str(value);
        }
        rest = r;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(validate_identifier("p", "marketing_", 0, 40).is_ok());
        assert!(validate_identifier("p", "", 0, 40).is_ok());
        assert!(validate_identifier("c", "", 1, 63).is_err());
        for bad in ["x\"; DROP TABLE t; --", "Upper", "1abc", "a-b", "a b", "é", &"a".repeat(41)] {
            assert!(validate_identifier("p", bad, 0, 40).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("x", "250ms").ok(), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("x", "5").ok(), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("x", "2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("x", "1h").ok(), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("x", "1500us").ok(), Some(Duration::from_micros(1500)));
        assert_eq!(parse_duration("x", "7ns").ok(), Some(Duration::from_nanos(7)));
        assert_eq!(parse_duration("x", "18446744073709551615").ok(), Some(Duration::from_secs(u64::MAX)));
        assert!(parse_duration("x", "abc").is_err());
        assert!(parse_duration("x", "5d").is_err());
        assert!(parse_duration("x", "").is_err());
        assert!(parse_duration("x", "-5s").is_err());
        assert!(parse_duration("x", "1.5s").is_err());
        // Larger than any Duration: a typed error, not an overflow.
        assert!(matches!(parse_duration("x", "18446744073709551616"), Err(Error::InvalidSetting { name: "x", .. })));
        assert!(parse_duration("x", "18446744073709551615h").is_err());
        assert!(parse_duration("x", &"9".repeat(60)).is_err());
    }

    #[test]
    fn durations_format_in_the_largest_exact_unit_and_read_back() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(86_400), "24h"),
            (Duration::from_micros(1500), "1500us"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::new(1, 1), "1000000001ns"),
        ] {
            assert_eq!(FormatDuration(d).to_string(), text);
            assert_eq!(duration_from_str(text), Ok(d), "{text}");
        }
        // Lossless for every Duration, the largest included.
        for d in [Duration::MAX, Duration::from_secs(u64::MAX), Duration::new(123_456, 789)] {
            assert_eq!(duration_from_str(&FormatDuration(d).to_string()), Ok(d));
        }
    }

    #[test]
    fn env_reads_every_kind_of_field() {
        let vars = [
            ("PGCACHE_DSN", "postgresql://u@h/db"),
            ("PGCACHE_NOTIFY_CHANNEL", "chan"),
            ("PGCACHE_SCHEMA_PREFIX", "p_"),
            ("PGCACHE_DISABLE_NOTIFY", "true"),
            ("PGCACHE_LOCAL_MAX_ENTRIES", "7"),
            ("PGCACHE_DEFAULT_TTL", "90s"),
            ("PGCACHE_SWEEPER_INTERVAL", "0"),
            ("PGCACHE_SHARDS", "postgresql://u:pw1@h1/db, postgresql://u:pw2@h2/db"),
            ("PGCACHE_PREPARED_STATEMENTS", "false"),
        ];
        let s = CacheSettings::from_lookup(|n| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string()))
            .expect("valid env");
        assert_eq!(s.shard_dsns, ["postgresql://u:pw1@h1/db", "postgresql://u:pw2@h2/db"]);
        assert!(!s.prepared_statements);
        let shown = format!("{s:?} {}", serde_json::to_string(&s).expect("serializes"));
        assert!(!shown.contains("pw1") && !shown.contains("pw2"), "{shown}");
        assert_eq!(s.notify_channel, "chan");
        assert_eq!(s.schema_prefix, "p_");
        assert!(s.disable_notify);
        assert_eq!(s.local_max_entries, 7);
        assert_eq!(s.default_ttl, Duration::from_secs(90));
        assert_eq!(s.sweeper_interval, None);
        assert!(s.validate().is_ok());
        let bad = CacheSettings::from_lookup(|n| {
            (n == "PGCACHE_DSN").then(|| "x".into()).or_else(|| (n == "PGCACHE_MAX_POOL_SIZE").then(|| "many".into()))
        });
        assert!(matches!(bad, Err(Error::InvalidSetting { name: "max_pool_size", .. })));
        assert!(CacheSettings::from_lookup(|_| None).is_err());
    }

    #[test]
    fn validation_rejects_bad_values() {
        let ok = CacheSettings::new("postgresql://u@localhost/db");
        assert!(ok.validate().is_ok());
        assert!(matches!(
            ok.clone().notify_channel("bad-chan").validate(),
            Err(Error::InvalidSetting { name: "notify_channel", .. })
        ));
        assert!(matches!(CacheSettings::new("").validate(), Err(Error::InvalidSetting { name: "dsn", .. })));
        assert!(matches!(CacheSettings::new("postgresql://u@h:notaport/db").validate(), Err(Error::InvalidDsn { .. })));
        assert!(ok.clone().max_pool_size(0).validate().is_err());
        assert!(ok.clone().min_pool_size(5).max_pool_size(2).validate().is_err());
    }

    /// `(name, setter, smallest accepted, largest accepted)` of every bounded `Duration` setting.
    type Bound = (&'static str, fn(CacheSettings, Duration) -> CacheSettings, Duration, Duration);

    fn duration_bounds() -> Vec<Bound> {
        vec![
            ("local_ttl", CacheSettings::local_ttl, Duration::ZERO, Duration::from_secs(365 * 86_400)),
            ("default_ttl", CacheSettings::default_ttl, Duration::from_nanos(1), Duration::from_secs(1 << 31)),
            ("pool_timeout", CacheSettings::pool_timeout, Duration::from_nanos(1), Duration::from_secs(3600)),
            (
                "statement_timeout",
                CacheSettings::statement_timeout,
                Duration::from_millis(1),
                Duration::from_secs(3600),
            ),
            ("lock_wait_timeout", CacheSettings::lock_wait_timeout, Duration::ZERO, Duration::from_secs(3600)),
            (
                "heartbeat_interval",
                CacheSettings::heartbeat_interval,
                Duration::from_millis(1),
                Duration::from_secs(3600),
            ),
            (
                "sweeper_interval",
                |s, d| s.sweeper_interval(Some(d)),
                Duration::from_nanos(1),
                Duration::from_secs(86_400),
            ),
            (
                "loader_soft_timeout",
                |s, d| s.loader_soft_timeout(Some(d)),
                Duration::from_millis(1),
                Duration::from_secs(3600),
            ),
            (
                "loader_hard_timeout",
                |s, d| s.loader_hard_timeout(Some(d)),
                Duration::from_millis(1),
                Duration::from_secs(3600),
            ),
        ]
    }

    #[test]
    fn every_duration_accepts_its_range_and_rejects_one_past_either_end() {
        let ok = CacheSettings::new("postgresql://u@localhost/db");
        for (name, set, min, max) in duration_bounds() {
            assert!(set(ok.clone(), min).validate().is_ok(), "{name} = {min:?}");
            assert!(set(ok.clone(), max).validate().is_ok(), "{name} = {max:?}");
            for bad in
                [Some(max + Duration::from_nanos(1)), min.checked_sub(Duration::from_nanos(1)), Some(Duration::MAX)]
                    .into_iter()
                    .flatten()
            {
                match set(ok.clone(), bad).validate() {
                    Err(Error::InvalidSetting { name: got, reason }) => {
                        assert_eq!(got, name);
                        // The reason states the accepted range.
                        assert!(reason.contains(&FormatDuration(max).to_string()), "{name}: {reason}");
                    }
                    other => panic!("{name} = {bad:?}: expected InvalidSetting, got {other:?}"),
                }
            }
        }
        let reason = ok.clone().statement_timeout(Duration::from_secs(3601)).validate().unwrap_err().to_string();
        assert_eq!(reason, "invalid setting `statement_timeout`: is 3601s, must be between 1ms and 1h");
        let reason = ok.clone().pool_timeout(Duration::ZERO).validate().unwrap_err().to_string();
        assert_eq!(reason, "invalid setting `pool_timeout`: is 0s, must be greater than zero and at most 1h");
        // None disables the sweeper and is always valid.
        assert!(ok.sweeper_interval(None).validate().is_ok());
    }

    #[test]
    fn u64_max_seconds_from_the_environment_are_rejected_by_validate() {
        for (env, name) in [
            ("PGCACHE_LOCAL_TTL", "local_ttl"),
            ("PGCACHE_DEFAULT_TTL", "default_ttl"),
            ("PGCACHE_POOL_TIMEOUT", "pool_timeout"),
            ("PGCACHE_STATEMENT_TIMEOUT", "statement_timeout"),
            ("PGCACHE_LOCK_WAIT_TIMEOUT", "lock_wait_timeout"),
            ("PGCACHE_HEARTBEAT_INTERVAL", "heartbeat_interval"),
            ("PGCACHE_SWEEPER_INTERVAL", "sweeper_interval"),
        ] {
            let s = CacheSettings::from_lookup(|n| match n {
                "PGCACHE_DSN" => Some("postgresql://u@localhost/db".to_owned()),
                n if n == env => Some(u64::MAX.to_string()),
                _ => None,
            })
            .expect("parses: it is a valid Duration");
            assert!(
                matches!(s.validate(), Err(Error::InvalidSetting { name: got, .. }) if got == name),
                "{env}: {:?}",
                s.validate()
            );
        }
    }

    #[test]
    fn values_derived_from_the_largest_settings_do_not_overflow() {
        let max = |field: &str| duration_bounds().into_iter().find(|b| b.0 == field).map(|b| b.3).expect("field");
        let statement = max("statement_timeout");
        let pool = max("pool_timeout");
        assert!(statement.checked_add(Duration::from_millis(500)).is_some());
        assert!(statement.checked_add(pool).is_some());
        assert!(pool.checked_mul(2).is_some());
        assert!(max("heartbeat_interval").checked_mul(2).is_some());
        // `-c statement_timeout=<ms>` must fit PostgreSQL's 32-bit integer.
        assert!(statement.as_millis() <= i32::MAX as u128);
        // `Instant::now() + lock_wait_timeout` (and the listener lease, twice the heartbeat).
        let now = std::time::Instant::now();
        assert!(now.checked_add(max("lock_wait_timeout")).is_some());
        assert!(now.checked_add(max("heartbeat_interval") * 2).is_some());
        // The largest default_ttl is bound into SQL exactly.
        let ttl = max("default_ttl");
        assert_eq!(crate::ttl::millis(ttl), (1 << 31) * 1000);
    }

    #[tokio::test]
    async fn timers_accept_the_largest_intervals() {
        let mut heartbeat = tokio::time::interval(Duration::from_secs(3600));
        let mut sweeper = tokio::time::interval(Duration::from_secs(86_400));
        heartbeat.tick().await;
        sweeper.tick().await;
    }

    #[test]
    fn max_key_bytes_is_bounded_by_the_primary_key_index() {
        let ok = CacheSettings::new("postgresql://u@localhost/db");
        assert!(ok.clone().max_key_bytes(2048).validate().is_ok());
        assert!(ok.clone().max_key_bytes(1).validate().is_ok());
        for bad in [0, 2049, 1_000_000] {
            assert!(
                matches!(
                    ok.clone().max_key_bytes(bad).validate(),
                    Err(Error::InvalidSetting { name: "max_key_bytes", .. })
                ),
                "{bad}"
            );
        }
        let reason = ok.max_key_bytes(2049).validate().unwrap_err().to_string();
        assert!(reason.contains("between 1 and 2048"), "{reason}");
    }

    fn full_settings() -> CacheSettings {
        CacheSettings::new("postgresql://cache_user:s3cret-pw@db.internal:5432/cache")
            .listen_dsn("host=db.internal port=5432 user=cache_user password='s3cret pw' dbname=cache")
            .notify_channel("chan_1")
            .schema_prefix("p_")
            .disable_notify(true)
            .local_max_entries(7)
            .local_max_bytes(1 << 20)
            .local_ttl(Duration::from_millis(250))
            .default_ttl(Duration::from_secs(120))
            .min_pool_size(2)
            .max_pool_size(4)
            .pool_timeout(Duration::from_secs(2))
            .statement_timeout(Duration::from_micros(1500))
            .lock_wait_timeout(Duration::ZERO)
            .max_key_bytes(2048)
            .max_value_bytes(4096)
            .unlogged(true)
            .sweeper_interval(Some(Duration::from_secs(3600)))
            .cleanup_batch_size(9)
            .heartbeat_interval(Duration::from_millis(1))
            .fail_open(false)
            .application_name("app")
            .tls_root_cert("/etc/ssl/ca.pem")
            .loader_soft_timeout(Some(Duration::from_millis(50)))
            .loader_hard_timeout(Some(Duration::from_secs(3)))
    }

    #[test]
    fn json_round_trip_keeps_every_field_but_the_passwords() {
        let settings = full_settings();
        assert!(settings.validate().is_ok());
        let json = serde_json::to_string(&settings).expect("serializes");
        for field in [
            r#""local_ttl":"250ms""#,
            r#""default_ttl":"2m""#,
            r#""pool_timeout":"2s""#,
            r#""statement_timeout":"1500us""#,
            r#""lock_wait_timeout":"0s""#,
            r#""sweeper_interval":"1h""#,
            r#""heartbeat_interval":"1ms""#,
            r#""loader_soft_timeout":"50ms""#,
            r#""loader_hard_timeout":"3s""#,
        ] {
            assert!(json.contains(field), "{field} in {json}");
        }
        let back: CacheSettings = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back.dsn, "postgresql://cache_user:***@db.internal:5432/cache");
        assert_eq!(
            back.listen_dsn.as_deref(),
            Some("host=db.internal port=5432 user=cache_user password='***' dbname=cache")
        );
        let with_passwords =
            CacheSettings { dsn: settings.dsn.clone(), listen_dsn: settings.listen_dsn.clone(), ..back };
        assert_eq!(with_passwords, settings);
        // And a second trip changes nothing at all.
        assert_eq!(serde_json::to_string(&with_passwords).expect("serializes"), json);

        let disabled = serde_json::to_string(&settings.clone().sweeper_interval(None)).expect("serializes");
        assert!(disabled.contains(r#""sweeper_interval":null"#), "{disabled}");
        let back: CacheSettings = serde_json::from_str(&disabled).expect("deserializes");
        assert_eq!(back.sweeper_interval, None);
    }

    #[test]
    fn deserializes_the_env_duration_format() {
        let s: CacheSettings =
            serde_json::from_str(r#"{"dsn": "postgresql://localhost/db", "local_ttl": "250ms", "pool_timeout": 2}"#)
                .expect("deserializes");
        assert_eq!(s.dsn, "postgresql://localhost/db");
        assert_eq!(s.local_ttl, Duration::from_millis(250));
        assert_eq!(s.pool_timeout, Duration::from_secs(2));
        assert_eq!(s.default_ttl, CacheSettings::default().default_ttl);
        // Absent keeps the default; null, "0" and 0 disable, as `PGCACHE_SWEEPER_INTERVAL=0` does.
        assert_eq!(s.sweeper_interval, Some(Duration::from_secs(30)));
        for disabled in ["null", r#""0""#, "0", r#""0s""#] {
            let json = format!(r#"{{"dsn": "postgresql://localhost/db", "sweeper_interval": {disabled}}}"#);
            let s: CacheSettings = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(s.sweeper_interval, None, "{disabled}");
        }
        let s: CacheSettings =
            serde_json::from_str(r#"{"dsn": "x", "sweeper_interval": "10m", "heartbeat_interval": "1h"}"#).expect("ok");
        assert_eq!(s.sweeper_interval, Some(Duration::from_secs(600)));
        assert_eq!(s.heartbeat_interval, Duration::from_secs(3600));
        for bad in [r#""5d""#, "-1", "1.5", r#""""#, "true"] {
            let json = format!(r#"{{"dsn": "x", "local_ttl": {bad}}}"#);
            assert!(serde_json::from_str::<CacheSettings>(&json).is_err(), "{bad}");
        }
        let err = serde_json::from_str::<CacheSettings>(r#"{"dsn": "x", "local_ttl": "5d"}"#).unwrap_err().to_string();
        assert!(err.contains("250ms"), "{err}");
    }

    #[test]
    fn redacts_url_passwords() {
        for (dsn, redacted) in [
            ("postgresql://user:secret@host/db", "postgresql://user:***@host/db"),
            ("postgres://user:secret@host:5432/db?sslmode=require", "postgres://user:***@host:5432/db?sslmode=require"),
            ("postgresql://user@host/db", "postgresql://user@host/db"),
            ("postgresql://host/db", "postgresql://host/db"),
            ("postgresql://user:se:cr/et@host/db", "postgresql://user:***@host/db"),
            ("postgresql://user:sec@ret@host/db", "postgresql://user:***@host/db"),
            ("postgresql://user:secret@h1:5432,h2:5433/db", "postgresql://user:***@h1:5432,h2:5433/db"),
            (
                "postgresql://host/db?user=u&password=secret&sslmode=require",
                "postgresql://host/db?user=u&password=***&sslmode=require",
            ),
            ("POSTGRESQL://user:secret@host", "POSTGRESQL://user:***@host"),
            ("  postgresql://user:secret@host", "  postgresql://user:***@host"),
        ] {
            assert_eq!(redact_dsn(dsn), redacted, "{dsn}");
        }
    }

    #[test]
    fn redacts_key_value_passwords() {
        for (dsn, redacted) in [
            ("host=h password=secret dbname=db", "host=h password=*** dbname=db"),
            ("host=h password = secret", "host=h password = ***"),
            ("password='a b' host=h", "password='***' host=h"),
            (r"password='it\'s secret' host=h", r"password='***' host=h"),
            (r"password=a\ b host=h", "password=*** host=h"),
            ("host=h password='unterminated secret", "host=h password='***'"),
            ("host=h user=u", "host=h user=u"),
            ("host=h options='-c x=y' password=secret", "host=h options='-c x=y' password=***"),
            ("host=h\tpassword=secret\nport=5432", "host=h\tpassword=***\nport=5432"),
            ("host=h password=", "host=h password=***"),
        ] {
            assert_eq!(redact_dsn(dsn), redacted, "{dsn}");
        }
    }

    #[test]
    fn debug_and_serialize_never_show_the_password() {
        for (dsn, listen, secrets) in [
            ("postgresql://u:hunter2@localhost/db", "postgresql://u:swordfish@direct/db", ["hunter2", "swordfish"]),
            (
                "host=localhost password=hunter2 dbname=db",
                "host=direct password='sword fish'",
                ["hunter2", "sword fish"],
            ),
        ] {
            let settings = CacheSettings::new(dsn).listen_dsn(listen);
            assert!(settings.validate().is_ok(), "{dsn}");
            let debug = format!("{settings:?}");
            let pretty = format!("{settings:#?}");
            let json = serde_json::to_string(&settings).expect("serializes");
            for text in [&debug, &pretty, &json] {
                for secret in secrets {
                    assert!(!text.contains(secret), "{secret} in {text}");
                }
                assert!(text.contains("***"), "{text}");
            }
        }
        // Debug shows every other field.
        let debug = format!("{:?}", full_settings());
        for field in [
            "notify_channel: \"chan_1\"",
            "schema_prefix: \"p_\"",
            "disable_notify: true",
            "local_max_entries: 7",
            "local_max_bytes: 1048576",
            "local_ttl: 250ms",
            "default_ttl: 120s",
            "min_pool_size: 2",
            "max_pool_size: 4",
            "pool_timeout: 2s",
            "statement_timeout: 1.5ms",
            "lock_wait_timeout: 0ns",
            "max_key_bytes: 2048",
            "max_value_bytes: 4096",
            "unlogged: true",
            "sweeper_interval: Some(3600s)",
            "cleanup_batch_size: 9",
            "heartbeat_interval: 1ms",
            "fail_open: false",
            "application_name: \"app\"",
            "tls_root_cert: Some(\"/etc/ssl/ca.pem\")",
            "loader_soft_timeout: Some(50ms)",
            "loader_hard_timeout: Some(3s)",
        ] {
            assert!(debug.contains(field), "{field} in {debug}");
        }
    }
}
