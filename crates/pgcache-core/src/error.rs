//! The one error type of `pgcache-core`.

use std::time::Duration;

/// A boxed error from user code (a loader) or a lower layer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of every fallible operation in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `pgcache-core`.
///
/// Messages name the culprit and, where there is one, the fix.
///
/// `Debug` prints the same message as `Display` (then the chain of causes), so a
/// `main() -> Result<(), Box<dyn std::error::Error>>` that fails shows the advice, not a struct dump.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key was empty.
    #[error("cache key is empty")]
    EmptyKey,
    /// A key contained a NUL character, which PostgreSQL `text` cannot hold.
    #[error("cache key contains a NUL character")]
    KeyContainsNul,
    /// A key was longer than [`CacheSettings::max_key_bytes`](crate::CacheSettings).
    #[error("cache key is {len} bytes, over the limit of {max} bytes (setting `max_key_bytes`)")]
    KeyTooLong {
        /// Length of the rejected key in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A value was larger than [`CacheSettings::max_value_bytes`](crate::CacheSettings).
    #[error("value for key {key:?} is {len} bytes, over the limit of {max} bytes (setting `max_value_bytes`)")]
    ValueTooLarge {
        /// The key the value was meant for (truncated to 128 chars).
        key: String,
        /// Length of the rejected value in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A tag was empty or too long.
    #[error("invalid tag {tag:?}: {reason}")]
    InvalidTag {
        /// The rejected tag (truncated to 128 chars).
        tag: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A setting had an invalid value.
    #[error("invalid setting `{name}`: {reason}")]
    InvalidSetting {
        /// The setting's name, as in [`CacheSettings`](crate::CacheSettings).
        name: &'static str,
        /// Why it was rejected and what is accepted.
        reason: String,
    },
    /// The DSN could not be parsed.
    #[error("invalid DSN in setting `{name}`: {source}")]
    InvalidDsn {
        /// `dsn` or `listen_dsn`.
        name: &'static str,
        /// The parser's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// PostgreSQL refused a connection because it has no free connection slots.
    #[error(
        "PostgreSQL has no free connection slots (SQLSTATE 53300): use fewer connections: lower `max_pool_size`, \
         set `disable_notify = true` (saves the LISTEN connection per process), share one cache per process, \
         or raise `max_connections` on the server"
    )]
    TooManyConnections {
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement failed or the connection broke. The message is the server's own (with its SQLSTATE,
    /// detail and hint) when the server answered.
    #[error("PostgreSQL error: {}", pg_message(.0))]
    Postgres(#[source] tokio_postgres::Error),
    /// A statement on the caller's sqlx connection failed (writes through
    /// [`PostgresCache::in_sqlx_transaction`](crate::PostgresCache::in_sqlx_transaction)).
    #[cfg(feature = "sqlx")]
    #[error("PostgreSQL error (sqlx): {0}")]
    Sqlx(#[source] sqlx::Error),
    /// No pooled connection could be had in time (server down, pool exhausted).
    #[error("could not get a database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A lazily connected cache ([`PostgresCache::connect_lazy`](crate::PostgresCache::connect_lazy))
    /// failed to connect recently and waits before trying again.
    #[error(
        "not connected to PostgreSQL (the last attempt failed: {last_error}); the next attempt is in {retry_in:?}"
    )]
    ConnectBackoff {
        /// Time until the next connection attempt.
        retry_in: Duration,
        /// Why the last attempt failed.
        last_error: String,
        /// Whether it failed because the database is out of reach (an outage: reads fail open), rather
        /// than a set-up error such as a wrong password or a missing schema (which surfaces).
        outage: bool,
    },
    /// An operation took longer than its configured timeout.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        what: &'static str,
        /// The configured timeout.
        after: Duration,
    },
    /// A value could not be encoded, or a stored value could not be decoded as the requested type.
    #[error("codec error for key {key:?}: {source}")]
    Codec {
        /// The key involved (truncated to 128 chars).
        key: String,
        /// The codec's error.
        #[source]
        source: BoxError,
    },
    /// The database has no pgcache schema for this prefix, or an older one.
    #[error(
        "pgcache schema for prefix {prefix:?} is at version {found}, this library needs {expected}: \
         run `PostgresCache::init_db(&settings)` once (at deploy or start-up) before connecting"
    )]
    SchemaOutdated {
        /// The configured `schema_prefix`.
        prefix: String,
        /// The version found (0 = not installed).
        found: i32,
        /// The version this library needs.
        expected: i32,
    },
    /// The database has a newer schema than this library knows.
    #[error("pgcache schema for prefix {prefix:?} is at version {found}, newer than this library's {expected}: upgrade pgcache")]
    SchemaTooNew {
        /// The configured `schema_prefix`.
        prefix: String,
        /// The version found.
        found: i32,
        /// The newest version this library knows.
        expected: i32,
    },
    /// The pgcache schema of this prefix is installed but damaged (a table, trigger or function was
    /// dropped or changed by hand).
    #[error(
        "pgcache schema for prefix {prefix:?} is damaged: {what}; run `PostgresCache::init_db(&settings)` to repair it"
    )]
    SchemaDamaged {
        /// The configured `schema_prefix`.
        prefix: String,
        /// What is missing or different.
        what: String,
    },
    /// A `get_or_set` caller waited `lock_wait_timeout` for another caller's fill of the key (which still
    /// holds the key's lock) and gave up rather than run the loader a second time. The key has no
    /// fail-safe value to serve instead.
    #[error("waited {waited:?} for another caller to load key {key:?} (setting `lock_wait_timeout`); its loader is still running")]
    LockTimeout {
        /// The key (truncated to 128 chars).
        key: String,
        /// The configured `lock_wait_timeout`.
        waited: Duration,
    },
    /// A loader overran `loader_hard_timeout`: it was dropped and nothing was stored.
    #[error("the loader of key {key:?} did not finish within {after:?} (setting `loader_hard_timeout`)")]
    LoaderTimeout {
        /// The key (truncated to 128 chars).
        key: String,
        /// The configured `loader_hard_timeout`.
        after: Duration,
    },
    /// A background refresh loaded a value, but the row had been rewritten or deleted while its loader
    /// ran: the newer write wins and the refreshed value is dropped.
    #[error("the refresh of key {key:?} was superseded by a newer write or delete; its value was not stored")]
    Superseded {
        /// The key (truncated to 128 chars).
        key: String,
    },
    /// The loader passed to `get_or_set` failed; nothing was cached.
    #[error("loader failed: {0}")]
    Loader(#[source] BoxError),
    /// The cache was closed with [`close`](crate::PostgresCache::close).
    #[error("the cache is closed")]
    Closed,
    /// The group-commit batch this write shared with other writes failed as a whole (its connection
    /// broke, or its statement overran): every write in it gets this error. As for a single write that
    /// loses its connection, the batch may or may not have been applied; this node's copies of its keys
    /// are evicted either way. See [`CacheSettings::group_commit`](crate::CacheSettings::group_commit).
    #[error("a group-commit batch of {writes} writes failed: {source}")]
    BatchFailed {
        /// How many writes (callers) shared the batch.
        writes: usize,
        /// What failed, shared by every write of the batch.
        #[source]
        source: std::sync::Arc<Error>,
    },
}

impl Error {
    /// Wraps a PostgreSQL error, recognising "too many connections".
    pub(crate) fn from_pg(err: tokio_postgres::Error) -> Self {
        if err.code() == Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS) {
            Error::TooManyConnections { source: err }
        } else {
            Error::Postgres(err)
        }
    }

    /// Wraps a pool error, recognising "too many connections".
    pub(crate) fn from_pool(err: deadpool_postgres::PoolError) -> Self {
        match err {
            deadpool_postgres::PoolError::Backend(pg) => Self::from_pg(pg),
            other => Error::Pool(other),
        }
    }

    /// True when every pooled connection was busy for the whole `pool_timeout` (the server may be fine).
    pub fn is_pool_busy(&self) -> bool {
        matches!(self, Error::Pool(deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)))
    }

    /// True when the error means the database could not be reached or answer in time: an outage, the
    /// case where reads fail open. A server that answers with an error about the request or the schema
    /// (a missing table, a wrong password, a value it refuses) is not an outage: that error surfaces.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Postgres(e) => is_outage(e),
            Error::Pool(deadpool_postgres::PoolError::Backend(e)) => is_outage(e),
            Error::Pool(_) | Error::Timeout { .. } | Error::TooManyConnections { .. } => true,
            Error::ConnectBackoff { outage, .. } => *outage,
            Error::BatchFailed { source, .. } => source.is_unavailable(),
            _ => false,
        }
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")?;
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            write!(f, "\n  caused by: {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

/// True for a driver error that means the server could not be reached or stopped answering: no
/// server-side SQLSTATE at all (I/O, closed connection), or a class-08 (connection), class-53
/// (insufficient resources), class-57 (operator intervention: shutdown, statement timeout) or class-58
/// (system) error.
fn is_outage(err: &tokio_postgres::Error) -> bool {
    match err.code() {
        None => err.as_db_error().is_none(),
        Some(code) => matches!(code.code().get(..2), Some("08" | "53" | "57" | "58")),
    }
}

/// The server's message for a driver error ("db error" alone says nothing), else the driver's.
fn pg_message(err: &tokio_postgres::Error) -> String {
    let Some(db) = err.as_db_error() else {
        return match std::error::Error::source(err) {
            Some(cause) => format!("{err}: {cause}"),
            None => err.to_string(),
        };
    };
    let mut out = format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
    if let Some(detail) = db.detail() {
        out.push_str(&format!("; detail: {detail}"));
    }
    if let Some(hint) = db.hint() {
        out.push_str(&format!("; hint: {hint}"));
    }
    out
}

/// Shortens user text for error messages so an error never carries a megabyte key.
pub(crate) fn excerpt(text: &str) -> String {
    const MAX: usize = 128;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_respects_char_boundaries() {
        let long = "é".repeat(200);
        let short = excerpt(&long);
        assert!(short.ends_with('…'));
        assert!(short.len() <= 128 + '…'.len_utf8());
        assert_eq!(excerpt("abc"), "abc");
    }
}
