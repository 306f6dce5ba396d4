//! [`HttpCache`]: programmatic purges of what a [`PgCacheLayer`](crate::PgCacheLayer) stored, without
//! the layer.

use http::Uri;
use pgcache_core::{CacheStore, Codec, JsonCodec, SharedCache};

use crate::config::DEFAULT_NAMESPACE;
use crate::error::PurgeError;
use crate::key;

/// A handle that purges the responses a [`PgCacheLayer`](crate::PgCacheLayer) stored, on every node.
///
/// Build it from the same cache and namespace as the layer (or take it from the layer with
/// [`PgCacheLayer::http_cache`](crate::PgCacheLayer::http_cache)) and keep it in your application
/// state; it is cheap to clone.
///
/// ```no_run
/// # async fn demo(cache: pgcache_core::PostgresCache) -> Result<(), pgcache_tower::PurgeError> {
/// use pgcache_tower::{HttpCache, PgCacheLayer};
///
/// let layer = PgCacheLayer::new(cache.clone()).namespace("shop:");
/// let http = HttpCache::new(cache).namespace("shop:"); // the same as layer.http_cache()
/// http.purge_uri(&"http://shop.example/products/42".parse().unwrap()).await?;
/// http.purge_tags(&["product-42"]).await?;
/// http.purge_all().await?;
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpCache {
    store: SharedCache,
    namespace: String,
}

impl std::fmt::Debug for HttpCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCache").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

impl HttpCache {
    /// A handle on `cache` (anything [`PgCacheLayer::new`](crate::PgCacheLayer::new) accepts), for the
    /// default namespace (`http:`, as a layer that sets none).
    pub fn new<C: Codec + Clone>(cache: impl Into<SharedCache<C>>) -> Self {
        Self::from_parts(cache.into().with_codec(JsonCodec), DEFAULT_NAMESPACE.to_owned())
    }

    pub(crate) fn from_parts(store: SharedCache, namespace: String) -> Self {
        Self { store, namespace }
    }

    /// The namespace of the layer whose responses this handle purges (its
    /// [`PgCacheLayer::namespace`](crate::PgCacheLayer::namespace)). Default: `http:`.
    ///
    /// ```
    /// # let http = pgcache_tower::HttpCache::new(pgcache_core::NullCache::new());
    /// let http = http.namespace("shop:");
    /// ```
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Purges every stored response of a URI (any method, query and `Vary` variant), on every node;
    /// returns how many entries were deleted.
    ///
    /// # Errors
    /// [`PurgeError::RelativeUri`] when the URI has no host (`http://host/path` is needed);
    /// [`PurgeError::Cache`] when the cache fails.
    ///
    /// # Cancel safety
    /// Dropping the future may leave the purge done or not: purge again.
    pub async fn purge_uri(&self, uri: &Uri) -> Result<u64, PurgeError> {
        let Some(authority) = uri.authority() else {
            return Err(PurgeError::RelativeUri { uri: uri.clone() });
        };
        let tag = key::uri_tag(&self.namespace, &authority.as_str().to_ascii_lowercase(), uri.path());
        Ok(self.store.delete_tags(&[tag.as_str()]).await?)
    }

    /// Purges every response tagged with any of these `Surrogate-Key` or `Cache-Groups` names, on
    /// every node; returns how many entries were deleted.
    ///
    /// # Errors
    /// [`PurgeError::Cache`] when the cache fails.
    ///
    /// # Cancel safety
    /// As [`purge_uri`](Self::purge_uri).
    pub async fn purge_tags(&self, tags: &[&str]) -> Result<u64, PurgeError> {
        let tags: Vec<String> = tags.iter().map(|t| key::surrogate_tag(&self.namespace, t)).collect();
        let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        Ok(self.store.delete_tags(&refs).await?)
    }

    /// Purges every response of this namespace, on every node; returns how many entries were deleted.
    ///
    /// # Errors
    /// [`PurgeError::Cache`] when the cache fails.
    ///
    /// # Cancel safety
    /// As [`purge_uri`](Self::purge_uri).
    pub async fn purge_all(&self) -> Result<u64, PurgeError> {
        let tag = key::all_tag(&self.namespace);
        Ok(self.store.delete_tags(&[tag.as_str()]).await?)
    }
}
