//! What the original Python library (postgres-cache 0.1.x) guaranteed still holds, case by case: round
//! trip, expiry, forced invalidation, notifications clearing another client's local cache, `get_or_set`
//! running its loader once for concurrent callers, disabled notifications creating no listener, a
//! too-many-connections message that says how to use fewer, prefixed objects created by the migrations,
//! an outdated schema version detected, `NullCache` never storing; and `close` releasing every connection.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgcache_core::prelude::*;
use pgcache_core::{Error, ListenerState, Source};
use pgcache_tests::{
    backends, connect, eventually, listener_pid, login_role, make_local, node, settings_for, sql_client, Parked,
};
use serde_json::{json, Value};

#[tokio::test]
async fn round_trip() -> anyhow::Result<()> {
    let cache = connect(&settings_for("par_rt")).await?;
    cache.set("profile:123", &json!({"name": "Ava"}), Some(Duration::from_secs(300))).await?;
    assert_eq!(cache.get::<Value>("profile:123").await?, Some(json!({"name": "Ava"})));
    assert!(cache.delete("profile:123").await?);
    assert_eq!(cache.get::<Value>("profile:123").await?, None);
    cache.close().await;
    Ok(())
}

/// `close` stops the background tasks and closes every connection, listener included.
#[tokio::test]
async fn close_releases_every_connection() -> anyhow::Result<()> {
    let settings = settings_for("par_close");
    let cache = connect(&settings).await?;
    let admin = sql_client(&settings.dsn).await?;
    cache.set("k", &1, None).await?;
    let open = backends(&admin, &settings.application_name).await?;
    assert!(open.len() >= 2, "a pooled connection and the listener expected: {open:?}");
    let clone = cache.clone();
    cache.close().await;
    assert!(clone.status().closed);
    assert!(matches!(clone.get::<i32>("k").await, Err(Error::Closed)));
    eventually(Duration::from_secs(5), || async {
        backends(&admin, &settings.application_name).await.is_ok_and(|b| b.is_empty())
    })
    .await?;
    Ok(())
}

/// `min_pool_size` connections are open once `connect` returns ("Connections opened at start-up").
///
/// `connect` opens exactly `min_pool_size` connections (no listener here).
#[tokio::test]
async fn min_pool_size_connections_are_opened_at_connect() -> anyhow::Result<()> {
    let settings = settings_for("par_minpool").min_pool_size(3).disable_notify(true);
    let cache = connect(&settings).await?;
    let admin = sql_client(&settings.dsn).await?;
    let open = backends(&admin, &settings.application_name).await?;
    assert_eq!(open.len(), 3, "min_pool_size 3, no listener: {open:?}");
    assert_eq!(cache.status().pool_size, 3);
    cache.close().await;
    Ok(())
}

#[tokio::test]
async fn expiry() -> anyhow::Result<()> {
    let settings = settings_for("par_exp");
    let cache = connect(&settings).await?;
    let other = connect(&node(&settings, "b")).await?;
    cache.set("ephemeral", &"value", Some(Duration::from_millis(250))).await?;
    assert_eq!(other.get::<String>("ephemeral").await?.as_deref(), Some("value"));
    eventually(Duration::from_secs(5), || async {
        matches!(cache.get::<String>("ephemeral").await, Ok(None))
            && matches!(other.get::<String>("ephemeral").await, Ok(None))
    })
    .await?;
    cache.close().await;
    other.close().await;
    Ok(())
}

#[tokio::test]
async fn forced_invalidation() -> anyhow::Result<()> {
    let settings = settings_for("par_inv");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    a.set("k", &"v", Ttl::Never).await?;
    make_local(&b, "k").await?;
    assert!(a.delete("k").await?);
    assert!(!a.delete("k").await?);
    assert_eq!(a.get::<String>("k").await?, None);
    eventually(Duration::from_secs(5), || async { matches!(b.get::<String>("k").await, Ok(None)) }).await?;
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn notifications_clear_another_clients_local_cache() -> anyhow::Result<()> {
    let settings = settings_for("par_notify");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    a.set("shared", &1, None).await?;
    make_local(&b, "shared").await?;
    assert_eq!(b.local_usage().await.0, 1);
    a.set("shared", &2, None).await?;
    let took =
        eventually(Duration::from_secs(5), || async { b.get::<i32>("shared").await.ok().flatten() == Some(2) }).await?;
    eprintln!("A's update cleared B's local copy in {took:?}");
    make_local(&b, "shared").await?;
    a.delete("shared").await?;
    eventually(Duration::from_secs(5), || async { matches!(b.get::<i32>("shared").await, Ok(None)) }).await?;
    eventually(Duration::from_secs(5), || async { b.local_usage().await.0 == 0 }).await?;
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn get_or_set_runs_the_loader_once_for_concurrent_callers() -> anyhow::Result<()> {
    let settings = settings_for("par_once");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    let runs = Arc::new(AtomicU32::new(0));
    // The loader is held until it has started and all 40 calls are seen in flight (each has parked, and
    // none can finish before the held loader's value exists).
    let (open, gate) = tokio::sync::watch::channel(false);
    let parked = Parked::default();
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (runs, mut gate) = (Arc::clone(&runs), gate.clone());
            tokio::spawn(parked.track(async move {
                cache
                    .get_or_set(
                        "expensive",
                        move || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            let _ = gate.wait_for(|open| *open).await;
                            Ok::<_, std::io::Error>(json!({"computed": true}))
                        },
                        Some(Duration::from_secs(60)),
                    )
                    .await
            }))
        })
        .collect();
    eventually(Duration::from_secs(5), || async { parked.count() == 40 && runs.load(Ordering::SeqCst) > 0 }).await?;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one loader runs while 40 calls are in flight");
    open.send(true)?;
    for call in calls {
        assert_eq!(call.await??, json!({"computed": true}));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn disabled_notifications_create_no_listener() -> anyhow::Result<()> {
    let on = settings_for("par_nolisten");
    let off = node(&on, "off").disable_notify(true);
    let with_listener = connect(&on).await?;
    let without = connect(&off).await?;
    let admin = sql_client(&on.dsn).await?;

    // Control: the default cache has a listener backend.
    assert_eq!(with_listener.status().listener, ListenerState::Listening);
    assert!(listener_pid(&admin, &on.application_name).await?.is_some());
    // disable_notify: none, and the only connection is the pool's.
    assert_eq!(without.status().listener, ListenerState::Disabled);
    assert_eq!(listener_pid(&admin, &off.application_name).await?, None);
    assert_eq!(backends(&admin, &off.application_name).await?.len(), 1);
    without.set("k", &1, None).await?;
    assert_eq!(without.get::<i32>("k").await?, Some(1));
    assert_eq!(listener_pid(&admin, &off.application_name).await?, None);
    with_listener.close().await;
    without.close().await;
    Ok(())
}

/// `connect`, retrying while a connection slot given back a moment ago is still taken on the server
/// (a closed connection's backend exits asynchronously).
async fn connect_when_a_slot_frees(settings: pgcache_core::CacheSettings) -> anyhow::Result<PostgresCache> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match PostgresCache::connect(settings.clone()).await {
            Ok(cache) => return Ok(cache),
            Err(Error::TooManyConnections { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[tokio::test]
async fn too_many_connections_message_says_how_to_use_fewer() -> anyhow::Result<()> {
    let settings = settings_for("par_toomany");
    PostgresCache::init_db(&settings).await?;
    // A role allowed two connections; both taken.
    let dsn = login_role(&settings.dsn, &settings.schema_prefix, "r", 2).await?;
    let _first = sql_client(&dsn).await?;
    let _second = sql_client(&dsn).await?;
    let mut limited = settings.clone();
    limited.dsn = dsn.clone();

    let err =
        PostgresCache::connect(limited.clone()).await.err().ok_or_else(|| anyhow::anyhow!("connect succeeded"))?;
    assert!(matches!(err, Error::TooManyConnections { .. }), "{err:?}");
    assert!(err.is_unavailable());
    let message = err.to_string();
    eprintln!("too many connections: {message}");
    for advice in ["max_pool_size", "disable_notify", "max_connections"] {
        assert!(message.contains(advice), "the message should mention `{advice}`: {message}");
    }
    assert!(matches!(PostgresCache::init_db(&limited).await, Err(Error::TooManyConnections { .. })));
    assert!(matches!(PostgresCache::schema_version(&limited).await, Err(Error::TooManyConnections { .. })));

    // Following the advice works: with one slot left, one pooled connection and no listener fit.
    drop(_second);
    let cache = connect_when_a_slot_frees(limited.clone().disable_notify(true).max_pool_size(1)).await?;
    cache.set("k", &"fits", None).await?;
    assert_eq!(cache.get::<String>("k").await?.as_deref(), Some("fits"));
    cache.close().await;
    Ok(())
}

/// The listener's connection is the one that does not fit (one slot: the pool takes it): `connect` must
/// say so with the same advice, not start a cache whose listener never connects (its local cache then
/// stays bypassed forever, with only a log line to show for it).
///
/// A listener that cannot get a connection slot makes `connect` fail with the typed, helpful error.
#[tokio::test]
async fn too_many_connections_for_the_listener_is_reported_by_connect() -> anyhow::Result<()> {
    let settings = settings_for("par_toomany_listen");
    PostgresCache::init_db(&settings).await?;
    let mut limited = settings.clone();
    limited.dsn = login_role(&settings.dsn, &settings.schema_prefix, "r", 1).await?;
    let outcome = tokio::time::timeout(Duration::from_secs(10), PostgresCache::connect(limited.clone())).await?;
    let status = outcome.as_ref().ok().map(|cache| cache.status());
    if let Ok(cache) = &outcome {
        cache.close().await;
    }
    match outcome {
        Err(err @ Error::TooManyConnections { .. }) => assert!(err.to_string().contains("disable_notify"), "{err}"),
        other => panic!("expected TooManyConnections from connect, got {:?} (status {status:?})", other.map(drop)),
    }
    // Following the advice, the same role fits.
    let cache = connect_when_a_slot_frees(limited.disable_notify(true).max_pool_size(1)).await?;
    cache.set("k", &1, None).await?;
    cache.close().await;
    Ok(())
}

#[tokio::test]
async fn migrations_create_prefixed_objects() -> anyhow::Result<()> {
    let settings = settings_for("par_objects");
    let p = settings.schema_prefix.clone();
    assert_eq!(PostgresCache::schema_version(&settings).await?, 0);
    assert!(!PostgresCache::schema_is_current(&settings).await?);

    // Several processes starting at once: every init_db succeeds, the migration is recorded once.
    let inits: Vec<_> = (0..6)
        .map(|_| {
            let s = settings.clone();
            tokio::spawn(async move { PostgresCache::init_db(&s).await })
        })
        .collect();
    for init in inits {
        init.await??;
    }
    PostgresCache::init_db(&settings).await?;
    assert_eq!(PostgresCache::schema_version(&settings).await?, PostgresCache::SCHEMA_VERSION);
    assert!(PostgresCache::schema_is_current(&settings).await?);
    let sql = sql_client(&settings.dsn).await?;
    let recorded: i64 = sql.query_one(&format!("SELECT count(*) FROM \"{p}cache_schema\""), &[]).await?.try_get(0)?;
    assert_eq!(recorded, i64::from(PostgresCache::SCHEMA_VERSION));

    let names = |sql_text: &'static str| {
        let sql = &sql;
        let p = p.clone();
        async move {
            let rows = sql.query(sql_text, &[&format!("{p}%")]).await?;
            rows.iter().map(|r| r.try_get::<_, String>(0)).collect::<Result<Vec<_>, _>>()
        }
    };
    let classes = names("SELECT relname::text FROM pg_class WHERE relname LIKE $1 ORDER BY 1").await?;
    for expected in
        ["cache_entries", "cache_entries_pkey", "cache_entries_tags_idx", "cache_schema", "cache_version_seq"]
    {
        assert!(classes.contains(&format!("{p}{expected}")), "missing {p}{expected} in {classes:?}");
    }
    let functions = names("SELECT proname::text FROM pg_proc WHERE proname LIKE $1 ORDER BY 1").await?;
    for expected in ["cache_bump_version", "cache_notify"] {
        assert!(functions.contains(&format!("{p}{expected}")), "missing function {p}{expected} in {functions:?}");
    }
    let triggers =
        names("SELECT tgname::text FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE $1 ORDER BY 1").await?;
    for expected in [
        "cache_bump_version",
        "cache_notify_delete",
        "cache_notify_insert",
        "cache_notify_truncate",
        "cache_notify_update",
    ] {
        assert!(triggers.contains(&format!("{p}{expected}")), "missing trigger {p}{expected} in {triggers:?}");
    }
    // Every trigger on the table carries the prefix, and nothing unprefixed was created for it.
    let on_table: Vec<String> = sql
        .query(
            "SELECT tgname::text FROM pg_trigger WHERE NOT tgisinternal AND tgrelid = to_regclass($1)",
            &[&format!("\"{p}cache_entries\"")],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    assert_eq!(on_table.len(), 5, "{on_table:?}");
    assert!(on_table.iter().all(|t| t.starts_with(&p)), "{on_table:?}");
    Ok(())
}

#[tokio::test]
async fn outdated_schema_version_is_detected() -> anyhow::Result<()> {
    let settings = settings_for("par_outdated");
    let p = settings.schema_prefix.clone();
    let expected = PostgresCache::SCHEMA_VERSION;

    // Never installed: version 0, connect refuses with the fix in the message.
    match PostgresCache::connect(settings.clone()).await {
        Err(Error::SchemaOutdated { found: 0, expected: e, .. }) => assert_eq!(e, expected),
        other => panic!("expected SchemaOutdated, got {:?}", other.map(drop)),
    }

    PostgresCache::init_db(&settings).await?;
    assert!(PostgresCache::schema_is_current(&settings).await?);
    let sql = sql_client(&settings.dsn).await?;

    // An older version recorded.
    sql.execute(&format!("UPDATE \"{p}cache_schema\" SET version = version - 1"), &[]).await?;
    assert_eq!(PostgresCache::schema_version(&settings).await?, expected - 1);
    assert!(!PostgresCache::schema_is_current(&settings).await?);
    let err = PostgresCache::connect(settings.clone()).await.err().ok_or_else(|| anyhow::anyhow!("connected"))?;
    assert!(
        matches!(err, Error::SchemaOutdated { found, expected: e, .. } if found == expected - 1 && e == expected),
        "{err:?}"
    );
    assert!(err.to_string().contains("init_db"), "{err}");
    // Upgrading fixes it.
    PostgresCache::init_db(&settings).await?;
    assert_eq!(PostgresCache::schema_version(&settings).await?, expected);
    assert!(PostgresCache::schema_is_current(&settings).await?);
    let cache = PostgresCache::connect(settings.clone()).await?;
    cache.close().await;

    // A newer schema than this library knows is refused too, by connect and by init_db.
    sql.execute(&format!("INSERT INTO \"{p}cache_schema\" (version) VALUES ($1)"), &[&(expected + 10)]).await?;
    assert!(!PostgresCache::schema_is_current(&settings).await?);
    assert!(matches!(PostgresCache::connect(settings.clone()).await.map(drop), Err(Error::SchemaTooNew { .. })));
    assert!(matches!(PostgresCache::init_db(&settings).await, Err(Error::SchemaTooNew { .. })));
    Ok(())
}

#[tokio::test]
async fn null_cache_never_stores() -> anyhow::Result<()> {
    let cache = NullCache::new();
    cache.set("k", &"v", None).await?;
    cache.set_many(&[("a", 1), ("b", 2)], Ttl::Never).await?;
    assert_eq!(cache.get::<String>("k").await?, None);
    assert_eq!(cache.get_many::<i32>(&["a", "b"]).await?, vec![None, None]);
    assert_eq!(cache.get_entry("k").await?, None);
    assert_eq!(cache.ttl("k").await?, None);
    assert!(!cache.touch("k", Ttl::Never).await?);
    assert!(!cache.delete("k").await?);
    assert_eq!(cache.clear().await?, 0);
    assert_eq!(cache.cleanup_expired().await?, 0);

    // get_or_set runs the loader every time.
    let runs = Arc::new(AtomicU32::new(0));
    for i in 0..3 {
        let r = Arc::clone(&runs);
        let v: u32 = cache
            .get_or_set(
                "k",
                move || async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(i)
                },
                None,
            )
            .await?;
        assert_eq!(v, i);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    let loaded =
        cache.get_or_load("k", || async { Ok::<_, Error>(pgcache_core::Fill::new("x", Ttl::Default)) }).await?;
    assert_eq!((loaded.source, loaded.stored), (Source::Loaded, false));
    // Same errors as the real cache.
    assert!(matches!(cache.get::<String>("").await, Err(Error::EmptyKey)));
    assert!(matches!(
        cache.get_or_set("k", || async { Err::<u32, _>(std::io::Error::other("x")) }, None).await,
        Err(Error::Loader(_))
    ));
    assert_eq!(cache.status().listener, ListenerState::Disabled);

    // Behind the object-safe trait, as the front ends hold it.
    let shared: Arc<dyn CacheStore> = Arc::new(NullCache::new());
    shared.set_bytes("k", bytes::Bytes::from_static(b"v"), Ttl::Default).await?;
    assert_eq!(shared.get_bytes("k").await?, None);
    Ok(())
}
