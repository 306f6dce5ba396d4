//! The profiles app as two OS processes against one database: CRUD over HTTP, reads cached (HTTP responses
//! by `PgCacheLayer`, values by `Lookup<T>`), writes on one instance seen on the other
//! (`scripts/with-postgres cargo test -p pgcache-examples --test profiles`).

mod support;

use std::time::Duration;

use anyhow::Result;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{fresh_database, Example};

const BIN: &str = env!("CARGO_BIN_EXE_profiles");

/// GET `url`: status, `cache-status` header, JSON body (Null when not JSON).
async fn get(client: &reqwest::Client, url: &str) -> Result<(StatusCode, String, Value)> {
    send(client.get(url)).await
}

async fn send(request: reqwest::RequestBuilder) -> Result<(StatusCode, String, Value)> {
    let response = request.send().await?;
    let status = response.status();
    let cache_status =
        response.headers().get("cache-status").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, cache_status, body))
}

#[tokio::test]
async fn crud_on_one_instance_is_seen_on_the_other() -> Result<()> {
    let db = fresh_database("profiles").await?;
    let a = Example::start(BIN, &db.dsn, &[]).await?;
    let b = Example::start(BIN, &db.dsn, &[]).await?;
    let client = reqwest::Client::new();

    // The seeded profile: a miss on both cache levels, then an HTTP hit with an Age.
    let profile_a = format!("{}/profiles/1", a.url);
    let (status, cache_status, seeded) = get(&client, &profile_a).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cache_status, "pgcache-http; fwd=uri-miss; fwd-status=200; stored; ttl=60");
    assert_eq!(seeded["name"], "Ava");
    let response = client.get(&profile_a).send().await?;
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert!(
        header("cache-status").is_some_and(|s| s.starts_with("pgcache-http; hit; ttl=")),
        "{:?}",
        header("cache-status")
    );
    assert!(header("age").is_some_and(|age| age.parse::<u64>().is_ok()), "{:?}", header("age"));
    assert_eq!(response.json::<Value>().await?, seeded);
    // A request with a cookie bypasses the HTTP cache; the value cache still answers.
    let (_, cache_status, again) = send(client.get(&profile_a).header("cookie", "session=1")).await?;
    assert_eq!(again, seeded);
    assert!(cache_status.starts_with("pgcache; hit; ttl="), "{cache_status}");
    assert!(cache_status.contains(", pgcache-http; fwd=bypass;"), "{cache_status}");
    assert!(cache_status.ends_with("detail=cookie"), "{cache_status}");

    // Create on A: the list on B includes it.
    let created: Value = client
        .post(format!("{}/profiles", a.url))
        .json(&json!({"name": "Nova", "bio": "second"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id"].as_i64().ok_or_else(|| anyhow::anyhow!("no id in {created}"))?;
    let (_, _, list) = get(&client, &format!("{}/profiles", b.url)).await?;
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");

    // B caches the new profile, then an update on A reaches B.
    let profile_b = format!("{}/profiles/{id}", b.url);
    assert_eq!(get(&client, &profile_b).await?.2["name"], "Nova");
    let (_, cache_status, _) = get(&client, &profile_b).await?;
    assert!(cache_status.starts_with("pgcache-http; hit"), "{cache_status}");
    let updated = client.put(format!("{}/profiles/{id}", a.url)).json(&json!({"name": "Nova B."})).send().await?;
    assert_eq!(updated.status(), StatusCode::OK);
    pgcache_tests::eventually(Duration::from_secs(5), || async {
        get(&client, &profile_b).await.is_ok_and(|(_, _, p)| p["name"] == "Nova B.")
    })
    .await?;
    let (_, _, list) = get(&client, &format!("{}/profiles", b.url)).await?;
    assert_eq!(list[1]["name"], "Nova B.", "{list}");

    // Delete on A: B answers 404.
    let deleted = client.delete(format!("{}/profiles/{id}", a.url)).send().await?;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    pgcache_tests::eventually(Duration::from_secs(5), || async {
        get(&client, &profile_b).await.is_ok_and(|(status, _, _)| status == StatusCode::NOT_FOUND)
    })
    .await?;
    let missing = client.put(format!("{}/profiles/{id}", a.url)).json(&json!({"name": "x"})).send().await?;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let bad_id = client.get(format!("{}/profiles/abc", a.url)).send().await?;
    assert_eq!(bad_id.status(), StatusCode::BAD_REQUEST);

    // Health: the listener is up, the pool is open.
    let (status, _, health) = get(&client, &format!("{}/healthz", b.url)).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["cache"]["listener"], "listening");
    assert!(health["cache"]["pool_max_size"].as_u64() > Some(0), "{health}");

    for example in [a, b] {
        let (status, _) = example.terminate().await?;
        assert!(status.success(), "{status:?}");
    }
    db.drop_now().await
}

/// Invalidation by the application's own rows: the profile value is tagged by its row, the row is changed
/// by hand (plain SQL on another connection, as with `psql`), and both instances serve the new row.
#[tokio::test]
async fn a_row_changed_by_hand_is_served_fresh_on_every_instance() -> Result<()> {
    let db = fresh_database("profiles_rows").await?;
    let a = Example::start(BIN, &db.dsn, &[]).await?;
    let b = Example::start(BIN, &db.dsn, &[]).await?;
    let client = reqwest::Client::new();
    let urls = [format!("{}/profiles/1/value", a.url), format!("{}/profiles/1/value", b.url)];
    for url in &urls {
        // Twice: the second answer comes from the cache.
        assert_eq!(get(&client, url).await?.2["name"], "Ava");
        let (_, cache_status, body) = get(&client, url).await?;
        assert!(cache_status.starts_with("pgcache; hit"), "{cache_status}");
        assert_eq!(body["name"], "Ava");
    }

    let psql = pgcache_tests::sql_client(&db.dsn).await?;
    psql.batch_execute("UPDATE profiles SET name = 'Ava (psql)' WHERE id = 1").await?;
    for url in &urls {
        let took = pgcache_tests::eventually(Duration::from_secs(5), || async {
            get(&client, url).await.is_ok_and(|(_, _, p)| p["name"] == "Ava (psql)")
        })
        .await?;
        eprintln!("{url} served the row changed by hand {took:?} after the UPDATE");
        let (_, cache_status, body) = get(&client, url).await?;
        assert_eq!(body["name"], "Ava (psql)", "{cache_status}");
    }

    for example in [a, b] {
        let (status, _) = example.terminate().await?;
        assert!(status.success(), "{status:?}");
    }
    db.drop_now().await
}

/// The integer value of the Prometheus sample line starting with `series` (0 when absent).
fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn metrics_and_healthz_report_what_was_served() -> Result<()> {
    let db = fresh_database("profiles_metrics").await?;
    let app = Example::start(BIN, &db.dsn, &[]).await?;
    let client = reqwest::Client::new();
    let profile = format!("{}/profiles/1", app.url);
    // With a cookie the HTTP layer bypasses, so the value cache answers: loaded, then from L1.
    for _ in 0..3 {
        let (status, _, _) = send(client.get(&profile).header("cookie", "session=1")).await?;
        assert_eq!(status, StatusCode::OK);
    }
    get(&client, &profile).await?;

    let metrics = client.get(format!("{}/metrics", app.url)).send().await?.error_for_status()?.text().await?;
    let lookups = "pgcache_resource_lookups{cache_resource=\"pgcache_examples::db::Profile\",";
    assert_eq!(sample(&metrics, &format!("{lookups}cache_outcome=\"loaded\"}}")), 1, "{metrics}");
    // Two cookie requests and the HTTP miss that reached the handler.
    assert_eq!(sample(&metrics, &format!("{lookups}cache_outcome=\"l1_hit\"}}")), 3, "{metrics}");
    assert_eq!(sample(&metrics, "pgcache_http_responses{cache_outcome=\"bypass\"}"), 3, "{metrics}");
    assert!(sample(&metrics, "pgcache_http_responses{cache_outcome=\"uri-miss\"}") >= 1, "{metrics}");
    assert!(
        metrics.contains("pgcache_db_statement_duration_bucket{db_system=\"postgresql\",db_operation=\"upsert\""),
        "{metrics}"
    );
    assert!(metrics.contains("# HELP pgcache_requests"), "described: {metrics}");

    // /healthz: real local figures (the sampler keeps them current within a second).
    pgcache_tests::eventually(Duration::from_secs(5), || async {
        get(&client, &format!("{}/healthz", app.url))
            .await
            .is_ok_and(|(_, _, health)| health["cache"]["local_entries"].as_u64() >= Some(1))
    })
    .await?;
    let (_, _, health) = get(&client, &format!("{}/healthz", app.url)).await?;
    assert_eq!(health["cache"]["pool_waiting"], 0, "{health}");
    assert!(health["cache"]["local_bytes"].as_u64() > Some(0), "{health}");

    let (status, _) = app.terminate().await?;
    assert!(status.success(), "{status:?}");
    db.drop_now().await
}
