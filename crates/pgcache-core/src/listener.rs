//! The invalidation listener: one dedicated, unpooled connection that LISTENs on the channel and evicts
//! local entries, reconnecting by itself.
//!
//! tokio-postgres delivers notifications only through `Connection::poll_message`, so this module drives
//! the connection itself instead of spawning it as a plain future. The connection never opens a
//! transaction (that would pin the server's notification queue). While the listener is not confirmed
//! alive the local cache is not trusted (see [`Lease`]), and after every (re)connect the local cache is
//! emptied before it is trusted again, since notifications sent while it was away are lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::AsyncMessage;

use crate::coherence::{Coherence, Lease};
use crate::conn::{bounded, statement_bound};
use crate::settings::CacheSettings;
use crate::telemetry::ListenerMetrics;

/// A notification payload, as built by `sql/notify_function.sql`.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub(crate) struct Event {
    /// The schema prefix of the table that changed.
    pub(crate) p: String,
    /// `insert`, `update`, `delete` or `flush`.
    pub(crate) op: String,
    /// (key, version) pairs.
    #[serde(default)]
    pub(crate) keys: Vec<(String, i64)>,
    /// When the writing statement's trigger ran: epoch milliseconds by the database's clock
    /// (`clock_timestamp()`), for the invalidation lag. Absent from payloads of older schemas.
    #[serde(default)]
    pub(crate) t: Option<i64>,
}

/// Applies one notification to the local cache. Unknown payloads flush, to stay on the safe side.
pub(crate) async fn apply(local: &Coherence, prefix: &str, payload: &str, metrics: &ListenerMetrics) {
    match serde_json::from_str::<Event>(payload) {
        Ok(event) if event.p != prefix => {}
        Ok(event) if event.op == "flush" => {
            local.evict_all();
            metrics.invalidated(true, event.t);
        }
        Ok(event) => {
            let deleted = event.op == "delete";
            for (key, version) in event.keys {
                local.evict_notified(&key, version, deleted).await;
            }
            metrics.invalidated(false, event.t);
        }
        Err(e) => {
            tracing::warn!(target: "pgcache::listener", error = %e, "unreadable notification; flushing local cache");
            local.evict_all();
        }
    }
}

/// Runs until `shutdown` flips: connect, LISTEN, flush, serve notifications and heartbeats; on any
/// failure withdraw the lease and reconnect with back-off.
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
    let mut backoff = Duration::from_millis(50);
    let mut first = Some(first);
    let mut metrics = ListenerMetrics::new(&settings.schema_prefix);
    loop {
        let outcome = tokio::select! {
            outcome = session(&settings, &coherence, &mut first, &mut metrics) => outcome,
            _ = shutdown.changed() => { lease.set_listening(false); return; }
        };
        lease.set_listening(false);
        metrics.down();
        match outcome {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(reason) => tracing::warn!(target: "pgcache::listener", %reason, retry_in = ?backoff, "listener down"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Reports the first attempt's outcome, once.
type FirstReport = Option<oneshot::Sender<crate::Result<()>>>;

fn report(first: &mut FirstReport, outcome: crate::Result<()>) {
    if let Some(tx) = first.take() {
        let _ = tx.send(outcome);
    }
}

/// One connection's life. Returns `Err` with the reason it ended.
async fn session(
    settings: &CacheSettings,
    coherence: &Coherence,
    first: &mut FirstReport,
    metrics: &mut ListenerMetrics,
) -> Result<(), String> {
    let lease: &Lease = &coherence.lease;
    let dsn = settings.listen_dsn.as_deref().unwrap_or(&settings.dsn);
    let (client, mut messages) = match crate::conn::open(settings, "listen_dsn", dsn).await {
        Ok(pair) => pair,
        Err(e) => {
            let reason = format!("connect: {e}");
            report(first, Err(e));
            return Err(reason);
        }
    };
    let (tx, mut notifications) = mpsc::unbounded_channel::<String>();
    // Drive the connection, forwarding notifications; ends when the connection does.
    let mut driver = tokio::spawn(async move {
        loop {
            match messages.next().await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_owned()).is_err() {
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
    let result = async {
        let listen = format!("LISTEN \"{}\"", settings.notify_channel);
        let listening = async { client.batch_execute(&listen).await.map_err(crate::Error::from_pg) };
        bounded(statement_bound(settings), "LISTEN", listening).await.map_err(|e| e.to_string())?;
        // Anything cached before this point may have missed notifications.
        coherence.evict_all();
        lease.renew(Instant::now());
        lease.set_listening(true);
        metrics.listening();
        report(first, Ok(()));
        tracing::info!(target: "pgcache::listener", channel = %settings.notify_channel, "listening");
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Not `biased`: a steady stream of notifications must not starve the heartbeat.
            tokio::select! {
                payload = notifications.recv() => match payload {
                    Some(payload) => apply(coherence, prefix, &payload, metrics).await,
                    None => return Err("notification stream ended".to_owned()),
                },
                _ = heartbeat.tick() => {
                    let sent = Instant::now();
                    let beat = async { client.simple_query("SELECT 1").await.map_err(crate::Error::from_pg) };
                    match bounded(heartbeat_every, "heartbeat", beat).await {
                        Ok(_) => {
                            // Notifications sent before the reply are already queued: apply them first.
                            while let Ok(payload) = notifications.try_recv() {
                                apply(coherence, prefix, &payload, metrics).await;
                            }
                            lease.renew(sent);
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
    result
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
}
