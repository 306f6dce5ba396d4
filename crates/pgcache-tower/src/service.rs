//! [`PgCache`]: the service [`PgCacheLayer`](crate::PgCacheLayer) wraps around the inner service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use tower_service::Service;

use crate::body::{PgBody, ReplayBody};
use crate::flow;
use crate::layer::Shared;

/// The caching service; see [`PgCacheLayer`](crate::PgCacheLayer).
///
/// It keeps the inner service's error type: cache failures never become errors (the request is served
/// by the inner service instead), and inner errors are returned unchanged (and never cached).
#[derive(Clone)]
pub struct PgCache<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for PgCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCache").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

impl<S> PgCache<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B, RB> Service<Request<B>> for PgCache<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: ReplayBody,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Send + 'static,
{
    type Response = Response<PgBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was not polled ready stays behind; the ready one serves this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture { inner: Box::pin(flow::handle(Arc::clone(&self.shared), inner, req)) }
    }
}

/// The response future of [`PgCache`].
pub struct ResponseFuture<T> {
    inner: BoxFuture<'static, T>,
}

impl<T> std::fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.inner.as_mut().poll(cx)
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
        assert_eq!(cache_status(&resp), "pgcache; fwd=uri-miss; fwd-status=200; ttl=30; detail=cache-unavailable");
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
