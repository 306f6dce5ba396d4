//! Measures what `PgCacheLayer` costs per request, in process (no sockets): a hit from the local cache,
//! a hit from PostgreSQL (local cache disabled), a miss that stores, and a pass-through.
//!
//! Run: `scripts/with-postgres cargo run --release -p pgcache-tower --example layer_overhead`
//! (reads `PGCACHE_DSN`). `LAYER_OVERHEAD_PROFILE=1` runs only the L1 hit, 500,000 times, to profile it
//! (`perf record -g target/release/examples/layer_overhead`).

use std::convert::Infallible;
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use pgcache_core::{CacheSettings, PostgresCache};
use pgcache_tower::PgCacheLayer;
use tower::{service_fn, Layer, Service, ServiceExt};

async fn handler(req: Request<Body>) -> Result<Response<Full<Bytes>>, Infallible> {
    let cc = if req.uri().path().starts_with("/private") { "private" } else { "max-age=600" };
    Ok(Response::builder()
        .header("cache-control", cc)
        .body(Full::new(Bytes::from_static(&[b'x'; 2048])))
        .unwrap_or_default())
}

async fn measure<S>(name: &str, svc: S, n: usize, uri: impl Fn(usize) -> String)
where
    S: Service<Request<Body>, Error = Infallible> + Clone,
    S::Response: IntoBody,
{
    for i in 0..50 {
        let Ok(resp) = svc.clone().oneshot(request(&uri(i))).await;
        resp.drain().await;
    }
    let start = Instant::now();
    for i in 0..n {
        let Ok(resp) = svc.clone().oneshot(request(&uri(i + 50))).await;
        resp.drain().await;
    }
    let per = start.elapsed() / u32::try_from(n).unwrap_or(u32::MAX);
    println!("{name:<40} {:>10.1} µs/request ({n} requests)", per.as_secs_f64() * 1e6);
}

fn request(uri: &str) -> Request<Body> {
    Request::get(uri).header("host", "bench.test").body(Body::empty()).unwrap_or_default()
}

trait IntoBody {
    fn drain(self) -> impl std::future::Future<Output = ()>;
}

impl<B: http_body::Body> IntoBody for Response<B> {
    async fn drain(self) {
        let _ = self.into_body().collect().await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dsn = std::env::var("PGCACHE_DSN").or_else(|_| std::env::var("PGCACHE_TEST_DSN"))?;
    let settings = CacheSettings::new(dsn).schema_prefix("overhead_").notify_channel("overhead_events");
    PostgresCache::init_db(&settings).await?;
    let cache = PostgresCache::connect(settings.clone()).await?;
    let shared_only = PostgresCache::connect(settings.local_max_entries(0)).await?;
    let layer = PgCacheLayer::new(cache.clone()).namespace("bench:");
    let http = layer.http_cache();
    http.purge_all().await?;
    let plain = service_fn(handler);
    let cached = layer.layer(service_fn(handler));
    let l2 = PgCacheLayer::new(shared_only).namespace("bench:").layer(service_fn(handler));

    if std::env::var_os("LAYER_OVERHEAD_PROFILE").is_some() {
        measure("layer: hit, local cache (L1)", cached.clone(), 500_000, |_| "/item".to_owned()).await;
        cache.close().await;
        return Ok(());
    }
    measure("handler alone", plain, 20_000, |_| "/item".to_owned()).await;
    measure("layer: hit, local cache (L1)", cached.clone(), 20_000, |_| "/item".to_owned()).await;
    measure("layer: hit, PostgreSQL (L2)", l2, 2_000, |_| "/item".to_owned()).await;
    measure("layer: miss + store (new URL each)", cached.clone(), 2_000, |i| format!("/new/{i}")).await;
    measure("layer: pass-through (private)", cached, 2_000, |_| "/private".to_owned()).await;
    http.purge_all().await?;
    cache.close().await;
    Ok(())
}
