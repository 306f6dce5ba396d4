//! The local (L1) cache: moka bounded by bytes, per-entry expiry, and the epochs that keep it coherent.
//!
//! A fill that read the shared table before an invalidation must not be installed after it. Every
//! invalidation bumps an epoch (one of 1024 stripes by key hash, or the global one for a flush or a
//! listener reconnect); a filler takes a [`Snapshot`] before reading, inserts, then re-checks the
//! snapshot and removes its own insert if an invalidation came in between.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache;
use moka::Expiry as MokaExpiry;

use crate::ttl::Expiry;

const STRIPES: usize = 1024;
/// Bookkeeping bytes counted per entry on top of key and value.
const ENTRY_OVERHEAD: usize = 96;

/// One locally cached value.
#[derive(Debug)]
pub(crate) struct LocalEntry {
    pub(crate) value: Bytes,
    pub(crate) version: i64,
    /// How long the entry may live locally: min(local TTL, remaining shared TTL at read time).
    lifetime: Duration,
    /// When it was read from the shared table (for the remaining TTL reported on a local hit).
    read_at: Instant,
    /// The shared expiry at read time.
    expiry: Expiry,
}

impl LocalEntry {
    /// The shared expiry as of now.
    pub(crate) fn expiry_now(&self) -> Expiry {
        match self.expiry {
            Expiry::Never => Expiry::Never,
            Expiry::In(d) => Expiry::In(d.saturating_sub(self.read_at.elapsed())),
        }
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

/// Epoch values taken before a fill, and when: remaining TTLs reported by the database are counted from
/// this instant, since the statement was sent after it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Snapshot {
    global: u64,
    hard: u64,
    soft: u64,
    taken: Instant,
}

/// Invalidation epochs, shared by the local cache, the listener and the single-flight table.
///
/// Per stripe of keys there are two counters. A *hard* invalidation (a local delete, a write whose
/// version is unknown) forbids every fill that started before it. A *soft* one is a notification that
/// carries the row version `v` that replaced the key (or `v + 1` for a delete): a fill of version `≥`
/// the stripe's highest such version is still current and may be installed — so a node's own write is
/// not thrown out by its own notification.
pub(crate) struct Epochs {
    global: AtomicU64,
    hard: Box<[AtomicU64]>,
    soft: Box<[AtomicU64]>,
    newest: Box<[AtomicI64]>,
}

impl Epochs {
    pub(crate) fn new() -> Self {
        let counters = || (0..STRIPES).map(|_| AtomicU64::new(0)).collect();
        Self {
            global: AtomicU64::new(0),
            hard: counters(),
            soft: counters(),
            newest: (0..STRIPES).map(|_| AtomicI64::new(i64::MIN)).collect(),
        }
    }

    fn stripe(key: &str) -> usize {
        (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) as usize) % STRIPES
    }

    pub(crate) fn snapshot(&self, key: &str) -> Snapshot {
        let i = Self::stripe(key);
        Snapshot {
            global: self.global.load(Ordering::SeqCst),
            hard: self.hard[i].load(Ordering::SeqCst),
            soft: self.soft[i].load(Ordering::SeqCst),
            taken: Instant::now(),
        }
    }

    /// True when a fill of `version` taken at `snapshot` is still current: no flush, no hard
    /// invalidation, and every notification since named a version this fill already has.
    pub(crate) fn admits(&self, key: &str, snapshot: Snapshot, version: i64) -> bool {
        let now = self.snapshot(key);
        now.global == snapshot.global
            && now.hard == snapshot.hard
            && (now.soft == snapshot.soft || self.newest[Self::stripe(key)].load(Ordering::SeqCst) <= version)
    }

    /// Any fill of this key that started before now is stale.
    pub(crate) fn bump_key(&self, key: &str) {
        self.hard[Self::stripe(key)].fetch_add(1, Ordering::SeqCst);
    }

    /// The key now holds `version` (or, for a delete, nothing older than `version`).
    pub(crate) fn bump_key_to(&self, key: &str, version: i64) {
        let i = Self::stripe(key);
        self.newest[i].fetch_max(version, Ordering::SeqCst);
        self.soft[i].fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn bump_all(&self) {
        self.global.fetch_add(1, Ordering::SeqCst);
    }
}

/// Whether local entries may be served: the listener's health, as a lease renewed by its heartbeats.
pub(crate) struct Trust {
    /// False when a listener is expected (notifications on) but is not confirmed listening.
    listening: AtomicBool,
    /// Listening and proven alive within `lease`: what `trusted()` reads.
    leased: AtomicBool,
    /// Milliseconds since `origin` of the last proof of life, sent before the proof came back.
    last_proof_ms: AtomicU64,
    origin: Instant,
    lease: Duration,
    needs_listener: bool,
}

impl Trust {
    pub(crate) fn new(needs_listener: bool, lease: Duration) -> Self {
        Self {
            listening: AtomicBool::new(false),
            leased: AtomicBool::new(false),
            last_proof_ms: AtomicU64::new(0),
            origin: Instant::now(),
            lease,
            needs_listener,
        }
    }

    /// True when local entries may be served now: one atomic load, so a local hit reads no clock.
    /// [`watch_lease`] withdraws the lease when no proof of life came within `lease`.
    pub(crate) fn trusted(&self) -> bool {
        !self.needs_listener || self.leased.load(Ordering::SeqCst)
    }

    /// Records a proof of life whose request was sent at `sent`.
    pub(crate) fn renew(&self, sent: Instant) {
        let ms = sent.saturating_duration_since(self.origin).as_millis();
        self.last_proof_ms.fetch_max(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::SeqCst);
        self.leased.store(self.listening.load(Ordering::SeqCst) && !self.lease_expired(), Ordering::SeqCst);
    }

    pub(crate) fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::SeqCst);
        self.leased.store(listening && !self.lease_expired(), Ordering::SeqCst);
    }

    pub(crate) fn listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    /// When the current lease runs out.
    fn lease_end(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_proof_ms.load(Ordering::SeqCst)) + self.lease
    }

    fn lease_expired(&self) -> bool {
        Instant::now() >= self.lease_end()
    }
}

/// Withdraws the lease the moment it runs out without a newer proof of life, until `shutdown` flips.
/// This keeps the clock off the hit path: `trusted()` is a single load.
pub(crate) async fn watch_lease(trust: Arc<Trust>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let wake = trust.lease_end().max(Instant::now() + Duration::from_millis(5));
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = shutdown.changed() => return,
        }
        if trust.lease_expired() {
            trust.leased.store(false, Ordering::SeqCst);
        }
    }
}

/// Wakes a process's `get_or_set` waiter when the key it waits for is written by another process (the
/// listener hears the insert), so waiters do not sleep out their polling back-off.
#[derive(Default)]
pub(crate) struct FillSignals {
    waiting: std::sync::Mutex<std::collections::HashMap<Arc<str>, Arc<tokio::sync::Notify>>>,
}

impl FillSignals {
    /// Starts waiting for `key`; the registration ends when the returned guard drops (cancellation too).
    pub(crate) fn subscribe<'a>(&'a self, key: &'a str) -> FillWait<'a> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let signal = Arc::clone(waiting.entry(Arc::from(key)).or_default());
        FillWait { signals: self, key, signal }
    }

    fn written(&self, key: &str) {
        let waiting = self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(signal) = waiting.get(key) {
            // `notify_one` keeps a permit if the waiter is between two polls.
            signal.notify_one();
        }
    }
}

/// A registered waiter of [`FillSignals`].
pub(crate) struct FillWait<'a> {
    signals: &'a FillSignals,
    key: &'a str,
    pub(crate) signal: Arc<tokio::sync::Notify>,
}

impl Drop for FillWait<'_> {
    fn drop(&mut self) {
        let mut waiting = self.signals.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Ours plus the table's: nobody else waits, so the entry goes.
        if waiting.get(self.key).is_some_and(|s| Arc::strong_count(s) <= 2) {
            waiting.remove(self.key);
        }
    }
}

/// The bounded local cache.
pub(crate) struct LocalCache {
    cache: Cache<Arc<str>, Arc<LocalEntry>>,
    local_ttl: Duration,
    pub(crate) epochs: Arc<Epochs>,
    pub(crate) trust: Arc<Trust>,
    pub(crate) fills: FillSignals,
}

impl LocalCache {
    pub(crate) fn new(
        max_entries: u64,
        max_bytes: u64,
        local_ttl: Duration,
        epochs: Arc<Epochs>,
        trust: Arc<Trust>,
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
            .build();
        Self { cache, local_ttl, epochs, trust, fills: FillSignals::default() }
    }

    /// A local hit, if local entries may be served.
    pub(crate) async fn get(&self, key: &str) -> Option<Arc<LocalEntry>> {
        if !self.trust.trusted() {
            return None;
        }
        self.cache.get(key).await
    }

    /// Installs a value read or written at `snapshot`, unless an invalidation came in since.
    pub(crate) async fn install(&self, key: &str, value: Bytes, version: i64, expiry: Expiry, snapshot: Snapshot) {
        if !self.trust.trusted() || !self.epochs.admits(key, snapshot, version) {
            return;
        }
        // Count the remaining TTL from before the statement was sent, so a local copy never outlives the row.
        let elapsed = snapshot.taken.elapsed();
        let expiry = match expiry {
            Expiry::Never => Expiry::Never,
            Expiry::In(left) => Expiry::In(left.saturating_sub(elapsed)),
        };
        let lifetime = match expiry {
            Expiry::Never => self.local_ttl.saturating_sub(elapsed),
            Expiry::In(left) => left.min(self.local_ttl.saturating_sub(elapsed)),
        };
        if lifetime.is_zero() {
            return;
        }
        let key: Arc<str> = Arc::from(key);
        let entry = Arc::new(LocalEntry { value, version, lifetime, read_at: Instant::now(), expiry });
        self.cache.insert(Arc::clone(&key), entry).await;
        if !self.epochs.admits(&key, snapshot, version) {
            self.cache.invalidate(&key).await;
        }
    }

    /// Evicts a key unconditionally (a local delete or a write of unknown version).
    pub(crate) async fn evict(&self, key: &str) {
        self.epochs.bump_key(key);
        self.cache.invalidate(key).await;
    }

    /// Applies a notification: the key was written with `version`, or deleted (`deleted`, the row had
    /// `version`). A local copy at least that new survives a write notification (typically this node's own).
    pub(crate) async fn evict_notified(&self, key: &str, version: i64, deleted: bool) {
        self.epochs.bump_key_to(key, if deleted { version.saturating_add(1) } else { version });
        if !deleted {
            self.fills.written(key);
        }
        if !deleted && self.cache.get(key).await.is_some_and(|entry| entry.version >= version) {
            return;
        }
        self.cache.invalidate(key).await;
    }

    /// Evicts everything (flush notification, listener reconnect).
    pub(crate) fn evict_all(&self) {
        self.epochs.bump_all();
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

    fn local(max_entries: u64, max_bytes: u64) -> LocalCache {
        LocalCache::new(
            max_entries,
            max_bytes,
            Duration::from_secs(60),
            Arc::new(Epochs::new()),
            Arc::new(Trust::new(false, Duration::from_secs(2))),
        )
    }

    #[tokio::test]
    async fn install_is_skipped_after_invalidation() {
        let l = local(100, 1 << 20);
        let snap = l.epochs.snapshot("k");
        l.evict("k").await;
        l.install("k", Bytes::from_static(b"old"), 1, Expiry::Never, snap).await;
        assert!(l.get("k").await.is_none(), "a fill older than an invalidation must not be installed");
        let snap = l.epochs.snapshot("k");
        l.install("k", Bytes::from_static(b"new"), 2, Expiry::Never, snap).await;
        assert_eq!(l.get("k").await.map(|e| e.value.clone()), Some(Bytes::from_static(b"new")));
    }

    #[tokio::test]
    async fn evict_keeps_newer_local_versions() {
        let l = local(100, 1 << 20);
        l.install("k", Bytes::from_static(b"v5"), 5, Expiry::Never, l.epochs.snapshot("k")).await;
        l.evict_notified("k", 5, false).await;
        assert!(l.get("k").await.is_some(), "own write's notification keeps the entry");
        l.evict_notified("k", 6, false).await;
        assert!(l.get("k").await.is_none());
    }

    #[tokio::test]
    async fn own_notification_racing_the_install_does_not_drop_the_fill() {
        let l = local(100, 1 << 20);
        let snap = l.epochs.snapshot("k");
        // The write's own notification (version 7) lands before the writer installs version 7.
        l.evict_notified("k", 7, false).await;
        l.install("k", Bytes::from_static(b"v7"), 7, Expiry::Never, snap).await;
        assert!(l.get("k").await.is_some());
        // A newer write elsewhere, or a delete of the version being installed, blocks older fills.
        let snap = l.epochs.snapshot("j");
        l.evict_notified("j", 9, false).await;
        l.install("j", Bytes::from_static(b"v8"), 8, Expiry::Never, snap).await;
        assert!(l.get("j").await.is_none());
        let snap = l.epochs.snapshot("d");
        l.evict_notified("d", 4, true).await;
        l.install("d", Bytes::from_static(b"v4"), 4, Expiry::Never, snap).await;
        assert!(l.get("d").await.is_none(), "a deleted version must not come back");
    }

    #[tokio::test]
    async fn stays_within_byte_budget() {
        let budget = 64 * 1024;
        let l = local(1_000_000, budget);
        for i in 0..1000 {
            let key = format!("key:{i}");
            l.install(&key, Bytes::from(vec![0u8; 640]), 1, Expiry::Never, l.epochs.snapshot(&key)).await;
        }
        let (_, bytes) = l.usage().await;
        assert!(bytes <= budget, "weighted size {bytes} over budget {budget}");
    }

    #[tokio::test]
    async fn untrusted_cache_serves_nothing() {
        let trust = Arc::new(Trust::new(true, Duration::from_secs(2)));
        let l = LocalCache::new(100, 1 << 20, Duration::from_secs(60), Arc::new(Epochs::new()), Arc::clone(&trust));
        trust.set_listening(true);
        trust.renew(Instant::now());
        l.install("k", Bytes::from_static(b"v"), 1, Expiry::Never, l.epochs.snapshot("k")).await;
        assert!(l.get("k").await.is_some());
        trust.set_listening(false);
        assert!(l.get("k").await.is_none());
    }
}
