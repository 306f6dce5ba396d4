//! The local cache stays within its byte budget (and its entry bound) when ten times its capacity is
//! written and read back; `local_max_entries = 0` disables it, and the listener with it.

use bytes::Bytes;
use pgcache_core::prelude::*;
use pgcache_core::{ListenerState, Source};
use pgcache_tests::{backends, connect, listener_pid, node, settings_for, source_of, sql_client};

const BUDGET: u64 = 64 * 1024;

fn value(i: usize, len: usize) -> Bytes {
    Bytes::from(format!("{i:08}").repeat(len / 8))
}

#[tokio::test]
async fn local_cache_stays_within_its_byte_budget() -> anyhow::Result<()> {
    let settings = settings_for("lb_bytes").local_max_bytes(BUDGET).local_max_entries(1_000_000);
    let cache = connect(&settings).await?;
    let reader = connect(&node(&settings, "r")).await?;
    let len = 1024;
    let n = (10 * BUDGET as usize) / len; // ten times the capacity
    let keys: Vec<String> = (0..n).map(|i| format!("big:{i}")).collect();

    // Written one by one (each write is installed locally on the writer)...
    for (i, key) in keys.iter().enumerate() {
        cache.set_bytes(key, value(i, len), Ttl::Default).await?;
    }
    let (entries, bytes) = cache.local_usage().await;
    eprintln!("after writing {n} x {len} B: {entries} entries, {bytes} B weighted (budget {BUDGET} B)");
    assert!(bytes <= BUDGET, "writer's local cache at {bytes} B, over its budget of {BUDGET} B");
    assert!(entries > 0, "the local cache should hold something");

    // ...and read back, one by one and in batches, on both nodes: every value correct, budget held.
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(cache.get_bytes(key).await?, Some(value(i, len)), "{key}");
        assert_eq!(reader.get_bytes(key).await?, Some(value(i, len)), "{key}");
    }
    for chunk in keys.chunks(100) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        assert!(reader.get_many_bytes(&refs).await?.iter().all(Option::is_some));
    }
    for (name, node) in [("writer", &cache), ("reader", &reader)] {
        let (entries, bytes) = node.local_usage().await;
        eprintln!("{name} after reading back: {entries} entries, {bytes} B weighted");
        assert!(bytes <= BUDGET, "{name}'s local cache at {bytes} B, over its budget of {BUDGET} B");
        assert!(entries > 0 && entries < n as u64, "{name}: {entries} entries");
        assert!(node.status().local_bytes <= BUDGET);
    }

    // A single value larger than the whole budget is served from the table, never held locally.
    let huge = Bytes::from(vec![7u8; 2 * BUDGET as usize]);
    cache.set_bytes("huge", huge.clone(), Ttl::Default).await?;
    for _ in 0..3 {
        assert_eq!(reader.get_bytes("huge").await?, Some(huge.clone()));
    }
    let (_, bytes) = reader.local_usage().await;
    assert!(bytes <= BUDGET, "{bytes} B after a value of twice the budget");
    cache.close().await;
    reader.close().await;
    Ok(())
}

#[tokio::test]
async fn local_cache_stays_within_its_entry_bound() -> anyhow::Result<()> {
    let settings = settings_for("lb_entries").local_max_entries(10);
    let cache = connect(&settings).await?;
    for i in 0..100 {
        cache.set(&format!("e:{i}"), &i, None).await?;
    }
    for i in 0..100 {
        assert_eq!(cache.get::<i32>(&format!("e:{i}")).await?, Some(i));
    }
    let (entries, _) = cache.local_usage().await;
    eprintln!("entry bound 10, 100 keys written and read: {entries} entries held");
    assert!((1..=10).contains(&entries), "{entries} entries held, bound is 10");
    cache.close().await;
    Ok(())
}

#[tokio::test]
async fn zero_local_entries_disables_the_local_cache_and_the_listener() -> anyhow::Result<()> {
    let settings = settings_for("lb_off").local_max_entries(0);
    let cache = connect(&settings).await?;
    let admin = sql_client(&settings.dsn).await?;
    cache.set("k", &"v", None).await?;
    for _ in 0..3 {
        assert_eq!(cache.get::<String>("k").await?.as_deref(), Some("v"));
        assert_eq!(source_of(&cache, "k").await?, Source::Shared, "nothing may be served locally");
    }
    assert_eq!(cache.local_usage().await, (0, 0));
    assert_eq!(cache.status().listener, ListenerState::Disabled);
    assert_eq!(listener_pid(&admin, &settings.application_name).await?, None);
    let conns = backends(&admin, &settings.application_name).await?;
    assert!(!conns.is_empty() && conns.iter().all(|(_, q)| !q.starts_with("LISTEN")), "{conns:?}");
    cache.close().await;
    Ok(())
}
