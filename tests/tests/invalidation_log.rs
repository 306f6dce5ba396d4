//! Invalidations leave the writers' commits (issue 9): every write appends `(key, version)` to the
//! invalidation log in its own transaction, and one flusher per prefix (elected among the nodes'
//! listeners with an advisory lock) sends the log as notifications.
//!
//! - library writes log their own rows and the trigger skips them; raw SQL writers are logged by the
//!   trigger; both evict every node;
//! - a flusher killed mid-batch (its rows deleted and its notification queued, not committed) loses no
//!   invalidation, and another node takes over within the election bound;
//! - a flusher that stops sending (holds the lock, drains nothing) ends every node's lease within the
//!   stall bound, so no node serves a stale copy past it;
//! - listeners read payload versions 1 and 2 and flush on an unknown one.

use std::time::{Duration, Instant};

use pgcache_core::prelude::*;
use pgcache_core::{lock_key, ListenerState, Source};
use pgcache_tests::{
    advisory_lock_holder, connect, entries_table, eventually, log_drained, make_local, node, settings_for, source_of,
    sql_client, terminate, NotifyTap,
};

/// Generous deadline for an invalidation to travel; measured figures are printed.
const DEADLINE: Duration = Duration::from_secs(5);

fn log_table(settings: &CacheSettings) -> String {
    format!("\"{}cache_invalidations\"", settings.schema_prefix)
}

fn flusher_key(settings: &CacheSettings) -> i64 {
    lock_key(&settings.schema_prefix, "\u{0}pgcache:flusher")
}

async fn value_of(cache: &PostgresCache, key: &str) -> Option<String> {
    cache.get::<String>(key).await.ok().flatten()
}

/// `(key, version, deleted)` of the log's rows, oldest first.
async fn log_rows(
    sql: &tokio_postgres::Client,
    settings: &CacheSettings,
) -> anyhow::Result<Vec<(Option<String>, Option<i64>, bool)>> {
    let rows = sql.query(&format!("SELECT key, version, deleted FROM {} ORDER BY t", log_table(settings)), &[]).await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()
}

/// Without a listener there is no flusher, so the log shows exactly what each write appended: one row
/// per library write (logged by the statement itself; the trigger skips library sessions), one per row
/// a raw SQL statement changed (logged by the trigger), nothing for a cache with notifications disabled.
#[tokio::test]
async fn library_writes_log_themselves_once_and_raw_sql_is_logged_by_the_trigger() -> anyhow::Result<()> {
    let settings = settings_for("il_rows").local_max_entries(0);
    let cache = connect(&settings).await?;
    let sql = sql_client(&settings.dsn).await?;
    let table = entries_table(&settings);

    let v1 = cache.set_entry("a", "x".into(), &Default::default()).await?;
    let rows = log_rows(&sql, &settings).await?;
    assert_eq!(rows, vec![(Some("a".to_owned()), Some(v1), false)], "one row per library write, not two");
    assert!(cache.delete("a").await?);
    let rows = log_rows(&sql, &settings).await?;
    assert_eq!(rows.get(1), Some(&(Some("a".to_owned()), Some(v1), true)));
    assert_eq!(rows.len(), 2);

    // The version trigger skips library sessions: each library UPDATE takes a new version itself.
    let v2 = cache.set_entry("b", "x".into(), &Default::default()).await?;
    let v3 = cache.set_entry("b", "y".into(), &Default::default()).await?;
    assert!(cache.touch("b", Ttl::from(Duration::from_secs(60))).await?);
    let v4: i64 = sql.query_one(&format!("SELECT version FROM {table} WHERE key = 'b'"), &[]).await?.try_get(0)?;
    assert!(v1 < v2 && v2 < v3 && v3 < v4, "versions {v1} {v2} {v3} {v4}");
    let logged: Vec<_> = log_rows(&sql, &settings).await?.into_iter().skip(2).map(|(_, v, _)| v).collect();
    assert_eq!(logged, vec![Some(v2), Some(v3), Some(v4)], "each write logged once, with its version");
    sql.batch_execute(&format!("DELETE FROM {}", log_table(&settings))).await?;

    sql.batch_execute(&format!(
        "INSERT INTO {table} (key, value) VALUES ('r1', '\\x00'), ('r2', '\\x00'); DELETE FROM {table} WHERE key = 'r1'"
    ))
    .await?;
    let rows = log_rows(&sql, &settings).await?;
    let raw: Vec<_> = rows.iter().map(|(k, _, d)| (k.clone().unwrap_or_default(), *d)).collect();
    let expected = [("r1", false), ("r2", false), ("r1", true)].map(|(k, d)| (k.to_owned(), d));
    assert_eq!(raw.len(), 3, "{rows:?}");
    for row in &expected {
        assert!(raw.contains(row), "{row:?} missing from {rows:?}");
    }
    // A bulk statement past 256 rows logs one "every key" row; so does TRUNCATE.
    sql.batch_execute(&format!(
        "DELETE FROM {log}; INSERT INTO {table} (key, value) SELECT 'b' || i, '\\x00' FROM generate_series(1, 300) i; \
         TRUNCATE {table}",
        log = log_table(&settings)
    ))
    .await?;
    assert_eq!(log_rows(&sql, &settings).await?, vec![(None, None, false), (None, None, false)]);

    // disable_notify: the library's writes log nothing.
    let quiet = connect(&settings.clone().disable_notify(true)).await?;
    sql.batch_execute(&format!("DELETE FROM {}", log_table(&settings))).await?;
    quiet.set("q", &1, None).await?;
    quiet.delete("q").await?;
    assert!(log_rows(&sql, &settings).await?.is_empty());
    cache.close().await;
    quiet.close().await;
    Ok(())
}

#[tokio::test]
async fn raw_sql_writes_evict_every_node_through_the_flusher() -> anyhow::Result<()> {
    let settings = settings_for("il_raw");
    let nodes = [
        connect(&node(&settings, "a")).await?,
        connect(&node(&settings, "b")).await?,
        connect(&node(&settings, "c")).await?,
    ];
    let sql = sql_client(&settings.dsn).await?;
    let table = entries_table(&settings);
    let mut took = Vec::new();
    for round in 0..5 {
        let key = format!("k{round}");
        nodes[0].set(&key, &"old", None).await?;
        for n in &nodes {
            make_local(n, &key).await?;
        }
        sql.execute(&format!("UPDATE {table} SET value = convert_to('\"new\"', 'UTF8') WHERE key = $1"), &[&key])
            .await?;
        let start = Instant::now();
        for n in &nodes {
            eventually(DEADLINE, || async { value_of(n, &key).await.as_deref() == Some("new") }).await?;
        }
        took.push(start.elapsed());
    }
    eprintln!("raw SQL UPDATE -> every node of 3 evicted: {took:?}");
    // Exactly one flusher, and the log is drained.
    let holder = advisory_lock_holder(&sql, flusher_key(&settings)).await?;
    assert!(holder.is_some(), "no node holds the flusher lock");
    eventually(DEADLINE, || async { log_rows(&sql, &settings).await.is_ok_and(|r| r.is_empty()) }).await?;
    for n in nodes {
        n.close().await;
    }
    Ok(())
}

/// The flusher is stopped inside its batch statement (a test trigger on the log makes its DELETE wait for
/// a lock the test holds: the rows are deleted and the notification queued, neither committed), then its
/// session is terminated. The batch rolls back, so another node's flusher sends it: every node evicts.
#[tokio::test]
async fn flusher_killed_mid_batch_loses_no_invalidation() -> anyhow::Result<()> {
    let settings = settings_for("il_kill");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    let sql = sql_client(&settings.dsn).await?;
    let blocker = sql_client(&settings.dsn).await?;
    let (table, log) = (entries_table(&settings), log_table(&settings));
    let flusher = eventually(DEADLINE, || async {
        advisory_lock_holder(&sql, flusher_key(&settings)).await.ok().flatten().is_some()
    });
    flusher.await?;
    let holder = advisory_lock_holder(&sql, flusher_key(&settings)).await?.unwrap_or_default();

    for key in ["k1", "k2"] {
        a.set(key, &"old", None).await?;
        make_local(&a, key).await?;
        make_local(&b, key).await?;
    }
    // A stall on the log's deletes, waiting for an advisory lock the blocker holds.
    let stall = lock_key(&settings.schema_prefix, "test stall");
    let p = &settings.schema_prefix;
    sql.batch_execute(&format!(
        "CREATE FUNCTION \"{p}stall\"() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_advisory_xact_lock({stall}); RETURN NULL; END $$; \
         CREATE TRIGGER \"{p}stall\" AFTER DELETE ON {log} FOR EACH STATEMENT EXECUTE FUNCTION \"{p}stall\"()"
    ))
    .await?;
    blocker.execute("SELECT pg_advisory_lock($1)", &[&stall]).await?;
    let mut tap = NotifyTap::listen(&settings.dsn, &settings.notify_channel).await?;
    // Raw SQL changes both keys; the flusher takes the batch and stalls inside it.
    sql.batch_execute(&format!("UPDATE {table} SET value = convert_to('\"new\"', 'UTF8') WHERE key IN ('k1', 'k2')"))
        .await?;
    let waiting = || async {
        let row = sql
            .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'", &[&holder])
            .await;
        row.is_ok_and(|r| r.is_some())
    };
    eventually(DEADLINE, waiting).await?;
    // Mid-batch: the batch's rows are deleted in its open transaction, so other sessions still see them.
    assert_eq!(log_rows(&sql, &settings).await?.len(), 2, "the flusher's batch is not committed");
    assert!(terminate(&sql, holder).await?);
    sql.batch_execute(&format!("DROP TRIGGER \"{p}stall\" ON {log}; DROP FUNCTION \"{p}stall\"()")).await?;
    blocker.execute("SELECT pg_advisory_unlock($1)", &[&stall]).await?;

    let start = Instant::now();
    for (name, cache) in [("a", &a), ("b", &b)] {
        for key in ["k1", "k2"] {
            eventually(DEADLINE, || async { value_of(cache, key).await.as_deref() == Some("new") }).await?;
        }
        eprintln!("node {name} evicted both keys {:?} after the flusher was killed mid-batch", start.elapsed());
    }
    // The killed batch itself was sent (a node could also have evicted by reconciling after its
    // listener reconnected): once the log is empty, its notification is in the tap.
    eventually(DEADLINE, || async { log_rows(&sql, &settings).await.is_ok_and(|r| r.is_empty()) }).await?;
    let heard = tap.drain(&settings.notify_channel).await?;
    for key in ["k1", "k2"] {
        assert!(heard.iter().any(|p| p.contains(&format!("[\"{key}\","))), "{key} was never notified: {heard:?}");
    }
    let new_holder = advisory_lock_holder(&sql, flusher_key(&settings)).await?;
    assert!(new_holder.is_some_and(|pid| pid != holder), "a new flusher took over: {new_holder:?}");
    a.close().await;
    b.close().await;
    Ok(())
}

/// The flusher's node goes away (its session killed, its node closed): another node's listener takes the
/// lock within the election interval, and raw writes evict again.
#[tokio::test]
async fn flusher_failover_is_bounded() -> anyhow::Result<()> {
    let settings = settings_for("il_failover");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    let sql = sql_client(&settings.dsn).await?;
    let table = entries_table(&settings);
    let key_of = flusher_key(&settings);
    eventually(DEADLINE, || async { advisory_lock_holder(&sql, key_of).await.ok().flatten().is_some() }).await?;
    let first = advisory_lock_holder(&sql, key_of).await?.unwrap_or_default();
    // Close whichever node flushes, so the other one must take over.
    let a_pids: Vec<i32> = pgcache_tests::backends(&sql, &node(&settings, "a").application_name)
        .await?
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    let (gone, survivor) = if a_pids.contains(&first) { (a, b) } else { (b, a) };
    gone.close().await;
    let closed = Instant::now();
    eventually(DEADLINE, || async {
        advisory_lock_holder(&sql, key_of).await.ok().flatten().is_some_and(|pid| pid != first)
    })
    .await?;
    let failover = closed.elapsed();
    eprintln!("flusher failover took {failover:?} (election interval 200 ms)");
    assert!(failover < Duration::from_secs(2), "failover took {failover:?}");

    survivor.set("k", &"old", None).await?;
    make_local(&survivor, "k").await?;
    sql.execute(&format!("UPDATE {table} SET value = convert_to('\"new\"', 'UTF8') WHERE key = 'k'"), &[]).await?;
    eventually(DEADLINE, || async { value_of(&survivor, "k").await.as_deref() == Some("new") }).await?;
    survivor.close().await;
    Ok(())
}

/// A flusher that holds the lock but sends nothing (here: the test's own session holds it): the log's
/// oldest row ages past the stall bound, every node withdraws its lease (serves no local copy) but keeps
/// its listener's session and, once a real flusher drains the log again, reconciles and serves local
/// copies again.
#[tokio::test]
async fn a_stalled_flusher_ends_every_nodes_lease_within_the_stall_bound() -> anyhow::Result<()> {
    let settings = settings_for("il_stall");
    PostgresCache::init_db(&settings).await?;
    let sql = sql_client(&settings.dsn).await?;
    let squatter = sql_client(&settings.dsn).await?;
    assert!(squatter
        .query_one("SELECT pg_try_advisory_lock($1)", &[&flusher_key(&settings)])
        .await?
        .try_get::<_, bool>(0)?);
    let b = connect(&node(&settings, "b")).await?;
    let table = entries_table(&settings);
    b.set("k", &"old", None).await?;
    // B's own write is logged and nobody drains: read it from B while its lease holds.
    make_local(&b, "k").await?;
    sql.execute(&format!("UPDATE {table} SET value = convert_to('\"new\"', 'UTF8') WHERE key = 'k'"), &[]).await?;
    let start = Instant::now();
    eventually(DEADLINE, || async { value_of(&b, "k").await.as_deref() == Some("new") }).await?;
    let stale_for = start.elapsed();
    // Stall bound max(2 x heartbeat, 1 s) plus one heartbeat to notice it.
    let bound = Duration::from_secs(1) + settings.heartbeat_interval * 2;
    eprintln!("stale copy served for {stale_for:?} with a stalled flusher (bound {bound:?})");
    assert!(stale_for <= bound + Duration::from_millis(500), "served a stale copy for {stale_for:?}");
    assert_ne!(b.status().listener, ListenerState::Listening, "no lease while the log is not drained");
    // The lease is withdrawn, the session is kept: a stall (or a flusher behind on a backlog) is not a
    // broken connection, and ending sessions would only add reconnects and elections to the backlog.
    let app = node(&settings, "b").application_name;
    let listener = pgcache_tests::listener_pid(&sql, &app).await?;
    assert!(listener.is_some(), "B's listener is not connected");

    // The squatter goes: B's listener becomes the flusher, drains, reconciles and trusts its local cache
    // again, on the same connection.
    squatter.execute("SELECT pg_advisory_unlock_all()", &[]).await?;
    eventually(DEADLINE, || async { b.status().listener == ListenerState::Listening }).await?;
    assert_eq!(pgcache_tests::listener_pid(&sql, &app).await?, listener, "B's listener reconnected");
    make_local(&b, "k").await?;
    b.close().await;
    Ok(())
}

/// Payload versions: version 1 (the triggers of schemas before 4) and 2 (the flusher's) both evict
/// exactly the keys they name; another prefix's events are ignored; an unknown version flushes.
#[tokio::test]
async fn listeners_read_payload_versions_one_and_two_and_flush_on_unknown_ones() -> anyhow::Result<()> {
    let settings = settings_for("il_versions");
    let a = connect(&node(&settings, "a")).await?;
    let sql = sql_client(&settings.dsn).await?;
    let p = &settings.schema_prefix;
    let keys = ["v1", "v2", "keep", "other"];

    let fill = |a: &PostgresCache| {
        let a = a.clone();
        async move {
            let mut versions = std::collections::HashMap::new();
            for key in keys {
                versions.insert(key, a.set_entry(key, "\"x\"".into(), &Default::default()).await?);
                make_local(&a, key).await?;
            }
            anyhow::Ok(versions)
        }
    };
    let version = fill(&a).await?;
    let notify = |payload: String| {
        let sql = &sql;
        let channel = settings.notify_channel.clone();
        async move { sql.execute("SELECT pg_notify($1, $2)", &[&channel, &payload]).await }
    };
    let newer = |key: &str| version[key] + 100;
    notify(format!(r#"{{"p":"{p}","op":"update","keys":[["v1",{}]]}}"#, newer("v1"))).await?;
    notify(format!(r#"{{"v":2,"p":"{p}","t":0,"u":[],"d":[["v2",{}]]}}"#, newer("v2"))).await?;
    notify(format!(r#"{{"v":2,"p":"someone_else_","t":0,"u":[["other",{}]],"d":[]}}"#, newer("other"))).await?;
    let local = |key: &'static str| {
        let a = &a;
        async move { source_of(a, key).await.ok() == Some(Source::Local) }
    };
    eventually(DEADLINE, || async { !local("v1").await && !local("v2").await }).await?;
    assert!(local("keep").await, "a key no event named stays local");
    assert!(local("other").await, "another prefix's event is ignored");

    fill(&a).await?;
    // Well-formed, of this prefix, but of a version this node does not know: it must not guess.
    notify(format!(r#"{{"v":3,"p":"{p}","t":0,"u":[],"d":[]}}"#)).await?;
    eventually(DEADLINE, || async { !local("keep").await && !local("other").await }).await?;
    a.close().await;
    Ok(())
}

/// A write and the delete of the same row carry the same version (the deleted row's); when both wait in
/// one flusher batch, the delete is what is sent, so a node holding that version evicts it.
#[tokio::test]
async fn a_write_and_its_delete_in_one_batch_evict_as_a_delete() -> anyhow::Result<()> {
    let settings = settings_for("il_tie");
    PostgresCache::init_db(&settings).await?;
    let sql = sql_client(&settings.dsn).await?;
    // No flusher while the two rows are logged: the test's session holds the lock (for well under the
    // nodes' stall bound of 1 s).
    let squatter = sql_client(&settings.dsn).await?;
    assert!(squatter
        .query_one("SELECT pg_try_advisory_lock($1)", &[&flusher_key(&settings)])
        .await?
        .try_get::<_, bool>(0)?);
    let writer = connect(&node(&settings, "w").local_max_entries(0)).await?;
    let b = connect(&node(&settings, "b")).await?;
    writer.set("k", &"v", None).await?;
    make_local(&b, "k").await?;
    assert!(writer.delete("k").await?);
    let logged = log_rows(&sql, &settings).await?;
    assert_eq!(logged.len(), 2, "{logged:?}");
    assert_eq!(logged[0].1, logged[1].1, "the delete logs the version the write gave the row");
    squatter.execute("SELECT pg_advisory_unlock_all()", &[]).await?;
    eventually(DEADLINE, || async { value_of(&b, "k").await.is_none() }).await?;
    writer.close().await;
    b.close().await;
    Ok(())
}

/// Reads `key` on `cache` until it returns `want` (true) or `sneaky` (false: the node read the table
/// again instead of installing the value its notification carried).
async fn served_carried(cache: &PostgresCache, key: &str, want: &str, sneaky: &str) -> anyhow::Result<bool> {
    let start = Instant::now();
    loop {
        match value_of(cache, key).await.as_deref() {
            Some(v) if v == want => return Ok(true),
            Some(v) if v == sneaky => return Ok(false),
            _ if start.elapsed() > DEADLINE => anyhow::bail!("{key} never became {want:?} or {sneaky:?}"),
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// A node that holds a key at an older version installs the new value the flusher's notification carries
/// instead of evicting it, so its readers do not read the key again from PostgreSQL (issue 9, the re-read
/// herd). Proved by overwriting the row silently (no log row, same version) once the notification is out:
/// a node that read the table again would serve the silent value. Values over `CARRIED_VALUE_MAX` (512
/// bytes) are still evicted and read again, and a node installs nothing for a key it never held.
#[tokio::test]
async fn a_node_holding_an_older_copy_installs_the_value_its_notification_carries() -> anyhow::Result<()> {
    let settings = settings_for("il_carry");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    let sql = sql_client(&settings.dsn).await?;
    let table = entries_table(&settings);
    let big_old = "o".repeat(600);
    let big_new = "n".repeat(600);
    a.set("k", &"old", None).await?;
    a.set("big", &big_old, None).await?;
    make_local(&b, "k").await?;
    make_local(&b, "big").await?;
    let mut tap = NotifyTap::listen(&settings.dsn, &settings.notify_channel).await?;
    a.set("k", &"new", None).await?;
    a.set("big", &big_new, None).await?;
    a.set("never-read", &"x", None).await?;
    log_drained(&sql, &settings).await?;
    let payloads = tap.drain(&settings.notify_channel).await?;
    // "\"new\"" in base64.
    assert!(payloads.iter().any(|p| p.contains("Im5ldyI=")), "{payloads:?}");
    // Silently: the library's session settings skip the triggers, so no log row, no new version.
    sql.batch_execute(&format!(
        "SET pgcache.skip_notify = on; SET pgcache.library = on; \
         UPDATE {table} SET value = convert_to('\"sneaky\"', 'UTF8') WHERE key = 'k'; \
         UPDATE {table} SET value = convert_to('\"sneaky-big\"', 'UTF8') WHERE key = 'big'"
    ))
    .await?;
    assert!(
        served_carried(&b, "k", "new", "sneaky").await?,
        "b read the table again instead of installing the carried value"
    );
    assert_eq!(source_of(&b, "k").await?, Source::Local);
    assert!(
        !served_carried(&b, "big", &big_new, "sneaky-big").await?,
        "a value over 512 bytes must be evicted, not carried"
    );
    // Nothing was installed for a key b never read: its first read goes to the table.
    assert_ne!(source_of(&b, "never-read").await?, Source::Local);
    a.close().await;
    b.close().await;
    Ok(())
}

/// The lock a sleeping flusher holds (`flusher.rs`): `(pid, mode)` of every session holding it.
async fn wake_lock_holders(
    sql: &tokio_postgres::Client,
    settings: &CacheSettings,
) -> anyhow::Result<Vec<(i32, String)>> {
    let key = lock_key(&settings.schema_prefix, "\u{0}pgcache:flusher-awake");
    let (high, low) = (i64::from((key >> 32) as u32), i64::from(key as u32));
    let rows = sql
        .query(
            "SELECT pid, mode FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1",
            &[&high, &low],
        )
        .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

/// Whether the flusher (the holder of the election lock) sleeps: it holds the wake lock exclusively.
async fn flusher_asleep(sql: &tokio_postgres::Client, settings: &CacheSettings) -> bool {
    let Ok(Some(flusher)) = advisory_lock_holder(sql, flusher_key(settings)).await else { return false };
    wake_lock_holders(sql, settings)
        .await
        .is_ok_and(|held| held.iter().any(|(pid, mode)| *pid == flusher && mode == "ExclusiveLock"))
}

fn wake_channel(settings: &CacheSettings) -> String {
    format!("pgcache_wake_{:016x}", lock_key(&settings.schema_prefix, "\u{0}pgcache:flusher-awake"))
}

/// Sleeping flushers wake well before their safety poll (5 s): a delivery slower than this was not woken.
const WOKEN_WITHIN: Duration = Duration::from_millis(2500);

/// With nothing written the flusher falls asleep (it holds the wake lock and stops polling); the first
/// write after, by raw SQL or by the library, notifies the wake channel from its commit, and every node
/// evicts without waiting for the flusher's safety poll.
#[tokio::test]
async fn an_idle_flusher_sleeps_and_the_first_write_wakes_it() -> anyhow::Result<()> {
    let settings = settings_for("il_sleep");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    let sql = sql_client(&settings.dsn).await?;
    let table = entries_table(&settings);
    let mut wakes = NotifyTap::listen(&settings.dsn, &wake_channel(&settings)).await?;
    for (round, writer) in ["raw SQL", "library"].into_iter().enumerate() {
        let key = format!("k{round}");
        a.set(&key, &"old", None).await?;
        make_local(&b, &key).await?;
        // (The tap's own marker wakes the flusher too: drained before it falls asleep.)
        let _ = wakes.drain(&wake_channel(&settings)).await?;
        let slept = eventually(DEADLINE, || flusher_asleep(&sql, &settings)).await?;
        eprintln!("round {round}: the flusher fell asleep {slept:?} after the last write");
        let flusher = advisory_lock_holder(&sql, flusher_key(&settings)).await?;
        let start = Instant::now();
        if writer == "raw SQL" {
            sql.execute(&format!("UPDATE {table} SET value = convert_to('\"new\"', 'UTF8') WHERE key = $1"), &[&key])
                .await?;
        } else {
            a.set(&key, &"new", None).await?;
        }
        log_drained(&sql, &settings).await?;
        let took = start.elapsed();
        eventually(DEADLINE, || async { value_of(&b, &key).await.as_deref() == Some("new") }).await?;
        eprintln!("round {round}: a {writer} write woke the flusher, which sent it after {took:?}");
        assert!(took < WOKEN_WITHIN, "{writer}: the write waited for the safety poll ({took:?})");
        let now = advisory_lock_holder(&sql, flusher_key(&settings)).await?;
        assert_eq!(now, flusher, "{writer}: sent by another flusher session (the stall check, not a wake-up)");
        let heard = wakes.drain(&wake_channel(&settings)).await?;
        assert!(heard.iter().any(String::is_empty), "{writer}: no wake-up notification: {heard:?}");
    }
    a.close().await;
    b.close().await;
    Ok(())
}

/// A writer whose transaction found the flusher awake holds the wake lock in share mode until it ends,
/// so the flusher cannot fall asleep past it: a transaction kept open across the flusher's idle spell is
/// still sent as soon as it commits, not at the flusher's safety poll.
#[tokio::test]
async fn a_transaction_open_across_the_flushers_idle_spell_is_sent_at_its_commit() -> anyhow::Result<()> {
    let settings = settings_for("il_straddle");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    let mut writer = sql_client(&settings.dsn).await?;
    let sql = sql_client(&settings.dsn).await?;
    let table = entries_table(&settings);
    a.set("k", &"old", None).await?;
    make_local(&b, "k").await?;
    // Open the writer's transaction while the flusher is awake (right after a write woke it), so the
    // log trigger takes the wake lock in share mode; tried again if the flusher slept in between.
    let pid: i32 = writer.query_one("SELECT pg_backend_pid()", &[]).await?.try_get(0)?;
    let mut attempts = 0;
    let tx = loop {
        attempts += 1;
        anyhow::ensure!(attempts <= 20, "never caught the flusher awake");
        a.set("nudge", &attempts, None).await?;
        let tx = writer.transaction().await?;
        tx.execute(&format!("UPDATE {table} SET value = convert_to('\"new\"', 'UTF8') WHERE key = 'k'"), &[]).await?;
        let held = wake_lock_holders(&sql, &settings).await?;
        if held.iter().any(|(p, mode)| *p == pid && mode == "ShareLock") {
            break tx;
        }
        tx.rollback().await?;
    };
    // Time must pass here, it is what the test is about: the flusher's idle spell (200 ms) goes by, and
    // it tries to fall asleep while the transaction is open. It must not manage to.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!flusher_asleep(&sql, &settings).await, "the flusher fell asleep past an open writer");
    let flusher = advisory_lock_holder(&sql, flusher_key(&settings)).await?;
    let start = Instant::now();
    tx.commit().await?;
    // Sent: the log is drained (the other node's copy could also go by its local TTL, so it is not the
    // measure here), and the other node evicted.
    log_drained(&sql, &settings).await?;
    let took = start.elapsed();
    eventually(DEADLINE, || async { value_of(&b, "k").await.as_deref() == Some("new") }).await?;
    eprintln!("a transaction open across the idle spell was sent {took:?} after its commit");
    assert!(took < WOKEN_WITHIN, "the commit waited for the safety poll ({took:?})");
    // Sent by the same flusher: not by a successor after the listeners' stall check ended its session
    // (which is what would send it, within a second or so, had the flusher fallen asleep past it).
    assert_eq!(advisory_lock_holder(&sql, flusher_key(&settings)).await?, flusher, "the flusher's session ended");
    a.close().await;
    b.close().await;
    Ok(())
}
