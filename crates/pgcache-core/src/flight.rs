//! Local single flight: one `get_or_load` per key per process runs at a time; the others wait for it.
//!
//! moka's `try_get_with` merges concurrent loads too, but it installs the result in the local cache
//! itself, which must not happen here (installs are epoch-checked, the local cache may be disabled, and
//! the value comes from another process as often as from this one). So this is a small keyed async mutex:
//! the first caller holds the key's mutex while it runs the cross-process path and leaves the value in the
//! flight's slot; followers take the mutex in turn and use the slot if no invalidation came in since.
//! A cancelled leader just drops the guard: the next follower takes over. Entries leave the table when
//! the last participant is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::cache_store::Entry;
use crate::coherence::{Epochs, Snapshot};

/// What a finished leader leaves for its followers.
pub(crate) struct Landed {
    entry: Entry,
    at: Instant,
    snapshot: Snapshot,
}

type Slot = Arc<AsyncMutex<Option<Landed>>>;

/// The keyed mutex table.
#[derive(Default)]
pub(crate) struct Flights {
    table: Mutex<HashMap<Arc<str>, Slot>>,
}

/// Participation in a key's flight; holds the key's mutex.
pub(crate) struct Flight<'a> {
    flights: &'a Flights,
    key: Arc<str>,
    guard: Option<OwnedMutexGuard<Option<Landed>>>,
    /// Whether another caller held the mutex before this one got it.
    pub(crate) waited: bool,
}

impl Flights {
    /// Joins the flight for `key`, waiting until this caller's turn.
    pub(crate) async fn join(&self, key: &str) -> Flight<'_> {
        let key: Arc<str> = Arc::from(key);
        let slot = {
            let mut table = self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            Arc::clone(table.entry(Arc::clone(&key)).or_default())
        };
        let (guard, waited) = match Arc::clone(&slot).try_lock_owned() {
            Ok(guard) => (guard, false),
            Err(_) => (slot.lock_owned().await, true),
        };
        Flight { flights: self, key, guard: Some(guard), waited }
    }
}

impl Flight<'_> {
    /// The value a previous leader landed, if no invalidation of the key came in since it read it.
    pub(crate) fn landed(&self, epochs: &Epochs) -> Option<Entry> {
        let landed = self.guard.as_ref()?.as_ref()?;
        if !epochs.admits(&self.key, landed.snapshot, landed.entry.version) {
            return None;
        }
        Some(Entry { expiry: landed.entry.expiry.less(landed.at.elapsed()), ..landed.entry.clone() })
    }

    /// Leaves an entry for the followers; `snapshot` was taken before it was read or loaded.
    pub(crate) fn land(&mut self, entry: Entry, snapshot: Snapshot) {
        if let Some(guard) = self.guard.as_mut() {
            **guard = Some(Landed { entry, at: Instant::now(), snapshot });
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        // Release the mutex first, then remove the table entry if nobody else holds the slot.
        drop(self.guard.take());
        let mut table = self.flights.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = table.get(&self.key) {
            if Arc::strong_count(slot) == 1 {
                table.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::ttl::Expiry;

    fn entry(value: &'static [u8]) -> Entry {
        Entry { value: Bytes::from_static(value), version: 1, expiry: Expiry::Never }
    }

    fn table_len(flights: &Flights) -> usize {
        flights.table.lock().map(|t| t.len()).unwrap_or(usize::MAX)
    }

    #[tokio::test]
    async fn a_follower_sees_the_landed_value_and_the_table_empties() {
        let epochs = Arc::new(Epochs::new());
        let flights = Arc::new(Flights::default());
        let mut leader = flights.join("k").await;
        assert!(!leader.waited);
        assert!(leader.landed(&epochs).is_none());
        let follower = tokio::spawn({
            let (flights, epochs) = (Arc::clone(&flights), Arc::clone(&epochs));
            async move {
                let f = flights.join("k").await;
                (f.waited, f.landed(&epochs))
            }
        });
        // Wait until the follower is queued on the key's mutex: the table, the leader and the follower
        // hold the slot.
        let holders = || flights.table.lock().ok().and_then(|t| t.get("k").map(Arc::strong_count));
        while holders() != Some(3) {
            tokio::task::yield_now().await;
        }
        leader.land(entry(b"v"), epochs.snapshot("k"));
        drop(leader);
        let (waited, landed) = follower.await.unwrap_or((false, None));
        assert!(waited, "the follower waited for the leader");
        assert_eq!(landed, Some(entry(b"v")));
        assert_eq!(table_len(&flights), 0);
    }

    #[tokio::test]
    async fn invalidation_hides_the_landed_value() {
        let epochs = Arc::new(Epochs::new());
        let flights = Arc::new(Flights::default());
        let mut leader = flights.join("k").await;
        let follower = tokio::spawn({
            let (flights, epochs) = (Arc::clone(&flights), Arc::clone(&epochs));
            async move {
                let f = flights.join("k").await;
                (f.waited, f.landed(&epochs))
            }
        });
        tokio::task::yield_now().await;
        leader.land(entry(b"v"), epochs.snapshot("k"));
        epochs.bump_key("k");
        drop(leader);
        let (waited, landed) = follower.await.unwrap_or((false, None));
        assert!(waited);
        assert!(landed.is_none());
    }
}
