//! The local (L1) cache: moka, bounded by bytes and by entries, with a lifetime per entry.
//!
//! This is the store only. What may be installed and served, and when it must go, is decided by
//! `coherence.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::Expiry as MokaExpiry;

use crate::ttl::Expiry;

/// Bookkeeping bytes counted per entry on top of key and value.
const ENTRY_OVERHEAD: usize = 96;

/// One locally cached value.
#[derive(Debug)]
pub(crate) struct LocalEntry {
    pub(crate) value: Bytes,
    pub(crate) version: i64,
    /// How long the entry may live locally: min(local TTL, remaining shared TTL at read time).
    pub(crate) lifetime: Duration,
    /// When it was read from the shared table (for the remaining TTL reported on a local hit).
    pub(crate) read_at: Instant,
    /// The shared expiry at read time.
    pub(crate) expiry: Expiry,
}

impl LocalEntry {
    /// The shared expiry as of now.
    pub(crate) fn expiry_now(&self) -> Expiry {
        self.expiry.less(self.read_at.elapsed())
    }
}

struct EntryLifetime;

impl MokaExpiry<Arc<str>, Arc<LocalEntry>> for EntryLifetime {
    fn expire_after_create(&self, _: &Arc<str>, value: &Arc<LocalEntry>, _: Instant) -> Option<Duration> {
        Some(value.lifetime)
    }

    fn expire_after_update(
        &self,
        _: &Arc<str>,
        value: &Arc<LocalEntry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.lifetime)
    }
}

/// The bounded local cache.
pub(crate) struct LocalCache {
    cache: Cache<Arc<str>, Arc<LocalEntry>>,
}

impl LocalCache {
    /// A cache of at most `max_entries` and `max_bytes`; `removed` hears every removal's cause.
    pub(crate) fn new(
        max_entries: u64,
        max_bytes: u64,
        removed: impl Fn(RemovalCause) + Send + Sync + 'static,
    ) -> Self {
        // moka bounds by one capacity: the byte budget, with each entry weighing its bytes. The entry count
        // bound is enforced by giving each entry a floor weight of max_bytes / max_entries.
        let floor = (max_bytes / max_entries.max(1)).max(1);
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |key: &Arc<str>, value: &Arc<LocalEntry>| -> u32 {
                let bytes = (key.len() + value.value.len() + ENTRY_OVERHEAD) as u64;
                u32::try_from(bytes.max(floor)).unwrap_or(u32::MAX)
            })
            .expire_after(EntryLifetime)
            .eviction_listener(move |_, _, cause| removed(cause))
            .build();
        Self { cache }
    }

    pub(crate) async fn get(&self, key: &str) -> Option<Arc<LocalEntry>> {
        self.cache.get(key).await
    }

    /// [`get`](Self::get) without waiting: `None` also when moka's read would have to wait (for its
    /// maintenance lock). moka's reads are cancel-safe: a read dropped unfinished is retried by the next.
    pub(crate) fn peek(&self, key: &str) -> Option<Arc<LocalEntry>> {
        use futures_util::FutureExt;
        self.cache.get(key).now_or_never().flatten()
    }

    pub(crate) async fn insert(&self, key: Arc<str>, entry: LocalEntry) {
        self.cache.insert(key, Arc::new(entry)).await;
    }

    pub(crate) async fn remove(&self, key: &str) {
        self.cache.invalidate(key).await;
    }

    /// `(key, version)` of every entry held now (a weakly consistent walk: entries inserted meanwhile may
    /// be missed, which the caller tolerates).
    pub(crate) fn versions(&self) -> Vec<(Arc<str>, i64)> {
        self.cache.iter().map(|(key, entry)| (Arc::clone(&*key), entry.version)).collect()
    }

    pub(crate) fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Entry count and weighted size, after pending maintenance.
    pub(crate) async fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks().await;
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    /// Entry count and weighted size without running maintenance (cheap, approximate).
    pub(crate) fn usage_now(&self) -> (u64, u64) {
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(len: usize) -> LocalEntry {
        LocalEntry {
            value: Bytes::from(vec![0u8; len]),
            version: 1,
            lifetime: Duration::from_secs(60),
            read_at: Instant::now(),
            expiry: Expiry::Never,
        }
    }

    #[tokio::test]
    async fn stays_within_byte_budget() {
        let budget = 64 * 1024;
        let local = LocalCache::new(1_000_000, budget, drop);
        for i in 0..1000 {
            local.insert(Arc::from(format!("key:{i}")), entry(640)).await;
        }
        let (_, bytes) = local.usage().await;
        assert!(bytes <= budget, "weighted size {bytes} over budget {budget}");
    }

    #[tokio::test]
    async fn stays_within_entry_bound() {
        let local = LocalCache::new(10, 1 << 20, drop);
        for i in 0..100 {
            local.insert(Arc::from(format!("key:{i}")), entry(1)).await;
        }
        let (entries, _) = local.usage().await;
        assert!(entries <= 10, "{entries} entries over the bound of 10");
    }
}
