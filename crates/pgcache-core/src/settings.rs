//! [`CacheSettings`]: every knob, its default, and its validation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Configuration of a [`PostgresCache`](crate::PostgresCache).
///
/// Build it from a DSN with consuming setters, from environment variables with
/// [`from_env`](Self::from_env), or deserialize it with serde (every field has a default except `dsn`).
/// [`validate`](Self::validate) runs on `connect` and `init_db`, so a bad value is a typed
/// [`Error::InvalidSetting`], never a panic.
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
/// ```
///
/// # Environment
/// [`from_env`](Self::from_env) reads `PGCACHE_DSN` (required) and, when set, `PGCACHE_LISTEN_DSN`,
/// `PGCACHE_NOTIFY_CHANNEL`, `PGCACHE_SCHEMA_PREFIX`, `PGCACHE_DISABLE_NOTIFY` (`true`/`false`),
/// `PGCACHE_LOCAL_MAX_ENTRIES`, `PGCACHE_LOCAL_MAX_BYTES`, `PGCACHE_LOCAL_TTL`, `PGCACHE_DEFAULT_TTL`,
/// `PGCACHE_MIN_POOL_SIZE`, `PGCACHE_MAX_POOL_SIZE`, `PGCACHE_POOL_TIMEOUT`, `PGCACHE_STATEMENT_TIMEOUT`,
/// `PGCACHE_LOCK_WAIT_TIMEOUT`, `PGCACHE_MAX_KEY_BYTES`, `PGCACHE_MAX_VALUE_BYTES`, `PGCACHE_UNLOGGED`,
/// `PGCACHE_SWEEPER_INTERVAL` (`0` disables), `PGCACHE_CLEANUP_BATCH_SIZE`, `PGCACHE_HEARTBEAT_INTERVAL`,
/// `PGCACHE_TLS_ROOT_CERT`.
/// Durations are written `250ms`, `5s`, `10m`, `1h` (a bare number means seconds).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct CacheSettings {
    /// libpq-style DSN (`postgresql://user:pass@host:5432/db` or `host=... dbname=...`) for the pool. No default.
    pub dsn: String,
    /// Optional direct DSN for the LISTEN connection and advisory locks, for when `dsn` goes through a
    /// transaction pooler (PgBouncer in transaction mode breaks LISTEN and session locks). Default: `None` (use `dsn`).
    pub listen_dsn: Option<String>,
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
    pub local_ttl: Duration,
    /// TTL used when a call passes `Ttl::Default` (or `None`). Default: 300 s.
    pub default_ttl: Duration,
    /// Connections opened at start-up. Default: 1.
    pub min_pool_size: usize,
    /// Most pooled connections per cache instance. Default: 16.
    pub max_pool_size: usize,
    /// Longest wait for a pooled connection, and for opening one. Default: 2 s.
    pub pool_timeout: Duration,
    /// `statement_timeout` of every pooled connection. Default: 5 s.
    pub statement_timeout: Duration,
    /// How long `get_or_set` waits for another process's fill before loading itself. Default: 5 s.
    pub lock_wait_timeout: Duration,
    /// Longest key in bytes. Default: 1024.
    pub max_key_bytes: usize,
    /// Largest value in bytes. Default: 16 MiB.
    pub max_value_bytes: usize,
    /// Create the table `UNLOGGED` (2-3x faster writes; emptied after a crash, not replicated).
    /// Only read by `init_db` when it creates the table. Default: `false`.
    pub unlogged: bool,
    /// How often the background sweeper deletes expired rows; `None` disables it. Default: 30 s.
    pub sweeper_interval: Option<Duration>,
    /// Rows deleted per sweeper statement. Default: 500.
    pub cleanup_batch_size: u32,
    /// How often the listener proves its connection alive. Local entries are not served while the last
    /// proof is older than twice this (the staleness bound while the listener is down). Default: 1 s.
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
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            dsn: String::new(),
            listen_dsn: None,
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
        }
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

    setters! {
        /// Sets [`disable_notify`](Self::disable_notify).
        disable_notify: bool,
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
        /// Sets [`fail_open`](Self::fail_open).
        fail_open: bool,
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
        if let Some(v) = var("PGCACHE_SWEEPER_INTERVAL") {
            let d = parse_duration("sweeper_interval", &v)?;
            s.sweeper_interval = (!d.is_zero()).then_some(d);
        }
        Ok(s)
    }

    /// Checks every field: identifiers, DSNs, limits.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] or [`Error::InvalidDsn`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        validate_identifier("schema_prefix", &self.schema_prefix, 0, 40)?;
        validate_identifier("notify_channel", &self.notify_channel, 1, 63)?;
        parse_dsn("dsn", &self.dsn)?;
        if let Some(listen) = &self.listen_dsn {
            parse_dsn("listen_dsn", listen)?;
        }
        let invalid = |name: &'static str, reason: &str| Error::InvalidSetting { name, reason: reason.to_owned() };
        if self.max_pool_size == 0 {
            return Err(invalid("max_pool_size", "must be at least 1"));
        }
        if self.min_pool_size > self.max_pool_size {
            return Err(invalid("min_pool_size", "must not exceed max_pool_size"));
        }
        if self.max_key_bytes == 0 || self.max_key_bytes > 1_000_000 {
            return Err(invalid("max_key_bytes", "must be between 1 and 1000000"));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > 1_000_000_000 {
            return Err(invalid(
                "max_value_bytes",
                "must be between 1 and 1000000000 (PostgreSQL's bytea limit is 1 GB)",
            ));
        }
        if self.cleanup_batch_size == 0 {
            return Err(invalid("cleanup_batch_size", "must be at least 1"));
        }
        for (name, d) in [
            ("default_ttl", self.default_ttl),
            ("pool_timeout", self.pool_timeout),
            ("statement_timeout", self.statement_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
        ] {
            if d.is_zero() {
                return Err(invalid(name, "must be greater than zero"));
            }
        }
        if self.sweeper_interval.is_some_and(|d| d.is_zero()) {
            return Err(invalid("sweeper_interval", "must be greater than zero (use None to disable)"));
        }
        if crate::ttl::millis(self.default_ttl).is_none() {
            return Err(invalid("default_ttl", "is too large"));
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

/// Parses `250ms`, `5s`, `10m`, `1h` or a bare number of seconds.
pub(crate) fn parse_duration(name: &'static str, value: &str) -> Result<Duration> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let bad =
        || Error::InvalidSetting { name, reason: format!("{value:?} is not a duration (e.g. 250ms, 5s, 10m, 1h)") };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs).ok_or_else(bad);
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        _ => Err(bad()),
    }
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
        assert!(parse_duration("x", "abc").is_err());
        assert!(parse_duration("x", "5d").is_err());
        assert!(parse_duration("x", "").is_err());
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
        ];
        let s = CacheSettings::from_lookup(|n| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string()))
            .expect("valid env");
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
}
