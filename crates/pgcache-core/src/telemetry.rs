//! Telemetry: every metric name, label and recording helper, and the span fields, in one place.
//!
//! Metrics go through the [`metrics`] facade, so the application picks the exporter (Prometheus,
//! OpenTelemetry, StatsD, ...) by installing a recorder. **Install it before connecting a cache**: a
//! cache registers its hot-path counters once, when it is created, so that a local hit costs one atomic
//! add and no label lookup. Without a recorder every handle is a no-op.
//!
//! Names follow the OpenTelemetry semantic-convention style (dotted, lower case, units in seconds);
//! a Prometheus exporter turns the dots into underscores (`pgcache.requests` → `pgcache_requests`).
//! Every metric of a cache instance carries [`CACHE_NAME`] (its `schema_prefix`).
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | [`REQUESTS`] | counter | `cache.name`, `cache.operation`, `cache.outcome` |
//! | [`LOADER_DURATION`] | histogram, s | `cache.name`, `cache.outcome` (`ok`, `error`) |
//! | [`LOCK_WAIT_DURATION`] | histogram, s | `cache.name`, `cache.outcome` (`acquired`, `filled`, `timed_out`, `failed`) |
//! | [`STATEMENT_DURATION`] | histogram, s | `db.operation` |
//! | [`INVALIDATIONS`] | counter | `cache.name`, `cache.invalidation.kind` (`keys`, `flush`) |
//! | [`INVALIDATION_LAG`] | histogram, s | `cache.name` |
//! | [`LISTENER_RECONNECTS`] | counter | `cache.name` |
//! | [`LISTENER_UNTRUSTED_DURATION`] | histogram, s | `cache.name` |
//! | [`POOL_SIZE`], [`POOL_IN_USE`], [`POOL_WAITERS`], [`POOL_MAX_SIZE`] | gauge | `cache.name` |
//! | [`LOCAL_ENTRIES`], [`LOCAL_BYTES`] | gauge | `cache.name` |
//! | [`LOCAL_EVICTIONS`] | counter | `cache.name`, `cache.eviction.cause` |
//! | [`SWEPT_ROWS`] | counter | `cache.name` |
//! | [`SHARED_READS`] | counter | `cache.name`, `db.server` (`replica`, `primary`), `cache.reason` (`fenced`, `lagging`, `unavailable`) |
//! | [`HTTP_RESPONSES`] | counter | `cache.outcome` (from the final `Cache-Status`) |
//! | [`RESOURCE_LOOKUPS`] | counter | `cache.resource`, `cache.outcome` |
//!
//! Spans: one `tracing` span per public operation of [`PostgresCache`](crate::PostgresCache), named
//! `pgcache.<operation>` at DEBUG level (target `pgcache::cache`), with the fields [`SPAN_OPERATION`],
//! [`SPAN_KEY_HASH`] (a hash of the key: never the key or the value, which may be personal data),
//! [`SPAN_OUTCOME`] and `db.system = "postgresql"`. Their timings are the spans' own.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

/// Requests by operation and outcome (counter).
pub const REQUESTS: &str = "pgcache.requests";
/// How long loaders ran, in seconds (histogram).
pub const LOADER_DURATION: &str = "pgcache.loader.duration";
/// How long `get_or_load` waited on another process's fill (the advisory lock), in seconds (histogram).
pub const LOCK_WAIT_DURATION: &str = "pgcache.lock.wait.duration";
/// How long each SQL statement took, in seconds, by statement (histogram).
pub const STATEMENT_DURATION: &str = "pgcache.db.statement.duration";
/// Invalidation notifications applied, by kind (counter).
pub const INVALIDATIONS: &str = "pgcache.invalidations";
/// From the writing statement's trigger (just before its commit) to the local eviction, in seconds
/// (histogram). See the README's "Observability" section for what clock skew does to it.
pub const INVALIDATION_LAG: &str = "pgcache.invalidation.lag";
/// Listener connections re-established after a loss (counter).
pub const LISTENER_RECONNECTS: &str = "pgcache.listener.reconnects";
/// How long each period without a trusted listener lasted, in seconds (histogram; its sum is the time
/// spent untrusted).
pub const LISTENER_UNTRUSTED_DURATION: &str = "pgcache.listener.untrusted.duration";
/// What the probe at connect found (gauge, `1` or `0`, by `capability`: `notify`, `session_locks`,
/// `unlogged`, `transition_tables`, and `polling` for the invalidation mode chosen).
pub const CAPABILITY: &str = "pgcache.capability";
/// Connections open in the pool (gauge).
pub const POOL_SIZE: &str = "pgcache.pool.size";
/// Connections of the pool in use (gauge).
pub const POOL_IN_USE: &str = "pgcache.pool.in_use";
/// Callers waiting for a pooled connection: the saturation signal (gauge).
pub const POOL_WAITERS: &str = "pgcache.pool.waiters";
/// Most connections the pool opens (gauge).
pub const POOL_MAX_SIZE: &str = "pgcache.pool.max_size";
/// Entries in the local cache (gauge).
pub const LOCAL_ENTRIES: &str = "pgcache.local.entries";
/// Weighted bytes in the local cache (gauge).
pub const LOCAL_BYTES: &str = "pgcache.local.bytes";
/// Local entries removed, by cause (counter).
pub const LOCAL_EVICTIONS: &str = "pgcache.local.evictions";
/// Expired rows removed by the sweeper (counter).
pub const SWEPT_ROWS: &str = "pgcache.sweeper.rows";
/// Shared-table reads of a cache with read replicas, by the server that answered (`replica` or `primary`)
/// and why (`fenced`: the replica had replayed every invalidation heard; `lagging`: it had not;
/// `unavailable`: it failed) (counter).
pub const SHARED_READS: &str = "pgcache.shared.reads";
/// HTTP responses of the tower layer by `Cache-Status` outcome (counter).
pub const HTTP_RESPONSES: &str = "pgcache.http.responses";
/// `Cached<T>`/`Lookup<T>` outcomes by resource type (counter).
pub const RESOURCE_LOOKUPS: &str = "pgcache.resource.lookups";

/// Label: the cache instance (its `schema_prefix`).
pub const CACHE_NAME: &str = "cache.name";
/// Label and span field: the operation (`get`, `get_many`, `get_or_load`, ...).
pub const SPAN_OPERATION: &str = "cache.operation";
/// Label and span field: what happened (see [`Outcome`]).
pub const SPAN_OUTCOME: &str = "cache.outcome";
/// Span field: a 64-bit hash of the key (xxh3, hex), never the key itself.
pub const SPAN_KEY_HASH: &str = "cache.key_hash";

/// What a read answered with: the `cache.outcome` label of [`REQUESTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Served from the local cache (L1).
    L1Hit,
    /// Served from the shared table (L2).
    L2Hit,
    /// Not cached.
    Miss,
    /// Another caller (here or in another process) loaded it while this one waited.
    Collapsed,
    /// This caller ran the loader and the value was cached.
    Loaded,
    /// A stale value was served (the HTTP layer's `stale-while-revalidate`/`stale-if-error`, or a
    /// `get_or_load` fail-safe value).
    Stale,
    /// The operation failed.
    Error,
    /// The shared cache was out of reach and the read failed open (a miss, or the loader ran uncached).
    FailOpen,
}

impl Outcome {
    const ALL: [Outcome; 8] = [
        Outcome::L1Hit,
        Outcome::L2Hit,
        Outcome::Miss,
        Outcome::Collapsed,
        Outcome::Loaded,
        Outcome::Stale,
        Outcome::Error,
        Outcome::FailOpen,
    ];

    /// The outcome of a `get_or_load` answer.
    pub fn of<T, E>(answer: &Result<crate::Loaded<T>, crate::LoadError<E>>) -> Self {
        use crate::Source;
        match answer {
            Ok(loaded) if loaded.unavailable => Outcome::FailOpen,
            Ok(loaded) => match loaded.source {
                Source::Local => Outcome::L1Hit,
                Source::Shared => Outcome::L2Hit,
                Source::Collapsed => Outcome::Collapsed,
                Source::Loaded => Outcome::Loaded,
                Source::Stale => Outcome::Stale,
            },
            Err(_) => Outcome::Error,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::L1Hit => "l1_hit",
            Outcome::L2Hit => "l2_hit",
            Outcome::Miss => "miss",
            Outcome::Collapsed => "collapsed",
            Outcome::Loaded => "loaded",
            Outcome::Stale => "stale",
            Outcome::Error => "error",
            Outcome::FailOpen => "fail_open",
        }
    }
}

/// The reads whose outcomes are counted in [`REQUESTS`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    Get,
    GetMany,
    GetOrLoad,
}

impl Op {
    const ALL: [Op; 3] = [Op::Get, Op::GetMany, Op::GetOrLoad];

    /// Whether `outcome` can happen to this operation (only those are registered).
    fn can_have(self, outcome: Outcome) -> bool {
        match self {
            Op::Get | Op::GetMany => {
                matches!(outcome, Outcome::L1Hit | Outcome::L2Hit | Outcome::Miss | Outcome::Error | Outcome::FailOpen)
            }
            Op::GetOrLoad => !matches!(outcome, Outcome::Miss | Outcome::Stale),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::GetMany => "get_many",
            Op::GetOrLoad => "get_or_load",
        }
    }
}

/// How a `get_or_load` wait on another process's fill ended.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LockWait {
    /// This caller took the lock.
    Acquired,
    /// Another process's fill appeared.
    Filled,
    /// `lock_wait_timeout` passed; the caller gave up (`Error::LockTimeout`, or the fail-safe value).
    TimedOut,
    /// The database failed; the caller loads without the lock when failing open.
    Failed,
}

impl LockWait {
    fn as_str(self) -> &'static str {
        match self {
            LockWait::Acquired => "acquired",
            LockWait::Filled => "filled",
            LockWait::TimedOut => "timed_out",
            LockWait::Failed => "failed",
        }
    }
}

/// The span field of a key: its xxh3 hash in hex (keys may be personal data; never record them).
pub fn key_hash(key: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(key.as_bytes()))
}

/// Records `outcome` on the current span (the operation's). The operation spans are at DEBUG: when that
/// level is off (one static check), looking up the current span is skipped, which keeps the hit path cheap.
fn span_outcome(outcome: &'static str) {
    if tracing::level_enabled!(tracing::Level::DEBUG) {
        tracing::Span::current().record(SPAN_OUTCOME, outcome);
    }
}

/// One cache instance's pre-registered metric handles (registered when the cache is created, so a hit
/// records with one atomic add).
pub(crate) struct Telemetry {
    name: Arc<str>,
    requests: Vec<Counter>,
    loader_ok: Histogram,
    loader_error: Histogram,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Telemetry {
    pub(crate) fn new(name: &str) -> Self {
        let name: Arc<str> = Arc::from(name);
        let mut requests = Vec::with_capacity(Op::ALL.len() * Outcome::ALL.len());
        for op in Op::ALL {
            for outcome in Outcome::ALL {
                if !op.can_have(outcome) {
                    requests.push(Counter::noop());
                    continue;
                }
                requests.push(counter!(REQUESTS, CACHE_NAME => name.to_string(), SPAN_OPERATION => op.as_str(), SPAN_OUTCOME => outcome.as_str()));
            }
        }
        let loader = |outcome: &'static str| histogram!(LOADER_DURATION, CACHE_NAME => name.to_string(), SPAN_OUTCOME => outcome);
        Self { loader_ok: loader("ok"), loader_error: loader("error"), requests, name }
    }

    fn counter(&self, op: Op, outcome: Outcome) -> Option<&Counter> {
        let o = Outcome::ALL.iter().position(|&x| x == outcome)?;
        self.requests.get(op as usize * Outcome::ALL.len() + o)
    }

    /// Counts `n` reads of `op` with `outcome`, and marks the operation's span.
    pub(crate) fn read(&self, op: Op, outcome: Outcome, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(counter) = self.counter(op, outcome) {
            counter.increment(n);
        }
        span_outcome(outcome.as_str());
    }

    /// Counts the answer of a `get` that read the shared table.
    pub(crate) fn get<T>(&self, read: &crate::Result<Option<T>>) {
        let outcome = match read {
            Ok(Some(_)) => Outcome::L2Hit,
            Ok(None) => Outcome::Miss,
            Err(_) => Outcome::Error,
        };
        self.read(Op::Get, outcome, 1);
    }

    /// Counts a `get` whose shared read failed: it failed open (`Ok`) or reports the error.
    pub(crate) fn get_failed<T>(&self, answer: &crate::Result<T>) {
        self.read(Op::Get, if answer.is_ok() { Outcome::FailOpen } else { Outcome::Error }, 1);
    }

    /// Counts a `get_many` whose shared read failed, and hands its answer back.
    pub(crate) fn get_many_failed<T>(&self, answer: crate::Result<T>) -> crate::Result<T> {
        self.read(Op::GetMany, if answer.is_ok() { Outcome::FailOpen } else { Outcome::Error }, 1);
        answer
    }

    /// Counts a `get_or_load`'s answer.
    pub(crate) fn loaded<T, E>(&self, answer: &Result<crate::Loaded<T>, crate::LoadError<E>>) {
        self.read(Op::GetOrLoad, Outcome::of(answer), 1);
    }

    /// Runs a loader, timing it.
    pub(crate) async fn load<T, E>(&self, loader: impl std::future::Future<Output = Result<T, E>>) -> Result<T, E> {
        let started = Instant::now();
        let result = loader.await;
        let took = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => self.loader_ok.record(took),
            Err(_) => self.loader_error.record(took),
        }
        result
    }

    /// Records how a wait on another process's fill that began at `started` ended.
    pub(crate) fn lock_waited(&self, started: Instant, how: LockWait) {
        histogram!(LOCK_WAIT_DURATION, CACHE_NAME => self.name.to_string(), SPAN_OUTCOME => how.as_str())
            .record(started.elapsed().as_secs_f64());
    }
}

/// Times one SQL statement until dropped (errors and cancellations included):
/// `let _timer = telemetry::statement("get");`.
pub(crate) fn statement(name: &'static str) -> StatementTimer {
    StatementTimer { name, started: Instant::now() }
}

/// See [`statement`].
pub(crate) struct StatementTimer {
    name: &'static str,
    started: Instant,
}

impl Drop for StatementTimer {
    fn drop(&mut self) {
        histogram!(STATEMENT_DURATION, "db.system" => "postgresql", "db.operation" => self.name)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// Counts one shared-table read of a cache with read replicas.
pub(crate) fn shared_read(prefix: &str, server: &'static str, reason: &'static str) {
    counter!(SHARED_READS, CACHE_NAME => prefix.to_owned(), "db.server" => server, "cache.reason" => reason)
        .increment(1);
}

/// Counts rows removed by the sweeper.
pub(crate) fn swept(prefix: &str, rows: u64) {
    if rows > 0 {
        counter!(SWEPT_ROWS, CACHE_NAME => prefix.to_owned()).increment(rows);
    }
}

/// The [`CAPABILITY`] gauges' values for `found`.
fn capability_values(found: &crate::Capabilities) -> [(&'static str, f64); 5] {
    let value = |present: bool| if present { 1.0 } else { 0.0 };
    [
        ("notify", value(found.notify)),
        ("session_locks", value(found.session_locks)),
        ("unlogged", value(found.unlogged)),
        ("transition_tables", value(found.transition_tables)),
        ("polling", value(found.invalidation == crate::InvalidationMode::Poll)),
    ]
}

/// Records what the probe at connect found (see [`CAPABILITY`]); the usage sampler publishes it again.
pub(crate) fn capabilities(prefix: &str, found: &crate::Capabilities) {
    for (name, value) in capability_values(found) {
        gauge!(CAPABILITY, CACHE_NAME => prefix.to_owned(), "capability" => name).set(value);
    }
}

/// The listener's metric handles.
pub(crate) struct ListenerMetrics {
    keys: Counter,
    flush: Counter,
    lag: Histogram,
    reconnects: Counter,
    untrusted: Histogram,
    /// When the listener stopped being trusted (`None` while listening); the first connection counts
    /// from the listener's start.
    down_since: Option<Instant>,
    connected_before: bool,
}

impl ListenerMetrics {
    pub(crate) fn new(prefix: &str) -> Self {
        let name = || prefix.to_owned();
        let kind =
            |kind: &'static str| counter!(INVALIDATIONS, CACHE_NAME => name(), "cache.invalidation.kind" => kind);
        Self {
            keys: kind("keys"),
            flush: kind("flush"),
            lag: histogram!(INVALIDATION_LAG, CACHE_NAME => name()),
            reconnects: counter!(LISTENER_RECONNECTS, CACHE_NAME => name()),
            untrusted: histogram!(LISTENER_UNTRUSTED_DURATION, CACHE_NAME => name()),
            down_since: Some(Instant::now()),
            connected_before: false,
        }
    }

    /// An invalidation was applied: `flush` or keys, written at `written_ms` (epoch milliseconds by the
    /// database clock, when the payload carries it).
    pub(crate) fn invalidated(&self, flush: bool, written_ms: Option<i64>) {
        if flush { &self.flush } else { &self.keys }.increment(1);
        if let Some(written_ms) = written_ms {
            self.lag.record(lag_since(written_ms, SystemTime::now()).as_secs_f64());
        }
    }

    /// The listener is listening (again).
    pub(crate) fn listening(&mut self) {
        if let Some(since) = self.down_since.take() {
            self.untrusted.record(since.elapsed().as_secs_f64());
        }
        if self.connected_before {
            self.reconnects.increment(1);
        }
        self.connected_before = true;
    }

    /// The listener, still connected, is trusted again (the invalidation log it stopped trusting its
    /// local cache for is drained again): the untrusted time is recorded, no reconnect counted.
    pub(crate) fn trusted_again(&mut self) {
        if let Some(since) = self.down_since.take() {
            self.untrusted.record(since.elapsed().as_secs_f64());
        }
    }

    /// The listener went down, or stopped trusting its local cache.
    pub(crate) fn down(&mut self) {
        self.down_since.get_or_insert_with(Instant::now);
    }
}

/// Time from `written_ms` (epoch milliseconds, the database's clock) to `now` (this host's clock); zero
/// when this host's clock is behind (skew), never negative.
pub(crate) fn lag_since(written_ms: i64, now: SystemTime) -> Duration {
    let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Duration::from_millis(u64::try_from(now_ms.saturating_sub(written_ms)).unwrap_or(0))
}

/// Samples of the pool and the local cache, published as gauges.
pub(crate) struct UsageGauges {
    pool_size: Gauge,
    pool_in_use: Gauge,
    pool_waiters: Gauge,
    pool_max_size: Gauge,
    local_entries: Gauge,
    local_bytes: Gauge,
    /// [`CAPABILITY`] gauges and their values, published again with every sample (a recorder may drop a
    /// gauge that is never set again).
    capabilities: Vec<(Gauge, f64)>,
}

impl UsageGauges {
    pub(crate) fn new(prefix: &str) -> Self {
        let g = |name: &'static str| gauge!(name, CACHE_NAME => prefix.to_owned());
        Self {
            pool_size: g(POOL_SIZE),
            pool_in_use: g(POOL_IN_USE),
            pool_waiters: g(POOL_WAITERS),
            pool_max_size: g(POOL_MAX_SIZE),
            local_entries: g(LOCAL_ENTRIES),
            local_bytes: g(LOCAL_BYTES),
            capabilities: Vec::new(),
        }
    }

    /// Publishes `found` with every sample too (see [`CAPABILITY`]).
    pub(crate) fn with_capabilities(mut self, prefix: &str, found: &crate::Capabilities) -> Self {
        self.capabilities = capability_values(found)
            .into_iter()
            .map(|(name, value)| (gauge!(CAPABILITY, CACHE_NAME => prefix.to_owned(), "capability" => name), value))
            .collect();
        self
    }

    /// Publishes one sample.
    pub(crate) fn set(&self, pool: deadpool_postgres::Status, (entries, bytes): (u64, u64)) {
        for (gauge, value) in &self.capabilities {
            gauge.set(*value);
        }
        self.pool_size.set(pool.size as f64);
        self.pool_in_use.set(pool.size.saturating_sub(pool.available) as f64);
        self.pool_waiters.set(pool.waiting as f64);
        self.pool_max_size.set(pool.max_size as f64);
        self.local_entries.set(entries as f64);
        self.local_bytes.set(bytes as f64);
    }
}

/// Publishes the pool's and the local cache's usage every second until `shutdown` flips. Running the
/// local cache's pending maintenance here also keeps [`CacheStatus`](crate::CacheStatus)'s local figures
/// current: moka updates its counts only during maintenance, which it otherwise runs only once enough
/// operations are queued, so a lightly used cache would report `local_entries: 0` while serving hits.
pub(crate) async fn sample_usage(
    gauges: UsageGauges,
    db: Arc<crate::conn::Db>,
    coherence: Arc<crate::coherence::Coherence>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        gauges.set(db.status(), coherence.usage().await);
    }
}

/// How often [`sample_usage`] publishes.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Local evictions by cause (the moka removal cause).
#[derive(Clone)]
pub(crate) struct Evictions {
    size: Counter,
    expired: Counter,
    invalidated: Counter,
    replaced: Counter,
}

impl Evictions {
    pub(crate) fn new(prefix: &str) -> Self {
        let c = |cause: &'static str| counter!(LOCAL_EVICTIONS, CACHE_NAME => prefix.to_owned(), "cache.eviction.cause" => cause);
        Self { size: c("size"), expired: c("expired"), invalidated: c("invalidated"), replaced: c("replaced") }
    }

    /// Counts one removal.
    pub(crate) fn removed(&self, cause: moka::notification::RemovalCause) {
        use moka::notification::RemovalCause;
        match cause {
            RemovalCause::Size => &self.size,
            RemovalCause::Expired => &self.expired,
            RemovalCause::Explicit => &self.invalidated,
            RemovalCause::Replaced => &self.replaced,
        }
        .increment(1);
    }
}

/// Counts an HTTP response of the tower layer by its final `Cache-Status` outcome (`hit`, `stale`,
/// `miss`, `bypass`, ...). For front ends; applications do not call it.
///
/// The outcome is recorded on the current span too: the layer's `pgcache.http.lookup` span.
pub fn http_response(outcome: &'static str) {
    counter!(HTTP_RESPONSES, SPAN_OUTCOME => outcome).increment(1);
    span_outcome(outcome);
}

/// Records the hash of `key` (never the key) as [`SPAN_KEY_HASH`] on the current span, when DEBUG spans
/// are on. For front ends whose span opens before the key is known (the HTTP layer's lookup).
pub fn record_key_hash(key: &str) {
    if tracing::level_enabled!(tracing::Level::DEBUG) {
        tracing::Span::current().record(SPAN_KEY_HASH, key_hash(key));
    }
}

/// Counts a `Cached<T>`/`Lookup<T>` answer for `resource` (a type name). For front ends; applications
/// do not call it.
pub fn resource_lookup<T, E>(resource: &'static str, answer: &Result<crate::Loaded<T>, crate::LoadError<E>>) {
    let outcome = Outcome::of(answer).as_str();
    counter!(RESOURCE_LOOKUPS, "cache.resource" => resource, SPAN_OUTCOME => outcome).increment(1);
}

/// Describes every metric (help text and unit) to the installed recorder; call it once after installing
/// one, if the exporter shows descriptions (Prometheus `# HELP`).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(REQUESTS, "Cache reads by operation and outcome");
    describe_histogram!(LOADER_DURATION, Unit::Seconds, "How long get_or_load's loaders ran");
    describe_histogram!(LOCK_WAIT_DURATION, Unit::Seconds, "How long get_or_load waited on another process's fill");
    describe_histogram!(STATEMENT_DURATION, Unit::Seconds, "SQL statement duration by statement");
    describe_counter!(INVALIDATIONS, "Invalidation notifications applied, by kind");
    describe_histogram!(INVALIDATION_LAG, Unit::Seconds, "From the writing statement's trigger to the local eviction");
    describe_counter!(LISTENER_RECONNECTS, "Listener connections re-established after a loss");
    describe_histogram!(LISTENER_UNTRUSTED_DURATION, Unit::Seconds, "Periods without a trusted listener");
    describe_gauge!(CAPABILITY, "Capabilities found by the probe at connect (1 or 0), and whether the node polls");
    describe_gauge!(POOL_SIZE, "Connections open in the pool");
    describe_gauge!(POOL_IN_USE, "Pooled connections in use");
    describe_gauge!(POOL_WAITERS, "Callers waiting for a pooled connection");
    describe_gauge!(POOL_MAX_SIZE, "Most connections the pool opens");
    describe_gauge!(LOCAL_ENTRIES, "Entries in the local cache");
    describe_gauge!(LOCAL_BYTES, Unit::Bytes, "Weighted bytes in the local cache");
    describe_counter!(LOCAL_EVICTIONS, "Local entries removed, by cause");
    describe_counter!(SWEPT_ROWS, "Expired rows removed by the sweeper");
    describe_counter!(SHARED_READS, "Shared-table reads of a cache with read replicas, by server and reason");
    describe_counter!(HTTP_RESPONSES, "HTTP responses by Cache-Status outcome");
    describe_counter!(RESOURCE_LOOKUPS, "Cached<T> outcomes by resource type");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_never_negative() {
        let now = UNIX_EPOCH + Duration::from_millis(10_000);
        assert_eq!(lag_since(9_750, now), Duration::from_millis(250));
        assert_eq!(lag_since(10_500, now), Duration::ZERO, "a database clock ahead of ours reads as no lag");
        assert_eq!(lag_since(i64::MIN, now), Duration::from_millis(u64::try_from(i64::MAX).unwrap_or(0)));
    }

    #[test]
    fn key_hash_hides_the_key() {
        let h = key_hash("user:ava@example.com");
        assert_eq!(h.len(), 16);
        assert!(!h.contains("ava"));
        assert_eq!(h, key_hash("user:ava@example.com"));
    }
}
