//! Time-to-live: what a caller asks for ([`Ttl`]) and what an entry has left ([`Expiry`]).
//!
//! One rule everywhere: [`Ttl::Default`] (what `None` converts to) means the configured
//! `default_ttl`; "never expires" is its own value, [`Ttl::Never`], not a magic zero. Expiry instants are
//! computed by PostgreSQL (`now() + ttl`) and stored as `timestamptz`, so neither the client's clock nor
//! the server's or session's time zone matters.

use std::time::Duration;

/// How long a written entry lives.
///
/// ```
/// use std::time::Duration;
/// use pgcache_core::Ttl;
///
/// assert_eq!(Ttl::from(None), Ttl::Default);
/// assert_eq!(Ttl::from(Some(Duration::from_secs(5))), Ttl::After(Duration::from_secs(5)));
/// assert_eq!(Ttl::from(Duration::from_secs(5)), Ttl::After(Duration::from_secs(5)));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Ttl {
    /// The cache's configured `default_ttl`.
    #[default]
    Default,
    /// Expires this long after the write commits (by the database clock).
    After(Duration),
    /// Never expires; only a delete removes it.
    Never,
}

impl From<Option<Duration>> for Ttl {
    fn from(ttl: Option<Duration>) -> Self {
        ttl.map_or(Ttl::Default, Ttl::After)
    }
}

impl From<Duration> for Ttl {
    fn from(ttl: Duration) -> Self {
        Ttl::After(ttl)
    }
}

impl Ttl {
    /// The TTL in whole milliseconds to bind into SQL (`NULL` = never), with `Default` resolved.
    /// Sub-millisecond TTLs round up to 1 ms so they never mean "never"; absurdly large ones saturate.
    pub(crate) fn to_sql_millis(self, default: Duration) -> Option<i64> {
        let d = match self {
            Ttl::Default => default,
            Ttl::After(d) => d,
            Ttl::Never => return None,
        };
        Some(millis(d).unwrap_or(i64::MAX / 1000).max(1))
    }

    /// The expiry of an entry written now with this TTL.
    pub(crate) fn expiry(self, default: Duration) -> Expiry {
        self.resolve(default).map_or(Expiry::Never, Expiry::In)
    }

    /// The duration this TTL stands for, `None` for never.
    pub(crate) fn resolve(self, default: Duration) -> Option<Duration> {
        match self {
            Ttl::Default => Some(default),
            Ttl::After(d) => Some(d),
            Ttl::Never => None,
        }
    }
}

/// How long a stored entry has left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Expiry {
    /// The entry never expires.
    Never,
    /// The entry expires after this much more time.
    In(Duration),
}

impl Expiry {
    /// From the remaining milliseconds the database reported (`NULL` = never).
    pub(crate) fn from_sql_millis(ms: Option<i64>) -> Self {
        match ms {
            None => Expiry::Never,
            Some(ms) => Expiry::In(Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        }
    }

    /// The expiry `elapsed` later.
    pub(crate) fn less(self, elapsed: Duration) -> Self {
        match self {
            Expiry::Never => Expiry::Never,
            Expiry::In(left) => Expiry::In(left.saturating_sub(elapsed)),
        }
    }

    /// The remaining time, `None` for never.
    pub fn remaining(self) -> Option<Duration> {
        match self {
            Expiry::Never => None,
            Expiry::In(d) => Some(d),
        }
    }
}

/// Whole milliseconds of `d`, rounded up, if they fit a PostgreSQL interval comfortably.
pub(crate) fn millis(d: Duration) -> Option<i64> {
    // Cap at ~100 years: PostgreSQL intervals and timestamps are fine far beyond that, overflow is not.
    const MAX_MS: u128 = 100 * 366 * 24 * 3600 * 1000;
    let ms = d.as_nanos().div_ceil(1_000_000);
    i64::try_from(ms).ok().filter(|_| ms <= MAX_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_resolves_to_setting() {
        let default = Duration::from_secs(300);
        assert_eq!(Ttl::Default.to_sql_millis(default), Some(300_000));
        assert_eq!(Ttl::Never.to_sql_millis(default), None);
        assert_eq!(Ttl::After(Duration::from_micros(1)).to_sql_millis(default), Some(1));
        assert_eq!(Ttl::After(Duration::ZERO).to_sql_millis(default), Some(1));
        assert_eq!(Ttl::After(Duration::from_millis(1500)).to_sql_millis(default), Some(1500));
        assert!(Ttl::After(Duration::MAX).to_sql_millis(default).is_some());
    }

    #[test]
    fn expiry_from_sql() {
        assert_eq!(Expiry::from_sql_millis(None), Expiry::Never);
        assert_eq!(Expiry::from_sql_millis(Some(-5)), Expiry::In(Duration::ZERO));
        assert_eq!(Expiry::from_sql_millis(Some(1200)).remaining(), Some(Duration::from_millis(1200)));
    }

    #[test]
    fn millis_rounds_up_and_caps() {
        assert_eq!(millis(Duration::from_nanos(1)), Some(1));
        assert_eq!(millis(Duration::from_secs(1)), Some(1000));
        assert_eq!(millis(Duration::MAX), None);
    }
}
