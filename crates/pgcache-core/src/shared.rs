//! [`SharedCache`]: any cache behind one cheap, clonable handle, with the wrapped cache's codec.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::cache::PostgresCache;
use crate::cache_store::{CacheStatus, CacheStore, DynLoader, DynOutput, Entry, LoadError, Loaded, SetOptions};
use crate::codec::{Codec, JsonCodec};
use crate::error::Result;
use crate::null::NullCache;
use crate::ttl::{Expiry, Ttl};
use crate::typed::TypedCache;

/// Any cache ([`PostgresCache`], [`NullCache`], or your own [`CacheStore`]) behind one type-erased
/// handle that is cheap to clone, keeping the wrapped cache's codec for typed values.
///
/// It is what front ends hold: put one in an app's state, hand it to `pgcache-tower`'s layer and to
/// `pgcache-axum`'s extractors, and swap a `PostgresCache` for a `NullCache` in tests without changing a
/// type. Every [`CacheStore`] and [`TypedCache`] method goes straight to the wrapped cache.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use pgcache_core::prelude::*;
/// use pgcache_core::SharedCache;
///
/// let cache = SharedCache::new(NullCache::new());
/// let same = cache.clone();
/// same.set("k", &1, None).await.unwrap();
/// assert_eq!(cache.get::<i32>("k").await.unwrap(), None); // a NullCache stores nothing
/// # });
/// ```
#[derive(Clone)]
pub struct SharedCache<C = JsonCodec> {
    store: Arc<dyn CacheStore>,
    codec: C,
}

impl<C: Codec + Clone> SharedCache<C> {
    /// Shares `cache`, with its codec.
    pub fn new<T: TypedCache<Codec = C>>(cache: T) -> Self {
        let codec = cache.codec().clone();
        Self { store: Arc::new(cache), codec }
    }

    /// The same handle with another codec for typed values.
    pub fn with_codec<D: Codec + Clone>(self, codec: D) -> SharedCache<D> {
        SharedCache { store: self.store, codec }
    }
}

impl<C> SharedCache<C> {
    /// The wrapped cache.
    pub fn store(&self) -> &Arc<dyn CacheStore> {
        &self.store
    }
}

impl SharedCache<JsonCodec> {
    /// Shares a cache that is already behind an `Arc`, with JSON for typed values.
    pub fn from_store(store: Arc<dyn CacheStore>) -> Self {
        Self { store, codec: JsonCodec }
    }
}

impl<C> std::fmt::Debug for SharedCache<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCache").field("status", &self.store.status()).finish_non_exhaustive()
    }
}

impl<C: Codec + Clone> From<PostgresCache<C>> for SharedCache<C> {
    fn from(cache: PostgresCache<C>) -> Self {
        Self::new(cache)
    }
}

impl<C: Codec + Clone> From<NullCache<C>> for SharedCache<C> {
    fn from(cache: NullCache<C>) -> Self {
        Self::new(cache)
    }
}

impl From<Arc<dyn CacheStore>> for SharedCache<JsonCodec> {
    fn from(store: Arc<dyn CacheStore>) -> Self {
        Self::from_store(store)
    }
}

/// The boxed future of an `#[async_trait]` method, as the trait declares it.
type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// The one place a cache is forwarded by hand: every method, provided ones included, so that a wrapped
// cache's own fast paths (`get_bytes` on a local hit) are kept. The reads hand back the wrapped cache's
// own boxed future instead of boxing a second one around it: a hit through the handle allocates no more
// than a hit on the cache itself.
#[async_trait]
impl<C: Send + Sync + 'static> CacheStore for SharedCache<C> {
    fn get_entry<'s, 'k, 'f>(&'s self, key: &'k str) -> Boxed<'f, Result<Option<Entry>>>
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        self.store.get_entry(key)
    }

    fn peek_local(&self, key: &str) -> Option<Entry> {
        self.store.peek_local(key)
    }

    fn get_bytes<'s, 'k, 'f>(&'s self, key: &'k str) -> Boxed<'f, Result<Option<Bytes>>>
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        self.store.get_bytes(key)
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

    fn get_or_load_dyn<'s, 'k, 'f>(
        &'s self,
        key: &'k str,
        loader: DynLoader,
    ) -> Boxed<'f, std::result::Result<Loaded<DynOutput>, LoadError<DynOutput>>>
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        self.store.get_or_load_dyn(key, loader)
    }

    fn status(&self) -> CacheStatus {
        self.store.status()
    }

    fn default_ttl(&self) -> Duration {
        self.store.default_ttl()
    }
}

impl<C: Codec + Clone> TypedCache for SharedCache<C> {
    type Codec = C;

    fn codec(&self) -> &C {
        &self.codec
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A store that counts `get_bytes` calls apart from `get_entry` ones.
    struct Counting {
        inner: NullCache,
        get_bytes: AtomicUsize,
    }

    #[async_trait]
    impl CacheStore for Counting {
        async fn get_entry(&self, key: &str) -> Result<Option<Entry>> {
            self.inner.get_entry(key).await
        }
        async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
            self.get_bytes.fetch_add(1, Ordering::SeqCst);
            self.inner.get_bytes(key).await
        }
        async fn get_many_bytes(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
            self.inner.get_many_bytes(keys).await
        }
        async fn set_entry(&self, key: &str, value: Bytes, options: &SetOptions) -> Result<i64> {
            self.inner.set_entry(key, value, options).await
        }
        async fn set_many_bytes(&self, items: &[(&str, Bytes)], ttl: Ttl) -> Result<()> {
            self.inner.set_many_bytes(items, ttl).await
        }
        async fn delete(&self, key: &str) -> Result<bool> {
            self.inner.delete(key).await
        }
        async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
            self.inner.delete_many(keys).await
        }
        async fn delete_tags(&self, tags: &[&str]) -> Result<u64> {
            self.inner.delete_tags(tags).await
        }
        async fn clear(&self) -> Result<u64> {
            self.inner.clear().await
        }
        async fn ttl(&self, key: &str) -> Result<Option<Expiry>> {
            self.inner.ttl(key).await
        }
        async fn touch(&self, key: &str, ttl: Ttl) -> Result<bool> {
            self.inner.touch(key, ttl).await
        }
        async fn cleanup_expired(&self) -> Result<u64> {
            self.inner.cleanup_expired().await
        }
        async fn get_or_load_dyn(
            &self,
            key: &str,
            loader: DynLoader,
        ) -> std::result::Result<Loaded<DynOutput>, LoadError<DynOutput>> {
            self.inner.get_or_load_dyn(key, loader).await
        }
        fn status(&self) -> CacheStatus {
            self.inner.status()
        }
        fn default_ttl(&self) -> Duration {
            self.inner.default_ttl()
        }
    }

    #[tokio::test]
    async fn the_wrapped_caches_fast_paths_are_kept() {
        let store = Arc::new(Counting { inner: NullCache::new(), get_bytes: AtomicUsize::new(0) });
        let shared = SharedCache::from_store(Arc::clone(&store) as Arc<dyn CacheStore>);
        let _ = shared.get::<u32>("k").await;
        let _ = shared.get_bytes("k").await;
        assert_eq!(store.get_bytes.load(Ordering::SeqCst), 2, "get and get_bytes reach the store's get_bytes");
    }

    #[tokio::test]
    async fn typed_loads_and_errors_come_back_typed() {
        let shared = SharedCache::new(NullCache::new());
        let loaded = shared
            .get_or_load("k", || async {
                Ok::<_, std::io::Error>(crate::Fill::new("1", Ttl::Default).with_output(1u8))
            })
            .await;
        assert!(matches!(loaded, Ok(Loaded { output: Some(1u8), .. })));
        let failed = shared.get_or_load("k", || async { Err::<crate::Fill, _>(42u16) }).await;
        assert!(matches!(failed, Err(LoadError::Loader(42u16))));
        let bad_key = shared.get_or_load("", || async { Ok::<_, u16>(crate::Fill::new("x", Ttl::Default)) }).await;
        assert!(matches!(bad_key, Err(LoadError::Cache(crate::Error::EmptyKey))));
    }
}
