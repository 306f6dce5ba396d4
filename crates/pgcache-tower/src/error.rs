//! [`PurgeError`], the error of [`HttpCache`](crate::HttpCache)'s purges.
//!
//! The service itself has no error of its own: it keeps the inner service's error type, and cache
//! failures fall through to the inner service (see the crate docs, "Failure").

/// Why a purge of [`HttpCache`](crate::HttpCache) failed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use pgcache_core::NullCache;
/// use pgcache_tower::{HttpCache, PurgeError};
///
/// let http = HttpCache::new(NullCache::new());
/// let err = http.purge_uri(&"/products/42".parse().unwrap()).await.unwrap_err();
/// assert!(matches!(err, PurgeError::RelativeUri { .. }));
/// assert_eq!(err.to_string(), "cannot purge `/products/42`: purge_uri needs an absolute URI with a host (http://host/path)");
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PurgeError {
    /// [`purge_uri`](crate::HttpCache::purge_uri) got a URI without an authority: entries are tagged
    /// by host and path, so the host is needed (`http://shop.example/products/42`, not `/products/42`).
    #[error("cannot purge `{uri}`: purge_uri needs an absolute URI with a host (http://host/path)")]
    RelativeUri {
        /// The URI as given.
        uri: http::Uri,
    },
    /// The cache failed to delete the entries (PostgreSQL unreachable, a timeout, ...). Nothing or
    /// only part may have been purged: retry, since a lost purge leaves stale responses everywhere.
    #[error("the cache could not purge the entries")]
    Cache(#[source] pgcache_core::Error),
}

impl From<pgcache_core::Error> for PurgeError {
    fn from(err: pgcache_core::Error) -> Self {
        Self::Cache(err)
    }
}
