//! Measures what `Cached<T>` costs per request, in process (no sockets): a plain handler, a hit from the
//! local cache (L1), a hit from PostgreSQL (local cache disabled), and a miss that loads and stores.
//!
//! Run: `scripts/with-postgres cargo run --release -p pgcache-axum --example extractor_overhead`
//! (reads `PGCACHE_DSN`).

use std::time::Instant;

use axum::body::Body;
use axum::extract::{FromRef, Path};
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use pgcache_axum::{Cache, CacheResource, Cached};
use pgcache_core::{CacheSettings, CacheStore, PostgresCache};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

#[derive(Clone, FromRef)]
struct AppState {
    cache: Cache,
}

#[derive(Serialize, Deserialize)]
struct Item {
    id: u64,
    name: String,
    tags: Vec<String>,
}

impl Item {
    fn new(id: u64) -> Self {
        Item { id, name: format!("item {id}"), tags: vec!["a".into(), "b".into(), "c".into()] }
    }
}

impl CacheResource<AppState> for Item {
    type Input = Path<u64>;
    type Rejection = StatusCode;
    type Codec = pgcache_core::JsonCodec;

    fn key(Path(id): &Path<u64>, _state: &AppState) -> String {
        format!("bench:item:{id}")
    }

    async fn load(Path(id): Path<u64>, _state: AppState) -> Result<Self, StatusCode> {
        Ok(Item::new(id))
    }
}

async fn plain(Path(id): Path<u64>) -> Json<Item> {
    Json(Item::new(id))
}

async fn cached(Cached(item): Cached<Item>) -> Json<Item> {
    Json(item)
}

fn app(cache: PostgresCache) -> Router {
    Router::new()
        .route("/plain/{id}", get(plain))
        .route("/cached/{id}", get(cached))
        .with_state(AppState { cache: Cache::new(cache) })
}

async fn measure(name: &str, app: &Router, n: usize, uri: impl Fn(usize) -> String) {
    for i in 0..50 {
        let _ = app.clone().oneshot(request(&uri(i))).await;
    }
    let start = Instant::now();
    for i in 0..n {
        let response = app.clone().oneshot(request(&uri(i + 50))).await;
        assert!(response.is_ok_and(|r| r.status() == StatusCode::OK));
    }
    let per = start.elapsed() / u32::try_from(n).unwrap_or(u32::MAX);
    println!("{name:<40} {:>10.1} µs/request ({n} requests)", per.as_secs_f64() * 1e6);
}

fn request(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dsn = std::env::var("PGCACHE_DSN").or_else(|_| std::env::var("PGCACHE_TEST_DSN"))?;
    let settings = CacheSettings::new(dsn).schema_prefix("axum_overhead_").notify_channel("axum_overhead_events");
    PostgresCache::init_db(&settings).await?;
    let cache = PostgresCache::connect(settings.clone()).await?;
    let shared_only = PostgresCache::connect(settings.local_max_entries(0)).await?;
    cache.clear().await?;
    let (local, shared) = (app(cache.clone()), app(shared_only.clone()));

    measure("plain handler (Path + Json)", &local, 20_000, |_| "/plain/1".to_owned()).await;
    measure("Cached<T>: hit, local cache (L1)", &local, 20_000, |_| "/cached/1".to_owned()).await;
    measure("Cached<T>: hit, PostgreSQL (L2)", &shared, 2_000, |_| "/cached/1".to_owned()).await;
    measure("Cached<T>: miss, load + store", &local, 2_000, |i| format!("/cached/{}", 1_000 + i)).await;
    cache.clear().await?;
    shared_only.close().await;
    cache.close().await;
    Ok(())
}
