//! Early refresh: whether a `get_or_load` hit should start one background refresh of its key.
//!
//! An entry written with [`SetOptions::refresh_after`](crate::SetOptions::refresh_after) is due once that
//! time has passed; one written with [`SetOptions::early_refresh`](crate::SetOptions::early_refresh) is
//! due with the XFetch probability (Vattani, Chierichetti and Lowenstein, "Optimal Probabilistic Cache
//! Stampede Prevention", VLDB 2015): a hit at time `t` refreshes when `t - compute * beta * ln(rand) >=
//! expiry`, with `compute` the loader's measured run time and `beta = 1`. This is the per-node table of
//! what each entry asked for, keyed by the version it was read or written at, so that a local (L1) hit
//! can decide without a round trip. Which node actually refreshes is decided in PostgreSQL (a try-lock,
//! then a version check), not here; this table only keeps a node from starting more than one attempt per
//! key at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ttl::Expiry;

/// XFetch's `beta`: 1 is the paper's recommendation (larger refreshes earlier).
const BETA: f64 = 1.0;
/// Least time between two refresh attempts of one key by one node (after a failed or lost attempt).
const MIN_RETRY: Duration = Duration::from_millis(100);

/// What an entry asked for, as of the version it was read or written at.
#[derive(Clone, Copy, Debug)]
struct Plan {
    version: i64,
    compute: Option<Duration>,
    refresh_at: Option<Instant>,
    expires_at: Option<Instant>,
    /// No new attempt before this (an attempt is running, or failed recently).
    not_before: Option<Instant>,
}

/// The early-refresh table of one cache instance, bounded by `capacity` keys.
pub(crate) struct Plans {
    plans: Mutex<HashMap<Arc<str>, Plan>>,
    /// Whether any entry ever asked for a refresh: until then a hit does not even look.
    any: AtomicBool,
    capacity: usize,
}

impl Plans {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { plans: Mutex::new(HashMap::new()), any: AtomicBool::new(false), capacity: capacity.max(1) }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Plan>> {
        self.plans.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records what the entry `key` at `version` asked for (read from or written to the table just now).
    pub(crate) fn record(
        &self,
        key: &str,
        version: i64,
        compute: Option<Duration>,
        refresh_in: Option<Duration>,
        expiry: Expiry,
    ) {
        let now = Instant::now();
        let expires_at = expiry.remaining().and_then(|left| now.checked_add(left));
        let compute = compute.filter(|_| expires_at.is_some());
        if compute.is_none() && refresh_in.is_none() {
            if self.any.load(Ordering::Relaxed) {
                self.table().remove(key);
            }
            return;
        }
        self.any.store(true, Ordering::Relaxed);
        let refresh_at = refresh_in.and_then(|d| now.checked_add(d));
        let plan = Plan { version, compute, refresh_at, expires_at, not_before: None };
        let mut table = self.table();
        if table.len() >= self.capacity && !table.contains_key(key) {
            // Over the bound: forget the plans of entries that have expired, or else all of them (a
            // forgotten plan only means a hit that does not refresh early; the entry still expires).
            table.retain(|_, p| p.expires_at.is_none_or(|at| at > now));
            if table.len() >= self.capacity {
                table.clear();
            }
        }
        match table.get_mut(key) {
            // Another caller's read of the same version must not reset a running attempt's hold.
            Some(old) if old.version == version => {}
            _ => {
                table.insert(Arc::from(key), plan);
            }
        }
    }

    /// Whether a hit on `key` at `version` starts a background refresh now. When it does, this node
    /// makes no other attempt on the key until [`finished`](Self::finished) (or a while after).
    pub(crate) fn due(&self, key: &str, version: i64) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        let mut table = self.table();
        let Some(plan) = table.get_mut(key) else { return false };
        if plan.version != version || plan.not_before.is_some_and(|at| at > now) {
            return false;
        }
        let deterministic = plan.refresh_at.is_some_and(|at| at <= now);
        let early = match (plan.compute, plan.expires_at) {
            (Some(compute), Some(expires_at)) => {
                xfetch(compute, expires_at.saturating_duration_since(now), fastrand::f64())
            }
            _ => false,
        };
        if !(deterministic || early) {
            return false;
        }
        // Held until the attempt finishes; bounded in case the attempt's task never reports.
        let hold = plan.compute.unwrap_or_default().saturating_mul(4).max(Duration::from_secs(10));
        plan.not_before = now.checked_add(hold);
        true
    }

    /// An attempt on `key` ended: another may start after a short pause (the entry, when refreshed, comes
    /// back with a new version and a new plan).
    pub(crate) fn finished(&self, key: &str) {
        let pause = Instant::now().checked_add(MIN_RETRY);
        if let Some(plan) = self.table().get_mut(key) {
            plan.not_before = pause;
        }
    }
}

/// XFetch's draw: refresh when `compute * beta * -ln(u) >= remaining`, `u` uniform in `[0, 1)`.
fn xfetch(compute: Duration, remaining: Duration, u: f64) -> bool {
    let draw = compute.as_secs_f64() * BETA * -u.ln();
    draw >= remaining.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfetch_refreshes_more_often_near_expiry() {
        let compute = Duration::from_millis(100);
        // P(refresh) = exp(-remaining / compute).
        assert!(xfetch(compute, Duration::ZERO, 0.999));
        assert!(xfetch(compute, Duration::from_millis(50), 0.5)); // -ln(0.5) * 100 ms = 69 ms >= 50 ms
        assert!(!xfetch(compute, Duration::from_millis(100), 0.5));
        assert!(!xfetch(compute, Duration::from_secs(10), 0.01)); // 460 ms < 10 s
        assert!(xfetch(compute, Duration::from_secs(10), 0.0)); // -ln(0) = inf
    }

    #[test]
    fn refresh_after_is_due_once_per_version_until_finished() {
        let plans = Plans::new(10);
        assert!(!plans.due("k", 1), "nothing recorded");
        plans.record("k", 1, None, Some(Duration::ZERO), Expiry::In(Duration::from_secs(60)));
        assert!(plans.due("k", 1));
        assert!(!plans.due("k", 1), "one attempt at a time per node");
        assert!(!plans.due("k", 2), "another version");
        plans.record("k", 2, None, Some(Duration::from_secs(60)), Expiry::In(Duration::from_secs(120)));
        assert!(!plans.due("k", 2), "not yet due");
        plans.record("k", 3, None, None, Expiry::Never);
        assert!(!plans.due("k", 3), "a plain entry has no plan");
    }

    #[test]
    fn the_table_stays_bounded() {
        let plans = Plans::new(4);
        for i in 0..100 {
            plans.record(&format!("k{i}"), i, None, Some(Duration::ZERO), Expiry::Never);
        }
        assert!(plans.table().len() <= 4);
    }
}
