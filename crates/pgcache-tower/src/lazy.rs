//! A [`PostgresCache`] connected on first use, for `PgCacheLayer::new(settings)`.
//!
//! The first request runs `init_db` and `connect`; when that fails, requests are served by the handler
//! (the layer fails open) and the connection is retried at most once a second.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pgcache_core::{
    CacheSettings, CacheStatus, CacheStore, Entry, Error, Expiry, ListenerState, Loaded, Loader, NullCache,
    PostgresCache, SetOptions, Ttl,
};
use tokio::sync::OnceCell;

const RETRY_AFTER: Duration = Duration::from_secs(1);

pub(crate) struct LazyCache {
    settings: CacheSettings,
    cache: OnceCell<PostgresCache>,
    failed_at: Mutex<Option<Instant>>,
}

impl LazyCache {
    pub(crate) fn new(settings: CacheSettings) -> Self {
        Self { settings, cache: OnceCell::new(), failed_at: Mutex::new(None) }
    }

    async fn get(&self) -> Result<&PostgresCache, Error> {
        if let Some(cache) = self.cache.get() {
            return Ok(cache);
        }
        let recent_failure =
            self.failed_at.lock().map(|f| f.is_some_and(|at| at.elapsed() < RETRY_AFTER)).unwrap_or(false);
        if recent_failure {
            return Err(Error::Timeout { what: "connecting to PostgreSQL (retrying shortly)", after: RETRY_AFTER });
        }
        let result = self
            .cache
            .get_or_try_init(|| async {
                PostgresCache::init_db(&self.settings).await?;
                PostgresCache::connect(self.settings.clone()).await
            })
            .await;
        if let Err(e) = &result {
            tracing::warn!(target: "pgcache::tower", error = %e, "could not connect the HTTP cache; serving uncached");
            if let Ok(mut f) = self.failed_at.lock() {
                *f = Some(Instant::now());
            }
        }
        result
    }
}

#[async_trait]
impl CacheStore for LazyCache {
    async fn get_entry(&self, key: &str) -> Result<Option<Entry>, Error> {
        self.get().await?.get_entry(key).await
    }

    async fn get_many_bytes(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, Error> {
        self.get().await?.get_many_bytes(keys).await
    }

    async fn set_entry(&self, key: &str, value: Bytes, options: &SetOptions) -> Result<i64, Error> {
        self.get().await?.set_entry(key, value, options).await
    }

    async fn set_many_bytes(&self, items: &[(&str, Bytes)], ttl: Ttl) -> Result<(), Error> {
        self.get().await?.set_many_bytes(items, ttl).await
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        self.get().await?.delete(key).await
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<u64, Error> {
        self.get().await?.delete_many(keys).await
    }

    async fn delete_tags(&self, tags: &[&str]) -> Result<u64, Error> {
        self.get().await?.delete_tags(tags).await
    }

    async fn clear(&self) -> Result<u64, Error> {
        self.get().await?.clear().await
    }

    async fn ttl(&self, key: &str) -> Result<Option<Expiry>, Error> {
        self.get().await?.ttl(key).await
    }

    async fn touch(&self, key: &str, ttl: Ttl) -> Result<bool, Error> {
        self.get().await?.touch(key, ttl).await
    }

    async fn cleanup_expired(&self) -> Result<u64, Error> {
        self.get().await?.cleanup_expired().await
    }

    async fn get_or_load(&self, key: &str, loader: Loader) -> Result<Loaded, Error> {
        self.get().await?.get_or_load(key, loader).await
    }

    fn status(&self) -> CacheStatus {
        match self.cache.get() {
            Some(cache) => cache.status(),
            None => {
                let mut status = NullCache::new().status();
                status.listener = ListenerState::Reconnecting;
                status
            }
        }
    }

    fn default_ttl(&self) -> Duration {
        self.settings.default_ttl
    }
}
