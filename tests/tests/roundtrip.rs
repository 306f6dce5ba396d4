//! Values round-trip: set/get/delete for JSON and raw bytes (with TTL and tag metadata); a TTL is honoured
//! on read whatever the session time zone (an expired row is a miss before it is swept); the sweeper
//! removes expired rows while the cache is idle, and `cleanup_expired` reports what it removed.

use std::time::Duration;

use bytes::Bytes;
use pgcache_core::prelude::*;
use pgcache_core::{Expiry, Fill, SetOptions};
use pgcache_tests::{connect, entries_table, eventually, node, row_count, settings_for, sql_client};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    tags: Vec<String>,
}

#[tokio::test]
async fn json_values_round_trip() -> anyhow::Result<()> {
    let settings = settings_for("rt_json");
    let cache = connect(&settings).await?;
    let other = connect(&node(&settings, "b")).await?;

    let ava = Profile { id: 123, name: "Ava ☃".into(), tags: vec!["a".into(), "b".into()] };
    cache.set("profile:123", &ava, Some(Duration::from_secs(300))).await?;
    assert_eq!(cache.get::<Profile>("profile:123").await?, Some(ava.clone()));
    // Another node reads it from the table, not from the writer's local cache.
    assert_eq!(other.get::<Profile>("profile:123").await?, Some(ava.clone()));
    assert_eq!(cache.get::<Profile>("profile:missing").await?, None);

    // Overwrite, then delete: `delete` says whether a row existed. The writer reads its own writes at
    // once; the other node, which holds a local copy, within the propagation delay (coherence.rs).
    cache.set("profile:123", &json!({"id": 123, "name": "Ava 2", "tags": []}), None).await?;
    assert_eq!(cache.get::<Profile>("profile:123").await?.map(|p| p.name), Some("Ava 2".to_owned()));
    eventually(Duration::from_secs(5), || async {
        other.get::<Profile>("profile:123").await.ok().flatten().map(|p| p.name).as_deref() == Some("Ava 2")
    })
    .await?;
    assert!(cache.delete("profile:123").await?);
    assert!(!cache.delete("profile:123").await?);
    assert_eq!(cache.get::<Profile>("profile:123").await?, None);
    eventually(Duration::from_secs(5), || async { matches!(other.get::<Profile>("profile:123").await, Ok(None)) })
        .await?;

    // Batch operations, in the order asked, missing keys as None.
    cache.set_many(&[("m:1", json!(1)), ("m:2", json!({"two": 2})), ("m:3", json!([3]))], None).await?;
    let got: Vec<Option<serde_json::Value>> = other.get_many(&["m:3", "m:missing", "m:1", "m:2"]).await?;
    assert_eq!(got, vec![Some(json!([3])), None, Some(json!(1)), Some(json!({"two": 2}))]);
    assert_eq!(cache.delete_many(&["m:1", "m:2", "m:nope"]).await?, 2);
    let want = vec![None, None, Some(json!([3]))];
    assert_eq!(cache.get_many::<serde_json::Value>(&["m:1", "m:2", "m:3"]).await?, want);
    eventually(Duration::from_secs(5), || async {
        other.get_many::<serde_json::Value>(&["m:1", "m:2", "m:3"]).await.ok() == Some(want.clone())
    })
    .await?;

    // get_or_set stores what the loader returned; a second call does not run the loader.
    let v: Profile = cache
        .get_or_set(
            "profile:456",
            || async { Ok::<_, std::io::Error>(Profile { id: 456, name: "Nova".into(), tags: vec![] }) },
            None,
        )
        .await?;
    assert_eq!(v.name, "Nova");
    let again: Profile = other
        .get_or_set("profile:456", || async { Err::<Profile, _>(std::io::Error::other("must not run")) }, None)
        .await?;
    assert_eq!(again, v);

    cache.close().await;
    other.close().await;
    Ok(())
}

#[tokio::test]
async fn raw_bytes_round_trip_with_metadata() -> anyhow::Result<()> {
    let settings = settings_for("rt_bytes");
    let cache = connect(&settings).await?;
    let other = connect(&node(&settings, "b")).await?;

    // Every byte value, NUL included, survives unchanged.
    let all_bytes: Bytes = (0..=255u8).collect::<Vec<_>>().into();
    cache.set_bytes("raw:all", all_bytes.clone(), Ttl::Never).await?;
    assert_eq!(other.get_bytes("raw:all").await?, Some(all_bytes.clone()));
    let entry = other.get_entry("raw:all").await?.ok_or_else(|| anyhow::anyhow!("entry missing"))?;
    assert_eq!(entry.value, all_bytes);
    assert_eq!(entry.expiry, Expiry::Never);
    assert_eq!(other.ttl("raw:all").await?, Some(Expiry::Never));

    // Versions increase with every write.
    let v1 = cache.set_entry("raw:v", Bytes::from_static(b"one"), &SetOptions::ttl(Duration::from_secs(60))).await?;
    let v2 = cache.set_entry("raw:v", Bytes::from_static(b"two"), &SetOptions::ttl(Duration::from_secs(60))).await?;
    assert!(v2 > v1, "versions must increase: {v1} then {v2}");
    let entry = other.get_entry("raw:v").await?.ok_or_else(|| anyhow::anyhow!("entry missing"))?;
    assert_eq!((entry.value, entry.version), (Bytes::from_static(b"two"), v2));
    let left = entry.expiry.remaining().ok_or_else(|| anyhow::anyhow!("expected a TTL"))?;
    assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(50), "remaining TTL {left:?}");

    // An empty value is a value, not a miss.
    cache.set_bytes("raw:empty", Bytes::new(), Ttl::Default).await?;
    assert_eq!(other.get_bytes("raw:empty").await?, Some(Bytes::new()));
    let default_left = other.ttl("raw:empty").await?.and_then(Expiry::remaining);
    assert!(
        default_left.is_some_and(|d| d > Duration::from_secs(290) && d <= Duration::from_secs(300)),
        "{default_left:?}"
    );

    // touch gives a live key a new TTL; ttl of a missing key is None.
    assert!(cache.touch("raw:all", Ttl::After(Duration::from_secs(30))).await?);
    let touched = other.ttl("raw:all").await?.and_then(Expiry::remaining);
    assert!(touched.is_some_and(|d| d <= Duration::from_secs(30) && d > Duration::from_secs(20)), "{touched:?}");
    assert!(!cache.touch("raw:none", Ttl::Never).await?);
    assert_eq!(cache.ttl("raw:none").await?, None);

    // Byte batches.
    cache
        .set_many_bytes(&[("b:1", Bytes::from_static(b"\x00\x01")), ("b:2", Bytes::from_static(b"\xff"))], Ttl::Default)
        .await?;
    assert_eq!(
        other.get_many_bytes(&["b:2", "b:1", "b:3"]).await?,
        vec![Some(Bytes::from_static(b"\xff")), Some(Bytes::from_static(b"\x00\x01")), None]
    );

    assert!(cache.delete("raw:all").await?);
    assert_eq!(cache.get_bytes("raw:all").await?, None);
    eventually(Duration::from_secs(5), || async { matches!(other.get_bytes("raw:all").await, Ok(None)) }).await?;
    cache.close().await;
    other.close().await;
    Ok(())
}

/// TTLs are computed by the database clock in UTC instants: a session in an odd time zone changes nothing.
#[tokio::test]
async fn ttl_is_independent_of_the_session_time_zone() -> anyhow::Result<()> {
    let base = settings_for("rt_tz");
    let separator = if base.dsn.contains('?') { '&' } else { '?' };
    let mut settings = base.clone();
    settings.dsn = format!("{}{separator}options=-c%20TimeZone%3DPacific%2FChatham", base.dsn);
    let cache = connect(&settings).await?;
    let utc = connect(&node(&base, "utc")).await?;
    cache.set("tz", &1, Some(Duration::from_secs(120))).await?;
    let left = utc.ttl("tz").await?.and_then(Expiry::remaining);
    assert!(left.is_some_and(|d| d > Duration::from_secs(110) && d <= Duration::from_secs(120)), "{left:?}");
    utc.set("tz2", &2, Some(Duration::from_secs(120))).await?;
    let left = cache.ttl("tz2").await?.and_then(Expiry::remaining);
    assert!(left.is_some_and(|d| d > Duration::from_secs(110) && d <= Duration::from_secs(120)), "{left:?}");
    cache.close().await;
    utc.close().await;
    Ok(())
}

#[tokio::test]
async fn far_future_ttls_are_clamped_to_2_pow_31_seconds() -> anyhow::Result<()> {
    // RFC 9111 §1.2.2: a lifetime beyond what the cache represents counts as 2^31 seconds. Every write
    // path binds it into SQL; none may fail with "interval out of range".
    let cache = connect(&settings_for("rt_far_ttl")).await?;
    let limit = Duration::from_secs(1 << 31);
    let near = |left: Option<Duration>| left.is_some_and(|d| d <= limit && d > limit - Duration::from_secs(60));
    let options = SetOptions::ttl(Ttl::After(Duration::MAX)).tags(["far"]);
    cache.set_entry("far", Bytes::from_static(b"v"), &options).await?;
    let entry = cache.get_entry("far").await?.expect("stored");
    assert_eq!(entry.value, Bytes::from_static(b"v"));
    assert!(near(cache.ttl("far").await?.and_then(Expiry::remaining)), "{:?}", cache.ttl("far").await?);
    cache.set("far_typed", &1, Some(Duration::from_secs(u64::MAX))).await?;
    assert!(near(cache.ttl("far_typed").await?.and_then(Expiry::remaining)));
    let loaded = cache
        .get_or_load("far_loaded", || async {
            Ok::<_, std::convert::Infallible>(Fill::new(Bytes::from_static(b"l"), Ttl::After(Duration::MAX)))
        })
        .await?;
    assert!(loaded.stored, "the far-future fill was written");
    assert!(near(cache.ttl("far_loaded").await?.and_then(Expiry::remaining)));
    cache.close().await;
    Ok(())
}

#[tokio::test]
async fn expired_rows_are_misses_before_they_are_swept() -> anyhow::Result<()> {
    // No sweeper: the row stays in the table, yet reads must treat it as missing.
    let settings = settings_for("rt_expiry").sweeper_interval(None);
    let cache = connect(&settings).await?;
    let other = connect(&node(&settings, "b")).await?;
    let sql = sql_client(&settings.dsn).await?;

    let written = std::time::Instant::now();
    cache.set("short", &"soon gone", Some(Duration::from_millis(300))).await?;
    cache.set("long", &"stays", Some(Duration::from_secs(300))).await?;
    assert_eq!(cache.get::<String>("short").await?.as_deref(), Some("soon gone"));
    assert_eq!(other.get::<String>("short").await?.as_deref(), Some("soon gone"));

    // Both the writer (local copy) and the other node (local copy and table) must miss after expiry.
    eventually(Duration::from_secs(5), || async {
        matches!(cache.get::<String>("short").await, Ok(None)) && matches!(other.get::<String>("short").await, Ok(None))
    })
    .await?;
    assert!(written.elapsed() >= Duration::from_millis(300), "expired too early: {:?}", written.elapsed());
    assert_eq!(cache.get_bytes("short").await?, None);
    assert_eq!(other.get_entry("short").await?, None);
    assert_eq!(other.ttl("short").await?, None);
    assert!(!other.touch("short", Ttl::Never).await?, "touch must not revive an expired row");
    assert_eq!(other.get_many_bytes(&["short", "long"]).await?.iter().filter(|v| v.is_some()).count(), 1);
    // get_or_set treats the expired row as a miss and loads.
    let fresh: String =
        other.get_or_set("short", || async { Ok::<_, std::io::Error>("reloaded".to_owned()) }, None).await?;
    assert_eq!(fresh, "reloaded");
    cache.set("short2", &"x", Some(Duration::from_millis(100))).await?;
    eventually(Duration::from_secs(5), || async { matches!(other.get::<String>("short2").await, Ok(None)) }).await?;

    // The expired row is still physically there: the misses came from the read path, not a sweep.
    let expired: i64 = sql
        .query_one(&format!("SELECT count(*) FROM {} WHERE key = 'short2'", entries_table(&settings)), &[])
        .await?
        .try_get(0)?;
    assert_eq!(expired, 1, "no sweeper runs, so the expired row must still be in the table");
    // A delete of an expired row reports that no live row existed.
    assert!(!cache.delete("short2").await?);

    cache.close().await;
    other.close().await;
    Ok(())
}

#[tokio::test]
async fn sweeper_removes_expired_rows_while_idle() -> anyhow::Result<()> {
    let settings = settings_for("rt_sweep").sweeper_interval(Some(Duration::from_millis(200))).cleanup_batch_size(7);
    let cache = connect(&settings).await?;
    let sql = sql_client(&settings.dsn).await?;
    let items: Vec<(String, u32)> = (0..40).map(|i| (format!("sweep:{i}"), i)).collect();
    let refs: Vec<(&str, u32)> = items.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    cache.set_many(&refs, Some(Duration::from_millis(100))).await?;
    cache.set("keeper", &"live", Some(Duration::from_secs(300))).await?;
    cache.set("forever", &"live", Ttl::Never).await?;
    assert_eq!(row_count(&sql, &settings).await?, 42);

    // No cache call from here on: the background sweeper alone empties the expired rows (in batches of
    // 7, so several statements), and leaves the live ones.
    let took =
        eventually(Duration::from_secs(10), || async { row_count(&sql, &settings).await.ok() == Some(2) }).await?;
    eprintln!("sweeper removed 40 expired rows {took:?} after the write (interval 200 ms, batch 7)");
    assert_eq!(cache.get::<String>("keeper").await?.as_deref(), Some("live"));
    assert_eq!(cache.get::<String>("forever").await?.as_deref(), Some("live"));
    cache.close().await;
    Ok(())
}

#[tokio::test]
async fn cleanup_expired_reports_rows_removed() -> anyhow::Result<()> {
    let settings = settings_for("rt_cleanup").sweeper_interval(None).cleanup_batch_size(3);
    let cache = connect(&settings).await?;
    let sql = sql_client(&settings.dsn).await?;
    for i in 0..10 {
        cache.set(&format!("c:{i}"), &i, Some(Duration::from_millis(50))).await?;
    }
    cache.set("c:live", &1, None).await?;
    // Make them expired by the database clock without sleeping.
    sql.execute(
        &format!(
            "UPDATE {} SET expires_at = now() - interval '1 second' WHERE key LIKE 'c:_'",
            entries_table(&settings)
        ),
        &[],
    )
    .await?;
    assert_eq!(cache.cleanup_expired().await?, 10);
    assert_eq!(cache.cleanup_expired().await?, 0);
    assert_eq!(row_count(&sql, &settings).await?, 1);
    cache.close().await;
    Ok(())
}
