//! The invalidation listener: one dedicated, unpooled connection that LISTENs on the channel and evicts
//! local entries, reconnecting by itself.
//!
//! tokio-postgres delivers notifications only through `Connection::poll_message`, so this module drives
//! the connection itself instead of spawning it as a plain future. The connection never opens a
//! transaction (that would pin the server's notification queue). While the listener is not confirmed
//! alive the local cache is not trusted (see [`Lease`]). After every (re)connect, notifications sent
//! while it was away are lost, so the local cache is checked against the shared table before it is
//! trusted again: reconciled key by key, or emptied when the table's incarnation (its recorded id, its
//! oid, the server's system identifier and start time) changed, i.e. L2 itself was replaced. The
//! heartbeat reads the incarnation too, and the age of the invalidation log's oldest row: when no
//! flusher drains the log, notifications are not coming, so the lease ends and the session starts over.
//! Each session also runs for invalidation flusher (`flusher.rs`) on its own connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{AsyncMessage, Client, Statement};

use crate::coherence::{Coherence, Lease};
use crate::conn::{bounded, statement_bound};
use crate::flusher::{Flusher, FlusherStatements};
use crate::settings::CacheSettings;
use crate::store::{self, CoherenceStatements, Incarnation};
use crate::telemetry::ListenerMetrics;

/// A notification payload. Version 2 (no `op`, `"v": 2`), sent by the flusher (`store::drain_sql`):
/// `{"v":2,"p":prefix,"t":ms,"u":[[key,version],...],"d":[[key,version],...],"w":[[key,version,value,expires],...]}`
/// (written and deleted keys, and the new values of some written keys: base64, expiry in epoch
/// milliseconds by the database clock or null; every key of `w` is in `u` too, and `w` is optional)
/// or `{"v":2,"p":prefix,"t":ms,"f":1}` (every key). Version 1 (no `v`), sent by the triggers of schema
/// versions before 4: `{"p":prefix,"op":"insert"|"update"|"delete"|"flush","keys":[[key,version],...]}`.
/// A payload of any other version, or one that does not parse, flushes: never misread.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub(crate) struct Event {
    /// The payload version: absent for version 1.
    #[serde(default)]
    pub(crate) v: Option<u32>,
    /// The schema prefix of the table that changed.
    pub(crate) p: String,
    /// Version 1: `insert`, `update`, `delete` or `flush`.
    #[serde(default)]
    pub(crate) op: Option<String>,
    /// Version 1: (key, version) pairs.
    #[serde(default)]
    pub(crate) keys: Vec<(String, i64)>,
    /// Version 2: (key, version) of written keys.
    #[serde(default)]
    pub(crate) u: Vec<(String, i64)>,
    /// Version 2: (key, version) of deleted keys (the version the row had).
    #[serde(default)]
    pub(crate) d: Vec<(String, i64)>,
    /// Version 2: (key, version, base64 value, expiry) of written keys whose new value came along.
    #[serde(default)]
    pub(crate) w: Vec<(String, i64, String, Option<i64>)>,
    /// Version 2: present when every key is invalidated.
    #[serde(default)]
    pub(crate) f: Option<u8>,
    /// When the (oldest) change was written: epoch milliseconds by the database's clock
    /// (`clock_timestamp()`), for the invalidation lag. Absent from payloads of older schemas.
    #[serde(default)]
    pub(crate) t: Option<i64>,
}

/// What a payload asks of this node.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// Another prefix's event (or a marker): nothing.
    Ignore,
    /// Every key.
    Flush,
    /// These keys: (key, version, deleted), and the new values carried for some written keys.
    Evict(Vec<(String, i64, bool)>, Vec<Carried>),
}

/// A written key's new value carried by a notification: (key, version, value, expiry in epoch
/// milliseconds by the database clock, `None`: never).
type Carried = (String, i64, Bytes, Option<i64>);

/// Reads a payload for `prefix`; `None` when it is unreadable or of an unknown version.
fn action(prefix: &str, payload: &str) -> Option<(Action, Option<i64>)> {
    let event = serde_json::from_str::<Event>(payload).ok()?;
    let action = match event.v {
        None => match event.op.as_deref() {
            None => return None,
            Some(_) if event.p != prefix => Action::Ignore,
            Some("flush") => Action::Flush,
            Some(op) => {
                let deleted = op == "delete";
                Action::Evict(
                    event.keys.into_iter().map(|(key, version)| (key, version, deleted)).collect(),
                    Vec::new(),
                )
            }
        },
        Some(2) if event.p != prefix => Action::Ignore,
        Some(2) if event.f.is_some() => Action::Flush,
        Some(2) => {
            let written = event.u.into_iter().map(|(key, version)| (key, version, false));
            let keys = written.chain(event.d.into_iter().map(|(key, version)| (key, version, true))).collect();
            // A value that does not decode is left out: its key is in `u`, so it is evicted.
            let carried = event
                .w
                .into_iter()
                .filter_map(|(key, version, value, expires)| {
                    Some((key, version, Bytes::from(BASE64.decode(value).ok()?), expires))
                })
                .collect();
            Action::Evict(keys, carried)
        }
        Some(_) => return None,
    };
    Some((action, event.t))
}

/// Applies one notification to the local cache. Unknown payloads flush, to stay on the safe side.
pub(crate) async fn apply(local: &Coherence, prefix: &str, payload: &str, metrics: &ListenerMetrics) {
    match action(prefix, payload) {
        Some((Action::Ignore, _)) => {}
        Some((Action::Flush, t)) => {
            local.evict_all();
            metrics.invalidated(true, t);
        }
        Some((Action::Evict(keys, carried), t)) => {
            let carried: HashMap<&str, &Carried> = carried.iter().map(|c| (c.0.as_str(), c)).collect();
            for (key, version, deleted) in keys {
                match carried.get(key.as_str()) {
                    Some((_, v, value, expires)) if !deleted && *v == version => {
                        local.replace_notified(&key, version, value.clone(), *expires).await;
                    }
                    _ => local.evict_notified(&key, version, deleted).await,
                }
            }
            metrics.invalidated(false, t);
        }
        None => {
            tracing::warn!(target: "pgcache::listener", payload = %payload.chars().take(200).collect::<String>(), "unreadable notification or unknown payload version; flushing local cache");
            local.evict_all();
        }
    }
}

/// Applies a payload, or wakes the flusher.
async fn receive(
    incoming: Incoming,
    flusher: &mut Flusher,
    coherence: &Coherence,
    prefix: &str,
    metrics: &ListenerMetrics,
) {
    match incoming {
        Incoming::Payload(payload) => apply(coherence, prefix, &payload, metrics).await,
        Incoming::Wake => flusher.wake(),
    }
}

/// The first reconnect delay, and the one after a session that was healthy.
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// The longest reconnect delay.
const LAST_RETRY: Duration = Duration::from_secs(2);
/// Keys checked per statement when reconciling the local cache after a reconnect.
const RECONCILE_BATCH: usize = 1000;

/// How a listener session ended.
struct Ended {
    reason: String,
    /// It was listening for at least a heartbeat interval: the back-off starts again from its first step.
    healthy: bool,
}

impl Ended {
    fn early(reason: String) -> Self {
        Self { reason, healthy: false }
    }
}

/// Runs until `shutdown` flips: connect, LISTEN, check the shared table's incarnation, reconcile (or
/// flush) the local cache, serve notifications and heartbeats; on any failure withdraw the lease and
/// reconnect with back-off. The back-off doubles from 50 ms up to 2 s while connecting fails, and starts
/// again from 50 ms after a session that was healthy.
///
/// `first` hears how the first connection attempt went (listening, or the error), so `connect` can
/// report e.g. "too many connections" instead of starting with a listener that never comes up.
pub(crate) async fn run(
    settings: CacheSettings,
    coherence: Arc<Coherence>,
    mut shutdown: watch::Receiver<bool>,
    first: oneshot::Sender<crate::Result<()>>,
) {
    let lease = &coherence.lease;
    let sql = CoherenceStatements::new(&settings.schema_prefix, &settings.notify_channel);
    let mut known = None;
    let mut backoff = FIRST_RETRY;
    let mut first = Some(first);
    let mut metrics = ListenerMetrics::new(&settings.schema_prefix);
    loop {
        let ended = tokio::select! {
            ended = session(&settings, &coherence, &sql, &mut known, &mut first, &mut metrics) => ended,
            _ = shutdown.changed() => { lease.set_listening(false); return; }
        };
        lease.set_listening(false);
        metrics.down();
        if ended.healthy {
            backoff = FIRST_RETRY;
        }
        tracing::warn!(target: "pgcache::listener", reason = %ended.reason, retry_in = ?backoff, "listener down");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(LAST_RETRY);
    }
}

/// Reports the first attempt's outcome, once.
type FirstReport = Option<oneshot::Sender<crate::Result<()>>>;

fn report(first: &mut FirstReport, outcome: crate::Result<()>) {
    if let Some(tx) = first.take() {
        let _ = tx.send(outcome);
    }
}

/// Records the incarnation just read; true when it differs from the one known before (the shared table
/// was replaced: recreated, emptied by a crash, failed over, restored).
fn replaced(known: &mut Option<Incarnation>, now: Incarnation) -> bool {
    let replaced = known.as_ref().is_some_and(|before| *before != now);
    if replaced {
        tracing::warn!(target: "pgcache::listener", before = ?known, now = ?now, "the shared table was replaced; flushing the local cache");
    }
    *known = Some(now);
    replaced
}

/// The statements a session prepares on its connection.
struct Prepared {
    versions: Statement,
    incarnation: Statement,
    drain: Statement,
    log_age: Statement,
    try_lock: Statement,
    unlock: Statement,
}

impl Prepared {
    fn flusher(&self) -> FlusherStatements<'_> {
        FlusherStatements { try_lock: &self.try_lock, unlock: &self.unlock, drain: &self.drain }
    }
}

/// What the connection's driver hands the session.
enum Incoming {
    /// A payload on the nodes' channel.
    Payload(String),
    /// A writer woke the sleeping flusher.
    Wake,
}

/// How long the invalidation log's oldest row may wait before this node stops trusting its local
/// cache: the flusher is gone or stalled, so notifications are not coming (twice the heartbeat
/// interval, at least a second, well above the flusher's failover time `flusher::ELECTION`).
fn stall_bound(settings: &CacheSettings) -> Duration {
    settings.heartbeat_interval.saturating_mul(2).max(Duration::from_secs(1))
}

/// The age of the invalidation log's oldest row when it is past the stall bound (no flusher is sending,
/// or it is that far behind); `None` when the log is drained in time.
///
/// # Errors
/// The statement failed.
async fn stale_log(settings: &CacheSettings, client: &Client, prepared: &Prepared) -> Result<Option<Duration>, String> {
    let age =
        bounded(statement_bound(settings), "reading the invalidation log", store::log_age(client, &prepared.log_age));
    Ok(age.await.map_err(|e| e.to_string())?.filter(|age| *age > stall_bound(settings)))
}

fn stale_reason(age: Duration) -> String {
    format!("the invalidation log has not been drained for {age:?}: no flusher is sending invalidations in time")
}

/// Brings the local cache in line with the shared table after a (re)connect: flushed when the table was
/// replaced, else each held entry checked against its current version in batched `= ANY` reads and
/// evicted only if it changed or vanished. Runs after LISTEN, so a change after the reads is notified.
async fn resync(
    settings: &CacheSettings,
    client: &Client,
    coherence: &Coherence,
    prepared: &Prepared,
    known: &mut Option<Incarnation>,
) -> crate::Result<()> {
    let bound = statement_bound(settings);
    // Whatever a fill read while the listener was away may have missed an invalidation.
    coherence.distrust_fills();
    let sent = Instant::now();
    let read = bounded(bound, "reading the incarnation", store::incarnation(client, &prepared.incarnation));
    let (now, clock) = read.await?;
    coherence.clock.sample(sent, clock);
    if replaced(known, now) {
        coherence.evict_all();
        return Ok(());
    }
    let held = coherence.held_versions();
    let mut current = HashMap::with_capacity(held.len());
    for chunk in held.chunks(RECONCILE_BATCH) {
        let keys: Vec<&str> = chunk.iter().map(|(key, _)| &**key).collect();
        let rows = bounded(bound, "reconciling the local cache", store::versions(client, &prepared.versions, &keys));
        current.extend(rows.await?);
    }
    let evicted = coherence.reconcile(&held, &current).await;
    if !held.is_empty() {
        tracing::info!(target: "pgcache::listener", held = held.len(), evicted, "reconciled the local cache");
    }
    Ok(())
}

/// One connection's life: why it ended, and whether it had been healthy.
async fn session(
    settings: &CacheSettings,
    coherence: &Coherence,
    sql: &CoherenceStatements,
    known: &mut Option<Incarnation>,
    first: &mut FirstReport,
    metrics: &mut ListenerMetrics,
) -> Ended {
    let lease: &Lease = &coherence.lease;
    let dsn = settings.listen_dsn.as_deref().unwrap_or(&settings.dsn);
    let (client, mut messages) = match crate::conn::open(settings, "listen_dsn", dsn).await {
        Ok(pair) => pair,
        Err(e) => {
            let reason = format!("connect: {e}");
            report(first, Err(e));
            return Ended::early(reason);
        }
    };
    let mut flusher = Flusher::new(&settings.schema_prefix);
    let (tx, mut notifications) = mpsc::unbounded_channel::<Incoming>();
    // Drive the connection, forwarding notifications; ends when the connection does.
    let wake_channel = flusher.wake_channel().to_owned();
    let mut driver = tokio::spawn(async move {
        loop {
            match messages.next().await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let incoming = if n.channel() == wake_channel {
                        Incoming::Wake
                    } else {
                        Incoming::Payload(n.payload().to_owned())
                    };
                    if tx.send(incoming).is_err() {
                        return "listener stopped".to_owned();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return format!("connection error: {e}"),
                None => return "connection closed".to_owned(),
            }
        }
    });
    let prefix = &settings.schema_prefix;
    let heartbeat_every = settings.heartbeat_interval;
    let mut listening_since = None;
    let result = async {
        let bound = statement_bound(settings);
        // No sequential scan where another path exists, on this connection, which runs only the statements
        // below: the flusher's batch deletes its rows by `ctid = ANY(..)`, and a generic plan built on the
        // log's stats (nearly empty) can pick a sequential scan with that as a filter instead of a TID
        // scan, which costs rows x batch (auto_explain: 3.6 ms for 1000 rows of 1000, and it grows with a
        // backlog). Scans without another path (reading the log itself) are still sequential. And no JIT:
        // the cost those carry (`disable_cost`) would pass `jit_above_cost`, and compiling the batch took
        // 487 ms for a batch that found no row (auto_explain); none of these statements gains from it.
        let listen = format!("LISTEN \"{}\"; SET enable_seqscan = off; SET jit = off", settings.notify_channel);
        let listening = async { client.batch_execute(&listen).await.map_err(crate::Error::from_pg) };
        bounded(bound, "LISTEN", listening).await.map_err(|e| e.to_string())?;
        let prepare = async {
            Ok(Prepared {
                versions: store::prepare(&client, &sql.versions).await?,
                incarnation: store::prepare(&client, &sql.incarnation).await?,
                drain: store::prepare(&client, &sql.drain).await?,
                log_age: store::prepare(&client, &sql.log_age).await?,
                try_lock: store::prepare(&client, &sql.try_lock).await?,
                unlock: store::prepare(&client, &sql.unlock).await?,
            })
        };
        let prepared =
            bounded(bound, "preparing the listener's statements", prepare).await.map_err(|e| e.to_string())?;
        let sent = Instant::now();
        // Run for flusher; if elected, send what waits in the log before judging whether it is drained.
        let elect = flusher.drain_all(&client, prepared.flusher());
        bounded(bound, "electing the invalidation flusher", elect).await.map_err(|e| e.to_string())?;
        if let Some(age) = stale_log(settings, &client, &prepared).await? {
            return Err(stale_reason(age));
        }
        resync(settings, &client, coherence, &prepared, known).await.map_err(|e| e.to_string())?;
        // Notifications of changes made during the resync: applied before anything local is served.
        while let Ok(incoming) = notifications.try_recv() {
            receive(incoming, &mut flusher, coherence, prefix, metrics).await;
        }
        lease.renew(sent);
        lease.set_listening(true);
        metrics.listening();
        listening_since = Some(Instant::now());
        report(first, Ok(()));
        tracing::info!(target: "pgcache::listener", channel = %settings.notify_channel, "listening");
        // Set while the log is past the stall bound: the session goes on (it may be the flusher, working
        // through a backlog, or may become it), but the lease is withdrawn until the log is drained in
        // time again and the local cache is reconciled.
        let mut stalled = false;
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Not `biased`: a steady stream of notifications must not starve the heartbeat.
            tokio::select! {
                incoming = notifications.recv() => match incoming {
                    Some(incoming) => receive(incoming, &mut flusher, coherence, prefix, metrics).await,
                    None => return Err("notification stream ended".to_owned()),
                },
                _ = tokio::time::sleep_until(flusher.due()) => {
                    // Bounded by the stall bound: a batch that hangs is a hung connection (and it holds up
                    // the heartbeat, which runs on this loop too, so the lease lapses meanwhile). Not by one
                    // heartbeat interval: under a write load that saturates the CPUs a batch can take longer
                    // (373 ms measured, and past 1 s), and ending the session would only add a reconnect,
                    // a resync and an election to the backlog.
                    let step = flusher.step(&client, prepared.flusher());
                    bounded(stall_bound(settings), "flushing invalidations", step).await.map_err(|e| e.to_string())?;
                }
                _ = heartbeat.tick() => {
                    let sent = Instant::now();
                    // The heartbeat reads the incarnation: a table replaced under a live connection
                    // (dropped and recreated, say) is noticed within one interval. And the log's age: a
                    // flusher that stopped sending (or fell that far behind) ends the lease too.
                    let stale = stale_log(settings, &client, &prepared).await?;
                    let beat = store::incarnation(&client, &prepared.incarnation);
                    match bounded(heartbeat_every, "heartbeat", beat).await {
                        Ok((now, clock)) => {
                            coherence.clock.sample(sent, clock);
                            if replaced(known, now) {
                                coherence.evict_all();
                            }
                            // Notifications sent before the reply are already queued: apply them first.
                            while let Ok(incoming) = notifications.try_recv() {
                                receive(incoming, &mut flusher, coherence, prefix, metrics).await;
                            }
                            match stale {
                                Some(age) if !stalled => {
                                    tracing::warn!(target: "pgcache::listener", reason = %stale_reason(age), "not serving local copies until the log is drained in time");
                                    lease.set_listening(false);
                                    metrics.down();
                                    stalled = true;
                                }
                                Some(_) => {}
                                None if stalled => {
                                    // Rows the sweeper removed unsent (a stall of over a minute) are never
                                    // notified: reconcile before serving local copies again.
                                    resync(settings, &client, coherence, &prepared, known).await.map_err(|e| e.to_string())?;
                                    lease.renew(sent);
                                    lease.set_listening(true);
                                    metrics.trusted_again();
                                    stalled = false;
                                    tracing::info!(target: "pgcache::listener", "the invalidation log is drained in time again; local cache reconciled");
                                }
                                None => lease.renew(sent),
                            }
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
                reason = &mut driver => return Err(reason.unwrap_or_else(|e| format!("driver: {e}"))),
            }
        }
    }
    .await;
    lease.set_listening(false);
    driver.abort();
    let reason = match result {
        Ok(()) => "session ended".to_owned(),
        Err(reason) => reason,
    };
    Ended { reason, healthy: listening_since.is_some_and(|since| since.elapsed() >= heartbeat_every) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        let e: Event = serde_json::from_str(r#"{"p":"a_","op":"update","keys":[["k",7],["x\"y",8]]}"#).unwrap();
        assert_eq!(e.keys, vec![("k".to_owned(), 7), ("x\"y".to_owned(), 8)]);
        let f: Event = serde_json::from_str(r#"{"p":"a_","op":"flush"}"#).unwrap();
        assert!(f.keys.is_empty());
    }

    #[test]
    fn payload_versions_are_read_or_refused_never_misread() {
        let evict = |keys: &[(&str, i64, bool)]| {
            Some(Action::Evict(keys.iter().map(|(k, v, d)| ((*k).to_owned(), *v, *d)).collect(), Vec::new()))
        };
        let read = |payload: &str| action("a_", payload).map(|(action, _)| action);
        assert_eq!(read(r#"{"p":"a_","op":"delete","keys":[["k",3]]}"#), evict(&[("k", 3, true)]));
        assert_eq!(read(r#"{"p":"a_","op":"flush"}"#), Some(Action::Flush));
        assert_eq!(
            read(r#"{"v":2,"p":"a_","t":1,"u":[["w",5]],"d":[["x",6]]}"#),
            evict(&[("w", 5, false), ("x", 6, true)])
        );
        assert_eq!(read(r#"{"v":2,"p":"a_","t":1,"f":1}"#), Some(Action::Flush));
        // Carried values: decoded; one that does not decode is left out (its key is still evicted).
        assert_eq!(
            read(r#"{"v":2,"p":"a_","t":1,"u":[["w",5],["z",6]],"d":[],"w":[["w",5,"aGk=",null],["z",6,"%%",7]]}"#),
            Some(Action::Evict(
                vec![("w".to_owned(), 5, false), ("z".to_owned(), 6, false)],
                vec![("w".to_owned(), 5, Bytes::from_static(b"hi"), None)]
            ))
        );
        assert_eq!(read(r#"{"v":2,"p":"b_","t":1,"f":1}"#), Some(Action::Ignore));
        assert_eq!(read(r#"{"p":"b_","op":"update","keys":[]}"#), Some(Action::Ignore));
        // Unknown versions and shapes are refused (the caller flushes), whatever prefix they name.
        assert_eq!(read(r#"{"v":3,"p":"a_","u":[]}"#), None);
        assert_eq!(read(r#"{"v":3,"p":"b_","u":[]}"#), None);
        assert_eq!(read(r#"{"p":"a_"}"#), None);
        assert_eq!(read("not json"), None);
    }
}
