//! [`Cache`]: the app's cache as an axum extractor, taken from the app state through [`FromRef`].

use std::convert::Infallible;
use std::ops::Deref;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use pgcache_core::{Codec, JsonCodec, SharedCache};

/// The app's cache ([`PostgresCache`](pgcache_core::PostgresCache), [`NullCache`](pgcache_core::NullCache)
/// or any [`CacheStore`](pgcache_core::CacheStore)) as a handler argument: a [`SharedCache`], cheap to
/// clone, with the wrapped cache's codec `C` for typed values.
///
/// Put one in the app state; handlers then take it as an extractor (like [`State`](axum::extract::State),
/// it works for any state `S` with `Cache<C>: FromRef<S>`) and use the whole
/// [`CacheStore`](pgcache_core::CacheStore) and [`TypedCache`](pgcache_core::TypedCache) API through it:
/// `get_or_set`, `delete` after an update, `delete_tags`, `status`... [`Cached<T>`](crate::Cached) finds
/// its cache the same way. The same handle goes to `pgcache_tower::PgCacheLayer::new` (it converts into
/// a [`SharedCache`]), so the HTTP layer and the extractors share one cache.
///
/// `#[derive(FromRef)]` needs axum's `macros` feature.
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
/// let cache = Cache::new(NullCache::new());
/// let app: Router = Router::new()
///     .route("/profiles/1/rename", post(rename))
///     // The HTTP layer caches into the same cache as the handlers.
///     .layer(pgcache_tower::PgCacheLayer::new(cache.clone()))
///     .with_state(AppState { cache });
/// ```
#[derive(Clone, Debug)]
pub struct Cache<C = JsonCodec>(SharedCache<C>);

impl<C: Codec + Clone> Cache<C> {
    /// Wraps a cache (anything that converts into a [`SharedCache`], keeping its codec).
    pub fn new(cache: impl Into<SharedCache<C>>) -> Self {
        Self(cache.into())
    }
}

impl<C> Deref for Cache<C> {
    type Target = SharedCache<C>;

    fn deref(&self) -> &SharedCache<C> {
        &self.0
    }
}

impl<C> From<Cache<C>> for SharedCache<C> {
    fn from(cache: Cache<C>) -> Self {
        cache.0
    }
}

impl<S, C> FromRequestParts<S> for Cache<C>
where
    Cache<C>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Infallible;

    async fn from_request_parts(_parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Cache::from_ref(state))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use pgcache_core::{CacheStore, NullCache, TypedCache};

    use super::*;

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

    #[test]
    fn keeps_the_wrapped_caches_codec() {
        #[derive(Clone, Debug, PartialEq)]
        struct Upper;
        impl Codec for Upper {
            fn encode<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<bytes::Bytes, pgcache_core::BoxError> {
                JsonCodec.encode(value)
            }
            fn decode<T: serde::de::DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, pgcache_core::BoxError> {
                JsonCodec.decode(bytes)
            }
        }
        let cache: Cache<Upper> = Cache::new(NullCache::new().with_codec(Upper));
        assert_eq!(cache.codec(), &Upper);
    }
}
