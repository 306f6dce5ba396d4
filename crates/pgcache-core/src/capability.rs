//! What the server, and the path to it, really supports: probed once at connect, and the modes chosen
//! from it.
//!
//! A transaction pooler (PgBouncer in transaction mode) accepts `LISTEN` and `pg_advisory_lock` and then
//! silently breaks both: the notification goes to a server connection nobody listens on, the lock stays
//! on a server connection the next statement does not use. So the probe does not ask whether a statement
//! succeeds, it checks the effect:
//! - **NOTIFY**: one connection LISTENs on a private probe channel, a second one notifies it; the
//!   notification must arrive within [`NOTIFY_DEADLINE`].
//! - **Session advisory locks**: the first connection takes a lock on a private key; while a second
//!   connection holds a transaction open (so a pooler must hand the first another server connection),
//!   the second must not get the lock and the first must still be on the same backend (`pg_backend_pid`)
//!   within [`LOCK_DEADLINE`].
//! - **UNLOGGED**: the invalidation log is created `UNLOGGED`; its `relpersistence` tells whether the
//!   engine kept it so.
//! - **Transition tables**: the notify triggers of the installed schema reference transition tables.
//!
//! [`CacheSettings::assume_without`](crate::CacheSettings::assume_without) turns any of them off whatever
//! the probe finds.

use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_postgres::AsyncMessage;

use crate::conn::{bounded, open, statement_bound};
use crate::error::Result;
use crate::settings::CacheSettings;
use crate::store::{self, PollStatements};

/// How long the NOTIFY probe waits for its own notification (a direct connection delivers it in about
/// a millisecond).
pub(crate) const NOTIFY_DEADLINE: Duration = Duration::from_secs(1);
/// How long the lock probe waits for its first connection's statement while the second holds a
/// transaction open (a pooler with one server connection makes it wait for ever).
pub(crate) const LOCK_DEADLINE: Duration = Duration::from_millis(500);

/// A capability the cache uses when the server has it, with a fallback when it has not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Capability {
    /// LISTEN/NOTIFY that delivers. Fallback: polling the change history every
    /// [`poll_interval`](crate::CacheSettings::poll_interval).
    Notify,
    /// Session advisory locks that hold across statements (`get_or_set` across processes). Fallback:
    /// lease rows (`{prefix}cache_leases`), taken by an upsert and renewed while the loader runs.
    SessionLocks,
    /// `UNLOGGED` tables. Fallback: [`CacheSettings::unlogged`](crate::CacheSettings::unlogged) is
    /// ignored and `init_db` creates the entries table logged.
    Unlogged,
    /// Statement-level triggers with transition tables. Reported only: `init_db` needs them.
    TransitionTables,
}

/// What the server supports, as probed at connect (after
/// [`CacheSettings::assume_without`](crate::CacheSettings::assume_without)). Read it with
/// [`PostgresCache::capabilities`](crate::PostgresCache::capabilities).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// LISTEN/NOTIFY delivered a notification on `listen_dsn` (or `dsn`). Not probed, and reported
    /// `true`, when no listener is wanted (`disable_notify`, or no local cache).
    pub notify: bool,
    /// Session advisory locks held across statements on `listen_dsn` (or `dsn`).
    pub session_locks: bool,
    /// The engine kept an `UNLOGGED` table unlogged.
    pub unlogged: bool,
    /// The installed notify triggers use transition tables.
    pub transition_tables: bool,
    /// How this node learns of other nodes' writes, chosen from the above.
    pub invalidation: InvalidationMode,
}

/// How a node learns of other nodes' writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum InvalidationMode {
    /// A LISTEN connection hears the flusher's notifications (a few milliseconds after the commit).
    Listen,
    /// The change history is read every [`poll_interval`](crate::CacheSettings::poll_interval): the
    /// staleness bound is that interval plus one statement.
    Poll,
    /// No invalidation: `disable_notify`, or no local cache. Local copies live up to `local_ttl`.
    Off,
}

impl Capabilities {
    /// Everything, before any probe: what a node assumes when it does not need to ask.
    fn all() -> Self {
        Self {
            notify: true,
            session_locks: true,
            unlogged: true,
            transition_tables: true,
            invalidation: InvalidationMode::Listen,
        }
    }

    fn without(mut self, capability: Capability) -> Self {
        match capability {
            Capability::Notify => self.notify = false,
            Capability::SessionLocks => self.session_locks = false,
            Capability::Unlogged => self.unlogged = false,
            Capability::TransitionTables => self.transition_tables = false,
        }
        self
    }

    /// Whether `capability` is present.
    pub fn has(&self, capability: Capability) -> bool {
        match capability {
            Capability::Notify => self.notify,
            Capability::SessionLocks => self.session_locks,
            Capability::Unlogged => self.unlogged,
            Capability::TransitionTables => self.transition_tables,
        }
    }
}

/// Whether `settings` turn `capability` off.
pub(crate) fn assumed_without(settings: &CacheSettings, capability: Capability) -> bool {
    settings.assume_without.contains(&capability)
}

/// Probes the server on `listen_dsn` (or `dsn`), applies the settings' overrides, chooses the modes, and
/// logs the result once at info level.
///
/// # Errors
/// A probe connection cannot be opened (an outage or a set-up error such as too many connections).
/// A statement the engine refuses is not an error: the capability is absent.
pub(crate) async fn probe(settings: &CacheSettings) -> Result<Capabilities> {
    let mut found = Capabilities::all();
    let (name, dsn) = match &settings.listen_dsn {
        Some(direct) => ("listen_dsn", direct.as_str()),
        None => ("dsn", settings.dsn.as_str()),
    };
    let wants_notify = settings.listener_enabled() && !assumed_without(settings, Capability::Notify);
    let opened = async { Ok::<_, crate::Error>((open(settings, name, dsn).await?, open(settings, name, dsn).await?)) };
    let ((first, mut messages), (second, mut second_messages)) = match opened.await {
        Ok(pair) => pair,
        // No slot for the probe where no listener is wanted either (`disable_notify`, a role limited to
        // what the pool needs): not probed, session locks assumed, and said so.
        Err(e @ crate::Error::TooManyConnections { .. }) if !settings.listener_enabled() => {
            tracing::warn!(target: "pgcache::capability", error = %e, "no connection slot to probe the server; assuming session advisory locks hold");
            return Ok(choose(settings, Capabilities::all()));
        }
        Err(e) => return Err(e),
    };
    let (tx, mut notified) = tokio::sync::mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    let second_driver = tokio::spawn(async move { while let Some(Ok(_)) = second_messages.next().await {} });
    let bound = statement_bound(settings);
    let token = format!("{:016x}", fastrand::u64(..));
    if wants_notify {
        let channel = format!("pgcache_probe_{token}");
        let listen = async {
            first.batch_execute(&format!("LISTEN \"{channel}\"")).await.map_err(crate::Error::from_pg)?;
            let notify = "SELECT pg_notify($1, $2) IS NULL";
            store::probe_bool(
                &second,
                notify,
                &[(&channel, tokio_postgres::types::Type::TEXT), (&token, tokio_postgres::types::Type::TEXT)],
            )
            .await
        };
        found.notify = match bounded(bound, "probing LISTEN/NOTIFY", listen).await {
            Ok(_) => {
                let heard = async {
                    while let Some(payload) = notified.recv().await {
                        if payload == token {
                            return true;
                        }
                    }
                    false
                };
                tokio::time::timeout(NOTIFY_DEADLINE, heard).await.unwrap_or(false)
            }
            Err(e) => {
                tracing::debug!(target: "pgcache::capability", error = %e, "LISTEN/NOTIFY refused");
                false
            }
        };
        let _ = first.batch_execute(&format!("UNLISTEN \"{channel}\"")).await;
    }
    found.session_locks = probe_session_locks(&first, &second, bound).await;
    let schema = PollStatements::new(&settings.schema_prefix);
    match bounded(bound, "probing the schema", store::probe_schema(&first, &schema)).await {
        Ok((unlogged, transition_tables)) => {
            found.unlogged = unlogged;
            found.transition_tables = transition_tables;
        }
        Err(e) => tracing::debug!(target: "pgcache::capability", error = %e, "schema probe failed"),
    }
    drop((first, second));
    driver.abort();
    second_driver.abort();
    Ok(choose(settings, found))
}

/// The capabilities after the settings' overrides, with the invalidation mode chosen; logged once.
pub(crate) fn choose(settings: &CacheSettings, probed: Capabilities) -> Capabilities {
    let mut chosen = settings.assume_without.iter().fold(probed, |found, c| found.without(*c));
    chosen.invalidation = if !settings.listener_enabled() {
        InvalidationMode::Off
    } else if chosen.notify {
        InvalidationMode::Listen
    } else {
        InvalidationMode::Poll
    };
    tracing::info!(
        target: "pgcache::capability",
        notify = chosen.notify,
        session_locks = chosen.session_locks,
        unlogged = chosen.unlogged,
        transition_tables = chosen.transition_tables,
        invalidation = ?chosen.invalidation,
        poll_interval = ?settings.poll_interval,
        "capabilities probed"
    );
    crate::telemetry::capabilities(&settings.schema_prefix, &chosen);
    if !chosen.session_locks {
        tracing::info!(
            target: "pgcache::capability",
            "session advisory locks do not hold on this connection: get_or_set takes lease rows instead"
        );
    }
    chosen
}

/// The session-lock probe (see the module's documentation). Any failure reads as "no session locks".
async fn probe_session_locks(first: &tokio_postgres::Client, second: &tokio_postgres::Client, bound: Duration) -> bool {
    let key = i64::from_ne_bytes(fastrand::u64(..).to_ne_bytes());
    let lock = "SELECT pg_try_advisory_lock($1)";
    let int8 = tokio_postgres::types::Type::INT8;
    let probe = async {
        let taken = store::probe_bool(first, lock, &[(&key, int8.clone())]).await?;
        let before = store::backend_pid(first).await?;
        if taken != Some(true) || before.is_none() {
            return Ok::<bool, crate::Error>(false);
        }
        // An open transaction pins the second connection's server connection behind a pooler.
        second.batch_execute("BEGIN").await.map_err(crate::Error::from_pg)?;
        let other = store::probe_bool(second, lock, &[(&key, int8.clone())]).await;
        let after = tokio::time::timeout(LOCK_DEADLINE, store::backend_pid(first)).await;
        let _ = second.batch_execute("ROLLBACK").await;
        if other.as_ref().is_ok_and(|got| *got == Some(true)) {
            let _ = store::probe_bool(second, "SELECT pg_advisory_unlock($1)", &[(&key, int8.clone())]).await;
        }
        let other = other?;
        let same_session = matches!(after, Ok(Ok(pid)) if pid == before);
        let _ = store::probe_bool(first, "SELECT pg_advisory_unlock($1)", &[(&key, int8.clone())]).await;
        Ok(other == Some(false) && same_session)
    };
    match bounded(bound.saturating_add(LOCK_DEADLINE), "probing advisory locks", probe).await {
        Ok(holds) => holds,
        Err(e) => {
            tracing::debug!(target: "pgcache::capability", error = %e, "advisory lock probe failed");
            false
        }
    }
}
