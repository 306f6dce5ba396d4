//! Invalidation by the application's own rows ([`PostgresCache::invalidate_on`]):
//!
//! - INSERT, UPDATE, DELETE and TRUNCATE of application rows by plain SQL (another connection, as a
//!   person with `psql` would) delete the entries tagged by those rows, on every node, and nothing else;
//! - a bulk UPDATE is one statement's worth of work; a rolled-back UPDATE evicts nothing;
//! - a role with no rights on the cache table still invalidates (the function is `SECURITY DEFINER`),
//!   and cannot divert it with a temporary table named like the cache table;
//! - installing is idempotent, removing works, and bad tables, templates and columns get typed errors.

use std::time::Duration;

use bytes::Bytes;
use pgcache_core::prelude::*;
use pgcache_core::{Error, SetOptions, Source};
use pgcache_tests::{connect, eventually, login_role, make_local, node, settings_for, source_of, sql_client};

const DEADLINE: Duration = Duration::from_secs(5);

async fn set_tagged(cache: &PostgresCache, key: &str, value: &str, tag: &str) -> anyhow::Result<()> {
    let bytes = Bytes::from(serde_json::to_vec(value)?);
    cache.set_entry(key, bytes, &SetOptions::ttl(None).tags([tag])).await?;
    Ok(())
}

/// Waits until `key` is gone on every cache.
async fn gone_everywhere(caches: &[&PostgresCache], key: &str) -> anyhow::Result<Duration> {
    eventually(DEADLINE, || async {
        let mut all = true;
        for cache in caches {
            all &= cache.get::<String>(key).await.ok().flatten().is_none();
        }
        all
    })
    .await
}

async fn still_local(caches: &[&PostgresCache], key: &str) -> anyhow::Result<()> {
    for cache in caches {
        anyhow::ensure!(source_of(*cache, key).await? == Source::Local, "{key} was evicted");
    }
    Ok(())
}

#[tokio::test]
async fn sql_changes_to_application_rows_evict_their_tagged_entries_on_every_node() -> anyhow::Result<()> {
    let settings = settings_for("rows_evict");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    let sql = sql_client(&settings.dsn).await?;
    let orders = format!("{}orders", settings.schema_prefix);
    sql.batch_execute(&format!(
        "CREATE TABLE public.\"{orders}\" (id bigint PRIMARY KEY, status text); \
         INSERT INTO public.\"{orders}\" SELECT g, 'new' FROM generate_series(1, 500) g"
    ))
    .await?;
    a.invalidate_on(&format!("public.{orders}"), "order:{id}").await?;
    // Idempotent: a second install changes nothing.
    a.invalidate_on(&format!("public.{orders}"), "order:{id}").await?;
    let nodes = [&a, &b];
    for id in 1..=4 {
        set_tagged(&a, &format!("page:{id}"), "cached", &format!("order:{id}")).await?;
    }
    set_tagged(&a, "page:501", "cached", "order:501").await?;
    set_tagged(&a, "user:1", "cached", "user:1").await?;
    for key in ["page:1", "page:2", "page:3", "page:4", "page:501", "user:1"] {
        for cache in nodes {
            make_local(cache, key).await?;
        }
    }

    sql.execute(&format!("UPDATE \"{orders}\" SET status = 'paid' WHERE id = 1"), &[]).await?;
    let took = gone_everywhere(&nodes, "page:1").await?;
    eprintln!("an UPDATE by plain SQL evicted the row's entry on every node within {took:?}");
    still_local(&nodes, "page:2").await?;

    sql.execute(&format!("INSERT INTO \"{orders}\" VALUES (501, 'new')"), &[]).await?;
    gone_everywhere(&nodes, "page:501").await?;
    sql.execute(&format!("DELETE FROM \"{orders}\" WHERE id = 2"), &[]).await?;
    gone_everywhere(&nodes, "page:2").await?;
    still_local(&nodes, "page:3").await?;

    // A rolled-back change evicts nothing.
    sql.batch_execute(&format!("BEGIN; UPDATE \"{orders}\" SET status = 'x' WHERE id = 3; ROLLBACK")).await?;
    // A later change evicting on both nodes proves every earlier notification has been applied.
    set_tagged(&a, "page:6", "cached", "order:6").await?;
    for cache in nodes {
        make_local(cache, "page:6").await?;
    }
    sql.execute(&format!("UPDATE \"{orders}\" SET status = 'paid' WHERE id = 6"), &[]).await?;
    gone_everywhere(&nodes, "page:6").await?;
    still_local(&nodes, "page:3").await?;
    // One bulk statement: every row's entry goes.
    sql.execute(&format!("UPDATE \"{orders}\" SET status = 'archived' WHERE id BETWEEN 3 AND 500"), &[]).await?;
    gone_everywhere(&nodes, "page:4").await?;
    gone_everywhere(&nodes, "page:3").await?;

    set_tagged(&a, "page:5", "cached", "order:5").await?;
    for cache in nodes {
        make_local(cache, "page:5").await?;
    }
    sql.batch_execute(&format!("TRUNCATE \"{orders}\"")).await?;
    gone_everywhere(&nodes, "page:5").await?;
    still_local(&nodes, "user:1").await?;
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn rolled_back_row_changes_evict_nothing() -> anyhow::Result<()> {
    let settings = settings_for("rows_rollback");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    let sql = sql_client(&settings.dsn).await?;
    let orders = format!("{}orders", settings.schema_prefix);
    sql.batch_execute(&format!(
        "CREATE TABLE \"{orders}\" (id bigint PRIMARY KEY); INSERT INTO \"{orders}\" VALUES (1)"
    ))
    .await?;
    a.invalidate_on(&orders, "order:{id}").await?;
    set_tagged(&a, "page:1", "cached", "order:1").await?;
    for cache in [&a, &b] {
        make_local(cache, "page:1").await?;
    }
    sql.batch_execute(&format!("BEGIN; DELETE FROM \"{orders}\" WHERE id = 1; ROLLBACK")).await?;
    // A later change on another key proves every earlier notification has been applied.
    a.set("marker", &1, None).await?;
    make_local(&b, "marker").await?;
    a.set("marker", &2, None).await?;
    eventually(DEADLINE, || async { b.get::<i32>("marker").await.ok().flatten() == Some(2) }).await?;
    still_local(&[&a, &b], "page:1").await?;
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn a_role_without_cache_rights_still_invalidates() -> anyhow::Result<()> {
    let settings = settings_for("rows_definer");
    let a = connect(&settings).await?;
    let admin = sql_client(&settings.dsn).await?;
    let orders = format!("{}orders", settings.schema_prefix);
    admin
        .batch_execute(&format!(
            "CREATE TABLE \"{orders}\" (id bigint PRIMARY KEY); INSERT INTO \"{orders}\" VALUES (7)"
        ))
        .await?;
    a.invalidate_on(&orders, "order:{id}").await?;
    let role = format!("{}w", settings.schema_prefix);
    let dsn = login_role(&settings.dsn, &settings.schema_prefix, "w", -1).await?;
    let role_name = role.trim_end_matches('_');
    admin
        .batch_execute(&format!(
            "REVOKE ALL ON \"{p}cache_entries\" FROM \"{role_name}\"; \
             REVOKE ALL ON \"{p}cache_version_seq\" FROM \"{role_name}\"",
            p = settings.schema_prefix
        ))
        .await?;
    set_tagged(&a, "page:7", "cached", "order:7").await?;
    make_local(&a, "page:7").await?;
    let writer = sql_client(&dsn).await?;
    // A temporary table named like the cache table cannot capture the function's DELETE (pg_temp is
    // last on its pinned search_path).
    writer
        .batch_execute(&format!(
            "CREATE TEMP TABLE \"{p}cache_entries\" (key text, tags text[]); \
             INSERT INTO \"{p}cache_entries\" VALUES ('decoy', ARRAY['order:7'])",
            p = settings.schema_prefix
        ))
        .await?;
    writer.execute(&format!("UPDATE \"{orders}\" SET id = 8 WHERE id = 7"), &[]).await?;
    gone_everywhere(&[&a], "page:7").await?;
    a.close().await;
    Ok(())
}

#[tokio::test]
async fn invalidation_triggers_are_removable_and_every_identifier_is_validated() -> anyhow::Result<()> {
    let settings = settings_for("rows_remove");
    let a = connect(&settings).await?;
    let sql = sql_client(&settings.dsn).await?;
    let orders = format!("{}orders", settings.schema_prefix);
    sql.batch_execute(&format!("CREATE TABLE \"{orders}\" (id bigint PRIMARY KEY, region text)")).await?;
    for (table, template) in [
        ("", "order:{id}"),
        ("a.b.c", "order:{id}"),
        ("orders; DROP TABLE x", "order:{id}"),
        (orders.as_str(), "order"),
        (orders.as_str(), "order:{id"),
        (orders.as_str(), "order:{id'}"),
        (orders.as_str(), "order:{nope}"),
        ("no_such_table_here", "order:{id}"),
    ] {
        let err = a.invalidate_on(table, template).await.err();
        assert!(
            matches!(err, Some(Error::InvalidSetting { name: "invalidate_on", .. })),
            "{table:?} {template:?}: {err:?}"
        );
    }
    let triggers = format!("SELECT count(*) FROM pg_trigger WHERE tgrelid = '\"{orders}\"'::regclass");
    a.invalidate_on(&orders, "order:{id}").await?;
    a.invalidate_on(&orders, "region:{region}:{id}").await?;
    assert_eq!(sql.query_one(&triggers, &[]).await?.try_get::<_, i64>(0)?, 8);
    assert!(a.stop_invalidating_on(&orders, "order:{id}").await?);
    assert!(!a.stop_invalidating_on(&orders, "order:{id}").await?);
    assert_eq!(sql.query_one(&triggers, &[]).await?.try_get::<_, i64>(0)?, 4);

    // The remaining template still works: a quote in the literal text too.
    a.invalidate_on(&orders, "it's:{id}").await?;
    sql.execute(&format!("INSERT INTO \"{orders}\" VALUES (1, 'eu')"), &[]).await?;
    set_tagged(&a, "r", "cached", "region:eu:1").await?;
    set_tagged(&a, "q", "cached", "it's:1").await?;
    set_tagged(&a, "o", "cached", "order:1").await?;
    sql.execute(&format!("UPDATE \"{orders}\" SET region = 'us' WHERE id = 1"), &[]).await?;
    gone_everywhere(&[&a], "r").await?;
    gone_everywhere(&[&a], "q").await?;
    assert_eq!(a.get::<String>("o").await?.as_deref(), Some("cached"), "a removed template must not evict");
    a.close().await;
    Ok(())
}
