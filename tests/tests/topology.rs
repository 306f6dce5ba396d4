//! Past one server: sharding over several primaries, PgBouncer in transaction mode.
//!
//! These tests need the topology `scripts/with-topology` starts (several primaries, PgBouncer), so they
//! are `#[ignore]`d in a plain `cargo test` and run by `scripts/test` as
//! `scripts/with-topology --primaries 3 --pgbouncer cargo test -p pgcache-tests --test topology -- --ignored`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pgcache_core::{CacheSettings, CacheStore, PostgresCache, SetOptions, ShardedCache, Ttl, TypedCache};
use pgcache_tests::{blocking, entries_table, eventually, settings_on, sql_client, unique_name, TestCluster};

const NEEDS: &str = "needs scripts/with-topology (scripts/test runs it with --ignored)";

/// The primaries `scripts/with-topology` started.
fn shard_dsns() -> Vec<String> {
    let all = std::env::var("PGCACHE_SHARD_DSNS").expect("PGCACHE_SHARD_DSNS: run under scripts/with-topology");
    let dsns: Vec<String> = all.split_whitespace().map(str::to_owned).collect();
    assert!(dsns.len() >= 2, "run under scripts/with-topology --primaries 2 (or more)");
    dsns
}

/// Settings for a sharded cache over `dsns`, with a fresh prefix and channel.
fn sharded_settings(dsns: &[String], name: &str) -> CacheSettings {
    settings_on(&dsns[0], name).shard_dsns(dsns.iter().cloned())
}

async fn connect_sharded(settings: &CacheSettings) -> Result<ShardedCache> {
    ShardedCache::init_db(settings).await?;
    Ok(ShardedCache::connect(settings.clone()).await?)
}

/// Rows in the entries table of `settings`' prefix on the server `dsn`.
async fn rows_on(dsn: &str, settings: &CacheSettings) -> Result<Vec<String>> {
    let client = sql_client(dsn).await?;
    let sql = format!("SELECT key FROM {} ORDER BY key", entries_table(settings));
    Ok(client.query(&sql, &[]).await?.iter().map(|r| r.get(0)).collect())
}

#[tokio::test]
#[ignore = "needs scripts/with-topology (scripts/test runs it with --ignored)"]
async fn each_key_lives_on_its_shard_only_and_batches_split_per_shard() -> Result<()> {
    let _ = NEEDS;
    let dsns = shard_dsns();
    let settings = sharded_settings(&dsns, "shard_split");
    let cache = connect_sharded(&settings).await?;
    let keys: Vec<String> = (0..300).map(|i| format!("item:{i}")).collect();
    let items: Vec<(&str, bytes::Bytes)> =
        keys.iter().map(|k| (k.as_str(), bytes::Bytes::from(format!("v-{k}")))).collect();
    cache.set_many_bytes(&items, Ttl::Default).await?;

    let mut total = 0;
    for (i, dsn) in dsns.iter().enumerate() {
        let rows = rows_on(dsn, &settings).await?;
        assert!(rows.len() > 300 / dsns.len() / 2, "shard {i} holds only {} of 300 keys", rows.len());
        for key in &rows {
            assert_eq!(cache.shard_of(key), i, "{key} stored on shard {i}, not its own");
        }
        total += rows.len();
    }
    assert_eq!(total, 300, "every key stored exactly once");

    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut wanted = refs.clone();
    wanted.push("absent:1");
    let got = cache.get_many_bytes(&wanted).await?;
    for (key, value) in wanted.iter().zip(&got) {
        let expected = (!key.starts_with("absent")).then(|| bytes::Bytes::from(format!("v-{key}")));
        assert_eq!(value, &expected, "{key}");
    }
    assert_eq!(cache.delete_many(&refs).await?, 300);
    for dsn in &dsns {
        assert!(rows_on(dsn, &settings).await?.is_empty());
    }
    cache.close().await;
    Ok(())
}

#[tokio::test]
#[ignore = "needs scripts/with-topology (scripts/test runs it with --ignored)"]
async fn clear_and_delete_tags_reach_every_shard() -> Result<()> {
    let dsns = shard_dsns();
    let settings = sharded_settings(&dsns, "shard_fanout");
    let cache = connect_sharded(&settings).await?;
    for i in 0..60 {
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        cache.set_entry(&format!("k{i}"), format!("{i}").into(), &SetOptions::default().tags([tag])).await?;
    }
    let mut on_shard = vec![0usize; dsns.len()];
    for i in (0..60).step_by(2) {
        on_shard[cache.shard_of(&format!("k{i}"))] += 1;
    }
    assert!(on_shard.iter().all(|&n| n > 0), "tagged keys on every shard: {on_shard:?}");
    assert_eq!(cache.delete_tags(&["even"]).await?, 30);
    assert_eq!(cache.get::<i64>("k0").await?, None);
    assert_eq!(cache.get::<i64>("k1").await?, Some(1));
    assert_eq!(cache.clear().await?, 30);
    for dsn in &dsns {
        assert!(rows_on(dsn, &settings).await?.is_empty());
    }
    cache.close().await;
    Ok(())
}

#[tokio::test]
#[ignore = "needs scripts/with-topology (scripts/test runs it with --ignored)"]
async fn two_sharded_nodes_stay_coherent_on_every_shard() -> Result<()> {
    let dsns = shard_dsns();
    let settings = sharded_settings(&dsns, "shard_coherent");
    let a = connect_sharded(&settings).await?;
    let b = ShardedCache::connect(settings.clone().application_name(format!("{}b", settings.application_name))).await?;
    let keys: Vec<String> = (0..12).map(|i| format!("user:{i}")).collect();
    for key in &keys {
        a.set(key, "old", None).await?;
        // Read on b so that b holds the value locally.
        assert_eq!(b.get::<String>(key).await?, Some("old".to_owned()));
    }
    for key in &keys {
        a.set(key, "new", None).await?;
    }
    for key in &keys {
        eventually(Duration::from_secs(5), || async {
            b.get::<String>(key).await.ok().flatten().as_deref() == Some("new")
        })
        .await
        .with_context(|| format!("b still serves the old {key} (shard {})", a.shard_of(key)))?;
    }
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
#[ignore = "needs scripts/with-topology (scripts/test runs it with --ignored)"]
async fn a_down_shard_fails_open_for_its_keys_only() -> Result<()> {
    let dsns = shard_dsns();
    // A private cluster as the second shard, so that this test can stop it.
    let cluster = Arc::new(blocking(TestCluster::start).await?);
    let shards = vec![dsns[0].clone(), cluster.dsn()];
    let settings = sharded_settings(&shards, "shard_down").pool_timeout(Duration::from_millis(500));
    let cache = connect_sharded(&settings).await?;
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    for key in &keys {
        cache.set(key, key, None).await?;
    }
    let (live, down): (Vec<&String>, Vec<&String>) = keys.iter().partition(|k| cache.shard_of(k) == 0);
    assert!(!live.is_empty() && !down.is_empty());

    let stop = Arc::clone(&cluster);
    blocking(move || stop.stop()).await?;
    for key in &live {
        assert_eq!(cache.get::<String>(key).await?.as_deref(), Some(key.as_str()), "live shard's {key}");
    }
    let loads = Arc::new(AtomicUsize::new(0));
    for key in &down {
        let started = Instant::now();
        // Fail open: a miss, not an error, within the pool timeout's order of magnitude.
        assert_eq!(cache.get::<String>(key).await?, None, "down shard's {key}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let counter = Arc::clone(&loads);
        let loaded: String = cache
            .get_or_set(
                key,
                move || async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>("from loader".to_owned())
                },
                None,
            )
            .await?;
        assert_eq!(loaded, "from loader");
        // Writes report the outage to the caller.
        assert!(cache.set(key, "x", None).await.is_err(), "a write to a down shard must fail");
    }
    assert_eq!(loads.load(Ordering::SeqCst), down.len());
    let all: Vec<&str> = keys.iter().map(String::as_str).collect();
    let got = cache.get_many_bytes(&all).await?;
    for (key, value) in all.iter().zip(&got) {
        assert_eq!(value.is_some(), cache.shard_of(key) == 0, "get_many: {key}");
    }

    let start = Arc::clone(&cluster);
    blocking(move || start.start_server()).await?;
    let back = down[0];
    eventually(Duration::from_secs(15), || async { cache.get::<String>(back).await.ok().flatten().is_some() })
        .await
        .context("the restarted shard serves its keys again")?;
    cache.close().await;
    blocking(move || drop(cluster)).await;
    Ok(())
}

#[tokio::test]
#[ignore = "needs scripts/with-topology (scripts/test runs it with --ignored)"]
async fn a_postgres_cache_refuses_shard_settings() -> Result<()> {
    let dsns = shard_dsns();
    let settings = sharded_settings(&dsns, &unique_name("refuse"));
    let err = PostgresCache::connect(settings).await.expect_err("shards are a ShardedCache's");
    assert!(matches!(err, pgcache_core::Error::InvalidSetting { name: "shard_dsns", .. }), "{err}");
    Ok(())
}

/// PgBouncer (transaction mode) in front of the first primary.
fn pgbouncer_dsn() -> String {
    std::env::var("PGCACHE_PGBOUNCER_DSN").expect("PGCACHE_PGBOUNCER_DSN: run under scripts/with-topology --pgbouncer")
}

/// Settings whose pool goes through PgBouncer in transaction mode, with the listener and the locks on
/// the direct DSN and no server-side prepared statements.
fn pooled_settings(name: &str) -> CacheSettings {
    let direct = shard_dsns().remove(0);
    settings_on(&pgbouncer_dsn(), name).listen_dsn(direct).prepared_statements(false).max_pool_size(8)
}

/// Runs a command on PgBouncer's admin console (simple protocol only).
async fn pgbouncer_admin(command: &str) -> Result<()> {
    let dsn = pgbouncer_dsn();
    let admin = format!("{}/pgbouncer", dsn.strip_suffix("/postgres").context("the PgBouncer DSN ends in /postgres")?);
    let client = sql_client(&admin).await?;
    client.simple_query(command).await.with_context(|| format!("PgBouncer admin: {command}"))?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs scripts/with-topology (scripts/test runs it with --ignored)"]
async fn through_pgbouncer_transaction_mode_two_nodes_stay_coherent() -> Result<()> {
    let settings = pooled_settings("bouncer_coherent");
    PostgresCache::init_db(&settings).await?;
    let a = PostgresCache::connect(settings.clone()).await?;
    let b =
        PostgresCache::connect(settings.clone().application_name(format!("{}b", settings.application_name))).await?;
    // Many statements over few server connections: a named statement would meet the wrong connection.
    for round in 0..20 {
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        for key in &keys {
            a.set(key, &round, None).await?;
        }
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        // Eviction is asynchronous (the notification travels): b converges to the round's values.
        eventually(Duration::from_secs(5), || async {
            let got: Vec<Option<i32>> = b.get_many(&refs).await.unwrap_or_default();
            got.iter().all(|v| *v == Some(round))
        })
        .await
        .with_context(|| format!("round {round}"))?;
    }
    a.set("user:1", "old", None).await?;
    assert_eq!(b.get::<String>("user:1").await?.as_deref(), Some("old"));
    a.set("user:1", "new", None).await?;
    eventually(Duration::from_secs(5), || async {
        b.get::<String>("user:1").await.ok().flatten().as_deref() == Some("new")
    })
    .await
    .context("b evicts through the direct listener")?;
    assert!(a.delete("user:1").await?);
    eventually(Duration::from_secs(5), || async { b.get::<String>("user:1").await.ok().flatten().is_none() }).await?;
    assert_eq!(a.delete_tags(&["none"]).await?, 0);
    assert_eq!(a.clear().await?, 10);
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
#[ignore = "needs scripts/with-topology (scripts/test runs it with --ignored)"]
async fn listen_dsn_through_pgbouncer_is_probed_as_no_notify_and_the_cache_polls_coherently() -> Result<()> {
    // Everything through the pooler, `listen_dsn` too: LISTEN "succeeds" there and nothing arrives.
    let direct = pooled_settings("bouncer_probe");
    PostgresCache::init_db(&direct).await?;
    let mut settings = direct.clone().poll_interval(Duration::from_millis(100));
    settings.listen_dsn = None;
    let a = PostgresCache::connect(settings.clone()).await?;
    let b =
        PostgresCache::connect(settings.clone().application_name(format!("{}b", settings.application_name))).await?;
    let found = b.capabilities().context("capabilities after connect")?;
    assert!(!found.notify, "LISTEN through a transaction pooler must be found not to deliver: {found:?}");
    assert!(!found.session_locks, "session locks through a transaction pooler must be found not to hold: {found:?}");
    assert_eq!(found.invalidation, pgcache_core::InvalidationMode::Poll);
    // The same cache with `listen_dsn` direct listens.
    let c = PostgresCache::connect(direct.clone().application_name(format!("{}c", settings.application_name))).await?;
    let found = c.capabilities().context("capabilities after connect")?;
    assert!(found.notify && found.session_locks, "{found:?}");
    let sql = sql_client(&shard_dsns()[0]).await?;
    let table = entries_table(&settings);
    for round in 0..5 {
        let key = format!("p{round}");
        a.set(&key, "v1", None).await?;
        assert_eq!(b.get::<String>(&key).await?.as_deref(), Some("v1"));
        assert_eq!(c.get::<String>(&key).await?.as_deref(), Some("v1"));
        a.set(&key, "v2", None).await?;
        eventually(Duration::from_secs(5), || async {
            b.get::<String>(&key).await.ok().flatten().as_deref() == Some("v2")
                && c.get::<String>(&key).await.ok().flatten().as_deref() == Some("v2")
        })
        .await
        .with_context(|| format!("round {round}: a write through the pooler"))?;
        sql.execute(&format!("UPDATE {table} SET value = convert_to('\"sql\"', 'UTF8') WHERE key = $1"), &[&key])
            .await?;
        eventually(Duration::from_secs(5), || async {
            a.get::<String>(&key).await.ok().flatten().as_deref() == Some("sql")
                && b.get::<String>(&key).await.ok().flatten().as_deref() == Some("sql")
        })
        .await
        .with_context(|| format!("round {round}: plain SQL"))?;
    }
    for cache in [a, b, c] {
        cache.close().await;
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs scripts/with-topology (scripts/test runs it with --ignored)"]
async fn through_pgbouncer_one_cold_key_loads_once_across_nodes() -> Result<()> {
    let settings = pooled_settings("bouncer_dogpile");
    PostgresCache::init_db(&settings).await?;
    let nodes = [
        PostgresCache::connect(settings.clone()).await?,
        PostgresCache::connect(settings.clone().application_name(format!("{}b", settings.application_name))).await?,
        PostgresCache::connect(settings.clone().application_name(format!("{}c", settings.application_name))).await?,
    ];
    let loads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..24 {
        let node = nodes[i % nodes.len()].clone();
        let loads = Arc::clone(&loads);
        tasks.push(tokio::spawn(async move {
            node.get_or_set(
                "cold",
                move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, std::io::Error>("loaded".to_owned())
                },
                None,
            )
            .await
        }));
    }
    for task in tasks {
        assert_eq!(task.await??, "loaded");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "the loader runs once across nodes through PgBouncer");
    for node in &nodes {
        node.close().await;
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs scripts/with-topology (scripts/test runs it with --ignored)"]
async fn through_pgbouncer_reads_fail_open_while_the_pooler_holds_the_database() -> Result<()> {
    // Through PgBouncer's second name for the database, which this test pauses alone.
    let mut settings = pooled_settings("bouncer_failopen").pool_timeout(Duration::from_millis(300));
    settings.dsn = format!("{}/pausable", pgbouncer_dsn().strip_suffix("/postgres").context("DSN ends in /postgres")?);
    PostgresCache::init_db(&settings).await?;
    // No local cache: every read goes to the database through PgBouncer.
    let cache = PostgresCache::connect(settings.local_max_entries(0)).await?;
    cache.set("k", "v", None).await?;
    // PAUSE: PgBouncer holds new queries until RESUME; the cache's bounds must turn that into misses.
    pgbouncer_admin("PAUSE pausable").await?;
    let outcome = async {
        let started = Instant::now();
        assert_eq!(cache.get::<String>("k").await?, None, "a read fails open");
        assert!(started.elapsed() < Duration::from_secs(10), "bounded: {:?}", started.elapsed());
        let loaded: String = cache.get_or_set("k2", || async { Ok::<_, std::io::Error>("l".to_owned()) }, None).await?;
        assert_eq!(loaded, "l", "get_or_set runs the loader");
        anyhow::Ok(())
    }
    .await;
    pgbouncer_admin("RESUME pausable").await?;
    outcome?;
    eventually(Duration::from_secs(10), || async {
        cache.get::<String>("k").await.ok().flatten().as_deref() == Some("v")
    })
    .await
    .context("reads come back after RESUME")?;
    cache.close().await;
    Ok(())
}

/// The streaming replica of the first primary (started with `recovery_min_apply_delay`).
fn replica_dsn() -> String {
    std::env::var("PGCACHE_REPLICA_DSN")
        .expect("PGCACHE_REPLICA_DSN: run under scripts/with-topology --replica-delay 3s")
}

/// The primary the replica follows.
fn primary_dsn() -> String {
    std::env::var("PGCACHE_TEST_DSN").expect("PGCACHE_TEST_DSN: run under scripts/with-topology")
}

/// Waits until the replica has replayed everything the primary has written so far.
async fn replica_caught_up() -> Result<Duration> {
    let primary = sql_client(&primary_dsn()).await?;
    let lsn: String = primary.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await?.get(0);
    let replica = sql_client(&replica_dsn()).await?;
    let replayed = "SELECT COALESCE(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)";
    eventually(Duration::from_secs(30), || async {
        replica.query_one(replayed, &[&lsn]).await.map(|row| row.get::<_, bool>(0)).unwrap_or(false)
    })
    .await
    .context("the replica catches up")
}

#[tokio::test]
#[ignore = "needs scripts/with-topology (scripts/test runs it with --ignored)"]
async fn a_delayed_replica_never_serves_a_value_an_invalidation_evicted() -> Result<()> {
    let settings = settings_on(&primary_dsn(), "replica_fence");
    PostgresCache::init_db(&settings).await?;
    let writer =
        PostgresCache::connect(settings.clone().application_name(format!("{}w", settings.application_name))).await?;
    // The fence moves only on this test's invalidations (other tests use other channels), never by age.
    let reader =
        PostgresCache::connect(settings.clone().read_dsns([replica_dsn()]).max_replica_lag(Duration::from_secs(3600)))
            .await?;
    // The table itself reaches the replica only after the apply delay.
    replica_caught_up().await?;

    writer.set("k", &uncarried("v1"), None).await?;
    writer.set("k2", "w", None).await?;
    let delay = replica_caught_up().await?;
    assert!(delay > Duration::from_secs(1), "the replica applies with a delay ({delay:?})");
    // The first read after the invalidations takes the fence: the primary's WAL position now (the
    // replica answers if it has replayed that far, else the primary).
    let before = reader.status();
    assert_eq!(reader.get::<String>("k").await?.as_deref(), Some(uncarried("v1").as_str()));
    let after = reader.status();
    assert_eq!(after.replica_reads + after.replica_fallbacks, before.replica_reads + before.replica_fallbacks + 1);
    let before = after;
    // Once the replica has replayed the fence, it answers.
    replica_caught_up().await?;
    assert_eq!(reader.get::<String>("k2").await?.as_deref(), Some("w"));
    assert_eq!(reader.status().replica_reads, before.replica_reads + 1, "a caught-up replica answers");

    // The replica holds v1 for a few more seconds: the reader must not serve it once it heard of v2.
    writer.set("k", &uncarried("v2"), None).await?;
    let seen = eventually(Duration::from_secs(2), || async {
        reader.get::<String>("k").await.ok().flatten().as_deref() == Some(uncarried("v2").as_str())
    })
    .await
    .context("the reader sees v2 before the replica has it (the fence sends it to the primary)")?;
    assert!(reader.status().replica_fallbacks > before.replica_fallbacks, "v2 came from the primary");
    for _ in 0..20 {
        assert_eq!(
            reader.get::<String>("k").await?.as_deref(),
            Some(uncarried("v2").as_str()),
            "v1 came back after {seen:?}"
        );
    }
    writer.delete("k").await?;
    eventually(Duration::from_secs(2), || async { reader.get::<String>("k").await.ok().flatten().is_none() })
        .await
        .context("the delete is seen before the replica has it")?;
    for _ in 0..20 {
        assert_eq!(reader.get::<String>("k").await?, None, "a deleted value came back from the replica");
    }
    writer.close().await;
    reader.close().await;
    Ok(())
}

#[tokio::test]
#[ignore = "needs scripts/with-topology (scripts/test runs it with --ignored)"]
async fn a_down_replica_sends_reads_to_the_primary() -> Result<()> {
    let settings = settings_on(&primary_dsn(), "replica_down").pool_timeout(Duration::from_millis(500));
    PostgresCache::init_db(&settings).await?;
    // Nothing listens on port 1.
    let reader =
        PostgresCache::connect(settings.clone().read_dsns(["postgresql://postgres@127.0.0.1:1/postgres"])).await?;
    let writer =
        PostgresCache::connect(settings.clone().application_name(format!("{}w", settings.application_name))).await?;
    writer.set("k", "v", None).await?;
    let started = Instant::now();
    assert_eq!(reader.get::<String>("k").await?.as_deref(), Some("v"));
    assert!(started.elapsed() < Duration::from_secs(5));
    let status = reader.status();
    assert_eq!((status.replica_reads, status.replica_fallbacks), (0, 1));
    writer.close().await;
    reader.close().await;
    Ok(())
}

/// A value too large for a notification to carry (`store::CARRIED_VALUE_MAX`, 512 bytes): a node holding
/// the key evicts it and reads it again, which is the read the fence is about.
fn uncarried(tag: &str) -> String {
    format!("{tag}:{}", "x".repeat(1000))
}

/// A writer and a reader on `primary_dsn()` (the reader reads `replica_dsn()`, its fence moved only by
/// this test's invalidations, never by age), and the replica caught up with the new table.
async fn writer_and_replica_reader(name: &str) -> Result<(PostgresCache, PostgresCache)> {
    let settings = settings_on(&primary_dsn(), name);
    PostgresCache::init_db(&settings).await?;
    let writer =
        PostgresCache::connect(settings.clone().application_name(format!("{}w", settings.application_name))).await?;
    let reader =
        PostgresCache::connect(settings.clone().read_dsns([replica_dsn()]).max_replica_lag(Duration::from_secs(3600)))
            .await?;
    replica_caught_up().await?;
    Ok((writer, reader))
}

/// `get_or_set` with a loader that must not run: the value is in the cache.
async fn get_or_set_cached(cache: &PostgresCache, key: &str) -> Result<String> {
    Ok(cache.get_or_set(key, || async { Ok::<_, std::io::Error>("loaded".to_owned()) }, None).await?)
}

#[tokio::test]
#[ignore = "needs scripts/with-topology (scripts/test runs it with --ignored)"]
async fn get_many_reads_a_caught_up_replica_and_never_an_evicted_value_from_a_delayed_one() -> Result<()> {
    let (writer, reader) = writer_and_replica_reader("replica_many").await?;
    writer.set_many(&[("a", uncarried("a1")), ("b", "b1".to_owned())], None).await?;
    replica_caught_up().await?;
    // The first read takes the fence (the replica or the primary answers, depending on other tests' WAL).
    assert_eq!(reader.get_many::<String>(&["a"]).await?, vec![Some(uncarried("a1"))]);
    replica_caught_up().await?;
    let before = reader.status();
    // One statement on the caught-up replica for both keys, the absent one included.
    assert_eq!(reader.get_many::<String>(&["b", "none"]).await?, vec![Some("b1".to_owned()), None]);
    let after = reader.status();
    assert_eq!(after.replica_reads, before.replica_reads + 1, "a caught-up replica answers get_many");
    assert_eq!(after.replica_fallbacks, before.replica_fallbacks);

    // The replica holds a1 for a few more seconds: once the reader heard of a2 it must not serve a1.
    writer.set("a", &uncarried("a2"), None).await?;
    let seen = eventually(Duration::from_secs(2), || async {
        reader.get_many::<String>(&["a", "b"]).await.ok() == Some(vec![Some(uncarried("a2")), Some("b1".to_owned())])
    })
    .await
    .context("get_many sees a2 before the replica has it (the fence sends it to the primary)")?;
    assert!(reader.status().replica_fallbacks > after.replica_fallbacks, "a2 came from the primary");
    for _ in 0..20 {
        let got = reader.get_many::<String>(&["a", "b"]).await?;
        assert_eq!(got, vec![Some(uncarried("a2")), Some("b1".to_owned())], "a1 came back after {seen:?}");
    }
    writer.delete("a").await?;
    eventually(Duration::from_secs(2), || async { reader.get_many::<String>(&["a"]).await.ok() == Some(vec![None]) })
        .await
        .context("get_many sees the delete before the replica has it")?;
    for _ in 0..20 {
        assert_eq!(reader.get_many::<String>(&["a"]).await?, vec![None], "a deleted value came back");
    }
    writer.close().await;
    reader.close().await;
    Ok(())
}

#[tokio::test]
#[ignore = "needs scripts/with-topology (scripts/test runs it with --ignored)"]
async fn get_or_set_reads_a_caught_up_replica_and_never_an_evicted_value_from_a_delayed_one() -> Result<()> {
    let (writer, reader) = writer_and_replica_reader("replica_load").await?;
    writer.set_many(&[("a", uncarried("a1")), ("b", "b1".to_owned())], None).await?;
    replica_caught_up().await?;
    // The first read takes the fence (the replica or the primary answers, depending on other tests' WAL).
    assert_eq!(get_or_set_cached(&reader, "a").await?, uncarried("a1"));
    replica_caught_up().await?;
    let before = reader.status();
    assert_eq!(get_or_set_cached(&reader, "b").await?, "b1");
    let after = reader.status();
    assert_eq!(after.replica_reads, before.replica_reads + 1, "a caught-up replica answers get_or_set");
    assert_eq!(after.replica_fallbacks, before.replica_fallbacks);
    // A key the replica does not have goes to the primary's read-and-lock, and its loader runs once.
    assert_eq!(get_or_set_cached(&reader, "none").await?, "loaded");
    assert_eq!(writer.get::<String>("none").await?.as_deref(), Some("loaded"));

    // The replica holds a1 for a few more seconds: once the reader heard of a2 it must not serve a1.
    writer.set("a", &uncarried("a2"), None).await?;
    let seen = eventually(Duration::from_secs(2), || async {
        get_or_set_cached(&reader, "a").await.ok() == Some(uncarried("a2"))
    })
    .await
    .context("get_or_set sees a2 before the replica has it (the fence sends it to the primary)")?;
    assert!(reader.status().replica_fallbacks > after.replica_fallbacks, "a2 came from the primary");
    for _ in 0..20 {
        assert_eq!(get_or_set_cached(&reader, "a").await?, uncarried("a2"), "a1 came back after {seen:?}");
    }
    writer.close().await;
    reader.close().await;
    Ok(())
}
