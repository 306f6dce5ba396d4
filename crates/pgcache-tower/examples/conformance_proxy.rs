//! A reverse proxy with `PgCacheLayer` at its defaults, for running an HTTP caching conformance suite
//! (such as http-tests/cache-tests, shared-cache profile) against the layer: every method is forwarded by
//! an axum `Router::fallback` through a hyper-util client to the origin, behind
//! `.layer(PgCacheLayer::new(cache))`.
//!
//! Run: `scripts/with-postgres cargo run --release -p pgcache-tower --example conformance_proxy -- \
//!        [LISTEN (default 127.0.0.1:8080)] [ORIGIN (default http://127.0.0.1:8000)]`
//! (reads `PGCACHE_DSN`; the cache's tables use the prefix `conformance_`, emptied at start).
//! `CONFORMANCE_HEURISTIC=1` turns on the one opt-in the suite looks for, `heuristic_freshness(true)`.
//!
//! When the origin cannot be reached (refused, reset), the proxy answers 502, as a reverse proxy does.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pgcache_core::{CacheSettings, PostgresCache};
use pgcache_tower::PgCacheLayer;

type HttpClient = Client<HttpConnector, Body>;

#[derive(Clone)]
struct Upstream {
    client: HttpClient,
    origin: String,
}

/// Header fields that are hop-by-hop (RFC 9110 §7.6.1): not forwarded in either direction.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let listed: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect();
    for name in HOP_BY_HOP.iter().copied().chain(listed.iter().map(String::as_str)) {
        headers.remove(name);
    }
}

async fn forward(State(up): State<Upstream>, mut req: Request) -> Response {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{}{path}", up.origin).parse::<Uri>() else {
        return (StatusCode::BAD_REQUEST, "bad request target").into_response();
    };
    *req.uri_mut() = uri;
    strip_hop_by_hop(req.headers_mut());
    match up.client.request(req).await {
        Ok(resp) => {
            let mut resp = resp.map(Body::new);
            strip_hop_by_hop(resp.headers_mut());
            resp
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("origin unreachable: {e}")).into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:8080").parse()?;
    let origin = args.next().unwrap_or_else(|| "http://127.0.0.1:8000".to_owned());
    let dsn = std::env::var("PGCACHE_DSN").or_else(|_| std::env::var("PGCACHE_TEST_DSN"))?;
    let settings = CacheSettings::new(dsn).schema_prefix("conformance_").notify_channel("conformance_events");
    PostgresCache::init_db(&settings).await?;
    let cache = PostgresCache::connect(settings).await?;
    // `CONFORMANCE_HEURISTIC=1`: the one opt-in the suite's optimal tests look for.
    let heuristic = std::env::var("CONFORMANCE_HEURISTIC").is_ok_and(|v| v == "1");
    let layer = PgCacheLayer::new(cache.clone()).heuristic_freshness(heuristic);
    layer.http_cache().purge_all().await?;

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let app = Router::new()
        .fallback(forward)
        .with_state(Upstream { client, origin: origin.trim_end_matches('/').to_owned() })
        .layer(layer);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("conformance proxy on http://{listen} -> {origin}");
    axum::serve(listener, app).await?;
    cache.close().await;
    Ok(())
}
