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
    /// Expires this long after the write commits (by the database clock). Longer than 2^31 seconds
    /// (about 68 years, up to `Duration::MAX`) counts as 2^31 seconds, as RFC 9111 §1.2.2 does.
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
    /// Sub-millisecond TTLs round up to 1 ms so they never mean "never"; longer ones than [`MAX_TTL`]
    /// are clamped to it.
    pub(crate) fn to_sql_millis(self, default: Duration) -> Option<i64> {
        self.resolve(default).map(|d| millis(d).max(1))
    }

    /// The expiry of an entry written now with this TTL.
    pub(crate) fn expiry(self, default: Duration) -> Expiry {
        self.resolve(default).map_or(Expiry::Never, Expiry::In)
    }

    /// The duration this TTL stands for, clamped to [`MAX_TTL`]; `None` for never.
    pub(crate) fn resolve(self, default: Duration) -> Option<Duration> {
        match self {
            Ttl::Default => Some(default.min(MAX_TTL)),
            Ttl::After(d) => Some(d.min(MAX_TTL)),
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

/// The longest TTL an entry gets: 2^31 seconds (about 68 years), the value RFC 9111 §1.2.2 tells a cache
/// to use for any larger delta-seconds. Longer TTLs (up to `Duration::MAX`) are clamped to it, so that
/// `now() + ttl` always fits a PostgreSQL interval and timestamp.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(1 << 31);

/// Whole milliseconds of `d`, rounded up, clamped to [`MAX_TTL`].
pub(crate) fn millis(d: Duration) -> i64 {
    let ms = d.min(MAX_TTL).as_nanos().div_ceil(1_000_000);
    // MAX_TTL is 2^31 * 1000 ms, far below i64::MAX.
    i64::try_from(ms).unwrap_or(i64::MAX)
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
        let max_ms = (1_i64 << 31) * 1000;
        assert_eq!(Ttl::After(Duration::MAX).to_sql_millis(default), Some(max_ms));
        assert_eq!(Ttl::Default.to_sql_millis(Duration::MAX), Some(max_ms));
        assert_eq!(Ttl::After(Duration::MAX).expiry(default), Expiry::In(MAX_TTL));
    }

    #[test]
    fn expiry_from_sql() {
        assert_eq!(Expiry::from_sql_millis(None), Expiry::Never);
        assert_eq!(Expiry::from_sql_millis(Some(-5)), Expiry::In(Duration::ZERO));
        assert_eq!(Expiry::from_sql_millis(Some(1200)).remaining(), Some(Duration::from_millis(1200)));
    }

    #[test]
    fn millis_rounds_up_and_clamps_to_2_pow_31_seconds() {
        assert_eq!(millis(Duration::from_nanos(1)), 1);
        assert_eq!(millis(Duration::from_secs(1)), 1000);
        assert_eq!(millis(MAX_TTL), (1 << 31) * 1000);
        assert_eq!(millis(Duration::MAX), (1 << 31) * 1000);
    }
}
