//! How a node's local cache recovers when the listener loses its connection or the shared table is
//! replaced:
//!
//! - after a listener reconnect the local cache is reconciled, not flushed: entries unchanged in the
//!   table are still served locally, those changed or deleted while the listener was away are not (the
//!   herd of shared reads after a reconnect is printed);
//! - the listener's reconnect back-off starts again from its first step after a healthy session, so
//!   repeated kills never keep the local cache off for seconds;
//! - a shared table dropped and recreated under a live listener is noticed by the heartbeat (its
//!   incarnation changed): every node flushes, even though the new rows reuse the old versions;
//! - a crash of the server (`pg_ctl stop -m immediate`) with an `UNLOGGED` table: no node serves a
//!   pre-crash value after the bound, even when a new row carries the old row's version.

use std::time::{Duration, Instant};

use pgcache_core::prelude::*;
use pgcache_core::{ListenerState, Source};
use pgcache_tests::{
    blocking, connect, entries_table, eventually, listener_pid, login_role, make_local, node, settings_for,
    settings_on, source_of, sql_client, terminate, TestCluster,
};

/// Generous deadline for a reconnect or an invalidation; measured figures are printed.
const DEADLINE: Duration = Duration::from_secs(10);

/// Waits until `cache`'s listener is listening on a backend other than `old`.
async fn back_listening(
    cache: &PostgresCache,
    admin: &tokio_postgres::Client,
    app: &str,
    old: i32,
) -> anyhow::Result<Duration> {
    eventually(DEADLINE, || async {
        cache.status().listener == ListenerState::Listening
            && listener_pid(admin, app).await.ok().flatten().is_some_and(|pid| pid != old)
    })
    .await
}

#[tokio::test]
async fn reconnect_reconciles_the_local_cache_instead_of_flushing_it() -> anyhow::Result<()> {
    let settings = settings_for("r_reconcile");
    PostgresCache::init_db(&settings).await?;
    let a = connect(&node(&settings, "a")).await?;
    // B logs in as its own role, so the test can keep its listener out while A changes keys.
    let role = format!("{}b", settings.schema_prefix);
    let mut b_settings = node(&settings, "b");
    b_settings.dsn = login_role(&settings.dsn, &settings.schema_prefix, "b", -1).await?;
    let b = PostgresCache::connect(b_settings.clone()).await?;
    let admin = sql_client(&settings.dsn).await?;

    let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    let items: Vec<(&str, bytes::Bytes)> =
        keys.iter().map(|k| (k.as_str(), bytes::Bytes::from(serde_json::to_vec(&"old").unwrap_or_default()))).collect();
    a.set_many_bytes(&items, Ttl::Never).await?;
    for key in &keys {
        make_local(&b, key).await?;
    }
    let pid =
        listener_pid(&admin, &b_settings.application_name).await?.ok_or_else(|| anyhow::anyhow!("no listener"))?;
    let role_name = role.trim_end_matches('_');
    admin.batch_execute(&format!("ALTER ROLE \"{role_name}\" NOLOGIN")).await?;
    assert!(terminate(&admin, pid).await?);
    eventually(DEADLINE, || async { b.status().listener == ListenerState::Reconnecting }).await?;
    // While B hears nothing: 10 keys change, 5 go.
    for key in &keys[..10] {
        a.set(key, &"new", None).await?;
    }
    assert_eq!(a.delete_many(&keys[10..15].iter().map(String::as_str).collect::<Vec<_>>()).await?, 5);
    admin.batch_execute(&format!("ALTER ROLE \"{role_name}\" LOGIN")).await?;
    back_listening(&b, &admin, &b_settings.application_name, pid).await?;

    // The first read of every key after the reconnect: the unchanged ones are still local.
    let mut shared_reads = 0;
    for key in &keys[15..] {
        if source_of(&b, key).await? != Source::Local {
            shared_reads += 1;
        }
    }
    for key in &keys[..10] {
        assert_eq!(b.get::<String>(key).await?.as_deref(), Some("new"), "{key} changed while B was away");
    }
    for key in &keys[10..15] {
        assert_eq!(b.get::<String>(key).await?, None, "{key} was deleted while B was away");
    }
    eprintln!(
        "after a reconnect, {shared_reads} of {} unchanged keys were read from the shared table (a flush reads all of them)",
        keys.len() - 15
    );
    assert_eq!(shared_reads, 0, "unchanged entries must survive the reconnect");
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn listener_backoff_starts_again_after_a_healthy_session() -> anyhow::Result<()> {
    let settings = settings_for("r_backoff");
    let b_settings = node(&settings, "b");
    let b = connect(&b_settings).await?;
    let admin = sql_client(&settings.dsn).await?;
    let mut delays = Vec::new();
    // Without the reset the delays grow 50, 100, 200, ... 1600, 2000 ms: the eighth would be 2 s.
    for _ in 0..8 {
        // Listening for more than a heartbeat interval: a healthy session (the scenario, not a wait).
        tokio::time::sleep(b_settings.heartbeat_interval * 2).await;
        let pid =
            listener_pid(&admin, &b_settings.application_name).await?.ok_or_else(|| anyhow::anyhow!("no listener"))?;
        assert!(terminate(&admin, pid).await?);
        delays.push(back_listening(&b, &admin, &b_settings.application_name, pid).await?);
    }
    eprintln!("local cache off after each of 8 listener kills: {delays:?}");
    let worst = delays.iter().max().copied().unwrap_or_default();
    assert!(worst < Duration::from_secs(1), "a reconnect after a healthy session took {worst:?}: {delays:?}");
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn recreated_table_is_noticed_by_the_heartbeat_and_flushes_every_node() -> anyhow::Result<()> {
    let settings = settings_for("r_recreate");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    let admin = sql_client(&settings.dsn).await?;
    a.set("k", &"before", None).await?;
    make_local(&a, "k").await?;
    make_local(&b, "k").await?;
    // Dropping fires no trigger: no node hears of it. The sequence restarts, so versions are reused.
    let table = entries_table(&settings);
    let sequence = format!("\"{}cache_version_seq\"", settings.schema_prefix);
    admin.batch_execute(&format!("DROP TABLE {table} CASCADE; DROP SEQUENCE {sequence}")).await?;
    PostgresCache::init_db(&settings).await?;
    let insert = format!("INSERT INTO {table} (key, value, version) VALUES ('k', convert_to('\"after\"', 'UTF8'), 1)");
    admin.batch_execute(&format!("SET pgcache.skip_notify = on; {insert}")).await?;
    let bound = settings.heartbeat_interval * 2;
    for (name, cache) in [("a", &a), ("b", &b)] {
        let took = eventually(DEADLINE, || async {
            cache.get::<String>("k").await.ok().flatten().as_deref() == Some("after")
        })
        .await?;
        eprintln!(
            "node {name} stopped serving the old table's value {took:?} after it was recreated (bound {bound:?})"
        );
        assert!(took <= bound + Duration::from_millis(500), "{name} served the old table's value for {took:?}");
    }
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn crash_with_an_unlogged_table_serves_no_pre_crash_value_after_the_bound() -> anyhow::Result<()> {
    let cluster = blocking(TestCluster::start).await?;
    let settings = settings_on(&cluster.dsn(), "r_crash").unlogged(true);
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    a.set("k", &"pre-crash", None).await?;
    make_local(&a, "k").await?;
    make_local(&b, "k").await?;
    let admin = sql_client(&settings.dsn).await?;
    let table = entries_table(&settings);
    let version: i64 =
        admin.query_one(&format!("SELECT version FROM {table} WHERE key = 'k'"), &[]).await?.try_get(0)?;

    // The cluster runs with synchronous_commit off: make the schema durable before pulling the plug.
    admin.batch_execute("CHECKPOINT").await?;
    let cluster = std::sync::Arc::new(cluster);
    let crashed = Instant::now();
    let down = std::sync::Arc::clone(&cluster);
    blocking(move || down.crash()).await?;
    let up = std::sync::Arc::clone(&cluster);
    blocking(move || up.start_server()).await?;
    let restarted = crashed.elapsed();
    // The crash emptied the table. A row with the same key and the same version, as a restored backup or
    // a reissued sequence would give: versions alone cannot tell it from the pre-crash row.
    let admin = sql_client(&settings.dsn).await?;
    assert_eq!(admin.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?.try_get::<_, i64>(0)?, 0);
    let insert =
        format!("INSERT INTO {table} (key, value, version) VALUES ('k', convert_to('\"post-crash\"', 'UTF8'), $1)");
    admin.batch_execute("SET pgcache.skip_notify = on").await?;
    admin.execute(&insert, &[&version]).await?;
    for (name, cache) in [("a", &a), ("b", &b)] {
        let mut last_pre_crash = None;
        let start = Instant::now();
        loop {
            let at = crashed.elapsed();
            let value = cache.get::<String>("k").await.ok().flatten();
            if value.as_deref() == Some("pre-crash") {
                last_pre_crash = Some(at);
            }
            let listening = cache.status().listener == ListenerState::Listening;
            if value.as_deref() == Some("post-crash") && listening && source_of(cache, "k").await? == Source::Local {
                break;
            }
            anyhow::ensure!(start.elapsed() < DEADLINE, "node {name} never served the post-crash row");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        eprintln!(
            "node {name}: restart took {restarted:?}; pre-crash value last served {last_pre_crash:?} after the crash"
        );
        assert_eq!(last_pre_crash, None, "node {name} served a pre-crash value after the restart");
    }
    a.close().await;
    b.close().await;
    Ok(())
}
