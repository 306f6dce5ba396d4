//! `Cached<T>`, `Lookup<T>` and `Cache` in real axum servers on 127.0.0.1, driven by a real HTTP client,
//! against a real PostgreSQL (`scripts/with-postgres cargo test -p pgcache-axum`).
//!
//! Two "app instances" are two servers, each with its own `PostgresCache` node on the same prefix, sharing
//! one in-memory "database" so the test can count loader runs across both.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::extract::{FromRef, Path};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use futures_util::future::join_all;
use pgcache_axum::{Cache, CacheResource, Cached, Lookup};
use pgcache_core::{CacheSettings, CacheStore, PostgresCache, Ttl};
use serde::{Deserialize, Serialize};

/// The shared "database": rows and a count of loader runs.
#[derive(Clone, Default)]
struct Db {
    rows: Arc<Mutex<HashMap<u64, String>>>,
    loads: Arc<AtomicUsize>,
}

impl Db {
    fn with_rows(rows: &[(u64, &str)]) -> Self {
        let db = Db::default();
        db.rows.lock().unwrap().extend(rows.iter().map(|(id, name)| (*id, (*name).to_owned())));
        db
    }

    fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }
}

#[derive(Clone, FromRef)]
struct AppState {
    cache: Cache,
    db: Db,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
}

impl CacheResource<AppState> for Profile {
    type Input = Path<u64>;
    type Rejection = StatusCode;
    type Codec = pgcache_core::JsonCodec;

    fn key(Path(id): &Path<u64>, _state: &AppState) -> String {
        format!("profile:{id}")
    }

    async fn load(Path(id): Path<u64>, state: AppState) -> Result<Self, StatusCode> {
        state.db.loads.fetch_add(1, Ordering::SeqCst);
        // A slow query, so concurrent requests overlap with the load.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let name = state.db.rows.lock().map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?.get(&id).cloned();
        name.map(|name| Profile { id, name }).ok_or(StatusCode::NOT_FOUND)
    }

    fn ttl(&self) -> Ttl {
        Ttl::After(Duration::from_secs(60))
    }

    fn tags(&self) -> Vec<String> {
        vec!["profiles".to_owned()]
    }
}

/// A resource keyed by the raw path segment, to send keys the cache refuses.
#[derive(Serialize, Deserialize)]
struct Echo(String);

impl CacheResource<AppState> for Echo {
    type Input = Path<String>;
    type Rejection = StatusCode;
    type Codec = pgcache_core::JsonCodec;

    fn key(Path(key): &Path<String>, _state: &AppState) -> String {
        key.clone()
    }

    async fn load(Path(key): Path<String>, _state: AppState) -> Result<Self, StatusCode> {
        Ok(Echo(key))
    }
}

async fn get_profile(lookup: Lookup<Profile>) -> impl IntoResponse {
    ([("cache-status", lookup.cache_status())], Json(lookup.value))
}

async fn put_profile(
    cache: Cache,
    axum::extract::State(db): axum::extract::State<Db>,
    Path(id): Path<u64>,
    name: String,
) -> StatusCode {
    if let Ok(mut rows) = db.rows.lock() {
        rows.insert(id, name);
    }
    match cache.delete(&format!("profile:{id}")).await {
        Ok(_) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn echo(Cached(Echo(key)): Cached<Echo>) -> String {
    key
}

/// Serves one app instance on a free port; returns its base URL.
async fn serve(cache: impl Into<pgcache_core::SharedCache>, db: &Db) -> Result<String> {
    let app = Router::new()
        .route("/profiles/{id}", get(get_profile).put(put_profile))
        .route("/echo/{key}", get(echo))
        .with_state(AppState { cache: Cache::new(cache), db: db.clone() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

/// Two nodes (two pools, two local caches, two listeners) on one prefix.
async fn two_nodes(name: &str) -> Result<(PostgresCache, PostgresCache)> {
    let settings = pgcache_tests::settings_for(name);
    Ok((pgcache_tests::connect(&settings).await?, pgcache_tests::connect(&settings).await?))
}

struct Answer {
    status: StatusCode,
    cache_status: String,
    profile: Option<Profile>,
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Answer> {
    let response = client.get(url).send().await?;
    let status = response.status();
    let cache_status =
        response.headers().get("cache-status").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let profile = if status == StatusCode::OK { Some(response.json().await?) } else { None };
    Ok(Answer { status, cache_status, profile })
}

/// Requests `url` until the answer is a local hit (polling, 5 s deadline); every answer on the way must be
/// a hit with the same value. Returns the value.
async fn until_local_hit(client: &reqwest::Client, url: &str) -> Result<Option<Profile>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut seen: Option<Profile> = None;
    loop {
        let answer = fetch(client, url).await?;
        anyhow::ensure!(answer.cache_status.contains("; hit;"), "expected a hit, got {:?}", answer.cache_status);
        anyhow::ensure!(seen.is_none() || seen == answer.profile, "hits must not change the value");
        seen = answer.profile;
        if answer.cache_status.ends_with("; detail=local") {
            return Ok(seen);
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "no local hit on {url} within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_miss_loads_then_both_nodes_hit() -> Result<()> {
    let (a, b) = two_nodes("axum_hits").await?;
    let db = Db::with_rows(&[(1, "Ava"), (2, "Nova")]);
    let (url_a, url_b) = (serve(a.clone(), &db).await?, serve(b.clone(), &db).await?);
    let client = reqwest::Client::new();

    let first = fetch(&client, &format!("{url_a}/profiles/1")).await?;
    assert_eq!(first.profile, Some(Profile { id: 1, name: "Ava".into() }));
    assert!(first.cache_status.starts_with("pgcache; fwd=uri-miss; stored; ttl="), "{}", first.cache_status);
    assert_eq!(db.loads(), 1);

    // Hits from now on: the shared table, then this node's local copy.
    assert_eq!(until_local_hit(&client, &format!("{url_a}/profiles/1")).await?, first.profile);
    // The other node finds it in the shared table, then keeps a local copy.
    let other = fetch(&client, &format!("{url_b}/profiles/1")).await?;
    assert_eq!(other.profile, first.profile);
    assert!(other.cache_status.starts_with("pgcache; hit; ttl=5"), "{}", other.cache_status);
    assert!(other.cache_status.ends_with("; detail=shared"), "{}", other.cache_status);
    assert_eq!(until_local_hit(&client, &format!("{url_b}/profiles/1")).await?, first.profile);
    assert_eq!(db.loads(), 1, "hits must not run the loader");

    // Another key is another miss.
    let second = fetch(&client, &format!("{url_b}/profiles/2")).await?;
    assert_eq!(second.profile, Some(Profile { id: 2, name: "Nova".into() }));
    assert_eq!(db.loads(), 2);
    // TTL and tags come from the resource.
    assert!(
        matches!(a.ttl("profile:1").await?, Some(pgcache_core::Expiry::In(d)) if d <= Duration::from_secs(60) && d > Duration::from_secs(50))
    );
    assert_eq!(a.delete_tags(&["profiles"]).await?, 2);
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn loader_runs_once_for_50_concurrent_requests_on_two_nodes() -> Result<()> {
    let (a, b) = two_nodes("axum_dogpile").await?;
    let db = Db::with_rows(&[(7, "Kai")]);
    let urls = [serve(a.clone(), &db).await?, serve(b.clone(), &db).await?];
    let client = reqwest::Client::new();

    let targets: Vec<String> = (0..50).map(|i| format!("{}/profiles/7", urls[i % 2])).collect();
    let answers =
        join_all(targets.iter().map(|url| fetch(&client, url))).await.into_iter().collect::<Result<Vec<_>>>()?;

    assert_eq!(db.loads(), 1, "one load for 50 concurrent misses across two nodes");
    assert!(answers
        .iter()
        .all(|a| a.status == StatusCode::OK && a.profile == Some(Profile { id: 7, name: "Kai".into() })));
    let loaded = answers.iter().filter(|a| a.cache_status.contains("; stored")).count();
    assert_eq!(loaded, 1, "exactly one request ran the loader");
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn an_update_on_one_node_evicts_the_others_copy() -> Result<()> {
    let (a, b) = two_nodes("axum_invalidate").await?;
    let db = Db::with_rows(&[(3, "Old")]);
    let (url_a, url_b) = (serve(a.clone(), &db).await?, serve(b.clone(), &db).await?);
    let client = reqwest::Client::new();

    fetch(&client, &format!("{url_b}/profiles/3")).await?;
    let cached = until_local_hit(&client, &format!("{url_b}/profiles/3")).await?;
    assert_eq!(cached.map(|p| p.name).as_deref(), Some("Old"));

    let put = client.put(format!("{url_a}/profiles/3")).body("New").send().await?;
    assert_eq!(put.status(), StatusCode::NO_CONTENT);

    // Node B hears the delete through LISTEN/NOTIFY and drops its local copy.
    let took = pgcache_tests::eventually(Duration::from_secs(5), || async {
        let answer = fetch(&client, &format!("{url_b}/profiles/3")).await;
        answer.is_ok_and(|a| a.profile.is_some_and(|p| p.name == "New"))
    })
    .await?;
    eprintln!("update on node A seen on node B after {took:?}");
    assert_eq!(db.loads(), 2);
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn rejections_have_their_statuses() -> Result<()> {
    let (cache, _) = two_nodes("axum_reject").await?;
    let db = Db::with_rows(&[]);
    let url = serve(cache.clone(), &db).await?;
    let client = reqwest::Client::new();

    // The input extractor's rejection: the path does not parse as u64.
    let bad_input = client.get(format!("{url}/profiles/abc")).send().await?;
    assert_eq!(bad_input.status(), StatusCode::BAD_REQUEST);
    // A key over max_key_bytes (1024) is the client's fault.
    let long = client.get(format!("{url}/echo/{}", "k".repeat(2000))).send().await?;
    assert_eq!(long.status(), StatusCode::BAD_REQUEST);
    assert_eq!(long.text().await?, "Invalid cache key built from the request");
    let fine = client.get(format!("{url}/echo/short")).send().await?;
    assert_eq!((fine.status(), fine.text().await?), (StatusCode::OK, "short".to_owned()));
    assert_eq!(db.loads(), 0);

    // The loader's own rejection, never cached: the next request loads again.
    for expected_loads in 1..=2 {
        let missing = fetch(&client, &format!("{url}/profiles/404")).await?;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(db.loads(), expected_loads);
    }

    // A closed cache is a server-side misconfiguration.
    cache.close().await;
    let closed = client.get(format!("{url}/profiles/1")).send().await?;
    assert_eq!(closed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(closed.text().await?, "Cache misconfigured");
    Ok(())
}

#[tokio::test]
async fn a_value_over_max_value_bytes_is_served_uncached() -> Result<()> {
    let settings = pgcache_tests::settings_for("axum_oversize").max_value_bytes(16);
    let cache = pgcache_tests::connect(&settings).await?;
    let db = Db::with_rows(&[(1, "a name long enough to exceed sixteen bytes")]);
    let url = serve(cache.clone(), &db).await?;
    let client = reqwest::Client::new();

    for expected_loads in 1..=2 {
        let answer = fetch(&client, &format!("{url}/profiles/1")).await?;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.cache_status, "pgcache; fwd=uri-miss", "loaded, not stored");
        assert_eq!(db.loads(), expected_loads);
    }
    cache.close().await;
    Ok(())
}

#[tokio::test]
async fn a_down_database_fails_open_or_503_when_failing_closed() -> Result<()> {
    let cluster = tokio::task::spawn_blocking(pgcache_tests::TestCluster::start).await??;
    let settings = CacheSettings::new(cluster.dsn())
        .schema_prefix("axum_down_")
        .notify_channel("axum_down_events")
        .pool_timeout(Duration::from_millis(500))
        .heartbeat_interval(Duration::from_millis(250));
    let open = pgcache_tests::connect(&settings).await?;
    let closed = pgcache_tests::connect(&settings.clone().fail_open(false)).await?;
    let db = Db::with_rows(&[(1, "Ava")]);
    let (url_open, url_closed) = (serve(open.clone(), &db).await?, serve(closed.clone(), &db).await?);
    let client = reqwest::Client::new();

    let _stopped = tokio::task::spawn_blocking(move || cluster.stop().map(|()| cluster)).await??;

    let answer = fetch(&client, &format!("{url_open}/profiles/1")).await?;
    assert_eq!(answer.profile, Some(Profile { id: 1, name: "Ava".into() }), "fail open: the loader still runs");
    assert_eq!(answer.cache_status, "pgcache; fwd=uri-miss; detail=cache-unavailable", "served, not stored");
    let refused = client.get(format!("{url_closed}/profiles/1")).send().await?;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.text().await?, "Cache unavailable");
    Ok(())
}
