//! Group commit (issue 9): concurrent writes of one instance share one statement and one commit.
//!
//! Batches are made deterministic without sleeping: with one batch in flight at a time, a first write
//! is held on a row lock taken by SQL by hand; the writes queued meanwhile (each proven queued: its
//! future has parked) leave together as the next batch once the lock is released. Every batch of these
//! tests is checked to be one transaction (the rows share their `xmin`).

use std::time::Duration;

use bytes::Bytes;
use pgcache_core::prelude::*;
use pgcache_core::{Error, SetOptions};
use pgcache_tests::{connect, entries_table, eventually, settings_for, sql_client, terminate, Parked};
use tokio::task::JoinHandle;

const PROMPT: Duration = Duration::from_secs(5);

/// Settings with one group-commit batch in flight at a time.
fn one_batch_at_a_time(name: &str) -> CacheSettings {
    settings_for(name).write_batches_in_flight(1)
}

fn opts() -> SetOptions {
    SetOptions::ttl(None)
}

/// A row lock held by a transaction of its own (SQL by hand), so that a write of that key waits.
struct RowLock {
    client: tokio_postgres::Client,
    pid: i32,
}

impl RowLock {
    async fn take(settings: &CacheSettings, key: &str) -> anyhow::Result<Self> {
        let client = sql_client(&settings.dsn).await?;
        client.batch_execute("BEGIN").await?;
        let sql = format!("SELECT 1 FROM {} WHERE key = $1 FOR UPDATE", entries_table(settings));
        anyhow::ensure!(client.execute(&sql, &[&key]).await? == 1, "no row {key} to lock");
        let pid = client.query_one("SELECT pg_backend_pid()", &[]).await?.try_get(0)?;
        Ok(Self { client, pid })
    }

    async fn release(self) -> anyhow::Result<()> {
        self.client.batch_execute("COMMIT").await?;
        Ok(())
    }
}

/// The backend of `settings`' cache waiting for the row lock `lock` holds, once there is one.
async fn blocked_on(admin: &tokio_postgres::Client, settings: &CacheSettings, lock: &RowLock) -> anyhow::Result<i32> {
    let sql = "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND $2 = ANY(pg_blocking_pids(pid))";
    let app = settings.application_name.clone();
    let mut found = None;
    let start = std::time::Instant::now();
    while found.is_none() {
        found = admin.query_opt(sql, &[&app, &lock.pid]).await?.map(|row| row.get(0));
        anyhow::ensure!(start.elapsed() < PROMPT, "no write of the cache waits for the row lock");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    found.ok_or_else(|| anyhow::anyhow!("unreachable"))
}

/// Spawns `set_entry(key, value)`, counted by `parked` once it waits for its batch.
fn spawn_set(cache: &PostgresCache, parked: &Parked, key: &str, value: &str) -> JoinHandle<pgcache_core::Result<i64>> {
    let (cache, key, value) = (cache.clone(), key.to_owned(), Bytes::from(value.to_owned()));
    tokio::spawn(parked.track(async move { cache.set_entry(&key, value, &opts()).await }))
}

/// Waits until `n` tracked writes are queued.
async fn queued(parked: &Parked, n: usize) -> anyhow::Result<()> {
    eventually(PROMPT, || async { parked.count() >= n }).await?;
    Ok(())
}

/// The stored value and transaction id (`xmin`) of `key`'s row.
async fn row(
    admin: &tokio_postgres::Client,
    settings: &CacheSettings,
    key: &str,
) -> anyhow::Result<Option<(Vec<u8>, String)>> {
    let sql = format!("SELECT value, xmin::text FROM {} WHERE key = $1", entries_table(settings));
    Ok(admin.query_opt(&sql, &[&key]).await?.map(|r| (r.get(0), r.get(1))))
}

/// A first write held on a row lock, so that the writes queued next leave together.
async fn hold_a_batch(
    cache: &PostgresCache,
    admin: &tokio_postgres::Client,
    settings: &CacheSettings,
) -> anyhow::Result<(RowLock, JoinHandle<pgcache_core::Result<i64>>)> {
    cache.set_entry("held", Bytes::from_static(b"0"), &opts()).await?;
    let lock = RowLock::take(settings, "held").await?;
    let held = spawn_set(cache, &Parked::default(), "held", "1");
    blocked_on(admin, settings, &lock).await?;
    Ok((lock, held))
}

#[tokio::test]
async fn writes_queued_behind_a_batch_leave_as_one_transaction_and_collapse_per_key() -> anyhow::Result<()> {
    let settings = one_batch_at_a_time("gc_collapse");
    let cache = connect(&settings).await?;
    let admin = sql_client(&settings.dsn).await?;
    // An older copy of the key is held locally: no caller, the replaced ones included, may read it after.
    cache.set_entry("k", Bytes::from_static(b"old"), &opts()).await?;
    assert_eq!(cache.peek_local("k").map(|e| e.value), Some(Bytes::from_static(b"old")));
    let (lock, held) = hold_a_batch(&cache, &admin, &settings).await?;

    let parked = Parked::default();
    let mut same_key = Vec::new();
    for i in 0..5 {
        same_key.push(spawn_set(&cache, &parked, "k", &format!("v{i}")));
        queued(&parked, same_key.len()).await?;
    }
    let others: Vec<_> = (0..3).map(|i| spawn_set(&cache, &parked, &format!("other{i}"), "x")).collect();
    queued(&parked, 8).await?;
    lock.release().await?;
    held.await??;

    let mut versions = Vec::new();
    for task in same_key {
        versions.push(task.await??);
    }
    // One statement wrote the key once: every caller gets the version stored, and the last value won.
    assert!(versions.windows(2).all(|w| w[0] == w[1]), "versions {versions:?}");
    let (value, xmin) = row(&admin, &settings, "k").await?.ok_or_else(|| anyhow::anyhow!("k missing"))?;
    assert_eq!(value, b"v4");
    for (i, task) in others.into_iter().enumerate() {
        task.await??;
        let (_, other_xmin) =
            row(&admin, &settings, &format!("other{i}")).await?.ok_or_else(|| anyhow::anyhow!("missing"))?;
        assert_eq!(other_xmin, xmin, "every write of the batch commits in one transaction");
    }
    // This node serves the value that won, not a replaced one nor the older copy.
    assert_eq!(cache.get_bytes("k").await?.as_deref(), Some(&b"v4"[..]));
    assert!(cache.peek_local("k").is_none_or(|e| e.value == b"v4"[..]), "an older copy survived the batch");
    cache.close().await;
    Ok(())
}

#[tokio::test]
async fn writes_of_one_key_apply_in_submission_order() -> anyhow::Result<()> {
    let settings = settings_for("gc_order");
    let cache = connect(&settings).await?;
    let admin = sql_client(&settings.dsn).await?;
    for round in 0..20 {
        // Submitted in order by one task (join_all polls, hence queues, them in order), mixing kinds.
        let (c1, c2, c3, c4) = (cache.clone(), cache.clone(), cache.clone(), cache.clone());
        let last = format!("r{round}");
        let (a, b, c, d) = tokio::join!(
            async move { c1.set_entry("k", Bytes::from_static(b"first"), &opts()).await },
            async move { c2.delete("k").await },
            async move { c3.set_entry("k", Bytes::from(last), &opts()).await },
            async move { c4.touch("k", Ttl::from(Some(Duration::from_secs(60)))).await },
        );
        let (a, c) = (a?, c?);
        assert!(b?, "the delete follows the first set");
        assert!(d?, "the touch follows the last set");
        assert!(c > a, "later write, later version: {a} then {c}");
        let (value, _) = row(&admin, &settings, "k").await?.ok_or_else(|| anyhow::anyhow!("k missing"))?;
        assert_eq!(value, format!("r{round}").as_bytes());
        let (c1, c2) = (cache.clone(), cache.clone());
        let (set, deleted) =
            tokio::join!(async move { c1.set_entry("k", Bytes::from_static(b"again"), &opts()).await }, async move {
                c2.delete("k").await
            },);
        set?;
        assert!(deleted?);
        assert!(row(&admin, &settings, "k").await?.is_none(), "the delete came last");
    }
    cache.close().await;
    Ok(())
}

#[tokio::test]
async fn one_bad_write_in_a_batch_fails_only_its_caller() -> anyhow::Result<()> {
    let settings = one_batch_at_a_time("gc_errors").max_value_bytes(1024);
    let cache = connect(&settings).await?;
    let admin = sql_client(&settings.dsn).await?;
    // A rule the server enforces on one row only: the batch statement fails as a whole, so its writes
    // are re-run one by one.
    let t = entries_table(&settings);
    admin.batch_execute(&format!("ALTER TABLE {t} ADD CONSTRAINT no_poison CHECK (key <> 'poison')")).await?;
    let (lock, held) = hold_a_batch(&cache, &admin, &settings).await?;

    let parked = Parked::default();
    let ok1 = spawn_set(&cache, &parked, "ok1", "a");
    let poison = spawn_set(&cache, &parked, "poison", "b");
    let ok2 = spawn_set(&cache, &parked, "ok2", "c");
    queued(&parked, 3).await?;
    // Checked before it is queued: fails at once, alone.
    let big = cache.set_entry("big", Bytes::from(vec![0u8; 2048]), &opts()).await;
    assert!(matches!(big, Err(Error::ValueTooLarge { .. })), "{big:?}");
    lock.release().await?;
    held.await??;

    ok1.await??;
    ok2.await??;
    match poison.await? {
        Err(Error::Postgres(e)) => {
            assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION), "{e}")
        }
        other => anyhow::bail!("the bad write should fail with the server's error, got {other:?}"),
    }
    assert_eq!(row(&admin, &settings, "ok1").await?.map(|r| r.0), Some(b"a".to_vec()));
    assert_eq!(row(&admin, &settings, "ok2").await?.map(|r| r.0), Some(b"c".to_vec()));
    assert!(row(&admin, &settings, "poison").await?.is_none());
    cache.close().await;
    Ok(())
}

/// A second batch in flight, of `set a` and `set b` with `values`, its backend (returned) waiting on a row
/// lock on b that the caller holds (returned first).
async fn second_batch_waiting_on_b(
    cache: &PostgresCache,
    admin: &tokio_postgres::Client,
    settings: &CacheSettings,
    parked: &Parked,
    values: [&str; 2],
) -> anyhow::Result<(RowLock, i32, JoinHandle<pgcache_core::Result<i64>>, JoinHandle<pgcache_core::Result<i64>>)> {
    cache.set_entry("b", Bytes::from_static(b"old"), &opts()).await?;
    let (first, held) = hold_a_batch(cache, admin, settings).await?;
    let second = RowLock::take(settings, "b").await?;
    let a = spawn_set(cache, parked, "a", values[0]);
    let b = spawn_set(cache, parked, "b", values[1]);
    queued(parked, 2).await?;
    first.release().await?;
    held.await??;
    let pid = blocked_on(admin, settings, &second).await?;
    Ok((second, pid, a, b))
}

#[tokio::test]
async fn a_dropped_caller_s_write_lands_once_in_a_batch_and_never_when_still_queued() -> anyhow::Result<()> {
    let settings = one_batch_at_a_time("gc_cancel");
    let cache = connect(&settings).await?;
    let admin = sql_client(&settings.dsn).await?;
    let parked = Parked::default();
    let (second, _, a, b) =
        second_batch_waiting_on_b(&cache, &admin, &settings, &parked, ["from a dropped caller", "new"]).await?;

    // In flight: the caller of a goes away; a third write queues behind the batch, then its caller goes
    // away too.
    a.abort();
    let c = spawn_set(&cache, &parked, "c", "from a caller dropped while queued");
    queued(&parked, 3).await?;
    c.abort();
    assert!(c.await.is_err_and(|e| e.is_cancelled()));
    second.release().await?;

    assert!(b.await?.is_ok(), "the other caller of the batch is not affected");
    assert!(a.await.is_err_and(|e| e.is_cancelled()));
    assert_eq!(row(&admin, &settings, "a").await?.map(|r| r.0), Some(b"from a dropped caller".to_vec()));
    // A write queued after c is answered only once the queue got past c.
    cache.set_entry("d", Bytes::from_static(b"after"), &opts()).await?;
    assert!(row(&admin, &settings, "c").await?.is_none(), "a write withdrawn before its batch never lands");
    cache.close().await;
    Ok(())
}

#[tokio::test]
async fn a_batch_whose_connection_is_killed_fails_every_caller_with_a_typed_error() -> anyhow::Result<()> {
    let settings = one_batch_at_a_time("gc_killed");
    let cache = connect(&settings).await?;
    let admin = sql_client(&settings.dsn).await?;
    let parked = Parked::default();
    let (second, pid, a, b) = second_batch_waiting_on_b(&cache, &admin, &settings, &parked, ["1", "2"]).await?;
    assert!(terminate(&admin, pid).await?);

    for task in [a, b] {
        match task.await? {
            Err(e @ Error::BatchFailed { writes: 2, .. }) => assert!(e.is_unavailable(), "{e}"),
            other => anyhow::bail!("expected BatchFailed for both callers, got {other:?}"),
        }
    }
    second.release().await?;
    // The batch died before its commit: nothing of it landed, and the next write goes through.
    assert!(row(&admin, &settings, "a").await?.is_none());
    assert_eq!(row(&admin, &settings, "b").await?.map(|r| r.0), Some(b"old".to_vec()));
    cache.set_entry("a", Bytes::from_static(b"later"), &opts()).await?;
    assert_eq!(cache.get_bytes("a").await?.as_deref(), Some(&b"later"[..]));
    cache.close().await;
    Ok(())
}

#[tokio::test]
async fn batched_deletes_touches_and_tag_deletes_answer_each_caller_as_if_run_in_turn() -> anyhow::Result<()> {
    let settings = one_batch_at_a_time("gc_kinds");
    let cache = connect(&settings).await?;
    let admin = sql_client(&settings.dsn).await?;
    for key in ["a", "b", "c", "t"] {
        cache.set_entry(key, Bytes::from_static(b"v"), &opts()).await?;
    }
    cache.set_entry("x", Bytes::from_static(b"v"), &SetOptions::ttl(None).tags(["t1", "both"])).await?;
    cache.set_entry("y", Bytes::from_static(b"v"), &SetOptions::ttl(None).tags(["t2", "both"])).await?;

    // Deletes.
    let (lock, held) = hold_a_batch(&cache, &admin, &settings).await?;
    let parked = Parked::default();
    let spawn = |f: JoinHandle<anyhow::Result<u64>>| f;
    let (c1, c2, c3) = (cache.clone(), cache.clone(), cache.clone());
    let d1 = spawn(tokio::spawn(parked.track(async move { Ok(u64::from(c1.delete("a").await?)) })));
    queued(&parked, 1).await?;
    let d2 = spawn(tokio::spawn(parked.track(async move { Ok(c2.delete_many(&["a", "b", "c", "gone"]).await?) })));
    queued(&parked, 2).await?;
    let d3 = spawn(tokio::spawn(parked.track(async move { Ok(u64::from(c3.delete("b").await?)) })));
    queued(&parked, 3).await?;
    lock.release().await?;
    held.await??;
    assert_eq!((d1.await??, d2.await??, d3.await??), (1, 2, 0), "each live row counts once, for the first");

    // TTL changes and tag deletes.
    let (lock, held) = hold_a_batch(&cache, &admin, &settings).await?;
    let parked = Parked::default();
    let (c1, c2, c3, c4) = (cache.clone(), cache.clone(), cache.clone(), cache.clone());
    let t1 = spawn(tokio::spawn(
        parked.track(async move { Ok(u64::from(c1.touch("t", Ttl::from(Some(Duration::from_secs(60)))).await?)) }),
    ));
    let t2 =
        spawn(tokio::spawn(parked.track(async move {
            Ok(u64::from(c2.touch("nothing", Ttl::from(Some(Duration::from_secs(60)))).await?))
        })));
    queued(&parked, 2).await?;
    let g1 = spawn(tokio::spawn(parked.track(async move { Ok(c3.delete_tags(&["t1"]).await?) })));
    queued(&parked, 3).await?;
    let g2 = spawn(tokio::spawn(parked.track(async move { Ok(c4.delete_tags(&["both"]).await?) })));
    queued(&parked, 4).await?;
    lock.release().await?;
    held.await??;
    assert_eq!((t1.await??, t2.await??), (1, 0));
    // The two tag deletes ran in one statement: a row counts for the first caller with one of its tags.
    assert_eq!((g1.await??, g2.await??), (1, 1));
    let ttl = cache.ttl("t").await?;
    assert!(matches!(ttl, Some(pgcache_core::Expiry::In(_))), "{ttl:?}");
    assert!(row(&admin, &settings, "x").await?.is_none() && row(&admin, &settings, "y").await?.is_none());
    cache.close().await;
    Ok(())
}

/// Two nodes writing the same keys in opposite orders: their batches lock rows in key order, so one
/// waits for the other instead of deadlocking. A deadlock would abort one batch, which is then re-run
/// one write at a time; its rows would then carry several `xmin`s. So every round must leave all the
/// keys written by one transaction.
#[tokio::test]
async fn batches_of_two_nodes_sharing_keys_lock_in_key_order_and_never_deadlock() -> anyhow::Result<()> {
    let settings = settings_for("gc_key_order");
    let a = connect(&settings).await?;
    let b = connect(&settings).await?;
    let admin = sql_client(&settings.dsn).await?;
    let keys: Vec<String> = (0..200).map(|i| format!("k{i:03}")).collect();
    let ascending: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "a")).collect();
    let descending: Vec<(&str, &str)> = keys.iter().rev().map(|k| (k.as_str(), "b")).collect();
    a.set_many(&ascending, None).await?;
    let count_xmins =
        format!("SELECT count(DISTINCT xmin::text) FROM {} WHERE key = ANY($1)", entries_table(&settings));
    for round in 0..20 {
        let (first, second) = tokio::join!(a.set_many(&ascending, None), b.set_many(&descending, None));
        first?;
        second?;
        let xmins: i64 = admin.query_one(&count_xmins, &[&keys]).await?.try_get(0)?;
        assert_eq!(
            xmins, 1,
            "round {round}: the keys were written by {xmins} transactions (a batch deadlocked and was re-run)"
        );
    }
    Ok(())
}
