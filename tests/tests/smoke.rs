//! A connected cache round-trips a JSON value through `set`/`get`, fills a miss through `get_or_set`,
//! and `delete` reports whether the key was there.

use std::time::Duration;

use pgcache_core::prelude::*;
use pgcache_tests::{connect, settings_for};
use serde_json::json;

#[tokio::test]
async fn set_get_delete_round_trip() -> anyhow::Result<()> {
    let settings = settings_for("smoke");
    let cache = connect(&settings).await?;
    cache.set("profile:123", &json!({"name": "Ava"}), Some(Duration::from_secs(300))).await?;
    let v: Option<serde_json::Value> = cache.get("profile:123").await?;
    assert_eq!(v, Some(json!({"name": "Ava"})));
    let loaded: serde_json::Value = cache
        .get_or_set(
            "profile:456",
            || async { Ok::<_, std::io::Error>(json!({"name": "Nova"})) },
            Some(Duration::from_secs(120)),
        )
        .await?;
    assert_eq!(loaded, json!({"name": "Nova"}));
    assert!(cache.delete("profile:123").await?);
    assert!(!cache.delete("profile:123").await?);
    assert_eq!(cache.get::<serde_json::Value>("profile:123").await?, None);
    cache.close().await;
    Ok(())
}
