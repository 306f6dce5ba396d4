//! Faults the cache survives:
//!
//! - the advisory-lock holder's backend is killed mid-load while other nodes provably wait for it: no
//!   waiter hangs and exactly one of them loads;
//! - the first caller's future is dropped (or its task aborted) mid-load while followers provably wait:
//!   every follower still gets one value, loaded once;
//! - a loader error reaches its own caller only, nothing is cached, and the next call retries;
//! - the listener's backend is killed or frozen: no stale local value is served past the bound while it
//!   is down, it reconnects by itself, and coherence resumes;
//! - the server stops answering or stops altogether: reads fail open (`get` misses, `get_or_set` runs
//!   the loader) within the timeouts, writes fail with a typed error, and after a restart the same
//!   cache instance works again.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgcache_core::prelude::*;
use pgcache_core::{Error, Fill, ListenerState, LoadError, Source};
use pgcache_tests::{
    advisory_lock_holder, blocking, connect, eventually, listener_pid, login_role, make_local, node, row_count,
    settings_for, settings_on, sql_client, terminate, tried_advisory_lock, Parked, TestCluster,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Well under `lock_wait_timeout` (10 s in `settings_for`): finishing within it proves the waiters got
/// the lock or the value, not the timeout fallback.
const PROMPT: Duration = Duration::from_secs(5);

/// Spawns a `get_or_set` of `key` whose loader signals `started`, then sleeps `hold` before answering.
fn slow_caller(
    cache: &PostgresCache,
    key: &'static str,
    hold: Duration,
) -> (JoinHandle<pgcache_core::Result<String>>, oneshot::Receiver<()>) {
    let (started_tx, started) = oneshot::channel();
    let cache = cache.clone();
    let task = tokio::spawn(async move {
        cache
            .get_or_set(
                key,
                move || async move {
                    let _ = started_tx.send(());
                    tokio::time::sleep(hold).await;
                    Ok::<_, std::io::Error>("from the first caller".to_owned())
                },
                None,
            )
            .await
    });
    (task, started)
}

/// Spawns `n` `get_or_set` callers of `key` on `cache`, tracked by `parked`; their loader counts its runs
/// in `runs`.
fn waiters(
    cache: &PostgresCache,
    key: &'static str,
    n: usize,
    name: &'static str,
    runs: &Arc<AtomicU32>,
    parked: &Parked,
) -> Vec<JoinHandle<pgcache_core::Result<String>>> {
    (0..n)
        .map(|_| {
            let (cache, runs) = (cache.clone(), Arc::clone(runs));
            let call = async move {
                cache
                    .get_or_set(
                        key,
                        move || async move {
                            // Held a little so that a second loader run, were there one, would overlap.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            runs.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, std::io::Error>(format!("from {name}"))
                        },
                        None,
                    )
                    .await
            };
            tokio::spawn(parked.track(call))
        })
        .collect()
}

/// Waits until every one of `n` waiters is parked and each node in `polling` (by application name) has
/// tried the key's advisory lock, which its holder keeps, so they wait for it: in one process, a caller
/// parks either on the key's single flight (behind the caller that leads it) or, as that leader, on the
/// lock; the leader's failed `pg_try_advisory_lock` shows in `pg_stat_activity`.
async fn until_waiting(
    admin: &tokio_postgres::Client,
    parked: &Parked,
    n: usize,
    polling: &[&str],
) -> anyhow::Result<Duration> {
    eventually(PROMPT, || async {
        if parked.count() < n {
            return false;
        }
        for app in polling {
            if !tried_advisory_lock(admin, app).await.unwrap_or(false) {
                return false;
            }
        }
        true
    })
    .await
}

/// Awaits every task within `deadline`; returns their values.
async fn all_within(
    tasks: Vec<JoinHandle<pgcache_core::Result<String>>>,
    deadline: Duration,
) -> anyhow::Result<Vec<String>> {
    let mut values = Vec::new();
    let start = Instant::now();
    for task in tasks {
        let left = deadline.saturating_sub(start.elapsed());
        values.push(tokio::time::timeout(left, task).await.map_err(|_| anyhow::anyhow!("a waiter hung"))???);
    }
    Ok(values)
}

fn all_same(values: &[String]) -> bool {
    values.windows(2).all(|w| w[0] == w[1])
}

#[tokio::test]
async fn killing_the_lock_holder_mid_load_lets_a_waiter_load() -> anyhow::Result<()> {
    let settings = settings_for("f_killholder");
    let (a_settings, b_settings, c_settings) = (node(&settings, "a"), node(&settings, "b"), node(&settings, "c"));
    let a = connect(&a_settings).await?;
    let b = connect(&b_settings).await?;
    let c = connect(&c_settings).await?;
    let admin = sql_client(&settings.dsn).await?;

    // A takes the lock and its loader hangs.
    let (first, started) = slow_caller(&a, "k", Duration::from_secs(60));
    started.await?;
    let holder =
        advisory_lock_holder(&admin, a.lock_key("k")).await?.ok_or_else(|| anyhow::anyhow!("no lock holder"))?;

    // Ten waiters on two other nodes, observed waiting: B and C poll the lock A holds.
    let (runs, parked) = (Arc::new(AtomicU32::new(0)), Parked::default());
    let mut tasks = waiters(&b, "k", 5, "b", &runs, &parked);
    tasks.extend(waiters(&c, "k", 5, "c", &runs, &parked));
    let queued =
        until_waiting(&admin, &parked, 10, &[&b_settings.application_name, &c_settings.application_name]).await?;
    eprintln!("10 waiters on B and C observed waiting for A's lock after {queued:?}");
    assert!(tasks.iter().all(|t| !t.is_finished()), "waiters must wait while the holder loads");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(advisory_lock_holder(&admin, a.lock_key("k")).await?, Some(holder), "A still holds the lock");

    assert!(terminate(&admin, holder).await?);
    let killed = Instant::now();
    let values = all_within(tasks, PROMPT).await?;
    eprintln!("lock holder killed: all 10 waiters answered {:?} later", killed.elapsed());
    assert_eq!(runs.load(Ordering::SeqCst), 1, "exactly one waiter loads after the holder died");
    assert!(all_same(&values), "waiters got different values: {values:?}");
    assert!(values[0] == "from b" || values[0] == "from c");
    assert_eq!(a.get::<String>("k").await?.as_ref(), values.first());

    first.abort();
    // Nobody holds the key's lock any more.
    eventually(PROMPT, || async { advisory_lock_holder(&admin, a.lock_key("k")).await.ok() == Some(None) }).await?;
    for n in [a, b, c] {
        n.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn cancelling_the_first_caller_mid_load_strands_nobody() -> anyhow::Result<()> {
    let settings = settings_for("f_cancel");
    let b_settings = node(&settings, "b");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&b_settings).await?;
    let admin = sql_client(&settings.dsn).await?;

    for drop_future in [false, true] {
        let key: &'static str = if drop_future { "k-dropped" } else { "k-abort" };
        let (runs, parked) = (Arc::new(AtomicU32::new(0)), Parked::default());
        let (drop_tx, drop_rx) = oneshot::channel::<()>();
        let (first, started) = if drop_future {
            // The first caller's future is dropped inside its still running task (as by a timeout or a
            // `select!` around it), once the followers are seen waiting.
            let (started_tx, started) = oneshot::channel();
            let a2 = a.clone();
            let first = tokio::spawn(async move {
                let call = a2.get_or_set(
                    key,
                    move || async move {
                        let _ = started_tx.send(());
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok::<_, std::io::Error>("never".to_owned())
                    },
                    None,
                );
                tokio::select! {
                    result = call => result,
                    _ = drop_rx => Ok("dropped".to_owned()),
                }
            });
            (first, started)
        } else {
            slow_caller(&a, key, Duration::from_secs(60))
        };
        started.await?;
        // Followers in the same process (single flight) and in another node (advisory lock), observed
        // waiting: A's four behind the first caller's flight, B's polling the lock it holds.
        let mut tasks = waiters(&a, key, 4, "a", &runs, &parked);
        tasks.extend(waiters(&b, key, 4, "b", &runs, &parked));
        until_waiting(&admin, &parked, 8, &[&b_settings.application_name]).await?;
        assert!(tasks.iter().all(|t| !t.is_finished()));
        assert_eq!(runs.load(Ordering::SeqCst), 0);

        if drop_future {
            let _ = drop_tx.send(());
            assert_eq!(first.await??, "dropped");
        } else {
            first.abort();
            assert!(first.await.is_err_and(|e| e.is_cancelled()));
        }
        let cancelled = Instant::now();
        let values = all_within(tasks, PROMPT).await?;
        eprintln!(
            "first caller cancelled (future dropped: {drop_future}): 8 followers answered {:?} later",
            cancelled.elapsed()
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one follower loads after the cancellation");
        assert!(all_same(&values), "{values:?}");
        assert_eq!(b.get::<String>(key).await?.as_ref(), values.first());
        // The cancelled holder's lock is gone, and A's pool still works.
        eventually(PROMPT, || async { advisory_lock_holder(&admin, a.lock_key(key)).await.ok() == Some(None) }).await?;
        a.set("after", &1, None).await?;
    }
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn loader_errors_reach_their_caller_only_and_are_not_cached() -> anyhow::Result<()> {
    let settings = settings_for("f_loadererr");
    let b_settings = node(&settings, "b");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&b_settings).await?;
    let admin = sql_client(&settings.dsn).await?;

    let result: pgcache_core::Result<String> =
        a.get_or_set("k", || async { Err::<String, _>(std::io::Error::other("backend exploded")) }, None).await;
    match result {
        Err(Error::Loader(source)) => assert!(source.to_string().contains("backend exploded"), "{source}"),
        other => panic!("expected Error::Loader, got {other:?}"),
    }
    assert_eq!(row_count(&admin, &settings).await?, 0, "an error must not be stored");
    assert_eq!(a.get::<String>("k").await?, None);
    assert_eq!(b.get::<String>("k").await?, None);
    assert_eq!(advisory_lock_holder(&admin, a.lock_key("k")).await?, None, "lock released after the error");

    // The byte-level API too: an error, nothing stored.
    let failing = b.get_or_load("k", || async { Err::<Fill, _>("nope") }).await;
    assert!(matches!(failing, Err(LoadError::Loader("nope"))), "{failing:?}");

    // The next call retries and stores.
    let v: String = a.get_or_set("k", || async { Ok::<_, std::io::Error>("recovered".to_owned()) }, None).await?;
    assert_eq!(v, "recovered");
    assert_eq!(b.get::<String>("k").await?.as_deref(), Some("recovered"));

    // A failing leader while others wait: only the leader sees the error; one of the others loads. The
    // leader's loader fails only once the others are seen waiting.
    let (fail_tx, fail_started) = oneshot::channel();
    let (fail_now, fail_gate) = oneshot::channel::<()>();
    let a2 = a.clone();
    let leader = tokio::spawn(async move {
        a2.get_or_set(
            "k2",
            move || async move {
                let _ = fail_tx.send(());
                let _ = fail_gate.await;
                Err::<String, _>(std::io::Error::other("leader failed"))
            },
            None,
        )
        .await
    });
    fail_started.await?;
    let (runs, parked) = (Arc::new(AtomicU32::new(0)), Parked::default());
    let mut tasks = waiters(&a, "k2", 3, "a", &runs, &parked);
    tasks.extend(waiters(&b, "k2", 3, "b", &runs, &parked));
    until_waiting(&admin, &parked, 6, &[&b_settings.application_name]).await?;
    assert!(tasks.iter().all(|t| !t.is_finished()));
    let _ = fail_now.send(());
    assert!(matches!(leader.await?, Err(Error::Loader(_))));
    let values = all_within(tasks, PROMPT).await?;
    assert!(all_same(&values), "{values:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Every concurrent caller with a failing loader gets its own error; still nothing stored.
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                cache.get_or_set("k3", || async { Err::<String, _>(std::io::Error::other("down")) }, None).await
            })
        })
        .collect();
    for call in calls {
        let outcome = tokio::time::timeout(PROMPT, call).await??;
        assert!(matches!(outcome, Err(Error::Loader(_))), "{outcome:?}");
    }
    assert_eq!(b.get::<String>("k3").await?, None);
    a.close().await;
    b.close().await;
    Ok(())
}

/// Reads `key` on `cache` until `deadline`; returns how long after `since` the last `stale` answer was.
async fn last_stale_read(
    cache: &PostgresCache,
    key: &str,
    stale: &str,
    since: Instant,
    deadline: Duration,
) -> anyhow::Result<Option<Duration>> {
    let mut last = None;
    while since.elapsed() < deadline {
        // Timed before the read: a stale answer is stamped no later than the moment it was decided.
        let at = since.elapsed();
        if cache.get::<String>(key).await?.as_deref() == Some(stale) {
            last = Some(at);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(last)
}

#[tokio::test]
async fn killed_listener_never_serves_stale_past_the_bound_and_reconnects() -> anyhow::Result<()> {
    let settings = settings_for("f_listener");
    PostgresCache::init_db(&settings).await?;
    let a = connect(&node(&settings, "a")).await?;
    // B logs in as its own role, so the test can keep B's listener from reconnecting for a while.
    let role = format!("{}b", settings.schema_prefix);
    let mut b_settings = node(&settings, "b");
    b_settings.dsn = login_role(&settings.dsn, &settings.schema_prefix, "b", -1).await?;
    let b = PostgresCache::connect(b_settings.clone()).await?;
    let admin = sql_client(&settings.dsn).await?;
    let bound = b_settings.heartbeat_interval * 2;

    a.set("k", &"old", None).await?;
    make_local(&b, "k").await?;
    let listener =
        listener_pid(&admin, &b_settings.application_name).await?.ok_or_else(|| anyhow::anyhow!("no listener"))?;

    // Down and kept down: B's role may not log in again; its open pooled connection stays.
    admin.batch_execute(&format!("ALTER ROLE \"{}\" NOLOGIN", role.trim_end_matches('_'))).await?;
    assert!(terminate(&admin, listener).await?);
    let killed = Instant::now();
    a.set("k", &"new", None).await?;
    let updated = Instant::now();
    let last_stale = last_stale_read(&b, "k", "old", updated, Duration::from_secs(2)).await?;
    eprintln!(
        "listener killed: B served the old value until {last_stale:?} after the update (bound {bound:?}, update {:?} after the kill)",
        updated - killed
    );
    if let Some(stale) = last_stale {
        assert!(stale <= bound, "stale value served {stale:?} after the update, past the bound {bound:?}");
    }
    assert_eq!(b.get::<String>("k").await?.as_deref(), Some("new"));
    assert_eq!(b.status().listener, ListenerState::Reconnecting);
    assert_eq!(listener_pid(&admin, &b_settings.application_name).await?, None);
    // While the listener is down B answers from the table, always fresh.
    a.set("k", &"newer", None).await?;
    assert_eq!(b.get::<String>("k").await?.as_deref(), Some("newer"));
    assert!(a.delete("k").await?);
    assert_eq!(b.get::<String>("k").await?, None);

    // Let it back in: the listener reconnects by itself.
    admin.batch_execute(&format!("ALTER ROLE \"{}\" LOGIN", role.trim_end_matches('_'))).await?;
    let back =
        eventually(Duration::from_secs(15), || async { b.status().listener == ListenerState::Listening }).await?;
    eprintln!("listener back {back:?} after logins were allowed again");
    assert!(listener_pid(&admin, &b_settings.application_name).await?.is_some_and(|pid| pid != listener));

    // Coherence resumes: a local copy on B is evicted by A's write.
    a.set("k2", &"v1", None).await?;
    make_local(&b, "k2").await?;
    a.set("k2", &"v2", None).await?;
    let took = eventually(Duration::from_secs(5), || async {
        b.get::<String>("k2").await.ok().flatten().as_deref() == Some("v2")
    })
    .await?;
    eprintln!("after reconnect, A.set reached B in {took:?}");
    a.close().await;
    b.close().await;
    Ok(())
}

/// A plain kill: the listener comes back at once; an update made right around the kill is never served
/// stale past the bound.
#[tokio::test]
async fn killed_listener_reconnects_at_once_without_stale_reads() -> anyhow::Result<()> {
    let settings = settings_for("f_listener2");
    let a = connect(&node(&settings, "a")).await?;
    let b_settings = node(&settings, "b");
    let b = connect(&b_settings).await?;
    let admin = sql_client(&settings.dsn).await?;
    let bound = b_settings.heartbeat_interval * 2;
    for round in 0..3 {
        let key = format!("k{round}");
        a.set(&key, &"old", None).await?;
        make_local(&b, &key).await?;
        let pid =
            listener_pid(&admin, &b_settings.application_name).await?.ok_or_else(|| anyhow::anyhow!("no listener"))?;
        assert!(terminate(&admin, pid).await?);
        a.set(&key, &"new", None).await?;
        let updated = Instant::now();
        let last_stale = last_stale_read(&b, &key, "old", updated, Duration::from_millis(1000)).await?;
        if let Some(stale) = last_stale {
            assert!(stale <= bound, "stale {stale:?} after the update, bound {bound:?}");
        }
        let back = eventually(Duration::from_secs(10), || async {
            b.status().listener == ListenerState::Listening
                && listener_pid(&admin, &b_settings.application_name).await.ok().flatten().is_some_and(|p| p != pid)
        })
        .await?;
        eprintln!("round {round}: stale until {last_stale:?} after the update; listener back within {back:?} more");
        make_local(&b, &key).await?;
        a.set(&key, &"newest", None).await?;
        eventually(Duration::from_secs(5), || async {
            b.get::<String>(&key).await.ok().flatten().as_deref() == Some("newest")
        })
        .await?;
    }
    a.close().await;
    b.close().await;
    Ok(())
}

/// Sends `signal` (`STOP`, `CONT`) to a local server backend; false when this process may not.
fn signal(pid: i32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A hung listener (its backend frozen with SIGSTOP: no error, no FIN, just silence, like a half-open
/// connection) is distrusted within the bound (twice the heartbeat interval) by the missing heartbeat.
#[tokio::test]
async fn hung_listener_is_distrusted_within_the_bound() -> anyhow::Result<()> {
    let settings = settings_for("f_hung");
    let a = connect(&node(&settings, "a")).await?;
    let b_settings = node(&settings, "b");
    let b = connect(&b_settings).await?;
    let admin = sql_client(&settings.dsn).await?;
    let bound = b_settings.heartbeat_interval * 2;
    a.set("k", &"old", None).await?;
    make_local(&b, "k").await?;
    let pid =
        listener_pid(&admin, &b_settings.application_name).await?.ok_or_else(|| anyhow::anyhow!("no listener"))?;
    if !signal(pid, "STOP") {
        eprintln!("SKIPPED: cannot signal backend {pid} (server not local or not ours)");
        return Ok(());
    }
    let frozen = Instant::now();
    let outcome = async {
        a.set("k", &"new", None).await?;
        let updated = Instant::now();
        let last_stale = last_stale_read(&b, "k", "old", updated, Duration::from_millis(1500)).await?;
        eprintln!(
            "hung listener: B served the old value until {last_stale:?} after the update (bound {bound:?}, update {:?} after the freeze)",
            updated - frozen
        );
        if let Some(stale) = last_stale {
            assert!(stale <= bound, "stale value served {stale:?} after the update, past the bound {bound:?}");
        }
        assert_eq!(b.get::<String>("k").await?.as_deref(), Some("new"));
        anyhow::Ok(())
    }
    .await;
    signal(pid, "CONT");
    outcome?;
    // The listener gave up on the silent connection and listens on a new one.
    eventually(Duration::from_secs(15), || async {
        b.status().listener == ListenerState::Listening
            && listener_pid(&admin, &b_settings.application_name).await.ok().flatten().is_some_and(|p| p != pid)
    })
    .await?;
    make_local(&b, "k").await?;
    a.set("k", &"newest", None).await?;
    eventually(Duration::from_secs(5), || async {
        b.get::<String>("k").await.ok().flatten().as_deref() == Some("newest")
    })
    .await?;
    a.close().await;
    b.close().await;
    Ok(())
}

/// Resumes a frozen backend when dropped, so that a failing test leaves no stopped process behind.
struct Frozen(Vec<i32>);

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.0 {
            signal(*pid, "CONT");
        }
    }
}

/// A server that accepts nothing and answers nothing (every backend of the cache frozen with SIGSTOP,
/// the TCP connections still up, as with a hung host): reads still fail open and writes fail with a typed
/// error within the configured timeouts, never hang.
///
/// The core bounds every statement on the client side (`statement_timeout` + 0.5 s) and closes a
/// connection that overran. Measured: `get` fails open after ~1.5 s with `statement_timeout = 1 s`.
#[tokio::test]
async fn unresponsive_server_reads_fail_open_within_timeouts() -> anyhow::Result<()> {
    let settings = settings_for("f_frozen")
        .disable_notify(true)
        .max_pool_size(1)
        .statement_timeout(Duration::from_secs(1))
        .pool_timeout(Duration::from_secs(1))
        .lock_wait_timeout(Duration::from_secs(2));
    let cache = connect(&settings).await?;
    cache.set("k", &"v", None).await?;
    let admin = sql_client(&settings.dsn).await?;
    let pids: Vec<i32> =
        pgcache_tests::backends(&admin, &settings.application_name).await?.into_iter().map(|(p, _)| p).collect();
    assert_eq!(pids.len(), 1, "one pooled connection, no listener");
    if !pids.iter().all(|pid| signal(*pid, "STOP")) {
        eprintln!("SKIPPED: cannot signal the server's backends (server not local or not ours)");
        return Ok(());
    }
    let frozen = Frozen(pids);
    // Generous: several times statement_timeout + pool_timeout.
    let deadline = Duration::from_secs(8);
    let start = Instant::now();
    let read = tokio::time::timeout(deadline, cache.get::<String>("other")).await;
    eprintln!(
        "frozen server: get answered {:?} after {:?}",
        read.as_ref().map(|r| r.as_ref().map_err(ToString::to_string)),
        start.elapsed()
    );
    assert!(matches!(read, Ok(Ok(None))), "get must fail open within {deadline:?}: {read:?}");
    let start = Instant::now();
    let loaded = tokio::time::timeout(
        deadline,
        cache.get_or_set("k2", || async { Ok::<_, std::io::Error>("from loader".to_owned()) }, None),
    )
    .await;
    eprintln!("frozen server: get_or_set answered after {:?}", start.elapsed());
    assert!(matches!(&loaded, Ok(Ok(v)) if v == "from loader"), "{loaded:?}");
    // Only the backends are frozen: the postmaster still accepts connections, so the overrun connection
    // having been closed, a write may go through a fresh one. Either way it answers in bounded time, with
    // a typed error when it fails.
    let write = tokio::time::timeout(deadline, cache.set("k", &"lost", None)).await;
    assert!(
        matches!(&write, Ok(Ok(())) | Ok(Err(Error::Timeout { .. } | Error::Pool(_) | Error::Postgres(_)))),
        "{write:?}"
    );
    drop(frozen);
    eventually(Duration::from_secs(15), || async { cache.set("k", &"back", None).await.is_ok() }).await?;
    assert_eq!(cache.get::<String>("k").await?.as_deref(), Some("back"));
    cache.close().await;
    Ok(())
}

#[tokio::test]
async fn database_down_fails_open_for_reads_and_loudly_for_writes_then_recovers() -> anyhow::Result<()> {
    let cluster = Arc::new(blocking(TestCluster::start).await?);
    let settings = settings_on(&cluster.dsn(), "f_down")
        .pool_timeout(Duration::from_secs(1))
        .statement_timeout(Duration::from_secs(2))
        .lock_wait_timeout(Duration::from_secs(2));
    let cache = connect(&settings).await?;
    let other = connect(&node(&settings, "b")).await?;
    let closed_settings = node(&settings, "c").fail_open(false);
    let strict = connect(&closed_settings).await?;
    cache.set("k", &"v", None).await?;
    make_local(&cache, "k").await?;
    make_local(&other, "k").await?;

    let stop = Arc::clone(&cluster);
    blocking(move || stop.stop()).await?;
    let stopped = Instant::now();
    let call = Duration::from_secs(5);

    // Reads: a miss, promptly, also for a key held locally (its copy is not trusted without a listener).
    let missed = eventually(Duration::from_secs(5), || async {
        matches!(tokio::time::timeout(call, cache.get::<String>("k")).await, Ok(Ok(None)))
    })
    .await?;
    eprintln!("server stopped: the local copy stopped being served {missed:?} later");
    assert!(matches!(tokio::time::timeout(call, other.get::<String>("never-seen")).await, Ok(Ok(None))));
    assert!(
        matches!(tokio::time::timeout(call, cache.get_many::<String>(&["k", "x"])).await, Ok(Ok(v)) if v == vec![None, None])
    );
    // Failing closed: the error instead.
    match tokio::time::timeout(call, strict.get::<String>("never-seen")).await? {
        Err(e) => assert!(e.is_unavailable(), "{e:?}"),
        Ok(v) => panic!("fail_open = false must report the outage, got {v:?}"),
    }

    // get_or_set runs the loader and answers within the timeouts.
    let start = Instant::now();
    let v: String = tokio::time::timeout(
        Duration::from_secs(10),
        cache.get_or_set("k", || async { Ok::<_, std::io::Error>("from loader".to_owned()) }, None),
    )
    .await??;
    assert_eq!(v, "from loader");
    eprintln!("server stopped: get_or_set answered from the loader in {:?}", start.elapsed());
    let load = other.get_or_load("fresh", || async { Ok::<_, Error>(Fill::new("raw", Ttl::Default)) });
    let loaded = tokio::time::timeout(Duration::from_secs(10), load).await??;
    assert_eq!((loaded.source, loaded.stored), (Source::Loaded, false));

    // Writes and deletes report a typed error.
    let write = tokio::time::timeout(call, cache.set("k", &"lost", None)).await?;
    assert!(write.as_ref().is_err_and(Error::is_unavailable), "{write:?}");
    let delete = tokio::time::timeout(call, cache.delete("k")).await?;
    assert!(delete.as_ref().is_err_and(Error::is_unavailable), "{delete:?}");
    assert!(tokio::time::timeout(call, cache.clear()).await?.is_err());
    assert!(tokio::time::timeout(call, cache.delete_many(&["a", "b"])).await?.is_err());
    assert!(tokio::time::timeout(call, cache.set_many(&[("a", 1)], None)).await?.is_err());
    assert_ne!(cache.status().listener, ListenerState::Listening);
    eprintln!("server was down for {:?} of checks", stopped.elapsed());

    // Restart on the same port: the same instances work again, without being recreated.
    let start = Arc::clone(&cluster);
    blocking(move || start.start_server()).await?;
    let recovered =
        eventually(Duration::from_secs(30), || async { cache.set("k", &"after restart", None).await.is_ok() }).await?;
    eprintln!("server restarted: writes work again {recovered:?} later");
    assert_eq!(other.get::<String>("k").await?.as_deref(), Some("after restart"));
    eventually(Duration::from_secs(15), || async {
        cache.status().listener == ListenerState::Listening && other.status().listener == ListenerState::Listening
    })
    .await?;
    let loaded = other.get_or_load("fresh", || async { Ok::<_, Error>(Fill::new("stored now", Ttl::Default)) }).await?;
    assert_eq!((loaded.source, loaded.stored), (Source::Loaded, true));
    assert_eq!(cache.get_bytes("fresh").await?.as_deref(), Some(&b"stored now"[..]));
    assert_eq!(strict.get::<String>("k").await?.as_deref(), Some("after restart"));
    // Coherence is back too.
    make_local(&other, "k").await?;
    cache.set("k", &"coherent", None).await?;
    eventually(Duration::from_secs(5), || async {
        other.get::<String>("k").await.ok().flatten().as_deref() == Some("coherent")
    })
    .await?;

    for c in [cache, other, strict] {
        c.close().await;
    }
    blocking(move || drop(cluster)).await;
    Ok(())
}
