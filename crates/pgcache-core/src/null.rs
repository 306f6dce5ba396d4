//! [`NullCache`]: the same surface, stores nothing. For tests and local development.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::cache_store::{
    CacheStatus, CacheStore, DynLoader, DynOutput, Entry, ListenerState, LoadError, Loaded, SetOptions,
};
use crate::codec::{Codec, JsonCodec};
use crate::error::Result;
use crate::ttl::{Expiry, Ttl};
use crate::typed::TypedCache;
use crate::validate;

/// A cache that stores nothing: `get` is always `None`, writes succeed and vanish, `get_or_set` always
/// runs the loader. Input is validated like [`PostgresCache`](crate::PostgresCache) does, so a bad key
/// fails the same way in tests as in production.
///
/// ```
/// # tokio_test_block_on(async {
/// use pgcache_core::prelude::*;
///
/// let cache = NullCache::new();
/// cache.set("noop", &"value", None).await.unwrap();
/// assert_eq!(cache.get::<String>("noop").await.unwrap(), None);
/// let v: u32 = cache.get_or_set("n", || async { Ok::<_, std::io::Error>(7) }, None).await.unwrap();
/// assert_eq!(v, 7);
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct NullCache<C = JsonCodec> {
    codec: C,
    max_key_bytes: usize,
    default_ttl: Duration,
}

impl Default for NullCache<JsonCodec> {
    fn default() -> Self {
        Self::new()
    }
}

impl NullCache<JsonCodec> {
    /// A null cache with the default key limit (1024 bytes) and JSON codec.
    pub fn new() -> Self {
        Self { codec: JsonCodec, max_key_bytes: 1024, default_ttl: Duration::from_secs(300) }
    }
}

impl<C> NullCache<C> {
    /// The same cache with another codec.
    pub fn with_codec<D: Codec + Clone>(self, codec: D) -> NullCache<D> {
        NullCache { codec, max_key_bytes: self.max_key_bytes, default_ttl: self.default_ttl }
    }

    /// Does nothing; mirrors [`PostgresCache::close`](crate::PostgresCache::close).
    pub async fn close(&self) {}

    fn check(&self, key: &str) -> Result<()> {
        validate::key(key, self.max_key_bytes)
    }
}

#[async_trait]
impl<C: Send + Sync + 'static> CacheStore for NullCache<C> {
    async fn get_entry(&self, key: &str) -> Result<Option<Entry>> {
        self.check(key).map(|()| None)
    }

    async fn get_many_bytes(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        keys.iter().try_for_each(|k| self.check(k))?;
        Ok(vec![None; keys.len()])
    }

    async fn set_entry(&self, key: &str, _value: Bytes, options: &SetOptions) -> Result<i64> {
        self.check(key)?;
        validate::tags(&options.tags)?;
        Ok(0)
    }

    async fn set_many_bytes(&self, items: &[(&str, Bytes)], _ttl: Ttl) -> Result<()> {
        items.iter().try_for_each(|(k, _)| self.check(k))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.check(key).map(|()| false)
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        keys.iter().try_for_each(|k| self.check(k)).map(|()| 0)
    }

    async fn delete_tags(&self, tags: &[&str]) -> Result<u64> {
        validate::tags(tags).map(|()| 0)
    }

    async fn clear(&self) -> Result<u64> {
        Ok(0)
    }

    async fn ttl(&self, key: &str) -> Result<Option<Expiry>> {
        self.check(key).map(|()| None)
    }

    async fn touch(&self, key: &str, _ttl: Ttl) -> Result<bool> {
        self.check(key).map(|()| false)
    }

    async fn cleanup_expired(&self) -> Result<u64> {
        Ok(0)
    }

    async fn get_or_load_dyn(
        &self,
        key: &str,
        loader: DynLoader,
    ) -> std::result::Result<Loaded<DynOutput>, LoadError<DynOutput>> {
        self.check(key)?;
        let fill = loader.run().await.map_err(LoadError::Loader)?;
        let expiry = fill.options.ttl.expiry(self.default_ttl);
        Ok(Loaded::by_loader(fill, Err(None), expiry))
    }

    fn status(&self) -> CacheStatus {
        CacheStatus {
            listener: ListenerState::Disabled,
            pool_size: 0,
            pool_available: 0,
            pool_max_size: 0,
            pool_waiting: 0,
            local_entries: 0,
            local_bytes: 0,
            closed: false,
            replica_reads: 0,
            replica_fallbacks: 0,
        }
    }

    fn default_ttl(&self) -> Duration {
        self.default_ttl
    }
}

impl<C: Codec + Clone> TypedCache for NullCache<C> {
    type Codec = C;

    fn codec(&self) -> &C {
        &self.codec
    }
}
