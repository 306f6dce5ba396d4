//! The polling invalidation mode (issue 14): for an engine or a connection where LISTEN/NOTIFY does not
//! deliver (a transaction pooler, CockroachDB, a probe override), a node reads the change history every
//! [`poll_interval`](crate::CacheSettings::poll_interval) instead of listening.
//!
//! - **What it reads.** Every log row carries its writer's transaction id (`sql/005_capabilities.sql`).
//!   The flusher's batch moves log rows into the change history `cache_changes` while any poller is
//!   registered in `cache_pollers`, in the statement that deletes them from the log. A poll reads both
//!   tables in one statement, so each row is seen in one of them.
//! - **No lost invalidation.** The watermark is the `xmin` of the previous poll's snapshot: every
//!   transaction that poll could not see has an id at or above it, so the next poll reads its rows once
//!   it commits, however long it ran. Rows seen again (the watermark holds while an old transaction
//!   runs) are skipped by (transaction, key, version).
//! - **Retention.** History rows are deleted by the sweeper [`RETENTION`] after they were moved, never
//!   by a flusher. A poller registers for [`RETENTION`] and renews every [`RETENTION`]` / 4`; a session
//!   that could not poll for [`RETENTION`]` / 2` starts over, and every session starts by reconciling
//!   the local cache against the shared table (the catch-up for anything it may have missed), like a
//!   listener after a reconnect. With no registered poller the flusher only deletes, as before.
//! - **Draining.** A poll that finds rows still in the log (no listener's flusher took them) drains the
//!   log itself after reading, with the flusher's statement and without an election: two drains at once
//!   take different rows, and through a transaction pooler an advisory-lock election would not hold.
//! - **Mixed prefixes.** Listening and polling nodes share one prefix: the listeners' elected flusher
//!   notifies the listeners and, while a poller is registered, keeps the history for the pollers.
//! - **Staleness bound.** While polls succeed: a write is evicted everywhere within `poll_interval`
//!   plus one statement after its commit (plus the flusher's move, a few milliseconds, when a listener's
//!   flusher is elected). When polls fail, local copies are not served past `2 × poll_interval + 500 ms`
//!   after the last successful poll was sent.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{oneshot, watch};

use crate::coherence::Coherence;
use crate::conn::{bounded, statement_bound};
use crate::flusher::BATCH;
use crate::settings::CacheSettings;
use crate::store::{self, Change, CoherenceStatements, Incarnation, PollStatements};
use crate::telemetry::ListenerMetrics;

/// How long history rows are kept after the flusher moved them, and how long a poller's registration
/// lasts without renewal.
pub(crate) const RETENTION: Duration = Duration::from_secs(60);
/// Keys checked per statement when reconciling the local cache.
const RECONCILE_BATCH: usize = 1000;
/// The first reconnect delay.
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// The longest reconnect delay.
const LAST_RETRY: Duration = Duration::from_secs(2);

/// How long local copies stay trusted after the last successful poll was sent.
pub(crate) fn lease_length(settings: &CacheSettings) -> Duration {
    settings.poll_interval.saturating_mul(2).saturating_add(Duration::from_millis(500))
}

/// Runs until `shutdown` flips: register, reconcile, poll; on any failure withdraw the lease and start
/// over with back-off. `first` hears how the first session started (as for the listener).
pub(crate) async fn run(
    settings: CacheSettings,
    coherence: Arc<Coherence>,
    mut shutdown: watch::Receiver<bool>,
    first: oneshot::Sender<crate::Result<()>>,
) {
    let node = format!("{}-{:016x}", settings.application_name, fastrand::u64(..));
    let mut first = Some(first);
    let mut known = None;
    let mut backoff = FIRST_RETRY;
    let mut metrics = ListenerMetrics::new(&settings.schema_prefix);
    loop {
        let ended = tokio::select! {
            ended = session(&settings, &coherence, &node, &mut known, &mut first, &mut metrics) => ended,
            _ = shutdown.changed() => {
                coherence.lease.set_listening(false);
                unregister(&settings, &node).await;
                return;
            }
        };
        coherence.lease.set_listening(false);
        metrics.down();
        if ended.1 {
            backoff = FIRST_RETRY;
        }
        tracing::warn!(target: "pgcache::poller", reason = %ended.0, retry_in = ?backoff, "poller down");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => { unregister(&settings, &node).await; return; }
        }
        backoff = (backoff * 2).min(LAST_RETRY);
    }
}

/// Removes this node's registration at close (best effort: a lapsed one is swept anyway).
async fn unregister(settings: &CacheSettings, node: &str) {
    let dsn = settings.listen_dsn.as_deref().unwrap_or(&settings.dsn);
    let Ok((client, mut messages)) = crate::conn::open(settings, "listen_dsn", dsn).await else { return };
    let driver = tokio::spawn(async move { while let Some(Ok(_)) = messages.next().await {} });
    let sql = PollStatements::new(&settings.schema_prefix);
    let _ =
        bounded(statement_bound(settings), "unregistering the poller", store::unregister_poller(&client, &sql, node))
            .await;
    drop(client);
    driver.abort();
}

/// One connection's life: why it ended, and whether it had been polling for a while.
async fn session(
    settings: &CacheSettings,
    coherence: &Coherence,
    node: &str,
    known: &mut Option<Incarnation>,
    first: &mut Option<oneshot::Sender<crate::Result<()>>>,
    metrics: &mut ListenerMetrics,
) -> (String, bool) {
    let dsn = settings.listen_dsn.as_deref().unwrap_or(&settings.dsn);
    let (client, mut messages) = match crate::conn::open(settings, "listen_dsn", dsn).await {
        Ok(pair) => pair,
        Err(e) => {
            let reason = format!("connect: {e}");
            if let Some(tx) = first.take() {
                let _ = tx.send(Err(e));
            }
            return (reason, false);
        }
    };
    let mut driver = tokio::spawn(async move {
        loop {
            match messages.next().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return format!("connection error: {e}"),
                None => return "connection closed".to_owned(),
            }
        }
    });
    let mut polling_since = None;
    let result = tokio::select! {
        result = poll_session(settings, coherence, node, known, first, metrics, &client, &mut polling_since) => result,
        reason = &mut driver => Err(reason.unwrap_or_else(|e| format!("driver: {e}"))),
    };
    driver.abort();
    let healthy = polling_since.is_some_and(|since: Instant| since.elapsed() >= settings.heartbeat_interval);
    (result.err().unwrap_or_else(|| "session ended".to_owned()), healthy)
}

/// Register, take the first watermark, reconcile, then poll until something fails.
#[allow(clippy::too_many_arguments)]
async fn poll_session(
    settings: &CacheSettings,
    coherence: &Coherence,
    node: &str,
    known: &mut Option<Incarnation>,
    first: &mut Option<oneshot::Sender<crate::Result<()>>>,
    metrics: &mut ListenerMetrics,
    client: &tokio_postgres::Client,
    polling_since: &mut Option<Instant>,
) -> Result<(), String> {
    let bound = statement_bound(settings);
    let sql = PollStatements::new(&settings.schema_prefix);
    let coherence_sql = CoherenceStatements::new(&settings.schema_prefix, &settings.notify_channel);
    let lease = &coherence.lease;
    let err = |e: crate::Error| e.to_string();
    let register = || store::register_poller(client, &sql, node, RETENTION.as_secs_f64());
    bounded(bound, "registering the poller", register()).await.map_err(err)?;
    let mut registered = Instant::now();
    // The first watermark, from a snapshot taken after the registration committed: from here on the
    // flusher keeps what this node has not read.
    let sent = Instant::now();
    let mut watermark =
        bounded(bound, "reading the watermark", store::poll_changes(client, &sql, i64::MAX)).await.map_err(err)?.xmin;
    // Whatever happened before that snapshot: the local cache is checked against the table.
    coherence.distrust_fills();
    let now = bounded(bound, "reading the incarnation", store::incarnation_typed(client, &coherence_sql.incarnation))
        .await
        .map_err(err)?;
    if replaced(known, now) {
        coherence.evict_all();
    } else {
        let held = coherence.held_versions();
        let mut current = std::collections::HashMap::with_capacity(held.len());
        for chunk in held.chunks(RECONCILE_BATCH) {
            let keys: Vec<&str> = chunk.iter().map(|(key, _)| &**key).collect();
            let rows = store::versions_typed(client, &coherence_sql.versions, &keys);
            current.extend(bounded(bound, "reconciling the local cache", rows).await.map_err(err)?);
        }
        let evicted = coherence.reconcile(&held, &current).await;
        if !held.is_empty() {
            tracing::info!(target: "pgcache::poller", held = held.len(), evicted, "reconciled the local cache");
        }
    }
    lease.renew(sent);
    lease.set_listening(true);
    metrics.listening();
    *polling_since = Some(Instant::now());
    if let Some(tx) = first.take() {
        let _ = tx.send(Ok(()));
    }
    tracing::info!(target: "pgcache::poller", interval = ?settings.poll_interval, "polling the change history");
    let mut seen: HashSet<Change> = HashSet::new();
    let mut last_poll = Instant::now();
    let mut heartbeat = Instant::now();
    let mut ticker = tokio::time::interval(settings.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if last_poll.elapsed() > RETENTION / 2 {
            return Err("no poll succeeded for half the retention window; starting over".to_owned());
        }
        if registered.elapsed() >= RETENTION / 4 {
            bounded(bound, "renewing the poller registration", register()).await.map_err(err)?;
            registered = Instant::now();
        }
        let sent = Instant::now();
        let store::Polled { xmin, changes, in_log } =
            bounded(bound, "polling the change history", store::poll_changes(client, &sql, watermark))
                .await
                .map_err(err)?;
        if in_log {
            // Rows no flusher has moved yet: no listener's flusher drains this prefix (or it is slow).
            // This poller drains, unelected: two drains at once each take other rows, so it stays
            // correct (through a transaction pooler an advisory-lock election would not hold anyway).
            loop {
                let drain = store::drain_typed(client, &coherence_sql.drain, BATCH);
                let moved = bounded(bound, "draining the invalidation log", drain).await.map_err(err)?;
                if moved < BATCH.unsigned_abs() {
                    break;
                }
            }
        }
        let mut everything = false;
        let mut evicted = false;
        for change in changes {
            if seen.contains(&change) {
                continue;
            }
            match &change.key {
                None => everything = true,
                Some(key) => {
                    coherence.evict_notified(key, change.version, change.deleted).await;
                    evicted = true;
                }
            }
            seen.insert(change);
        }
        if everything {
            coherence.evict_all();
        }
        if everything || evicted {
            metrics.invalidated(everything, None);
        }
        watermark = xmin;
        seen.retain(|change| change.xid >= watermark);
        last_poll = Instant::now();
        lease.renew(sent);
        if heartbeat.elapsed() >= settings.heartbeat_interval {
            // The table replaced under a live connection (dropped and recreated, a new server life).
            let read = store::incarnation_typed(client, &coherence_sql.incarnation);
            let now = bounded(bound, "reading the incarnation", read).await.map_err(err)?;
            if replaced(known, now) {
                coherence.evict_all();
            }
            heartbeat = Instant::now();
        }
    }
}

/// Records the incarnation just read; true when it differs from the one known before.
fn replaced(known: &mut Option<Incarnation>, now: Incarnation) -> bool {
    let replaced = known.as_ref().is_some_and(|before| *before != now);
    if replaced {
        tracing::warn!(target: "pgcache::poller", before = ?known, now = ?now, "the shared table was replaced; flushing the local cache");
    }
    *known = Some(now);
    replaced
}
