//! The local (L1) cache: moka, bounded by bytes and by entries, with a lifetime per entry.
//!
//! This is the store only. What may be installed and served, and when it must go, is decided by
//! `coherence.rs`.
//!
//! moka holds a [`Slot`] per key, and the slot holds the current copy. A newer copy of a held key is
//! swapped into its slot when it fits (see [`Slot::swap`]) instead of inserted: a moka insert costs
//! microseconds (its key lock, its write log and maintenance), a swap a few nanoseconds, and every
//! notification that carries a new value is applied by every cache instance that holds the key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::Expiry as MokaExpiry;

use crate::ttl::Expiry;

/// Bookkeeping bytes counted per entry on top of key and value.
const ENTRY_OVERHEAD: usize = 128;
/// A slot is weighed by its first value's length rounded up to this: the room later copies may fill.
const ROOM_STEP: usize = 64;

/// One locally cached value: a copy, immutable once made.
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

    /// When its local lifetime ends (`None`: past what an `Instant` can hold).
    fn ends(&self) -> Option<Instant> {
        self.read_at.checked_add(self.lifetime)
    }
}

/// What moka holds for one key: the current copy, and the bounds a later copy must keep to be swapped in.
pub(crate) struct Slot {
    current: ArcSwap<LocalEntry>,
    /// The value bytes this slot is weighed for (fixed at insert: moka weighs an entry once).
    room: usize,
    /// When moka expires this slot (fixed at insert: moka computes an entry's expiry once); `None`: past
    /// what an `Instant` can hold.
    ends: Option<Instant>,
    lifetime: Duration,
}

impl Slot {
    fn new(entry: LocalEntry) -> Self {
        Self {
            room: entry.value.len().div_ceil(ROOM_STEP).saturating_mul(ROOM_STEP),
            ends: entry.ends(),
            lifetime: entry.lifetime,
            current: ArcSwap::from_pointee(entry),
        }
    }

    /// The current copy.
    pub(crate) fn entry(&self) -> Arc<LocalEntry> {
        self.current.load_full()
    }

    /// Makes `entry` the current copy when it fits: no larger than the room the slot is weighed for, and
    /// allowed to live at least until moka expires the slot. Otherwise hands it back, for an insert.
    /// The caller serialises the copies of a key (`coherence.rs` installs under a lock per stripe).
    pub(crate) fn swap(&self, entry: LocalEntry) -> Result<(), LocalEntry> {
        let lives_long_enough = match (entry.ends(), self.ends) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(new), Some(slot)) => new >= slot,
        };
        if entry.value.len() > self.room || !lives_long_enough {
            return Err(entry);
        }
        self.current.store(Arc::new(entry));
        Ok(())
    }
}

struct SlotLifetime;

impl MokaExpiry<Arc<str>, Arc<Slot>> for SlotLifetime {
    fn expire_after_create(&self, _: &Arc<str>, slot: &Arc<Slot>, _: Instant) -> Option<Duration> {
        Some(slot.lifetime)
    }

    fn expire_after_update(&self, _: &Arc<str>, slot: &Arc<Slot>, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(slot.lifetime)
    }
}

/// The bounded local cache.
pub(crate) struct LocalCache {
    cache: Cache<Arc<str>, Arc<Slot>>,
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
            .weigher(move |key: &Arc<str>, slot: &Arc<Slot>| -> u32 {
                let bytes = (key.len() + slot.room + ENTRY_OVERHEAD) as u64;
                u32::try_from(bytes.max(floor)).unwrap_or(u32::MAX)
            })
            .expire_after(SlotLifetime)
            .eviction_listener(move |_, _, cause| removed(cause))
            .build();
        Self { cache }
    }

    pub(crate) async fn get(&self, key: &str) -> Option<Arc<LocalEntry>> {
        self.cache.get(key).await.map(|slot| slot.entry())
    }

    /// The slot of `key`, to read its copy and maybe [`swap`](Slot::swap) a newer one in.
    pub(crate) async fn slot(&self, key: &str) -> Option<Arc<Slot>> {
        self.cache.get(key).await
    }

    /// [`get`](Self::get) without waiting: `None` also when moka's read would have to wait (for its
    /// maintenance lock). moka's reads are cancel-safe: a read dropped unfinished is retried by the next.
    pub(crate) fn peek(&self, key: &str) -> Option<Arc<LocalEntry>> {
        use futures_util::FutureExt;
        self.cache.get(key).now_or_never().flatten().map(|slot| slot.entry())
    }

    pub(crate) async fn insert(&self, key: Arc<str>, entry: LocalEntry) {
        self.cache.insert(key, Arc::new(Slot::new(entry))).await;
    }

    pub(crate) async fn remove(&self, key: &str) {
        self.cache.invalidate(key).await;
    }

    /// `(key, version)` of every entry held now (a weakly consistent walk: entries inserted meanwhile may
    /// be missed, which the caller tolerates).
    pub(crate) fn versions(&self) -> Vec<(Arc<str>, i64)> {
        self.cache.iter().map(|(key, slot)| (Arc::clone(&*key), slot.entry().version)).collect()
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
    async fn a_newer_copy_is_swapped_in_only_within_the_slots_room_and_lifetime() {
        let local = LocalCache::new(1000, 1 << 20, drop);
        local.insert(Arc::from("k"), entry(10)).await;
        let (_, weighed) = local.usage().await;
        let slot = local.slot("k").await.unwrap();
        // Up to the room (10 bytes rounded up to 64) and living at least as long: swapped, same weight.
        let mut newer = entry(ROOM_STEP);
        newer.version = 2;
        assert!(slot.swap(newer).is_ok());
        assert_eq!(local.get("k").await.map(|e| (e.version, e.value.len())), Some((2, ROOM_STEP)));
        assert_eq!(local.usage().await.1, weighed, "a swap keeps the weight moka counted");
        // Larger than the room: handed back (the caller inserts it, and moka weighs it anew).
        assert!(slot.swap(entry(ROOM_STEP + 1)).is_err());
        // Ending before moka would expire the slot: handed back (moka would serve it too long).
        let mut short = entry(1);
        short.lifetime = Duration::from_secs(1);
        assert!(slot.swap(short).is_err());
        assert_eq!(local.get("k").await.map(|e| e.version), Some(2));
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
