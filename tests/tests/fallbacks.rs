//! The fallbacks chosen from the capabilities probed at connect (issue 14), each tested by turning the
//! probed capability off with `CacheSettings::assume_without`:
//!
//! - without NOTIFY, nodes poll the change history: they see each other's writes and plain SQL within
//!   the bound (poll interval plus one statement), survive `pg_terminate_backend` of the poller, and
//!   share a prefix with listening nodes (the flusher keeps the history while a poller is registered);
//! - without session advisory locks, `get_or_set` takes lease rows: one loader per key across three
//!   nodes, and a dead holder's lease (a row no one renews) expires so that another node loads;
//! - on a direct connection the probe finds every capability and the cache listens.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgcache_core::prelude::*;
use pgcache_core::{CacheStore, Capability, Fill, InvalidationMode, Source};
use pgcache_tests::{connect, entries_table, eventually, make_local, node, settings_for, sql_client, terminate};

/// Generous deadline for an invalidation to travel; the measured figures are printed.
const DEADLINE: Duration = Duration::from_secs(5);
/// The poll interval of these tests.
const POLL: Duration = Duration::from_millis(100);

async fn value_of(cache: &PostgresCache, key: &str) -> Option<String> {
    cache.get::<String>(key).await.ok().flatten()
}

fn polling(settings: &CacheSettings, suffix: &str) -> CacheSettings {
    node(settings, suffix).assume_without(Capability::Notify).poll_interval(POLL)
}

/// The backend of `app`'s poller, found by its statement in `pg_stat_activity`.
async fn poller_pid(sql: &tokio_postgres::Client, app: &str) -> anyhow::Result<Option<i32>> {
    let rows = sql
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query LIKE '%pg_current_snapshot%'",
            &[&app],
        )
        .await?;
    Ok(rows.first().map(|row| row.get(0)))
}

#[tokio::test]
async fn a_direct_connection_is_probed_with_every_capability_and_listens() -> anyhow::Result<()> {
    let settings = settings_for("cap_direct");
    let cache = connect(&settings).await?;
    let found = cache.capabilities().ok_or_else(|| anyhow::anyhow!("no capabilities after connect"))?;
    assert!(found.notify && found.session_locks && found.unlogged && found.transition_tables, "{found:?}");
    assert_eq!(found.invalidation, InvalidationMode::Listen);
    let off = connect(&node(&settings, "x").assume_without(Capability::Notify)).await?;
    let found = off.capabilities().ok_or_else(|| anyhow::anyhow!("no capabilities after connect"))?;
    assert!(!found.notify && found.session_locks, "{found:?}");
    assert_eq!(found.invalidation, InvalidationMode::Poll);
    Ok(())
}

#[tokio::test]
async fn polling_nodes_see_each_others_writes_and_plain_sql_within_the_bound() -> anyhow::Result<()> {
    let settings = settings_for("poll_nodes");
    let a = connect(&polling(&settings, "a")).await?;
    let b = connect(&polling(&settings, "b")).await?;
    let c = connect(&polling(&settings, "c")).await?;
    assert_eq!(b.capabilities().map(|c| c.invalidation), Some(InvalidationMode::Poll));
    let sql = sql_client(&settings.dsn).await?;
    let table = entries_table(&settings);
    let mut delays = Vec::new();
    for round in 0..5 {
        let key = format!("k:{round}");
        a.set(&key, &"v1", None).await?;
        for other in [&b, &c] {
            eventually(DEADLINE, || async { value_of(other, &key).await.as_deref() == Some("v1") }).await?;
            make_local(other, &key).await?;
        }
        a.set(&key, &"v2", None).await?;
        delays.push(eventually(DEADLINE, || async { value_of(&b, &key).await.as_deref() == Some("v2") }).await?);
        eventually(DEADLINE, || async { value_of(&c, &key).await.as_deref() == Some("v2") }).await?;

        make_local(&b, &key).await?;
        make_local(&a, &key).await?;
        sql.execute(&format!("UPDATE {table} SET value = convert_to('\"by sql\"', 'UTF8') WHERE key = $1"), &[&key])
            .await?;
        delays.push(
            eventually(DEADLINE, || async {
                value_of(&a, &key).await.as_deref() == Some("by sql")
                    && value_of(&b, &key).await.as_deref() == Some("by sql")
            })
            .await?,
        );
        make_local(&c, &key).await?;
        assert!(b.delete(&key).await?);
        delays.push(eventually(DEADLINE, || async { value_of(&c, &key).await.is_none() }).await?);
    }
    delays.sort();
    println!(
        "poll mode ({POLL:?}): write/SQL/delete seen by another node after min={:?} median={:?} max={:?}",
        delays[0],
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
    Ok(())
}

#[tokio::test]
async fn a_poller_whose_backend_is_terminated_comes_back_and_misses_nothing() -> anyhow::Result<()> {
    let settings = settings_for("poll_kill");
    let a = connect(&polling(&settings, "a")).await?;
    let b_settings = polling(&settings, "b");
    let b = connect(&b_settings).await?;
    let sql = sql_client(&settings.dsn).await?;
    a.set("k", &"v1", None).await?;
    eventually(DEADLINE, || async { value_of(&b, "k").await.as_deref() == Some("v1") }).await?;
    make_local(&b, "k").await?;
    let app = b_settings.application_name.clone();
    eventually(DEADLINE, || async { poller_pid(&sql, &app).await.ok().flatten().is_some() }).await?;
    let pid = poller_pid(&sql, &app).await?.ok_or_else(|| anyhow::anyhow!("no poller backend"))?;
    assert!(terminate(&sql, pid).await?);
    // Written while B's poller is down or reconnecting: the reconcile (or the next poll) evicts it.
    a.set("k", &"v2", None).await?;
    eventually(DEADLINE, || async { value_of(&b, "k").await.as_deref() == Some("v2") }).await?;
    eventually(DEADLINE, || async { poller_pid(&sql, &app).await.ok().flatten().is_some_and(|p| p != pid) }).await?;
    // And it polls again: a later write reaches it too.
    make_local(&b, "k").await?;
    a.set("k", &"v3", None).await?;
    eventually(DEADLINE, || async { value_of(&b, "k").await.as_deref() == Some("v3") }).await?;
    Ok(())
}

#[tokio::test]
async fn listening_and_polling_nodes_share_a_prefix_and_both_hear_every_write() -> anyhow::Result<()> {
    let settings = settings_for("poll_mixed");
    let listening = connect(&node(&settings, "l")).await?;
    let polls = connect(&polling(&settings, "p")).await?;
    assert_eq!(listening.capabilities().map(|c| c.invalidation), Some(InvalidationMode::Listen));
    let sql = sql_client(&settings.dsn).await?;
    let table = entries_table(&settings);
    for round in 0..5 {
        let key = format!("m:{round}");
        listening.set(&key, &"v1", None).await?;
        polls.set(&key, &"v1", None).await?;
        make_local(&listening, &key).await?;
        make_local(&polls, &key).await?;
        // The listener's flusher drains the log (and notifies at once); the history keeps the rows
        // for the poller.
        sql.execute(&format!("UPDATE {table} SET value = convert_to('\"by sql\"', 'UTF8') WHERE key = $1"), &[&key])
            .await?;
        eventually(DEADLINE, || async {
            value_of(&listening, &key).await.as_deref() == Some("by sql")
                && value_of(&polls, &key).await.as_deref() == Some("by sql")
        })
        .await?;
        make_local(&listening, &key).await?;
        make_local(&polls, &key).await?;
        polls.set(&key, &"v3", None).await?;
        eventually(DEADLINE, || async { value_of(&listening, &key).await.as_deref() == Some("v3") }).await?;
        listening.set(&key, &"v4", None).await?;
        eventually(DEADLINE, || async { value_of(&polls, &key).await.as_deref() == Some("v4") }).await?;
    }
    // The history holds what was moved for the poller: it is kept, not deleted by the flusher.
    let kept: i64 =
        sql.query_one(&format!("SELECT count(*) FROM \"{}cache_changes\"", settings.schema_prefix), &[]).await?.get(0);
    assert!(kept > 0, "the flusher kept no history for the poller");
    Ok(())
}

fn leasing(settings: &CacheSettings, suffix: &str) -> CacheSettings {
    node(settings, suffix).assume_without(Capability::SessionLocks)
}

#[tokio::test]
async fn lease_rows_keep_one_loader_per_key_across_three_nodes() -> anyhow::Result<()> {
    let settings = settings_for("lease_one");
    let nodes = [
        connect(&leasing(&settings, "a")).await?,
        connect(&leasing(&settings, "b")).await?,
        connect(&leasing(&settings, "c")).await?,
    ];
    assert_eq!(nodes[0].capabilities().map(|c| c.session_locks), Some(false));
    let sql = sql_client(&settings.dsn).await?;
    for round in 0..3 {
        let key = format!("cold:{round}");
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for cache in &nodes {
            for _ in 0..8 {
                let (cache, key, runs) = (cache.clone(), key.clone(), Arc::clone(&runs));
                tasks.push(tokio::spawn(async move {
                    let loaded = cache
                        .get_or_load(&key, move || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            Ok::<_, std::io::Error>(Fill::new(&b"\"loaded\""[..], Duration::from_secs(60)))
                        })
                        .await;
                    loaded.map(|l| l.value).map_err(|e| e.to_string())
                }));
            }
        }
        for task in tasks {
            assert_eq!(task.await?.map_err(anyhow::Error::msg)?, &b"\"loaded\""[..]);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "round {round}: one loader across three nodes");
        // Released: no lease row is left behind.
        let left: i64 = sql
            .query_one(&format!("SELECT count(*) FROM \"{}cache_leases\"", settings.schema_prefix), &[])
            .await?
            .get(0);
        assert_eq!(left, 0, "round {round}: a lease row was left behind");
    }
    Ok(())
}

#[tokio::test]
async fn a_dead_holders_lease_expires_and_another_node_loads() -> anyhow::Result<()> {
    let settings = settings_for("lease_dead");
    let cache = connect(&leasing(&settings, "a")).await?;
    let sql = sql_client(&settings.dsn).await?;
    // A holder that died mid-load (its process killed): its lease row stays until it expires.
    let lock = pgcache_core::lock_key(&settings.schema_prefix, "k");
    sql.execute(
        &format!(
            "INSERT INTO \"{}cache_leases\" (key, holder, expires_at) VALUES ($1, 'dead', clock_timestamp() + interval '1.5 s')",
            settings.schema_prefix
        ),
        &[&lock],
    )
    .await?;
    let start = Instant::now();
    let loaded = cache
        .get_or_load("k", || async { Ok::<_, std::io::Error>(Fill::new(&b"\"mine\""[..], Duration::from_secs(60))) })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let waited = start.elapsed();
    println!("a dead holder's lease: another node loaded after {waited:?}");
    assert_eq!(loaded.source, Source::Loaded);
    assert!(waited >= Duration::from_secs(1), "loaded while the dead holder's lease was live ({waited:?})");
    assert!(waited < Duration::from_secs(8), "waited far past the lease's expiry ({waited:?})");
    Ok(())
}

/// A measurement, run by hand: the statements an idle node sends, polling and listening, from its
/// database's `xact_commit` (a private database: nothing else commits there), per second.
/// `scripts/with-postgres cargo test -p pgcache-tests --test fallbacks -- --ignored --nocapture idle`
#[tokio::test]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
async fn idle_polling_cost_in_statements_per_second() -> anyhow::Result<()> {
    let base = settings_for("poll_idle");
    let admin = sql_client(&base.dsn).await?;
    for mode in [InvalidationMode::Poll, InvalidationMode::Listen] {
        let db = format!("{}{}", base.schema_prefix, if mode == InvalidationMode::Poll { "poll" } else { "listen" });
        admin.batch_execute(&format!("CREATE DATABASE {db}")).await?;
        // The defaults: poll every 200 ms, heartbeat every second.
        let mut settings =
            node(&base, "a").poll_interval(Duration::from_millis(200)).heartbeat_interval(Duration::from_secs(1));
        if mode == InvalidationMode::Poll {
            settings = settings.assume_without(Capability::Notify);
        }
        settings.dsn = pgcache_tests::with_dbname(&base.dsn, &db)?;
        let cache = connect(&settings).await?;
        let commits = || async {
            let row = admin.query_one("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", &[&db]).await?;
            admin.batch_execute("SELECT pg_stat_clear_snapshot()").await?;
            anyhow::Ok(row.get::<_, i64>(0))
        };
        // A measurement window, not a wait for a condition: backends flush statistics about once a second.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (before, start) = (commits().await?, Instant::now());
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after = commits().await?;
        let per_second = (after - before) as f64 / start.elapsed().as_secs_f64();
        println!("idle {mode:?} node (poll_interval 200 ms, heartbeat_interval 1 s): {per_second:.1} statements/s");
        cache.close().await;
        admin.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)")).await?;
    }
    Ok(())
}

#[tokio::test]
async fn without_unlogged_init_db_creates_the_entries_table_logged() -> anyhow::Result<()> {
    let sql = sql_client(&settings_for("unlogged").dsn).await?;
    let persistence = |settings: CacheSettings| {
        let sql = &sql;
        async move {
            PostgresCache::init_db(&settings).await?;
            let row = sql
                .query_one(
                    "SELECT relpersistence::text FROM pg_class WHERE oid = to_regclass($1)",
                    &[&entries_table(&settings)],
                )
                .await?;
            anyhow::Ok(row.get::<_, String>(0))
        }
    };
    assert_eq!(persistence(settings_for("unlogged_on").unlogged(true)).await?, "u");
    let without = settings_for("unlogged_off").unlogged(true).assume_without(Capability::Unlogged);
    assert_eq!(persistence(without.clone()).await?, "p", "UNLOGGED assumed missing: the table is created logged");
    // The probe reads the engine, the override wins.
    let cache = PostgresCache::connect(without).await?;
    assert_eq!(cache.capabilities().map(|c| c.unlogged), Some(false));
    Ok(())
}

#[tokio::test]
async fn the_sweeper_trims_the_change_history_past_its_retention_only() -> anyhow::Result<()> {
    let settings = settings_for("poll_trim");
    let polls = connect(&polling(&settings, "p")).await?;
    let writer = connect(&node(&settings, "w")).await?;
    for i in 0..5 {
        writer.set(&format!("k{i}"), &i, None).await?;
    }
    let sql = sql_client(&settings.dsn).await?;
    let history = format!("\"{}cache_changes\"", settings.schema_prefix);
    let count = |filter: &'static str| {
        let (sql, history) = (&sql, &history);
        async move {
            let row = sql.query_one(&format!("SELECT count(*) FROM {history} {filter}"), &[]).await?;
            anyhow::Ok(row.get::<_, i64>(0))
        }
    };
    eventually(DEADLINE, || async { count("").await.unwrap_or(0) >= 5 }).await?;
    // Age two rows past the retention window (60 s): the sweeper takes those, not the others.
    sql.execute(
        &format!(
            "UPDATE {history} SET t = t - interval '2 minutes' WHERE ctid IN (SELECT ctid FROM {history} LIMIT 2)"
        ),
        &[],
    )
    .await?;
    let before = count("").await?;
    polls.cleanup_expired().await?;
    assert_eq!(count("WHERE t < now() - interval '1 minute'").await?, 0, "rows past the retention window remain");
    assert_eq!(count("").await?, before - 2, "rows within the retention window were trimmed");
    Ok(())
}

#[tokio::test]
async fn without_transition_tables_row_level_triggers_still_evict_every_node() -> anyhow::Result<()> {
    let settings = settings_for("rows_trig").assume_without(Capability::TransitionTables);
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    assert_eq!(b.capabilities().map(|c| c.transition_tables), Some(false));
    let sql = sql_client(&settings.dsn).await?;
    let table = entries_table(&settings);
    // Row-level (tgtype bit 0), no transition table.
    let statement_level: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass($1) AND NOT tgisinternal \
             AND tgname LIKE '%cache_notify_%' AND tgname NOT LIKE '%truncate' \
             AND ((tgtype & 1) = 0 OR tgnewtable IS NOT NULL OR tgoldtable IS NOT NULL)",
            &[&table],
        )
        .await?
        .get(0);
    assert_eq!(statement_level, 0, "the notify triggers are row-level");
    // init_db again: the schema is intact, nothing flips back.
    PostgresCache::init_db(&settings).await?;
    assert!(PostgresCache::schema_is_current(&settings).await?);
    for key in ["r1", "r2", "r3"] {
        a.set(key, &"v1", None).await?;
        eventually(DEADLINE, || async { value_of(&b, key).await.as_deref() == Some("v1") }).await?;
        make_local(&b, key).await?;
    }
    // One statement, several rows: each row logs itself.
    sql.execute(&format!("UPDATE {table} SET value = convert_to('\"bulk\"', 'UTF8') WHERE key IN ('r1', 'r2')"), &[])
        .await?;
    eventually(DEADLINE, || async {
        value_of(&b, "r1").await.as_deref() == Some("bulk") && value_of(&b, "r2").await.as_deref() == Some("bulk")
    })
    .await?;
    sql.execute(&format!("DELETE FROM {table} WHERE key = 'r3'"), &[]).await?;
    eventually(DEADLINE, || async { value_of(&b, "r3").await.is_none() }).await?;
    Ok(())
}
