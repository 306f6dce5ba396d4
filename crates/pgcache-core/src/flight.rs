//! Local single flight: one `get_or_set` per key per process runs at a time; the others wait for it.
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
use crate::local::{Epochs, Snapshot};
use crate::ttl::Expiry;

/// What a finished leader leaves for its followers.
pub(crate) struct Landed {
    entry: Entry,
    at: Instant,
    snapshot: Snapshot,
}

type Slot = Arc<AsyncMutex<Option<Landed>>>;

/// The keyed mutex table.
pub(crate) struct Flights {
    table: Mutex<HashMap<Arc<str>, Slot>>,
    epochs: Arc<Epochs>,
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
    pub(crate) fn new(epochs: Arc<Epochs>) -> Self {
        Self { table: Mutex::new(HashMap::new()), epochs }
    }

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
    pub(crate) fn landed(&self) -> Option<Entry> {
        let landed = self.guard.as_ref()?.as_ref()?;
        if !self.flights.epochs.unchanged(&self.key, landed.snapshot) {
            return None;
        }
        let expiry = match landed.entry.expiry {
            Expiry::Never => Expiry::Never,
            Expiry::In(left) => Expiry::In(left.saturating_sub(landed.at.elapsed())),
        };
        Some(Entry { expiry, ..landed.entry.clone() })
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
    use super::*;

    #[tokio::test]
    async fn followers_see_the_landed_value_and_table_empties() {
        let epochs = Arc::new(Epochs::new());
        let flights = Flights::new(Arc::clone(&epochs));
        {
            let mut leader = flights.join("k").await;
            assert!(!leader.waited);
            assert!(leader.landed().is_none());
            leader.land(
                Entry { value: bytes::Bytes::from_static(b"v"), version: 1, expiry: Expiry::Never },
                epochs.snapshot("k"),
            );
            // A follower in the same flight (joined before the leader left) sees it.
            let slot = flights.table.lock().map(|t| t.len()).unwrap_or(0);
            assert_eq!(slot, 1);
        }
        assert_eq!(flights.table.lock().map(|t| t.len()).unwrap_or(99), 0);
    }

    #[tokio::test]
    async fn invalidation_hides_the_landed_value() {
        let epochs = Arc::new(Epochs::new());
        let flights = Arc::new(Flights::new(Arc::clone(&epochs)));
        let mut leader = flights.join("k").await;
        let f2 = Arc::clone(&flights);
        let follower = tokio::spawn(async move {
            let f = f2.join("k").await;
            (f.waited, f.landed())
        });
        tokio::task::yield_now().await;
        leader.land(
            Entry { value: bytes::Bytes::from_static(b"v"), version: 1, expiry: Expiry::Never },
            epochs.snapshot("k"),
        );
        epochs.bump_key("k");
        drop(leader);
        let (waited, landed) = follower.await.unwrap_or((false, None));
        assert!(waited);
        assert!(landed.is_none());
    }
}
