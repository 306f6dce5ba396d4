//! The FastAPI counterpart as two OS processes on two ports against one database
//! (`scripts/with-postgres cargo test -p pgcache-examples --test fastapi_counterpart`).

mod support;

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use support::{fresh_database, Example};

const BIN: &str = env!("CARGO_BIN_EXE_fastapi_counterpart");

/// Sends a request to `/number`; returns `(data.value, data.generated_at)`.
async fn number(request: reqwest::RequestBuilder) -> Result<(u64, String)> {
    let body: Value = request.send().await?.error_for_status()?.json().await?;
    let data = &body["data"];
    let value = data["value"].as_u64().ok_or_else(|| anyhow::anyhow!("no data.value in {body}"))?;
    let generated_at = data["generated_at"].as_str().unwrap_or_default().to_owned();
    Ok((value, generated_at))
}

#[tokio::test]
async fn two_instances_share_the_number_and_see_each_others_post() -> Result<()> {
    let db = fresh_database("fastapi").await?;
    let a = Example::start(BIN, &db.dsn, &[]).await?;
    let b = Example::start(BIN, &db.dsn, &[]).await?;
    let client = reqwest::Client::new();
    let (url_a, url_b) = (format!("{}/number", a.url), format!("{}/number", b.url));

    let first = number(client.get(&url_a)).await?;
    assert!((1..=10_000).contains(&first.0), "{first:?}");
    assert!(chrono_like(&first.1), "generated_at is an ISO time: {first:?}");
    assert_eq!(number(client.get(&url_b)).await?, first, "same number on both instances");
    assert_eq!(number(client.get(&url_a)).await?, first, "cached, not regenerated");

    // POST on A sets a fresh payload; B sees it (its local copy is evicted by NOTIFY).
    let posted = number(client.post(&url_a)).await?;
    assert_ne!(posted.1, first.1, "a fresh payload");
    pgcache_tests::eventually(Duration::from_secs(5), || async {
        number(client.get(&url_b)).await.is_ok_and(|seen| seen == posted)
    })
    .await?;

    // Graceful shutdown on SIGTERM closes the cache and exits 0.
    for example in [a, b] {
        let (status, output) = example.terminate().await?;
        assert!(status.success(), "{status:?}");
        assert!(output.iter().any(|l| l == "cache closed, bye"), "{output:?}");
    }
    db.drop_now().await
}

/// `2026-11-25T06:43:04.123+00:00`-like.
fn chrono_like(text: &str) -> bool {
    text.len() >= 20 && text.as_bytes().get(4) == Some(&b'-') && text.contains('T')
}
