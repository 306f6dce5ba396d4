//! `load --faults`: kills the workers' listener and pool backends with `pg_terminate_backend` and
//! restarts the server once, while the run goes on, so the checker judges coherence through the faults.
//!
//! Pool backends are killed only while idle (between statements) and not holding a fill's advisory lock:
//! an operation then fails before its statement reaches the server, so its outcome is certain (not
//! applied) and the checker needs no "maybe written" events; and a killed lock holder would let a
//! second process load the key, by design (tested in tests/faults.rs), which the checker counts as a
//! duplicate load. The restart (`--restart-cmd`, by default `$PGCACHE_PG_RESTART`, which
//! `scripts/with-postgres` sets) is a fast shutdown: a statement in flight at that moment is the one
//! uncertain case, and the workers' reads fail closed meanwhile (errors, not misses).

use std::time::Duration;

use tokio::sync::watch;

use super::connect_raw;

/// What was injected, for the report.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct Injected {
    pub(crate) listener_kills: u64,
    pub(crate) pool_backend_kills: u64,
    pub(crate) restarts: u64,
    /// Fault rounds that failed (e.g. the server was still restarting).
    pub(crate) failed_rounds: u64,
}

/// The listener is recognised by its statements (LISTEN, its heartbeat reading the incarnation, the
/// reconcile read of versions); pooled connections only run the cache's prepared statements.
const LISTENER: &str =
    "(query LIKE 'LISTEN %' OR query LIKE '%pg_control_system()%' OR query LIKE 'SELECT key, version FROM%')";

/// Every `interval` until `stop` flips: a listener kill, a pool-backend kill, and (third round) the
/// restart, then alternating kills.
pub(crate) async fn inject(
    dsn: String,
    app: String,
    interval: Duration,
    restart: Option<String>,
    mut stop: watch::Receiver<bool>,
) -> Injected {
    let mut injected = Injected::default();
    let mut round = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return injected,
        }
        round += 1;
        let outcome = match (round, &restart) {
            (3, Some(cmd)) => restart_server(cmd).await.map(|()| injected.restarts += 1),
            _ if round % 2 == 1 => kill(&dsn, &app, true).await.map(|n| injected.listener_kills += n),
            _ => kill(&dsn, &app, false).await.map(|n| injected.pool_backend_kills += n),
        };
        if let Err(e) = outcome {
            injected.failed_rounds += 1;
            eprintln!("fault round {round} failed: {e:#}");
        }
    }
}

/// Terminates the workers' listener backends, or their idle pool backends; returns how many.
async fn kill(dsn: &str, app: &str, listeners: bool) -> anyhow::Result<u64> {
    let client = connect_raw(dsn).await?;
    // Pool backends holding an advisory lock are spared: killing a fill's lock holder lets another process
    // load the key too, by design (tests/faults.rs checks that case), which the checker would count as a
    // duplicate load.
    let which = if listeners {
        LISTENER.to_owned()
    } else {
        format!(
            "state = 'idle' AND NOT {LISTENER} \
             AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)"
        )
    };
    let sql = format!(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid() AND {which}"
    );
    let n: i64 = client.query_one(&sql, &[&app]).await?.try_get(0)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Runs the restart command (blocking, off the runtime).
async fn restart_server(cmd: &str) -> anyhow::Result<()> {
    let cmd = cmd.to_owned();
    let status =
        tokio::task::spawn_blocking(move || std::process::Command::new("sh").arg("-c").arg(&cmd).status()).await??;
    anyhow::ensure!(status.success(), "the restart command exited with {status}");
    Ok(())
}
