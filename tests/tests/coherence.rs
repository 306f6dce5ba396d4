//! Several `PostgresCache` instances on one database ("nodes") stay coherent:
//!
//! - a write or delete on node A, and plain SQL from a third connection, reach node B's next `get`
//!   within a bound (measured and printed); a multi-row SQL `UPDATE` evicts each key it touched;
//! - with `disable_notify` no LISTEN connection is opened, no notification is sent, and staleness is
//!   bounded by `local_ttl`;
//! - two prefix/channel pairs in one database are isolated (tables, functions, events, locks);
//! - `clear`, `delete_tags`, `delete_many` and bulk SQL `DELETE`/`TRUNCATE` evict every node's local copies;
//! - readers converge on the last write under concurrent writers (a fill that raced with an
//!   invalidation is never installed after it);
//! - odd keys and events too large for one notification still evict.

use std::time::{Duration, Instant};

use bytes::Bytes;
use pgcache_core::prelude::*;
use pgcache_core::{SetOptions, Source};
use pgcache_tests::{
    backends, connect, entries_table, eventually, listener_pid, log_drained, make_local, node, row_count, settings_for,
    source_of, sql_client, NotifyTap,
};
use serde_json::json;

/// Generous deadline for an invalidation to travel; the measured figures are printed.
const DEADLINE: Duration = Duration::from_secs(5);

/// Min / median / max of measured delays, for the report.
fn summary(mut delays: Vec<Duration>) -> String {
    delays.sort();
    let pick = |i: usize| delays.get(i).copied().unwrap_or_default();
    format!(
        "n={} min={:?} median={:?} max={:?}",
        delays.len(),
        pick(0),
        pick(delays.len() / 2),
        pick(delays.len().saturating_sub(1))
    )
}

async fn value_of(cache: &PostgresCache, key: &str) -> Option<String> {
    cache.get::<String>(key).await.ok().flatten()
}

#[tokio::test]
async fn writes_on_one_node_reach_the_other_within_a_bound() -> anyhow::Result<()> {
    let settings = settings_for("coh_nodes");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    let sql = sql_client(&settings.dsn).await?;
    let table = entries_table(&settings);
    let (mut by_set, mut by_delete, mut by_sql_update, mut by_sql_delete) = (vec![], vec![], vec![], vec![]);

    for round in 0..10 {
        let key = format!("k:{round}");
        a.set(&key, &"v1", None).await?;
        assert_eq!(value_of(&b, &key).await.as_deref(), Some("v1"));
        // B now serves the key from its local cache: the test is about evicting that copy.
        make_local(&b, &key).await?;

        a.set(&key, &"v2", None).await?;
        by_set.push(eventually(DEADLINE, || async { value_of(&b, &key).await.as_deref() == Some("v2") }).await?);

        make_local(&b, &key).await?;
        assert!(a.delete(&key).await?);
        by_delete.push(eventually(DEADLINE, || async { value_of(&b, &key).await.is_none() }).await?);

        // A third connection changes the table by hand: the triggers tell every node.
        a.set(&key, &"v3", None).await?;
        eventually(DEADLINE, || async { value_of(&b, &key).await.as_deref() == Some("v3") }).await?;
        make_local(&b, &key).await?;
        make_local(&a, &key).await?;
        sql.execute(&format!("UPDATE {table} SET value = convert_to('\"by sql\"', 'UTF8') WHERE key = $1"), &[&key])
            .await?;
        by_sql_update.push(
            eventually(DEADLINE, || async {
                value_of(&b, &key).await.as_deref() == Some("by sql")
                    && value_of(&a, &key).await.as_deref() == Some("by sql")
            })
            .await?,
        );

        make_local(&b, &key).await?;
        sql.execute(&format!("DELETE FROM {table} WHERE key = $1"), &[&key]).await?;
        by_sql_delete.push(
            eventually(DEADLINE, || async { value_of(&b, &key).await.is_none() && value_of(&a, &key).await.is_none() })
                .await?,
        );
    }
    eprintln!("propagation A.set -> B.get:        {}", summary(by_set));
    eprintln!("propagation A.delete -> B.get:     {}", summary(by_delete));
    eprintln!("propagation SQL UPDATE -> A,B.get: {}", summary(by_sql_update));
    eprintln!("propagation SQL DELETE -> A,B.get: {}", summary(by_sql_delete));
    a.close().await;
    b.close().await;
    Ok(())
}

/// Many keys changed in one SQL statement (under the flush threshold): one notification, every key evicted.
#[tokio::test]
async fn multi_row_sql_update_evicts_each_key() -> anyhow::Result<()> {
    let settings = settings_for("coh_multirow");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    let sql = sql_client(&settings.dsn).await?;
    let keys: Vec<String> = (0..50).map(|i| format!("r:{i}")).collect();
    let items: Vec<(&str, String)> = keys.iter().map(|k| (k.as_str(), "old".to_owned())).collect();
    a.set_many(&items, None).await?;
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let _: Vec<Option<String>> = b.get_many(&refs).await?;
    for key in &refs {
        make_local(&b, key).await?;
    }
    sql.execute(&format!("UPDATE {} SET value = convert_to('\"new\"', 'UTF8')", entries_table(&settings)), &[]).await?;
    let took = eventually(DEADLINE, || async {
        b.get_many::<String>(&refs).await.is_ok_and(|v| v.iter().all(|x| x.as_deref() == Some("new")))
    })
    .await?;
    eprintln!("50-row SQL UPDATE reached B in {took:?}");
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn disabled_notifications_open_no_listener_and_bound_staleness_by_local_ttl() -> anyhow::Result<()> {
    let local_ttl = Duration::from_millis(800);
    let settings = settings_for("coh_nonotify").disable_notify(true).local_ttl(local_ttl);
    let a = connect(&node(&settings, "a")).await?;
    let b_settings = node(&settings, "b");
    let b = connect(&b_settings).await?;
    let admin = sql_client(&settings.dsn).await?;
    let mut tap = NotifyTap::listen(&settings.dsn, &settings.notify_channel).await?;

    // No LISTEN connection: only the pool's connection(s), none of them a listener.
    assert_eq!(b.status().listener, pgcache_core::ListenerState::Disabled);
    assert_eq!(listener_pid(&admin, &b_settings.application_name).await?, None);
    let conns = backends(&admin, &b_settings.application_name).await?;
    assert_eq!(conns.len(), 1, "only the one pooled connection (min_pool_size 1): {conns:?}");

    // No notifications from this library's writes.
    a.set("k", &"v1", None).await?;
    assert_eq!(value_of(&b, "k").await.as_deref(), Some("v1"));
    let read_at = Instant::now();
    a.set("k", &"v2", None).await?;
    a.set_many(&[("k2", "x"), ("k3", "y")], None).await?;
    a.delete("k3").await?;
    a.clear().await?;
    a.set("k", &"v3", None).await?;
    let heard = tap.drain(&settings.notify_channel).await?;
    assert!(heard.is_empty(), "disable_notify must send no notifications, got {heard:?}");

    // B may serve its old copy, but never for longer than local_ttl after it read it.
    let mut last_stale = None;
    loop {
        // Timed before the read: a stale answer is stamped no later than the moment it was decided.
        let at = read_at.elapsed();
        let seen = value_of(&b, "k").await;
        match seen.as_deref() {
            Some("v1") => last_stale = Some(at),
            Some("v3") => break,
            other => panic!("unexpected value {other:?}"),
        }
        assert!(at <= local_ttl + DEADLINE, "B never saw the new value");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("disable_notify: B served the old value until {last_stale:?} after its read (local_ttl {local_ttl:?})");
    if let Some(stale) = last_stale {
        assert!(stale <= local_ttl, "stale value served {stale:?} after the read, past local_ttl {local_ttl:?}");
    }
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn two_prefixes_in_one_database_are_isolated() -> anyhow::Result<()> {
    // A longer heartbeat (lease 2 s) so that a slow heartbeat on a loaded machine does not make the
    // caches bypass their local copies at the moment the test checks that those copies survived.
    let hb = Duration::from_secs(1);
    let s1 = settings_for("coh_iso1").heartbeat_interval(hb);
    let s2 = settings_for("coh_iso2").heartbeat_interval(hb);
    // A third prefix sharing the first one's channel: events carry their prefix and are told apart.
    let s3 = settings_for("coh_iso3").notify_channel(s1.notify_channel.clone()).heartbeat_interval(hb);
    let (a1, a2, a3) =
        (connect(&node(&s1, "a")).await?, connect(&node(&s2, "a")).await?, connect(&node(&s3, "a")).await?);
    let (b2, b3) = (connect(&node(&s2, "b")).await?, connect(&node(&s3, "b")).await?);
    let sql = sql_client(&s1.dsn).await?;

    // Separate objects, each function logging to its own prefix's log, installed for its own channel.
    for s in [&s1, &s2, &s3] {
        let tables: i64 = sql
            .query_one(
                "SELECT count(*) FROM pg_class WHERE relname = $1 AND relkind = 'r'",
                &[&format!("{}cache_entries", s.schema_prefix)],
            )
            .await?
            .try_get(0)?;
        assert_eq!(tables, 1);
        let src: String = sql
            .query_one("SELECT prosrc FROM pg_proc WHERE proname = $1", &[&format!("{}cache_notify", s.schema_prefix)])
            .await?
            .try_get(0)?;
        assert!(
            src.contains(&format!("channel {} ", s.notify_channel)),
            "function of {} names the wrong channel",
            s.schema_prefix
        );
        assert!(
            src.contains(&format!("\"{}cache_invalidations\"", s.schema_prefix)),
            "it logs to its own prefix's log"
        );
    }

    // Same key, three values.
    a1.set("k", &"one", None).await?;
    a2.set("k", &"two", None).await?;
    a3.set("k", &"three", None).await?;
    a2.set("sentinel", &"s0", None).await?;
    a3.set("sentinel", &"s0", None).await?;
    assert_eq!(value_of(&a1, "k").await.as_deref(), Some("one"));
    assert_eq!(value_of(&b2, "k").await.as_deref(), Some("two"));
    assert_eq!(value_of(&b3, "k").await.as_deref(), Some("three"));
    for b in [&b2, &b3] {
        assert_eq!(value_of(b, "sentinel").await.as_deref(), Some("s0"));
        make_local(b, "k").await?;
    }
    let mut tap2 = NotifyTap::listen(&s2.dsn, &s2.notify_channel).await?;

    // Everything on prefix 1: writes, deletes, a clear (a flush for its own nodes).
    a1.set("k", &"one again", None).await?;
    assert!(a1.delete("k").await?);
    let items: Vec<(String, u32)> = (0..300).map(|i| (format!("bulk:{i}"), i)).collect();
    let refs: Vec<(&str, u32)> = items.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    a1.set_many(&refs, None).await?;
    assert_eq!(a1.clear().await?, 300);
    assert_eq!(row_count(&sql, &s1).await?, 0);
    assert_eq!(row_count(&sql, &s2).await?, 2);
    assert_eq!(row_count(&sql, &s3).await?, 2);
    log_drained(&sql, &s1).await?;
    assert!(tap2.drain(&s2.notify_channel).await?.is_empty(), "prefix 1 must not notify prefix 2's channel");

    // Once a later event of their own prefix has arrived, prefix 1's events have been handled too (one
    // channel delivers in commit order): the other prefixes' local copies must still be there.
    a2.set("sentinel", &"s1", None).await?;
    a3.set("sentinel", &"s1", None).await?;
    eventually(DEADLINE, || async { value_of(&b2, "sentinel").await.as_deref() == Some("s1") }).await?;
    eventually(DEADLINE, || async { value_of(&b3, "sentinel").await.as_deref() == Some("s1") }).await?;
    assert_eq!(source_of(&b2, "k").await?, Source::Local, "prefix 1's events evicted prefix 2's local copy");
    assert_eq!(source_of(&b3, "k").await?, Source::Local, "prefix 1's flush on a shared channel evicted prefix 3");
    assert_eq!(value_of(&b2, "k").await.as_deref(), Some("two"));
    assert_eq!(value_of(&b3, "k").await.as_deref(), Some("three"));

    // Locks are per prefix: a load of "slow" on prefix 1, held until prefix 2 has answered, does not
    // hold up prefix 2 (were the lock shared, prefix 2 would wait out `lock_wait_timeout`, 10 s).
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let (release, held) = tokio::sync::oneshot::channel::<()>();
    let slow = tokio::spawn({
        let a1 = a1.clone();
        async move {
            a1.get_or_set(
                "slow",
                || async move {
                    let _ = started_tx.send(());
                    let _ = held.await;
                    Ok::<_, std::io::Error>("p1".to_owned())
                },
                None,
            )
            .await
        }
    });
    started.await?;
    let quick: String = tokio::time::timeout(
        Duration::from_secs(5),
        a2.get_or_set("slow", || async { Ok::<_, std::io::Error>("p2".to_owned()) }, None),
    )
    .await??;
    assert_eq!(quick, "p2");
    assert!(!slow.is_finished(), "prefix 1's load is still held");
    let _ = release.send(());
    assert_eq!(slow.await??, "p1");
    assert_eq!(value_of(&a1, "slow").await.as_deref(), Some("p1"));

    for c in [a1, a2, a3, b2, b3] {
        c.close().await;
    }
    Ok(())
}

/// Reads `keys` on `cache` so they are local, and checks one of them is.
async fn warm(cache: &PostgresCache, keys: &[String]) -> anyhow::Result<()> {
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let got = cache.get_many_bytes(&refs).await?;
    assert!(got.iter().all(Option::is_some), "warm: a key is missing");
    for key in keys {
        make_local(cache, key).await?;
    }
    Ok(())
}

async fn all_gone(cache: &PostgresCache, keys: &[String]) -> bool {
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    cache.get_many_bytes(&refs).await.is_ok_and(|v| v.iter().all(Option::is_none))
}

async fn fill(cache: &PostgresCache, prefix: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}:{i}")).collect();
    let items: Vec<(&str, Bytes)> = keys.iter().map(|k| (k.as_str(), Bytes::from(k.clone()))).collect();
    cache.set_many_bytes(&items, Ttl::Default).await?;
    Ok(keys)
}

#[tokio::test]
async fn bulk_removals_evict_every_nodes_local_copies() -> anyhow::Result<()> {
    let settings = settings_for("coh_bulk");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    let c = connect(&node(&settings, "c")).await?;
    let sql = sql_client(&settings.dsn).await?;
    let table = entries_table(&settings);
    let mut report = Vec::new();

    // clear() with few rows (per-key notification) and with many (> 256 rows: one flush notification).
    for n in [10, 300] {
        let keys = fill(&a, "clear", n).await?;
        warm(&b, &keys).await?;
        warm(&c, &keys).await?;
        assert_eq!(a.clear().await?, n as u64);
        let took = eventually(DEADLINE, || async { all_gone(&b, &keys).await && all_gone(&c, &keys).await }).await?;
        report.push(format!("clear of {n} rows: {took:?}"));
        eventually(DEADLINE, || async { b.local_usage().await.0 == 0 && c.local_usage().await.0 == 0 }).await?;
    }

    // delete_tags evicts the tagged keys everywhere and leaves the others readable.
    for i in 0..20 {
        let tag = if i % 2 == 0 { "red" } else { "blue" };
        a.set_entry(
            &format!("tag:{i}"),
            Bytes::from(format!("v{i}")),
            &SetOptions::ttl(Ttl::Default).tags([tag, "all"]),
        )
        .await?;
    }
    let red: Vec<String> = (0..20).step_by(2).map(|i| format!("tag:{i}")).collect();
    let blue: Vec<String> = (1..20).step_by(2).map(|i| format!("tag:{i}")).collect();
    warm(&b, &red).await?;
    warm(&b, &blue).await?;
    assert_eq!(a.delete_tags(&["red", "green"]).await?, 10);
    let took = eventually(DEADLINE, || async { all_gone(&b, &red).await }).await?;
    report.push(format!("delete_tags of 10 rows: {took:?}"));
    assert_eq!(b.get_bytes("tag:1").await?, Some(Bytes::from("v1")));
    assert_eq!(a.delete_tags(&["all"]).await?, 10);
    eventually(DEADLINE, || async { all_gone(&b, &blue).await }).await?;

    // delete_many.
    let keys = fill(&a, "many", 30).await?;
    warm(&b, &keys).await?;
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(a.delete_many(&refs).await?, 30);
    let took = eventually(DEADLINE, || async { all_gone(&b, &keys).await }).await?;
    report.push(format!("delete_many of 30 rows: {took:?}"));

    // Bulk SQL by hand: DELETE of many rows (flush) and TRUNCATE.
    let keys = fill(&a, "sqldel", 400).await?;
    warm(&b, &keys).await?;
    warm(&c, &keys).await?;
    assert_eq!(sql.execute(&format!("DELETE FROM {table} WHERE key LIKE 'sqldel:%'"), &[]).await?, 400);
    let took = eventually(DEADLINE, || async { all_gone(&b, &keys).await && all_gone(&c, &keys).await }).await?;
    report.push(format!("SQL DELETE of 400 rows: {took:?}"));

    let keys = fill(&a, "trunc", 20).await?;
    warm(&b, &keys).await?;
    sql.batch_execute(&format!("TRUNCATE {table}")).await?;
    let took = eventually(DEADLINE, || async { all_gone(&b, &keys).await && all_gone(&a, &keys).await }).await?;
    report.push(format!("SQL TRUNCATE: {took:?}"));

    // Expired rows swept in bulk need no notification, but a node must not serve them either.
    a.set_many(&[("exp:1", json!(1)), ("exp:2", json!(2))], Some(Duration::from_millis(300))).await?;
    let exp = vec!["exp:1".to_owned(), "exp:2".to_owned()];
    warm(&b, &exp).await?;
    eventually(DEADLINE, || async { all_gone(&b, &exp).await }).await?;

    eprintln!("bulk eviction reached every node: {}", report.join("; "));
    for n in [a, b, c] {
        n.close().await;
    }
    Ok(())
}

/// The fill/invalidation race: B keeps reading (and filling its local cache) while A and plain SQL keep
/// writing. A fill that read the table before an invalidation must not be installed after it, so once the
/// writes stop every node converges on the last value within the propagation bound, not after `local_ttl`.
#[tokio::test]
async fn readers_converge_on_the_last_write_under_concurrent_writes() -> anyhow::Result<()> {
    let settings = settings_for("coh_race").local_ttl(Duration::from_secs(600));
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    let c = connect(&node(&settings, "c")).await?;
    let sql = sql_client(&settings.dsn).await?;
    let table = entries_table(&settings);
    let keys = ["race:0", "race:1", "race:2"];
    for key in keys {
        a.set(key, &0u32, None).await?;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = [b.clone(), c.clone()]
        .into_iter()
        .map(|cache| {
            let stop = std::sync::Arc::clone(&stop);
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for key in keys {
                        let _ = cache.get::<u32>(key).await;
                        reads += 1;
                    }
                    let _ = cache.get_many::<u32>(&keys).await;
                    tokio::task::yield_now().await;
                }
                reads
            })
        })
        .collect();
    for i in 1..=150u32 {
        let key = keys[i as usize % keys.len()];
        if i % 3 == 0 {
            sql.execute(
                &format!("UPDATE {table} SET value = convert_to($2, 'UTF8') WHERE key = $1"),
                &[&key, &i.to_string()],
            )
            .await?;
        } else {
            a.set(key, &i, None).await?;
        }
    }
    // The last values, from the table: a node's own local copy may still be one flusher batch behind (a
    // node holding a key installs the values its notifications carry, so A keeps race:0, which only plain
    // SQL writes, up to date batch by batch instead of dropping it).
    let mut expected: Vec<Option<u32>> = Vec::new();
    for key in keys {
        let row =
            sql.query_one(&format!("SELECT convert_from(value, 'UTF8') FROM {table} WHERE key = $1"), &[&key]).await?;
        expected.push(Some(row.try_get::<_, String>(0)?.parse()?));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await?;
    }
    let took = eventually(DEADLINE, || async {
        a.get_many::<u32>(&keys).await.ok().as_ref() == Some(&expected)
            && b.get_many::<u32>(&keys).await.ok().as_ref() == Some(&expected)
            && c.get_many::<u32>(&keys).await.ok().as_ref() == Some(&expected)
    })
    .await?;
    eprintln!("after 150 concurrent writes ({reads} reads), readers converged {took:?} after the last write");
    // And they stay there (served locally, from the right version).
    for key in keys {
        make_local(&b, key).await?;
    }
    assert_eq!(b.get_many::<u32>(&keys).await?, expected);
    for n in [a, b, c] {
        n.close().await;
    }
    Ok(())
}

/// Keys that need escaping in the JSON payload, and batches whose payload would pass PostgreSQL's
/// 8000-byte NOTIFY limit (sent as a flush), still evict the other node's copies.
#[tokio::test]
async fn odd_keys_and_oversized_payloads_still_evict() -> anyhow::Result<()> {
    let settings = settings_for("coh_odd");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    let odd: Vec<String> = vec![
        "quote\"d".into(),
        "back\\slash".into(),
        "new\nline".into(),
        "tab\tand 'single'".into(),
        "ünïcödé ☃ 😀".into(),
        "{\"json\": [1]}".into(),
        "%_like_%".into(),
        "k".repeat(1024),
    ];
    for key in &odd {
        a.set(key, &"old", None).await?;
        make_local(&b, key).await?;
        a.set(key, &"new", None).await?;
        eventually(DEADLINE, || async { b.get::<String>(key).await.ok().flatten().as_deref() == Some("new") })
            .await
            .map_err(|e| anyhow::anyhow!("{key:?}: {e}"))?;
    }
    // 60 keys of 600 bytes: about 36 kB of keys in one statement, far over the NOTIFY payload limit.
    let big: Vec<String> = (0..60).map(|i| format!("{i:03}{}", "x".repeat(597))).collect();
    let items: Vec<(&str, &str)> = big.iter().map(|k| (k.as_str(), "old")).collect();
    a.set_many(&items, None).await?;
    warm(&b, &big).await?;
    let items: Vec<(&str, &str)> = big.iter().map(|k| (k.as_str(), "new")).collect();
    a.set_many(&items, None).await?;
    let refs: Vec<&str> = big.iter().map(String::as_str).collect();
    let took = eventually(DEADLINE, || async {
        b.get_many::<String>(&refs).await.is_ok_and(|v| v.iter().all(|x| x.as_deref() == Some("new")))
    })
    .await?;
    eprintln!("36 kB-of-keys batch update reached B in {took:?}");
    a.close().await;
    b.close().await;
    Ok(())
}

/// `peek_local` answers from the local cache alone, without waiting, exactly what `get_entry` would answer
/// from it: never a key the node does not hold, never a copy an invalidation evicted, never an older value
/// than the node's own read; and through a `SharedCache` handle as well.
#[tokio::test]
async fn peek_local_never_answers_what_an_invalidation_evicted() -> anyhow::Result<()> {
    let settings = settings_for("coh_peek");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    let shared_b = pgcache_core::SharedCache::from(b.clone());
    let key = "peek:1";
    assert!(b.peek_local(key).is_none(), "nothing held yet");
    assert!(b.peek_local("").is_none(), "a bad key is no answer, not a panic");

    for round in 0..5 {
        let v1 = format!("v1-{round}");
        a.set(key, &v1, None).await?;
        eventually(DEADLINE, || async { value_of(&b, key).await.as_deref() == Some(v1.as_str()) }).await?;
        make_local(&b, key).await?;
        let peeked = b.peek_local(key).ok_or_else(|| anyhow::anyhow!("a local copy was not peeked"))?;
        let read = b.get_entry(key).await?.ok_or_else(|| anyhow::anyhow!("the key vanished"))?;
        assert_eq!((&peeked.value, peeked.version), (&read.value, read.version));
        assert_eq!(shared_b.peek_local(key).map(|e| e.value), Some(read.value.clone()), "SharedCache forwards");

        // Another node deletes: once evicted, the copy is never peeked again.
        assert!(a.delete(key).await?);
        eventually(DEADLINE, || async { b.peek_local(key).is_none() }).await?;
        assert!(b.get_entry(key).await?.is_none());
        assert!(b.peek_local(key).is_none());

        // Another node writes anew: b peeks the new value or nothing, never the one before it.
        let v2 = format!("\"v2-{round}\"");
        a.set_bytes(key, Bytes::from(v2.clone()), Ttl::Default).await?;
        eventually(DEADLINE, || async { value_of(&b, key).await.is_some() }).await?;
        if let Some(peeked) = b.peek_local(key) {
            assert_eq!(peeked.value, Bytes::from(v2), "only the new value");
        }
        b.delete(key).await?;
        assert!(b.peek_local(key).is_none(), "a node's own delete evicts its copy at once");
    }
    a.close().await;
    b.close().await;
    Ok(())
}
