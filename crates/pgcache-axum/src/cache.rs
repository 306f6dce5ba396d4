//! [`Cache`]: the core cache as an axum extractor, taken from the app state through [`FromRef`].

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use bytes::Bytes;
use pgcache_core::{
    CacheStatus, CacheStore, Entry, Expiry, JsonCodec, Loaded, Loader, Result, SetOptions, Ttl, TypedCache,
};

/// A type-erased handle on a cache ([`PostgresCache`](pgcache_core::PostgresCache),
/// [`NullCache`](pgcache_core::NullCache) or any [`CacheStore`]), cheap to clone, with JSON for typed
/// values.
///
/// Put one in the app state; handlers then take it as an extractor (like [`State`](axum::extract::State),
/// it works for any state `S` with `Cache: FromRef<S>`) and use the whole [`CacheStore`] and
/// [`TypedCache`] API: `get_or_set`, `delete` after an update, `delete_tags`, `status`...
/// [`Cached<T>`](crate::Cached) finds its cache the same way.
///
/// ```
/// use axum::{extract::FromRef, routing::post, Router};
/// use pgcache_axum::Cache;
/// use pgcache_core::prelude::*;
///
/// #[derive(Clone, FromRef)]
/// struct AppState {
///     cache: Cache,
/// }
///
/// async fn rename(cache: Cache) -> &'static str {
///     // ... update the row, then drop every node's copy:
///     match cache.delete("profile:1").await {
///         Ok(_) => "renamed",
///         Err(_) => "renamed, cache not invalidated",
///     }
/// }
///
/// let app: Router = Router::new()
///     .route("/profiles/1/rename", post(rename))
///     .with_state(AppState { cache: Cache::new(NullCache::new()) });
/// ```
#[derive(Clone)]
pub struct Cache {
    store: Arc<dyn CacheStore>,
}

impl Cache {
    /// Wraps a cache.
    pub fn new(store: impl CacheStore) -> Self {
        Self { store: Arc::new(store) }
    }

    /// Wraps a cache that is already shared.
    pub fn from_arc(store: Arc<dyn CacheStore>) -> Self {
        Self { store }
    }

    /// The underlying cache, for APIs that take an `Arc<dyn CacheStore>`.
    pub fn store(&self) -> &Arc<dyn CacheStore> {
        &self.store
    }
}

impl From<Arc<dyn CacheStore>> for Cache {
    fn from(store: Arc<dyn CacheStore>) -> Self {
        Self::from_arc(store)
    }
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache").field("status", &self.store.status()).finish()
    }
}

impl<S> FromRequestParts<S> for Cache
where
    Cache: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Infallible;

    async fn from_request_parts(_parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Cache::from_ref(state))
    }
}

#[async_trait]
impl CacheStore for Cache {
    async fn get_entry(&self, key: &str) -> Result<Option<Entry>> {
        self.store.get_entry(key).await
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        self.store.get_bytes(key).await
    }

    async fn get_many_bytes(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        self.store.get_many_bytes(keys).await
    }

    async fn set_entry(&self, key: &str, value: Bytes, options: &SetOptions) -> Result<i64> {
        self.store.set_entry(key, value, options).await
    }

    async fn set_bytes(&self, key: &str, value: Bytes, ttl: Ttl) -> Result<()> {
        self.store.set_bytes(key, value, ttl).await
    }

    async fn set_many_bytes(&self, items: &[(&str, Bytes)], ttl: Ttl) -> Result<()> {
        self.store.set_many_bytes(items, ttl).await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.store.delete(key).await
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        self.store.delete_many(keys).await
    }

    async fn delete_tags(&self, tags: &[&str]) -> Result<u64> {
        self.store.delete_tags(tags).await
    }

    async fn clear(&self) -> Result<u64> {
        self.store.clear().await
    }

    async fn ttl(&self, key: &str) -> Result<Option<Expiry>> {
        self.store.ttl(key).await
    }

    async fn touch(&self, key: &str, ttl: Ttl) -> Result<bool> {
        self.store.touch(key, ttl).await
    }

    async fn cleanup_expired(&self) -> Result<u64> {
        self.store.cleanup_expired().await
    }

    async fn get_or_load(&self, key: &str, loader: Loader) -> Result<Loaded> {
        self.store.get_or_load(key, loader).await
    }

    fn status(&self) -> CacheStatus {
        self.store.status()
    }

    fn default_ttl(&self) -> Duration {
        self.store.default_ttl()
    }
}

impl TypedCache for Cache {
    type Codec = JsonCodec;

    fn codec(&self) -> &JsonCodec {
        &JsonCodec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgcache_core::NullCache;

    #[tokio::test]
    async fn delegates_to_the_wrapped_cache() {
        let cache = Cache::new(NullCache::new());
        // NullCache validates keys: the handle must pass errors through unchanged.
        assert!(matches!(cache.delete("").await, Err(pgcache_core::Error::EmptyKey)));
        let n: u32 = cache.get_or_set("n", || async { Ok::<_, std::io::Error>(7) }, None).await.unwrap();
        assert_eq!(n, 7);
        assert_eq!(cache.default_ttl(), Duration::from_secs(300));
        assert_eq!(cache.status().pool_max_size, 0);
    }

    #[tokio::test]
    async fn extracts_from_state_through_from_ref() {
        #[derive(Clone)]
        struct AppState {
            cache: Cache,
        }
        impl FromRef<AppState> for Cache {
            fn from_ref(state: &AppState) -> Self {
                state.cache.clone()
            }
        }
        let state = AppState { cache: Cache::new(NullCache::new()) };
        let (mut parts, ()) = axum::http::Request::new(()).into_parts();
        let Ok(cache) = Cache::from_request_parts(&mut parts, &state).await;
        assert!(Arc::ptr_eq(cache.store(), state.cache.store()));
    }
}
