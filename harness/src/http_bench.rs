//! The HTTP rows of `bench`: axum servers on 127.0.0.1:0 with and without `PgCacheLayer`, driven by a
//! keep-alive hyper client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pgcache_core::{CacheSettings, PostgresCache};
use pgcache_tower::PgCacheLayer;

use crate::bench::BenchRow;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

const BODY: &[u8] = &[b'x'; 2048];

async fn serve(app: Router) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// GETs `url` with one fixed `Host` (so that every node computes the same cache key).
async fn fetch(client: &HttpClient, url: &str) -> anyhow::Result<http::StatusCode> {
    let req = http::Request::get(url).header(http::header::HOST, "bench.test").body(Empty::new())?;
    let resp = client.request(req).await?;
    let status = resp.status();
    resp.into_body().collect().await?;
    Ok(status)
}

/// Requests per second of `concurrency` keep-alive clients fetching `url` for `window`.
async fn rps(client: &HttpClient, url: &str, concurrency: usize, window: Duration) -> anyhow::Result<f64> {
    let deadline = Instant::now() + window;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url) = (client.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                anyhow::ensure!(fetch(&client, &url).await?.is_success(), "non-2xx response");
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// The two HTTP rows: L1-served route vs the bare route, and one handler run for 100 concurrent misses
/// spread over two layer instances (two nodes).
pub(crate) async fn rows(base: &CacheSettings, window: Duration) -> anyhow::Result<Vec<BenchRow>> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build_http();
    let static_route = || get(|| async { ([("cache-control", "public, max-age=600")], BODY) });

    // L1-served route vs the same route without the layer.
    let cache = PostgresCache::connect(base.clone()).await?;
    let bare = serve(Router::new().route("/item", static_route())).await?;
    let layered =
        serve(Router::new().route("/item", static_route()).layer(PgCacheLayer::new(cache.clone()).namespace("hb:")))
            .await?;
    let (bare_url, layered_url) = (format!("http://{bare}/item"), format!("http://{layered}/item"));
    fetch(&client, &layered_url).await?;
    let (mut ours, mut theirs) = (0.0, 0.0);
    for _ in 0..2 {
        theirs += rps(&client, &bare_url, 16, window).await?;
        ours += rps(&client, &layered_url, 16, window).await?;
    }
    let (ours, theirs) = (ours / 2.0, theirs / 2.0);
    let mut out = vec![BenchRow {
        what: "HTTP route served from L1 by PgCacheLayer (req/s, 16 clients)".into(),
        pgcache: format!("{ours:.0}"),
        baseline: format!("{theirs:.0} same axum route, no layer"),
        ratio: Some(ours / theirs),
        target: "≥ 0.8x".into(),
        met: Some(ours / theirs >= 0.8),
    }];

    // 100 concurrent requests for one URL, split over two nodes, on a 50 ms handler.
    let runs = Arc::new(AtomicU64::new(0));
    let mut nodes = Vec::new();
    let mut caches = vec![cache];
    for _ in 0..2 {
        let node = PostgresCache::connect(base.clone()).await?;
        let runs = Arc::clone(&runs);
        let app = Router::new()
            .route(
                "/slow",
                get(move || {
                    let runs = Arc::clone(&runs);
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        ([("cache-control", "public, max-age=600")], BODY)
                    }
                }),
            )
            .layer(PgCacheLayer::new(node.clone()).namespace("hb:"));
        nodes.push(serve(app).await?);
        caches.push(node);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let client = client.clone();
        let url = format!("http://{}/slow", nodes[i % 2]);
        tasks.push(tokio::spawn(async move { fetch(&client, &url).await }));
    }
    for t in tasks {
        anyhow::ensure!(t.await??.is_success(), "a request to /slow failed");
    }
    let elapsed = started.elapsed();
    let handler_runs = runs.load(Ordering::SeqCst);
    out.push(BenchRow {
        what: "HTTP miss, 50 ms handler, 100 concurrent requests, 2 layer instances".into(),
        pgcache: format!("handler ran {handler_runs}x; all answered in {:.0} ms", elapsed.as_secs_f64() * 1000.0),
        baseline: "-".into(),
        ratio: None,
        target: "handler runs once".into(),
        met: Some(handler_runs == 1),
    });
    for c in caches {
        c.close().await;
    }
    Ok(out)
}
