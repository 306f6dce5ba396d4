//! Bad input gets a typed error and changes nothing: an empty key, a key or value over its limit, an
//! empty or overlong tag, an invalid or SQL-injecting `schema_prefix`/`notify_channel`, a malformed DSN
//! or setting, and a stored value that does not decode as the requested type.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pgcache_core::prelude::*;
use pgcache_core::{Error, SetOptions};
use pgcache_tests::{
    connect, entries_table, eventually, log_drained, node, row_count, settings_for, sql_client, test_dsn, unique_name,
    NotifyTap,
};
use serde_json::{json, Value};

/// Asserts `$result` is `Err` matching `$pattern`.
macro_rules! assert_err {
    ($result:expr, $pattern:pat) => {{
        let result = $result;
        assert!(
            matches!(result, Err($pattern)),
            "{}: expected {}, got {:?}",
            stringify!($result),
            stringify!($pattern),
            result
        );
    }};
}

#[tokio::test]
async fn bad_keys_values_and_tags_are_typed_errors_that_change_nothing() -> anyhow::Result<()> {
    let settings = settings_for("val_input").max_key_bytes(64).max_value_bytes(1024);
    let cache = connect(&settings).await?;
    let sql = sql_client(&settings.dsn).await?;
    let mut tap = NotifyTap::listen(&settings.dsn, &settings.notify_channel).await?;
    cache.set("existing", &"kept", None).await?;
    // A key and a value of exactly the limits are fine.
    let at_limit = "k".repeat(64);
    cache.set(&at_limit, &1, None).await?;
    assert!(cache.delete(&at_limit).await?);
    cache.set_bytes("exact", Bytes::from(vec![b'x'; 1024]), Ttl::Default).await?;
    assert!(cache.delete("exact").await?);
    log_drained(&sql, &settings).await?;
    tap.drain(&settings.notify_channel).await?;
    let before = row_count(&sql, &settings).await?;
    let runs = Arc::new(AtomicU32::new(0));
    let loader = |runs: &Arc<AtomicU32>| {
        let runs = Arc::clone(runs);
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(json!("loaded"))
        }
    };

    let long = "k".repeat(65);
    let long_multibyte = "é".repeat(33); // 66 bytes, 33 chars: the limit is in bytes
    for (key, expect_empty, expect_long) in [
        ("", true, false),
        (long.as_str(), false, true),
        (long_multibyte.as_str(), false, true),
        ("a\0b", false, false),
    ] {
        let check = |e: &Error| match e {
            Error::EmptyKey => expect_empty,
            Error::KeyTooLong { max: 64, .. } => expect_long,
            Error::KeyContainsNul => !expect_empty && !expect_long,
            _ => false,
        };
        macro_rules! bad {
            ($call:expr) => {{
                let result = $call;
                assert!(result.as_ref().is_err_and(check), "{} on {key:?}: {:?}", stringify!($call), result.map(drop));
            }};
        }
        bad!(cache.get::<Value>(key).await);
        bad!(cache.get_bytes(key).await);
        bad!(cache.get_entry(key).await);
        bad!(cache.set(key, &"v", None).await);
        bad!(cache.set_bytes(key, Bytes::from_static(b"v"), Ttl::Default).await);
        bad!(cache.set_entry(key, Bytes::from_static(b"v"), &SetOptions::default()).await);
        bad!(cache.delete(key).await);
        bad!(cache.ttl(key).await);
        bad!(cache.touch(key, Ttl::Never).await);
        bad!(cache.get_or_set(key, loader(&runs), None).await);
        // One bad key spoils the whole batch: nothing of it is written or deleted.
        bad!(cache.get_many::<Value>(&["existing", key]).await);
        bad!(cache.set_many(&[("fresh", json!(1)), (key, json!(2))], None).await);
        bad!(cache.delete_many(&["existing", key]).await);
    }

    // Values over the limit, through every write path.
    let big = Bytes::from(vec![b'x'; 1025]);
    assert_err!(
        cache.set_bytes("v", big.clone(), Ttl::Default).await,
        Error::ValueTooLarge { len: 1025, max: 1024, .. }
    );
    assert_err!(cache.set("v", &"x".repeat(2000), None).await, Error::ValueTooLarge { max: 1024, .. });
    assert_err!(
        cache.set_many_bytes(&[("fresh", Bytes::from_static(b"ok")), ("v", big.clone())], Ttl::Default).await,
        Error::ValueTooLarge { .. }
    );
    assert_err!(
        cache.get_or_set("v", || async { Ok::<_, std::io::Error>("y".repeat(5000)) }, None).await,
        Error::ValueTooLarge { .. }
    );

    // Tags.
    let bad_tag = SetOptions::default().tags([""]);
    assert_err!(cache.set_entry("t", Bytes::from_static(b"v"), &bad_tag).await, Error::InvalidTag { .. });
    let long_tag = SetOptions::default().tags(["t".repeat(513)]);
    assert_err!(cache.set_entry("t", Bytes::from_static(b"v"), &long_tag).await, Error::InvalidTag { .. });
    assert_err!(cache.delete_tags(&["ok", ""]).await, Error::InvalidTag { .. });

    // Nothing changed: same rows, the kept value intact, no loader ran, no notification was sent.
    assert_eq!(runs.load(Ordering::SeqCst), 0, "a loader ran for a bad key");
    assert_eq!(row_count(&sql, &settings).await?, before);
    assert_eq!(cache.get::<String>("existing").await?.as_deref(), Some("kept"));
    assert_eq!(cache.get::<i32>("fresh").await?, None);
    assert_eq!(cache.get::<String>("v").await?, None);
    log_drained(&sql, &settings).await?;
    assert!(tap.drain(&settings.notify_channel).await?.is_empty(), "bad input reached the database");

    // A closed cache says so.
    cache.close().await;
    assert_err!(cache.get::<Value>("existing").await, Error::Closed);
    assert_err!(cache.set("existing", &1, None).await, Error::Closed);
    assert_err!(cache.clear().await, Error::Closed);
    assert_eq!(row_count(&sql, &settings).await?, before);
    Ok(())
}

async fn relation_exists(sql: &tokio_postgres::Client, name: &str) -> anyhow::Result<bool> {
    Ok(sql.query_one("SELECT to_regclass($1) IS NOT NULL", &[&format!("\"{name}\"")]).await?.try_get(0)?)
}

#[tokio::test]
async fn invalid_or_injecting_prefix_and_channel_are_rejected_before_any_sql() -> anyhow::Result<()> {
    let sql = sql_client(&test_dsn()).await?;
    let victim = unique_name("victim");
    sql.batch_execute(&format!("CREATE TABLE \"{victim}\" (x int); INSERT INTO \"{victim}\" VALUES (1)")).await?;
    let base = settings_for("val_ident");

    let prefixes = [
        format!("x\"; DROP TABLE \"{victim}\"; --"),
        format!("x'; DROP TABLE \"{victim}\"; --"),
        "Upper_".to_owned(),
        "1abc".to_owned(),
        "a-b".to_owned(),
        "a b".to_owned(),
        "é_".to_owned(),
        "a\\".to_owned(),
        "a".repeat(41),
    ];
    for prefix in &prefixes {
        let s = base.clone().schema_prefix(prefix.as_str());
        assert_err!(PostgresCache::init_db(&s).await, Error::InvalidSetting { name: "schema_prefix", .. });
        assert_err!(PostgresCache::init_db(&s).await, Error::InvalidSetting { name: "schema_prefix", .. });
        assert_err!(PostgresCache::schema_version(&s).await, Error::InvalidSetting { name: "schema_prefix", .. });
        assert_err!(PostgresCache::connect(s).await, Error::InvalidSetting { name: "schema_prefix", .. });
    }
    let channels = [
        format!("x\"; DROP TABLE \"{victim}\"; --"),
        format!("c'); DROP TABLE \"{victim}\"; --"),
        String::new(),
        "Chan".to_owned(),
        "a".repeat(64),
        "chan nel".to_owned(),
    ];
    for channel in &channels {
        let s = base.clone().notify_channel(channel.as_str());
        assert_err!(PostgresCache::init_db(&s).await, Error::InvalidSetting { name: "notify_channel", .. });
        assert_err!(PostgresCache::connect(s).await, Error::InvalidSetting { name: "notify_channel", .. });
    }
    // The error names what is accepted.
    let message = PostgresCache::init_db(&base.clone().schema_prefix("Bad")).await.err().map(|e| e.to_string());
    assert!(message.as_deref().is_some_and(|m| m.contains("schema_prefix") && m.contains("lowercase")), "{message:?}");

    // Nothing happened in the database: the victim is intact, no object of the base prefix exists.
    assert!(relation_exists(&sql, &victim).await?);
    let rows: i64 = sql.query_one(&format!("SELECT count(*) FROM \"{victim}\""), &[]).await?.try_get(0)?;
    assert_eq!(rows, 1);
    let objects: i64 = sql
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class WHERE relname LIKE $1 || '%' OR relname LIKE '%DROP%') \
             + (SELECT count(*) FROM pg_proc WHERE proname LIKE $1 || '%' OR proname LIKE '%DROP%')",
            &[&base.schema_prefix],
        )
        .await?
        .try_get(0)?;
    assert_eq!(objects, 0, "a rejected setting created objects");
    Ok(())
}

#[tokio::test]
async fn malformed_dsns_and_settings_are_typed_errors() -> anyhow::Result<()> {
    let base = settings_for("val_dsn");
    for dsn in [
        "",
        "   ",
        "postgresql://u@h:notaport/db",
        "not a dsn at all",
        "host=localhost port=abc",
        "postgresql://u@h/db?sslmode=bogus",
    ] {
        let mut s = base.clone();
        s.dsn = dsn.to_owned();
        let is_dsn_error =
            |e: &Error| matches!(e, Error::InvalidDsn { name: "dsn", .. } | Error::InvalidSetting { name: "dsn", .. });
        let init = PostgresCache::init_db(&s).await;
        assert!(init.as_ref().is_err_and(is_dsn_error), "init_db with {dsn:?}: {init:?}");
        let version = PostgresCache::schema_version(&s).await;
        assert!(version.as_ref().is_err_and(is_dsn_error), "schema_version with {dsn:?}: {version:?}");
        let connect = PostgresCache::connect(s).await;
        assert!(connect.as_ref().is_err_and(is_dsn_error), "connect with {dsn:?}: {:?}", connect.map(drop));
    }
    let s = base.clone().listen_dsn("postgresql://u@h:notaport/db");
    assert_err!(PostgresCache::connect(s.clone()).await.map(drop), Error::InvalidDsn { name: "listen_dsn", .. });
    assert_err!(PostgresCache::init_db(&s).await, Error::InvalidDsn { name: "listen_dsn", .. });

    // Other settings out of range.
    for (s, name) in [
        (base.clone().max_pool_size(0), "max_pool_size"),
        (base.clone().min_pool_size(9).max_pool_size(2), "min_pool_size"),
        (base.clone().max_key_bytes(0), "max_key_bytes"),
        (base.clone().max_value_bytes(0), "max_value_bytes"),
        (base.clone().cleanup_batch_size(0), "cleanup_batch_size"),
        (base.clone().default_ttl(Duration::ZERO), "default_ttl"),
        (base.clone().heartbeat_interval(Duration::ZERO), "heartbeat_interval"),
        (base.clone().sweeper_interval(Some(Duration::ZERO)), "sweeper_interval"),
    ] {
        let got = PostgresCache::connect(s.clone()).await.map(drop);
        assert!(matches!(&got, Err(Error::InvalidSetting { name: n, .. }) if *n == name), "{name}: {got:?}");
        let got = PostgresCache::init_db(&s).await;
        assert!(matches!(&got, Err(Error::InvalidSetting { name: n, .. }) if *n == name), "{name}: {got:?}");
    }

    // A well-formed DSN nobody answers on is not bad input: an "unavailable" error, promptly.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut s = base.clone().pool_timeout(Duration::from_secs(1));
    s.dsn = format!("postgresql://postgres@127.0.0.1:{port}/postgres");
    let got = tokio::time::timeout(Duration::from_secs(10), PostgresCache::connect(s.clone())).await?.map(drop);
    assert!(got.as_ref().is_err_and(Error::is_unavailable), "{got:?}");
    let got = tokio::time::timeout(Duration::from_secs(10), PostgresCache::init_db(&s)).await?;
    assert!(got.as_ref().is_err_and(Error::is_unavailable), "{got:?}");
    Ok(())
}

#[tokio::test]
async fn undecodable_stored_values_are_codec_errors() -> anyhow::Result<()> {
    let settings = settings_for("val_codec");
    let cache = connect(&settings).await?;
    let other = connect(&node(&settings, "b")).await?;
    let sql = sql_client(&settings.dsn).await?;
    let table = entries_table(&settings);

    // Written by hand, never seen by the cache.
    sql.execute(&format!("INSERT INTO {table} (key, value) VALUES ('bad', '\\xff'::bytea)"), &[]).await?;
    cache.set("good", &json!({"ok": true}), None).await?;
    cache.set("text", &"a string", None).await?;
    let before = row_count(&sql, &settings).await?;

    assert_err!(cache.get::<Value>("bad").await, Error::Codec { .. });
    match cache.get::<Value>("bad").await {
        Err(Error::Codec { key, .. }) => assert_eq!(key, "bad"),
        other => panic!("{other:?}"),
    }
    // The bytes themselves are still readable raw.
    assert_eq!(cache.get_bytes("bad").await?, Some(Bytes::from_static(b"\xff")));
    // Valid JSON of the wrong type is a codec error too.
    assert_err!(cache.get::<u32>("text").await, Error::Codec { .. });
    assert_err!(cache.get_many::<Value>(&["good", "bad"]).await, Error::Codec { .. });
    let runs = Arc::new(AtomicU32::new(0));
    let r = Arc::clone(&runs);
    let got = cache
        .get_or_set(
            "bad",
            move || async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(json!("replacement"))
            },
            None,
        )
        .await;
    assert!(matches!(got, Err(Error::Codec { .. })), "{got:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 0, "a stored value exists: the loader must not run");

    // A value made undecodable by hand after the cache read it: once the change is heard, a codec error.
    assert_eq!(other.get::<Value>("good").await?, Some(json!({"ok": true})));
    sql.execute(&format!("UPDATE {table} SET value = '\\xfe00'::bytea WHERE key = 'good'"), &[]).await?;
    eventually(Duration::from_secs(5), || async {
        matches!(other.get::<Value>("good").await, Err(Error::Codec { .. }))
    })
    .await?;

    // Nothing was removed or rewritten by the failed reads.
    assert_eq!(row_count(&sql, &settings).await?, before);
    assert_eq!(cache.get_bytes("good").await?, Some(Bytes::from_static(b"\xfe\x00")));
    cache.close().await;
    other.close().await;
    Ok(())
}
