//! [`PgCache`]: the service [`PgCacheLayer`](crate::PgCacheLayer) wraps around the inner service.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use tower_service::Service;
use tracing::Instrument;

use crate::body::{PgBody, ReplayBody};
use crate::config::{DefaultKey, MakeKey, Shared};
use crate::flow;
use crate::future::ResponseFuture;

/// The caching service; see [`PgCacheLayer`](crate::PgCacheLayer).
///
/// It keeps the inner service's error type: cache failures never become errors (the request is served
/// by the inner service instead), and inner errors are returned unchanged (and never cached).
#[derive(Clone)]
pub struct PgCache<S, K = DefaultKey> {
    inner: S,
    shared: Arc<Shared>,
    make_key: K,
}

impl<S, K> std::fmt::Debug for PgCache<S, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCache").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

impl<S, K> PgCache<S, K> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, make_key: K) -> Self {
        Self { inner, shared, make_key }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service (the cache's configuration is dropped).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, K, B, RB> Service<Request<B>> for PgCache<S, K>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    K: MakeKey,
    B: ReplayBody,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Send + 'static,
{
    type Response = Response<PgBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<RB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was not polled ready stays behind; the ready one serves this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        // One span per lookup (at DEBUG; a disabled span costs one static check): the method, and once
        // known the primary key's hash (never the URI, which may carry personal data) and the final
        // Cache-Status outcome. Its timing is the span's own.
        let span = tracing::debug_span!(
            target: "pgcache::http",
            "pgcache.http.lookup",
            cache.operation = "http_lookup",
            http.request.method = %req.method(),
            cache.key_hash = tracing::field::Empty,
            cache.outcome = tracing::field::Empty,
        );
        let shared = Arc::clone(&self.shared);
        let flow: BoxFuture<'static, _> = match span.in_scope(|| flow::start(&self.shared, &self.make_key, req)) {
            // The ready service is dropped unused: its reservation (a concurrency permit) goes with it.
            flow::Started::Answered(resp) => return ResponseFuture::ready(resp),
            flow::Started::Keyed(ctx, peeked) => Box::pin(flow::keyed(shared, inner, ctx, peeked).instrument(span)),
            flow::Started::Pass(req, status) => Box::pin(flow::passed(shared, inner, req, status).instrument(span)),
            flow::Started::Request(req) => {
                Box::pin(flow::run(shared, inner, self.make_key.clone(), req).instrument(span))
            }
        };
        ResponseFuture::new(flow)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    use axum_core::body::Body;
    use http_body_util::{BodyExt, Full};
    use pgcache_core::NullCache;
    use tower::{service_fn, Layer, ServiceExt};

    use crate::PgCacheLayer;

    async fn echo_method(req: Request<Body>) -> Result<Response<Full<Bytes>>, Infallible> {
        let mut resp = Response::new(Full::new(Bytes::from(req.method().to_string())));
        resp.headers_mut().insert("cache-control", http::HeaderValue::from_static("max-age=60"));
        resp.headers_mut().insert("pgcache-control", http::HeaderValue::from_static("max-age=30"));
        Ok(resp)
    }

    fn req(method: &str) -> Request<Body> {
        Request::builder().method(method).uri("/x").header("host", "h").body(Body::empty()).unwrap()
    }

    fn cache_status<B>(resp: &Response<B>) -> &str {
        resp.headers().get("cache-status").and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    #[tokio::test]
    async fn null_cache_fills_through_the_handler_and_strips_the_targeted_field() {
        let svc = PgCacheLayer::new(NullCache::new()).layer(service_fn(echo_method));
        let resp = svc.oneshot(req("GET")).await.unwrap();
        // A NullCache stores nothing by design: a plain miss, not "unavailable".
        assert_eq!(cache_status(&resp), "pgcache; fwd=uri-miss; fwd-status=200; ttl=30");
        assert!(resp.headers().get("pgcache-control").is_none());
        assert_eq!(resp.headers().get("cache-control").unwrap(), "max-age=60");
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "GET");
    }

    #[tokio::test]
    async fn head_is_filled_with_get_and_answered_without_body() {
        let svc = PgCacheLayer::new(NullCache::new()).layer(service_fn(echo_method));
        let resp = svc.oneshot(req("HEAD")).await.unwrap();
        assert_eq!(resp.headers().get("content-length").unwrap(), "3");
        assert!(resp.into_body().collect().await.unwrap().to_bytes().is_empty());
    }

    #[tokio::test]
    async fn unsafe_methods_invalidate_and_other_methods_pass() {
        let svc = PgCacheLayer::new(NullCache::new()).layer(service_fn(echo_method));
        let resp = svc.clone().oneshot(req("DELETE")).await.unwrap();
        assert_eq!(cache_status(&resp), "pgcache; fwd=method; fwd-status=200; detail=invalidated");
        let resp = svc.oneshot(req("OPTIONS")).await.unwrap();
        assert_eq!(cache_status(&resp), "pgcache; fwd=method; fwd-status=200");
    }

    #[tokio::test]
    async fn request_body_errors_reach_the_inner_service_and_are_reported() {
        // The inner service reports what it read: the prefix, then the body's error.
        let reader = service_fn(|req: Request<Body>| async move {
            let mut body = req.into_body();
            let mut seen = String::new();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => seen.push_str(&String::from_utf8_lossy(&frame.into_data().unwrap_or_default())),
                    Err(e) => seen.push_str(&format!("|error: {e}")),
                }
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(seen))))
        });
        let svc = PgCacheLayer::new(NullCache::new()).cache_post(true).layer(reader);
        let frames: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = vec![
            Ok(http_body::Frame::data(Bytes::from("{\"query\":"))),
            Err(std::io::Error::other("connection reset")),
        ];
        let body = Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(frames)));
        let req = Request::post("/graphql").header("host", "h").body(body).unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(cache_status(&resp), "pgcache; fwd=bypass; fwd-status=200; detail=request-body-error");
        let seen = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(seen, "{\"query\":|error: connection reset");
    }

    #[tokio::test]
    async fn custom_keys_that_decline_bypass() {
        let svc = PgCacheLayer::new(NullCache::new())
            .make_key(crate::KeyScope::Extend, |parts: &http::request::Parts| {
                parts.headers.get("x-tenant").map(|_| String::from("t"))
            })
            .layer(service_fn(echo_method));
        let resp = svc.oneshot(req("GET")).await.unwrap();
        assert_eq!(cache_status(&resp), "pgcache; fwd=bypass; fwd-status=200; detail=key");
    }

    #[tokio::test]
    async fn a_miss_behind_a_concurrency_limit_of_one_does_not_deadlock() {
        // The fill calls a clone of the inner service: the clone `poll_ready` reserved a permit on must not
        // still hold it then.
        let limited = tower::limit::ConcurrencyLimit::new(service_fn(echo_method), 1);
        let svc = PgCacheLayer::new(NullCache::new()).layer(limited);
        let answered = tokio::time::timeout(std::time::Duration::from_secs(10), svc.oneshot(req("GET"))).await;
        let resp = answered.expect("the miss deadlocked behind the concurrency limit").unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "GET");
    }

    #[tokio::test]
    async fn inner_errors_are_returned_unchanged() {
        let failing =
            service_fn(|_req: Request<Body>| async { Err::<Response<Full<Bytes>>, _>(std::io::Error::other("boom")) });
        let svc = PgCacheLayer::new(NullCache::new()).layer(failing);
        let err = svc.clone().oneshot(req("GET")).await.unwrap_err();
        assert_eq!(err.to_string(), "boom");
        let err = svc.oneshot(req("POST")).await.unwrap_err();
        assert_eq!(err.to_string(), "boom");
    }
}
