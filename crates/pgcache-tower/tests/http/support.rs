//! A scriptable origin behind a `PgCacheLayer`, served on 127.0.0.1:0, and a real client.
//!
//! The origin answers any path. Its response is scripted by the query string (part of the cache key,
//! so every script is its own entry): `rh=Name: value` adds a response header (`{n}` in a value becomes
//! the origin's request counter), `status=404` sets the status. The body says which request of the
//! origin this was (`n=`), and who asked (`user=` from `Authorization`/`Cookie`, `lang=` from
//! `Accept-Language`), so a test sees exactly which response it got.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use pgcache_core::CacheSettings;
use pgcache_tower::{HttpCache, MakeKey, PgCacheLayer};

/// The origin's state, shared by every node of a test.
#[derive(Clone, Default)]
pub(crate) struct Origin {
    hits: Arc<AtomicUsize>,
    /// Answer 500 to everything while set.
    pub(crate) fail: Arc<AtomicBool>,
    /// Milliseconds to wait before answering.
    pub(crate) delay_ms: Arc<AtomicU64>,
}

impl Origin {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Requests the origin has answered.
    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub(crate) fn router(&self) -> Router {
        Router::new().fallback(origin).with_state(self.clone())
    }
}

fn user(headers: &HeaderMap) -> String {
    let value = headers.get("authorization").or_else(|| headers.get("cookie"));
    value
        .and_then(|v| v.to_str().ok())
        .map(|v| v.rsplit([' ', '=']).next().unwrap_or(v).to_owned())
        .unwrap_or_else(|| "-".to_owned())
}

async fn origin(
    State(origin): State<Origin>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(script): Query<Vec<(String, String)>>,
    body: axum::body::Bytes,
) -> Response {
    let n = origin.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let delay = origin.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if origin.fail.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("failure n={n}")).into_response();
    }
    let mut status = StatusCode::OK;
    let mut out = HeaderMap::new();
    for (k, v) in &script {
        match k.as_str() {
            "status" => status = v.parse::<u16>().ok().and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(status),
            "rh" => {
                if let Some((name, value)) = v.split_once(':') {
                    let value = value.trim().replace("{n}", &n.to_string());
                    out.append(
                        HeaderName::from_bytes(name.trim().as_bytes()).expect("header name"),
                        HeaderValue::from_str(&value).expect("header value"),
                    );
                }
            }
            _ => {}
        }
    }
    // An origin that answers conditionals itself, as tower-http's ServeDir does.
    if let (Some(inm), Some(etag)) = (headers.get("if-none-match"), out.get("etag")) {
        if inm == etag {
            return (StatusCode::NOT_MODIFIED, out).into_response();
        }
    }
    let lang = headers.get("accept-language").and_then(|v| v.to_str().ok()).unwrap_or("-");
    let text = format!(
        "n={n} method={method} path={} user={} lang={lang} body={}",
        uri.path(),
        user(&headers),
        String::from_utf8_lossy(&body)
    );
    (status, out, text).into_response()
}

/// One node: a `PostgresCache` (its own pool, local cache and listener) and a server with the layer.
pub(crate) struct Node {
    /// Purges what this node's layer stores (same cache, same namespace).
    pub(crate) http: HttpCache,
    pub(crate) addr: SocketAddr,
}

impl Node {
    pub(crate) fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }
}

/// Starts a node serving `app` behind a layer configured by `configure`.
pub(crate) async fn node<K: MakeKey>(
    settings: &CacheSettings,
    app: Router,
    configure: impl FnOnce(PgCacheLayer) -> PgCacheLayer<K>,
) -> Node {
    let cache = pgcache_tests::connect(settings).await.expect("connect");
    let layer = configure(PgCacheLayer::new(cache));
    let http = layer.http_cache();
    let addr = serve(app.layer(layer)).await;
    Node { http, addr }
}

/// Serves `app` on 127.0.0.1:0.
pub(crate) async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

/// A GET with a scripted response: `rh` headers for the origin to send.
pub(crate) fn scripted(path: &str, response_headers: &[&str]) -> String {
    let mut url = format!("{path}?");
    for (i, h) in response_headers.iter().enumerate() {
        if i > 0 {
            url.push('&');
        }
        url.push_str("rh=");
        url.push_str(&encode(h));
    }
    url
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A response's status, `Cache-Status`, `Age` and body.
#[derive(Debug)]
pub(crate) struct Got {
    pub(crate) status: u16,
    pub(crate) cache: String,
    pub(crate) age: Option<u64>,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

impl Got {
    pub(crate) fn hit(&self) -> bool {
        self.cache.contains("; hit")
    }
}

pub(crate) async fn got(resp: reqwest::Response) -> Got {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let cache = headers.get("cache-status").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let age = headers.get("age").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let body = resp.text().await.expect("body");
    Got { status, cache, age, headers, body }
}

/// The `Host` every request sends unless a test says otherwise, so that nodes on different ports
/// share entries, as nodes behind one load balancer do.
pub(crate) const HOST: &str = "app.test";

/// A request builder with the shared `Host`.
pub(crate) fn request(method: reqwest::Method, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
    client().request(method, url).header("host", HOST)
}

/// GET `url` with extra request headers.
pub(crate) async fn get(url: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = client().get(url);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", HOST);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    got(req.send().await.expect("request")).await
}
