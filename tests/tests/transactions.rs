//! Cache writes inside the application's own transaction ([`PostgresCache::in_transaction`]):
//!
//! - a rollback leaves every node's local value in place (nothing evicted, nothing written);
//! - a commit evicts every node at the commit and not before: until then both nodes keep serving the old
//!   value from their local caches, and right after it the writing node reads its own write;
//! - the cache change and the data change are one unit: both are visible together or not at all.

use std::time::Duration;

use pgcache_core::prelude::*;
use pgcache_core::{SetOptions, Source};
use pgcache_tests::{connect, eventually, make_local, node, settings_for, source_of, sql_client};

const DEADLINE: Duration = Duration::from_secs(5);

/// Waits until `b` has heard a fresh write made on `a`: notifications arrive in commit order, so every
/// notification sent before it has been applied on `b` too.
async fn heard_everything(a: &PostgresCache, b: &PostgresCache, marker: &str) -> anyhow::Result<()> {
    a.set(marker, &"before", None).await?;
    make_local(b, marker).await?;
    a.set(marker, &"after", None).await?;
    eventually(DEADLINE, || async { b.get::<String>(marker).await.ok().flatten().as_deref() == Some("after") }).await?;
    Ok(())
}

#[tokio::test]
async fn rollback_leaves_every_nodes_value_in_place() -> anyhow::Result<()> {
    let settings = settings_for("tx_rollback");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    a.set("k", &"kept", None).await?;
    a.set_entry("t", bytes::Bytes::from_static(b"\"tagged\""), &SetOptions::ttl(None).tags(["group"])).await?;
    for cache in [&a, &b] {
        make_local(cache, "k").await?;
        make_local(cache, "t").await?;
    }

    let mut client = sql_client(&settings.dsn).await?;
    let tx = client.transaction().await?;
    let mut cached = a.in_transaction(&tx);
    assert!(cached.set("k", &"never", None).await? > 0);
    assert!(cached.delete("t").await?);
    assert_eq!(cached.delete_tags(&["group"]).await?, 0, "already deleted in this transaction");
    let pending = cached.finish();
    tx.rollback().await?;
    drop(pending);

    heard_everything(&a, &b, "marker").await?;
    for (name, cache) in [("a", &a), ("b", &b)] {
        assert_eq!(source_of(cache, "k").await?, Source::Local, "node {name} lost its copy of k");
        assert_eq!(source_of(cache, "t").await?, Source::Local, "node {name} lost its copy of t");
        assert_eq!(cache.get::<String>("k").await?.as_deref(), Some("kept"));
        assert_eq!(cache.get::<String>("t").await?.as_deref(), Some("tagged"));
    }
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn commit_evicts_every_node_at_the_commit_and_not_before() -> anyhow::Result<()> {
    let settings = settings_for("tx_commit");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    let mut client = sql_client(&settings.dsn).await?;
    let orders = format!("\"{}orders\"", settings.schema_prefix);
    client.batch_execute(&format!("CREATE TABLE {orders} (id bigint PRIMARY KEY, status text)")).await?;
    client.execute(&format!("INSERT INTO {orders} VALUES (42, 'new')"), &[]).await?;
    a.set("order:42", &"new", None).await?;
    a.set("order:43", &"gone soon", None).await?;
    for cache in [&a, &b] {
        make_local(cache, "order:42").await?;
        make_local(cache, "order:43").await?;
    }

    let tx = client.transaction().await?;
    tx.execute(&format!("UPDATE {orders} SET status = 'paid' WHERE id = 42"), &[]).await?;
    let mut cached = a.in_transaction(&tx);
    cached.set("order:42", &"paid", None).await?;
    assert_eq!(cached.delete_many(&["order:43"]).await?, 1);
    let pending = cached.finish();
    assert_eq!(pending.keys(), ["order:42", "order:43"]);

    // Not committed: every node keeps serving its local copy.
    heard_everything(&a, &b, "marker").await?;
    for (name, cache) in [("a", &a), ("b", &b)] {
        assert_eq!(source_of(cache, "order:42").await?, Source::Local, "node {name} evicted before the commit");
        assert_eq!(cache.get::<String>("order:42").await?.as_deref(), Some("new"));
        assert_eq!(cache.get::<String>("order:43").await?.as_deref(), Some("gone soon"));
    }

    tx.commit().await?;
    pending.committed().await;
    // The writing node reads its own write at once.
    assert_eq!(a.get::<String>("order:42").await?.as_deref(), Some("paid"));
    assert_eq!(a.get::<String>("order:43").await?, None);
    let took = eventually(DEADLINE, || async {
        b.get::<String>("order:42").await.ok().flatten().as_deref() == Some("paid")
            && b.get::<String>("order:43").await.ok().flatten().is_none()
    })
    .await?;
    eprintln!("the other node served the committed change {took:?} after the commit");
    let status: String =
        client.query_one(&format!("SELECT status FROM {orders} WHERE id = 42"), &[]).await?.try_get(0)?;
    assert_eq!(status, "paid");
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn sqlx_transactions_commit_and_roll_back_with_the_cache_change() -> anyhow::Result<()> {
    let settings = settings_for("tx_sqlx");
    let a = connect(&node(&settings, "a")).await?;
    let b = connect(&node(&settings, "b")).await?;
    a.set("k", &"old", None).await?;
    for cache in [&a, &b] {
        make_local(cache, "k").await?;
    }
    let pool = sqlx::PgPool::connect(&settings.dsn).await?;

    let mut tx = pool.begin().await?;
    let mut cached = a.in_sqlx_transaction(&mut tx);
    cached.set("k", &"never", None).await?;
    assert!(cached.delete("k").await?);
    drop(cached.finish());
    tx.rollback().await?;
    heard_everything(&a, &b, "marker").await?;
    for cache in [&a, &b] {
        assert_eq!(source_of(cache, "k").await?, Source::Local);
        assert_eq!(cache.get::<String>("k").await?.as_deref(), Some("old"));
    }

    let mut tx = pool.begin().await?;
    let mut cached = a.in_sqlx_transaction(&mut tx);
    cached.set("k", &"new", None).await?;
    assert_eq!(cached.delete_many(&["k2"]).await?, 0);
    assert_eq!(cached.delete_tags(&["none"]).await?, 0);
    let pending = cached.finish();
    tx.commit().await?;
    pending.committed().await;
    assert_eq!(a.get::<String>("k").await?.as_deref(), Some("new"));
    eventually(DEADLINE, || async { b.get::<String>("k").await.ok().flatten().as_deref() == Some("new") }).await?;
    pool.close().await;
    a.close().await;
    b.close().await;
    Ok(())
}
