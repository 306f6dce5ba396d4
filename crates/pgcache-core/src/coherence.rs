//! What keeps local copies honest: invalidation epochs and the snapshots fills take of them, the
//! listener's lease, and the signals that wake `get_or_load` waiters when another process fills a key.
//!
//! A fill that read the shared table before an invalidation must not be installed after it. Every
//! invalidation bumps an epoch (one of 1024 stripes by key hash, or the global one for a flush or a
//! listener reconnect); a filler takes a [`Snapshot`] before reading, inserts, then re-checks the
//! snapshot and removes its own insert if an invalidation came in between.
//!
//! After a listener reconnect the local entries are not thrown away: their versions are checked against
//! the shared table ([`Coherence::reconcile`]) and only those that changed or vanished are evicted. When
//! the shared table itself was replaced (see `listener.rs`, the incarnation), everything is.
//!
//! Local entries are only served while the listener holds a [`Lease`]: it is renewed by every heartbeat
//! answered through the listener's connection and withdrawn when none came within twice the heartbeat
//! interval, so a dead or frozen listener cannot leave stale copies in service.
//!
//! Installs of one key are serialised (a lock per stripe of keys) and never replace a newer version with
//! an older one, so a notification carrying a key's new value ([`Coherence::replace_notified`]) and this
//! node's own write of that key cannot leave the older of the two in place.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{watch, Mutex as AsyncMutex, Notify};

use crate::cache_store::Entry;
use crate::local::{LocalCache, LocalEntry, Slot};
use crate::ttl::Expiry;

const STRIPES: usize = 1024;

/// Epoch values taken before a fill, and when: remaining TTLs reported by the database are counted from
/// this instant, since the statement was sent after it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Snapshot {
    global: u64,
    hard: u64,
    soft: u64,
    pub(crate) taken: Instant,
}

/// Invalidation epochs, shared by the local cache, the listener and the single-flight table.
///
/// Per stripe of keys there are two counters. A *hard* invalidation (a local delete, a write whose
/// version is unknown) forbids every fill that started before it. A *soft* one is a notification that
/// carries the row version `v` that replaced the key (or `v + 1` for a delete): a fill of version `≥`
/// the stripe's highest such version is still current and may be installed — so a node's own write is
/// not thrown out by its own notification.
pub(crate) struct Epochs {
    /// Every bump of any counter below: the read-replica fence is taken again when it moved.
    changes: AtomicU64,
    global: AtomicU64,
    hard: Box<[AtomicU64]>,
    soft: Box<[AtomicU64]>,
    newest: Box<[AtomicI64]>,
}

impl Epochs {
    pub(crate) fn new() -> Self {
        let counters = || (0..STRIPES).map(|_| AtomicU64::new(0)).collect();
        Self {
            changes: AtomicU64::new(0),
            global: AtomicU64::new(0),
            hard: counters(),
            soft: counters(),
            newest: (0..STRIPES).map(|_| AtomicI64::new(i64::MIN)).collect(),
        }
    }

    pub(crate) fn stripe(key: &str) -> usize {
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

    /// How many invalidations (of any kind) this node has applied so far.
    pub(crate) fn generation(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Any fill of this key that started before now is stale.
    pub(crate) fn bump_key(&self, key: &str) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.hard[Self::stripe(key)].fetch_add(1, Ordering::SeqCst);
    }

    /// The key now holds `version` (or, for a delete, nothing older than `version`).
    pub(crate) fn bump_key_to(&self, key: &str, version: i64) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        let i = Self::stripe(key);
        self.newest[i].fetch_max(version, Ordering::SeqCst);
        self.soft[i].fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn bump_all(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.global.fetch_add(1, Ordering::SeqCst);
    }
}

/// Whether local entries may be served: the listener's health, as a lease renewed by its heartbeats.
pub(crate) struct Lease {
    /// False when a listener is expected (notifications on) but is not confirmed listening.
    listening: AtomicBool,
    /// Listening and proven alive within `length`: what `trusted()` reads.
    held: AtomicBool,
    /// Milliseconds since `origin` of the last proof of life, sent before the proof came back.
    last_proof_ms: AtomicU64,
    origin: Instant,
    length: Duration,
    needs_listener: bool,
}

impl Lease {
    pub(crate) fn new(needs_listener: bool, length: Duration) -> Self {
        Self {
            listening: AtomicBool::new(false),
            held: AtomicBool::new(false),
            last_proof_ms: AtomicU64::new(0),
            origin: Instant::now(),
            length,
            needs_listener,
        }
    }

    /// True when local entries may be served now: one atomic load, so a local hit reads no clock.
    /// [`watch`](Self::watch) withdraws the lease when no proof of life came within its length.
    pub(crate) fn trusted(&self) -> bool {
        !self.needs_listener || self.held.load(Ordering::SeqCst)
    }

    /// Records a proof of life whose request was sent at `sent`.
    pub(crate) fn renew(&self, sent: Instant) {
        let ms = sent.saturating_duration_since(self.origin).as_millis();
        self.last_proof_ms.fetch_max(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::SeqCst);
        self.held.store(self.listening.load(Ordering::SeqCst) && !self.expired(), Ordering::SeqCst);
    }

    pub(crate) fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::SeqCst);
        self.held.store(listening && !self.expired(), Ordering::SeqCst);
    }

    /// When the current lease runs out.
    fn end(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_proof_ms.load(Ordering::SeqCst)) + self.length
    }

    fn expired(&self) -> bool {
        Instant::now() >= self.end()
    }

    /// Withdraws the lease the moment it runs out without a newer proof of life, until `shutdown` flips.
    /// This keeps the clock off the hit path: `trusted()` is a single load.
    pub(crate) async fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let wake = self.end().max(Instant::now() + Duration::from_millis(5));
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = shutdown.changed() => return,
            }
            if self.expired() {
                self.held.store(false, Ordering::SeqCst);
            }
        }
    }
}

/// Wakes a process's `get_or_load` waiter when the key it waits for is written by another process (the
/// listener hears the insert), so waiters do not sleep out their polling back-off.
#[derive(Default)]
pub(crate) struct FillSignals {
    waiting: Mutex<HashMap<Arc<str>, Arc<Notify>>>,
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
    signal: Arc<Notify>,
}

impl FillWait<'_> {
    /// Waits until the key is written by another process, or `backoff` passes.
    pub(crate) async fn written_or(&self, backoff: Duration) {
        let _ = tokio::time::timeout(backoff, self.signal.notified()).await;
    }
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

/// The database clock as last read by the listener, to turn an expiry instant set by the database into a
/// local one without trusting this host's wall clock.
///
/// A sample is `(sent, db)`: the database read its clock (`db`, microseconds since the epoch) after the
/// request left at the local instant `sent`. At any later local instant `l` the database clock reads at
/// most `db + (l - sent)`, so a row expiring at database time `e` is still live until at least
/// `sent + (e - db)`: a local copy dropped then never outlives its row. The bound assumes both clocks run
/// at the same rate between two heartbeats (NTP slews by at most 0.05 %); [`CLOCK_MARGIN`] covers that and
/// the millisecond rounding of expiries. A database clock stepped forward (not slewed) can end a row
/// earlier than this bound until the next heartbeat resamples it, as for any TTL a client counts.
#[derive(Default)]
pub(crate) struct DbClock {
    sample: Mutex<Option<(Instant, i64)>>,
}

/// Taken off every expiry mapped through [`DbClock`].
const CLOCK_MARGIN: Duration = Duration::from_millis(2);

impl DbClock {
    /// Records that the database read `db_micros` after a request sent at `sent`.
    pub(crate) fn sample(&self, sent: Instant, db_micros: i64) {
        *self.sample.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((sent, db_micros));
    }

    /// What is left now of a row that expires at `expires_ms` (epoch milliseconds by the database clock),
    /// counted conservatively; `None` without a sample (the caller evicts instead).
    pub(crate) fn remaining(&self, expires_ms: i64) -> Option<Duration> {
        let (sent, db) = (*self.sample.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))?;
        let until = expires_ms.saturating_mul(1000).saturating_sub(db);
        let until = Duration::from_micros(u64::try_from(until).unwrap_or(0));
        Some(until.saturating_sub(sent.elapsed()).saturating_sub(CLOCK_MARGIN))
    }
}

/// The local cache kept coherent: every install is checked against the epochs, every hit against the
/// lease, every notification applied.
pub(crate) struct Coherence {
    /// `None` when the local cache is disabled (epochs still guard the single-flight table).
    local: Option<LocalCache>,
    local_ttl: Duration,
    pub(crate) epochs: Epochs,
    pub(crate) lease: Arc<Lease>,
    pub(crate) fills: FillSignals,
    /// The database clock, sampled by the listener's heartbeats.
    pub(crate) clock: DbClock,
    /// Serialises installs per stripe of keys (see the module notes).
    installing: Box<[AsyncMutex<()>]>,
}

impl Coherence {
    pub(crate) fn new(local: Option<LocalCache>, local_ttl: Duration, lease: Lease) -> Self {
        Self {
            local,
            local_ttl,
            epochs: Epochs::new(),
            lease: Arc::new(lease),
            fills: FillSignals::default(),
            clock: DbClock::default(),
            installing: (0..STRIPES).map(|_| AsyncMutex::new(())).collect(),
        }
    }

    /// A local hit, if local entries may be served.
    pub(crate) async fn hit(&self, key: &str) -> Option<Arc<LocalEntry>> {
        if !self.lease.trusted() {
            return None;
        }
        self.local.as_ref()?.get(key).await
    }

    /// A local hit as an [`Entry`] with its expiry as of now.
    pub(crate) async fn hit_entry(&self, key: &str) -> Option<Entry> {
        let hit = self.hit(key).await?;
        Some(Entry { value: hit.value.clone(), version: hit.version, expiry: hit.expiry_now() })
    }

    /// [`hit_entry`](Self::hit_entry) without waiting (`None` when it would wait; see `LocalCache::peek`).
    pub(crate) fn peek_entry(&self, key: &str) -> Option<Entry> {
        if !self.lease.trusted() {
            return None;
        }
        let hit = self.local.as_ref()?.peek(key)?;
        Some(Entry { value: hit.value.clone(), version: hit.version, expiry: hit.expiry_now() })
    }

    pub(crate) fn snapshot(&self, key: &str) -> Snapshot {
        self.epochs.snapshot(key)
    }

    /// Installs a value read or written at `snapshot`, unless an invalidation came in since or a newer
    /// version is held.
    pub(crate) async fn install(&self, key: &str, value: Bytes, version: i64, expiry: Expiry, snapshot: Snapshot) {
        let Some(local) = &self.local else { return };
        if !self.lease.trusted() || !self.epochs.admits(key, snapshot, version) {
            return;
        }
        let _installing = self.install_lock(key).await;
        let held = local.slot(key).await;
        if held.as_ref().is_some_and(|slot| slot.entry().version > version) {
            return;
        }
        self.insert_checked(local, held.as_deref(), key, value, version, expiry, snapshot).await;
    }

    /// The install lock of `key`'s stripe (taken without a wait when it is free, as it nearly always is).
    async fn install_lock(&self, key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let lock = &self.installing[Epochs::stripe(key)];
        match lock.try_lock() {
            Ok(guard) => guard,
            Err(_) => lock.lock().await,
        }
    }

    /// The insert of [`install`](Self::install), under the stripe's install lock: removed again if an
    /// invalidation came in meanwhile. True when the value was inserted and kept.
    ///
    /// `held` is the key's slot, if any: the copy is swapped into it when it fits, else inserted.
    #[allow(clippy::too_many_arguments)]
    async fn insert_checked(
        &self,
        local: &LocalCache,
        held: Option<&Slot>,
        key: &str,
        value: Bytes,
        version: i64,
        expiry: Expiry,
        snapshot: Snapshot,
    ) -> bool {
        // Count the remaining TTL from before the statement was sent, so a local copy never outlives the row.
        let elapsed = snapshot.taken.elapsed();
        let expiry = expiry.less(elapsed);
        let local_left = self.local_ttl.saturating_sub(elapsed);
        let lifetime = expiry.remaining().map_or(local_left, |left| left.min(local_left));
        if lifetime.is_zero() {
            return false;
        }
        let copy = LocalEntry { value, version, lifetime, read_at: Instant::now(), expiry };
        let unswapped = match held {
            Some(slot) => slot.swap(copy).err(),
            None => Some(copy),
        };
        if let Some(copy) = unswapped {
            local.insert(Arc::from(key), copy).await;
        }
        if !self.epochs.admits(key, snapshot, version) {
            local.remove(key).await;
            return false;
        }
        true
    }

    /// Evicts a key unconditionally (a local delete or a write of unknown version).
    pub(crate) async fn evict(&self, key: &str) {
        self.epochs.bump_key(key);
        if let Some(local) = &self.local {
            local.remove(key).await;
        }
    }

    /// This node's write of a key was replaced in its own batch by a later write of the key, stored as
    /// `version`: as a notification of that version (a copy at least that new stays, an older one goes),
    /// not a hard eviction, which would also throw out the later write's own install.
    pub(crate) async fn superseded(&self, key: &str, version: i64) {
        self.evict_notified(key, version, false).await;
    }

    /// Applies a notification: the key was written with `version`, or deleted (`deleted`, the row had
    /// `version`). A local copy at least that new survives a write notification (typically this node's own).
    pub(crate) async fn evict_notified(&self, key: &str, version: i64, deleted: bool) {
        self.epochs.bump_key_to(key, if deleted { version.saturating_add(1) } else { version });
        if !deleted {
            self.fills.written(key);
        }
        let Some(local) = &self.local else { return };
        if !deleted && local.get(key).await.is_some_and(|entry| entry.version >= version) {
            return;
        }
        local.remove(key).await;
    }

    /// Applies a notification that carries the key's new value: the key was written with `version`, and
    /// the row holds `value` until `expires_ms` (epoch milliseconds by the database clock; `None`: never).
    /// A node that holds the key at an older version installs the new value instead of evicting it (its
    /// readers need not read it again); a node that does not hold it installs nothing (no copy is made of
    /// keys this node never read); a node holding that version or a newer one keeps what it has.
    pub(crate) async fn replace_notified(&self, key: &str, version: i64, value: Bytes, expires_ms: Option<i64>) {
        self.epochs.bump_key_to(key, version);
        self.fills.written(key);
        let Some(local) = &self.local else { return };
        let _installing = self.install_lock(key).await;
        let held = match local.slot(key).await {
            None => return,
            Some(slot) if slot.entry().version >= version => return,
            Some(slot) => slot,
        };
        let expiry = match expires_ms {
            None => Some(Expiry::Never),
            Some(ms) => self.clock.remaining(ms).map(Expiry::In),
        };
        // Taken after the bump above: an invalidation of this key from now on removes the install.
        let snapshot = self.epochs.snapshot(key);
        let installed = match expiry {
            Some(expiry) if self.lease.trusted() => {
                self.insert_checked(local, Some(&held), key, value, version, expiry, snapshot).await
            }
            _ => false,
        };
        if !installed {
            // The held copy is older than the row: it goes either way.
            local.remove(key).await;
        }
    }

    /// Makes every fill that started before now stale, without touching what is held: the listener
    /// reconnected, and what was read while it was away may have missed an invalidation.
    pub(crate) fn distrust_fills(&self) {
        self.epochs.bump_all();
    }

    /// `(key, version)` of every local entry, for [`reconcile`](Self::reconcile).
    pub(crate) fn held_versions(&self) -> Vec<(Arc<str>, i64)> {
        self.local.as_ref().map_or_else(Vec::new, LocalCache::versions)
    }

    /// Evicts each of `held` whose key the shared table no longer holds at that version (`current`: the
    /// live versions of those keys). Runs while the lease is withdrawn, so nothing is installed meanwhile.
    /// Returns how many entries were evicted.
    pub(crate) async fn reconcile(&self, held: &[(Arc<str>, i64)], current: &HashMap<String, i64>) -> usize {
        let Some(local) = &self.local else { return 0 };
        let mut evicted = 0;
        for (key, version) in held {
            if current.get(&**key) != Some(version) {
                local.remove(key).await;
                evicted += 1;
            }
        }
        evicted
    }

    /// Evicts everything (flush notification, a replaced shared table, clear).
    pub(crate) fn evict_all(&self) {
        self.epochs.bump_all();
        if let Some(local) = &self.local {
            local.clear();
        }
    }

    /// Entries and weighted bytes of the local cache, after pending maintenance.
    pub(crate) async fn usage(&self) -> (u64, u64) {
        match &self.local {
            Some(local) => local.usage().await,
            None => (0, 0),
        }
    }

    /// Entries and weighted bytes of the local cache, cheap and approximate.
    pub(crate) fn usage_now(&self) -> (u64, u64) {
        self.local.as_ref().map_or((0, 0), LocalCache::usage_now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coherence() -> Coherence {
        let local = LocalCache::new(100, 1 << 20, drop);
        Coherence::new(Some(local), Duration::from_secs(60), Lease::new(false, Duration::from_secs(2)))
    }

    async fn value(c: &Coherence, key: &str) -> Option<Bytes> {
        c.hit(key).await.map(|e| e.value.clone())
    }

    #[tokio::test]
    async fn install_is_skipped_after_invalidation() {
        let c = coherence();
        let snap = c.snapshot("k");
        c.evict("k").await;
        c.install("k", Bytes::from_static(b"old"), 1, Expiry::Never, snap).await;
        assert!(c.hit("k").await.is_none(), "a fill older than an invalidation must not be installed");
        let snap = c.snapshot("k");
        c.install("k", Bytes::from_static(b"new"), 2, Expiry::Never, snap).await;
        assert_eq!(value(&c, "k").await, Some(Bytes::from_static(b"new")));
    }

    #[tokio::test]
    async fn evict_keeps_newer_local_versions() {
        let c = coherence();
        c.install("k", Bytes::from_static(b"v5"), 5, Expiry::Never, c.snapshot("k")).await;
        c.evict_notified("k", 5, false).await;
        assert!(c.hit("k").await.is_some(), "own write's notification keeps the entry");
        c.evict_notified("k", 6, false).await;
        assert!(c.hit("k").await.is_none());
    }

    #[tokio::test]
    async fn own_notification_racing_the_install_does_not_drop_the_fill() {
        let c = coherence();
        let snap = c.snapshot("k");
        // The write's own notification (version 7) lands before the writer installs version 7.
        c.evict_notified("k", 7, false).await;
        c.install("k", Bytes::from_static(b"v7"), 7, Expiry::Never, snap).await;
        assert!(c.hit("k").await.is_some());
        // A newer write elsewhere, or a delete of the version being installed, blocks older fills.
        let snap = c.snapshot("j");
        c.evict_notified("j", 9, false).await;
        c.install("j", Bytes::from_static(b"v8"), 8, Expiry::Never, snap).await;
        assert!(c.hit("j").await.is_none());
        let snap = c.snapshot("d");
        c.evict_notified("d", 4, true).await;
        c.install("d", Bytes::from_static(b"v4"), 4, Expiry::Never, snap).await;
        assert!(c.hit("d").await.is_none(), "a deleted version must not come back");
    }

    #[tokio::test]
    async fn no_lease_serves_nothing() {
        let local = LocalCache::new(100, 1 << 20, drop);
        let c = Coherence::new(Some(local), Duration::from_secs(60), Lease::new(true, Duration::from_secs(2)));
        c.lease.set_listening(true);
        c.lease.renew(Instant::now());
        c.install("k", Bytes::from_static(b"v"), 1, Expiry::Never, c.snapshot("k")).await;
        assert!(c.hit("k").await.is_some());
        c.lease.set_listening(false);
        assert!(c.hit("k").await.is_none());
    }

    /// Epoch milliseconds of the database clock as sampled just now, plus `ms`.
    fn db_in(c: &Coherence, ms: i64) -> i64 {
        let now_micros = 1_700_000_000_000_000;
        c.clock.sample(Instant::now(), now_micros);
        now_micros / 1000 + ms
    }

    #[tokio::test]
    async fn carried_values_replace_only_older_held_copies() {
        let c = coherence();
        let expires = Some(db_in(&c, 60_000));
        // Not held: nothing is installed (no copy of a key this node never read).
        c.replace_notified("k", 5, Bytes::from_static(b"v5"), expires).await;
        assert!(c.hit("k").await.is_none());
        // Held older: replaced by the carried value.
        c.install("k", Bytes::from_static(b"v3"), 3, Expiry::Never, c.snapshot("k")).await;
        c.replace_notified("k", 5, Bytes::from_static(b"v5"), expires).await;
        assert_eq!(value(&c, "k").await, Some(Bytes::from_static(b"v5")));
        // Held newer (this node's own later write): kept, never replaced by an older version.
        c.install("k", Bytes::from_static(b"v9"), 9, Expiry::Never, c.snapshot("k")).await;
        c.replace_notified("k", 7, Bytes::from_static(b"v7"), expires).await;
        assert_eq!(value(&c, "k").await, Some(Bytes::from_static(b"v9")));
        // An install of an older version (a fill that read before the carried write) never replaces it.
        let snap = c.snapshot("k");
        c.install("k", Bytes::from_static(b"v8"), 8, Expiry::Never, snap).await;
        assert_eq!(value(&c, "k").await, Some(Bytes::from_static(b"v9")));
        // A fill of an older version that started before the carried value came is refused.
        c.install("j", Bytes::from_static(b"j1"), 1, Expiry::Never, c.snapshot("j")).await;
        let old_fill = c.snapshot("j");
        c.replace_notified("j", 4, Bytes::from_static(b"j4"), None).await;
        c.install("j", Bytes::from_static(b"j2"), 2, Expiry::Never, old_fill).await;
        assert_eq!(value(&c, "j").await, Some(Bytes::from_static(b"j4")));
    }

    #[tokio::test]
    async fn carried_values_never_outlive_their_row() {
        let c = coherence();
        // Expired by the database clock (or within the margin): the older copy is evicted, nothing installed.
        c.install("k", Bytes::from_static(b"v1"), 1, Expiry::Never, c.snapshot("k")).await;
        let expires = Some(db_in(&c, 1));
        c.replace_notified("k", 2, Bytes::from_static(b"v2"), expires).await;
        assert!(c.hit("k").await.is_none());
        // A live one is installed with what is left of its TTL, by the sampled database clock.
        c.install("k", Bytes::from_static(b"v1"), 1, Expiry::Never, c.snapshot("k")).await;
        let expires = Some(db_in(&c, 10_000));
        c.replace_notified("k", 3, Bytes::from_static(b"v3"), expires).await;
        let left = c.hit_entry("k").await.and_then(|e| e.expiry.remaining());
        assert!(left.is_some_and(|left| left <= Duration::from_secs(10) - CLOCK_MARGIN), "{left:?}");
        assert!(left.is_some_and(|left| left > Duration::from_secs(9)), "{left:?}");
        // Without a clock sample the expiry cannot be mapped: evicted.
        let c = coherence();
        c.install("k", Bytes::from_static(b"v1"), 1, Expiry::Never, c.snapshot("k")).await;
        c.replace_notified("k", 2, Bytes::from_static(b"v2"), Some(i64::MAX / 1000)).await;
        assert!(c.hit("k").await.is_none());
    }
}
