//! The request flow. [`run`] classifies a request: what the cache cannot serve goes straight to the
//! inner service ([`pass`], with [`invalidate`] after an unsafe method); a cacheable request is read
//! once into a [`Ctx`] and handed to a [`Flow`], whose methods read top-down:
//!
//! - `lookup.rs`: `lookup` → `variant` → `serve` (fresh hit, or stale-while-revalidate);
//! - `fill.rs`: `miss` → the dogpile-safe `fill` through the core's `get_or_load` → `waiter`;
//! - `refresh.rs`: `revalidate` (once per stale version across nodes, stale-if-error) and the
//!   background `refresh`.
//!
//! They build on leaves that know nothing of the flow: `ctx.rs` (the request, rebuilt for the inner
//! service), `respond.rs` (answers from stored responses, `Cache-Status`) and `place.rs` (what is
//! stored, and under which keys). Cache failures are logged and the request is served by the inner
//! service.

mod ctx;
mod fill;
mod lookup;
mod place;
mod refresh;
mod respond;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, Uri};
use http_body::Body;
use pgcache_core::{CacheStore, Error};
use tower_service::Service;

use crate::body::{read_request, PgBody, ReplayBody, RequestBody};
use crate::config::{Config, MakeKey, Shared};
use crate::entry::Stored;
use crate::key;
use crate::policy::{self, CacheControl};
use crate::status::CacheStatusMember;

use self::ctx::{Ctx, Mode};
use self::place::{Placement, Rulebook};
use self::respond::{finish, from_stored};

/// The inner services the layer can wrap: the bounds every step of the flow needs, named once.
pub(crate) trait Inner<B, RB>:
    Service<Request<B>, Response = Response<RB>, Future: Send + 'static, Error: Send + 'static> + Clone + Send + 'static
{
}

impl<T, B, RB> Inner<B, RB> for T
where
    T: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    T::Future: Send + 'static,
    T::Error: Send + 'static,
{
}

/// The response bodies the layer can pass through or buffer.
pub(crate) trait ResBody: Body<Data = Bytes, Error: Send + 'static> + Send + 'static {}

impl<T> ResBody for T
where
    T: Body<Data = Bytes> + Send + 'static,
    T::Error: Send + 'static,
{
}

/// What the service answers with.
pub(crate) type Resp<RB> = Response<PgBody<RB>>;

/// How long a refresh result stays under its refresh key (only concurrent requests read it).
const REFRESH_RESULT_TTL: Duration = Duration::from_secs(5);
/// How long a failed fill or refresh is remembered, so waiters go to the handler in parallel.
const ERROR_PASS_TTL: Duration = Duration::from_secs(1);

/// Handles one request: the entry point of [`PgCache`](crate::PgCache)'s future.
pub(crate) async fn run<S, B, RB, K>(
    shared: Arc<Shared>,
    inner: S,
    make_key: K,
    req: Request<B>,
) -> Result<Resp<RB>, S::Error>
where
    S: Inner<B, RB>,
    B: ReplayBody,
    RB: ResBody,
    K: MakeKey,
{
    let cfg = &shared.config;
    let grpc = is_grpc(req.headers());
    let method = req.method().clone();
    let cacheable = match method {
        Method::GET | Method::HEAD => !grpc,
        Method::POST if grpc => cfg.grpc_methods.iter().any(|m| m == req.uri().path()),
        Method::POST => cfg.cache_post,
        _ => false,
    };
    if !cacheable {
        if grpc {
            // gRPC calls are POSTs but never invalidate: streaming and unlisted methods pass through.
            return pass(&shared, inner, req, CacheStatusMember::fwd("bypass").detail("grpc")).await;
        }
        if policy::is_unsafe(&method) && cfg.invalidate_unsafe {
            return invalidate(&shared, inner, req).await;
        }
        return pass(&shared, inner, req, CacheStatusMember::fwd("method")).await;
    }
    if let Some(reason) = bypass_reason(cfg, req.headers()) {
        return pass(&shared, inner, req, CacheStatusMember::fwd("bypass").detail(reason)).await;
    }
    let (parts, body) = req.into_parts();
    let body = if method == Method::POST {
        match read_request(body, cfg.max_request_body_bytes).await {
            RequestBody::Complete(bytes) => bytes,
            RequestBody::TooLarge(body) => {
                let status = CacheStatusMember::fwd("bypass").detail("request-too-large");
                return pass(&shared, inner, Request::from_parts(parts, body), status).await;
            }
            RequestBody::Failed(body) => {
                // The inner service sees the body fail as it would without the layer (its own
                // rejection: 400, or 413 behind a body limit), and nothing is cached.
                let status = CacheStatusMember::fwd("bypass").detail("request-body-error");
                return pass(&shared, inner, Request::from_parts(parts, body), status).await;
            }
        }
    } else if !body.is_end_stream() {
        let status = CacheStatusMember::fwd("bypass").detail("request-body");
        return pass(&shared, inner, Request::from_parts(parts, body), status).await;
    } else {
        Bytes::new()
    };
    let Some(custom) = make_key.make_key(&parts) else {
        let req = Request::from_parts(parts, B::from_bytes(body));
        return pass(&shared, inner, req, CacheStatusMember::fwd("bypass").detail("key")).await;
    };
    let digest = (method == Method::POST).then(|| key::body_digest(&body));
    let keys = key::primary(cfg, &parts, &custom, digest.as_ref(), grpc);
    let ctx = Ctx::new(cfg, parts, body, keys, grpc);
    Flow::new(shared, inner, ctx).lookup().await
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().get(..16).is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc")))
}

fn bypass_reason(cfg: &Config, headers: &HeaderMap) -> Option<&'static str> {
    if headers.contains_key(header::RANGE) {
        return Some("range");
    }
    if headers.contains_key(header::UPGRADE) {
        return Some("upgrade");
    }
    if !cfg.allow_cookies && headers.contains_key(header::COOKIE) {
        return Some("cookie");
    }
    if cfg.honor_client_no_cache && CacheControl::parse(headers, &header::CACHE_CONTROL).no_store {
        return Some("no-store");
    }
    None
}

/// Calls a service once it is ready.
async fn call<S, Req>(inner: &mut S, req: Req) -> Result<S::Response, S::Error>
where
    S: Service<Req>,
{
    std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
    inner.call(req).await
}

/// Straight to the inner service, body untouched.
async fn pass<S, B, RB>(
    shared: &Shared,
    mut inner: S,
    req: Request<B>,
    status: CacheStatusMember,
) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: Body<Data = Bytes>,
{
    let resp = call(&mut inner, req).await?;
    let status = status.fwd_status(resp.status().as_u16());
    Ok(finish(resp.map(PgBody::passthrough), &status, &shared.config.status_name, false))
}

/// An unsafe method: forward, then invalidate the URI on success (RFC 9111 §4.4, RFC 9875 §3).
async fn invalidate<S, B, RB>(shared: &Shared, mut inner: S, req: Request<B>) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: Body<Data = Bytes>,
{
    let method = req.method().clone();
    let uri = req.uri().clone();
    let authority = key::authority_of(req.uri(), req.headers());
    let resp = call(&mut inner, req).await?;
    let mut status = CacheStatusMember::fwd("method").fwd_status(resp.status().as_u16());
    if policy::invalidates(&method, resp.status()) {
        let tags = invalidation_tags(&shared.config, &authority, &uri, resp.headers());
        let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        status = match shared.store.delete_tags(&refs).await {
            Ok(_) => status.detail("invalidated"),
            Err(e) => {
                tracing::warn!(target: "pgcache::tower", error = %e, uri = %uri, "could not invalidate after an unsafe request");
                status.detail("invalidation-failed")
            }
        };
    }
    Ok(finish(resp.map(PgBody::passthrough), &status, &shared.config.status_name, false))
}

/// The URI, same-origin `Location`/`Content-Location` targets and `Cache-Group-Invalidation` groups.
fn invalidation_tags(cfg: &Config, authority: &str, uri: &Uri, headers: &HeaderMap) -> Vec<String> {
    let ns = &cfg.namespace;
    let mut tags = vec![key::uri_tag(ns, authority, uri.path())];
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(target) = headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<Uri>().ok()) else {
            continue;
        };
        let same_origin = match target.authority() {
            None => target.path().starts_with('/'),
            Some(a) => a.as_str().eq_ignore_ascii_case(authority),
        };
        if same_origin {
            tags.push(key::uri_tag(ns, authority, target.path()));
        }
    }
    for group in key::groups(headers, "cache-group-invalidation") {
        tags.push(key::group_tag(ns, authority, &group));
    }
    tags.sort();
    tags.dedup();
    tags
}

/// One cacheable request on its way through the cache: the layer's shared state, the inner service
/// (a ready clone, cloned again into loaders and background refreshes) and the request.
pub(crate) struct Flow<S, B, RB> {
    shared: Arc<Shared>,
    inner: S,
    ctx: Arc<Ctx>,
    _types: PhantomData<fn(B) -> RB>,
}

impl<S: Clone, B, RB> Clone for Flow<S, B, RB> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            inner: self.inner.clone(),
            ctx: Arc::clone(&self.ctx),
            _types: PhantomData,
        }
    }
}

impl<S, B, RB> Flow<S, B, RB>
where
    S: Inner<B, RB>,
    B: ReplayBody,
    RB: ResBody,
{
    fn new(shared: Arc<Shared>, inner: S, ctx: Ctx) -> Self {
        Self { shared, inner, ctx: Arc::new(ctx), _types: PhantomData }
    }

    /// The cache's name in `Cache-Status`.
    fn name(&self) -> &str {
        &self.shared.config.status_name
    }

    /// Where this request's responses are stored.
    fn placement(&self) -> Placement<'_> {
        Placement { store: &self.shared.store, namespace: &self.shared.config.namespace, keys: &self.ctx.keys }
    }

    /// What the storage rules need.
    fn rulebook(&self) -> Rulebook<'_> {
        Rulebook {
            rules: &self.shared.rules,
            facts: self.ctx.facts,
            max_body_bytes: self.shared.config.max_body_bytes,
            request: self.ctx.headers(),
        }
    }

    /// The finished answer from a stored response of this age.
    fn respond(&self, stored: &Stored, age: Duration, status: CacheStatusMember) -> Resp<RB> {
        finish(from_stored(&self.ctx.parts, stored, age), &status, self.name(), false)
    }

    /// A response of the inner service, finished (its body dropped for HEAD: fills are GETs).
    fn finish_fill(&self, resp: Resp<RB>, status: CacheStatusMember) -> Resp<RB> {
        finish(resp, &status, self.name(), self.ctx.head)
    }

    /// The inner service answers as the client asked; nothing is stored.
    async fn forward(mut self, status: CacheStatusMember) -> Result<Resp<RB>, S::Error> {
        let resp = call(&mut self.inner, self.ctx.request(Mode::Forward)).await?;
        let status = status.fwd_status(resp.status().as_u16());
        Ok(finish(resp.map(PgBody::passthrough), &status, self.name(), false))
    }

    /// Fail open: the cache failed, the inner service answers.
    async fn unavailable(self, err: Error) -> Result<Resp<RB>, S::Error> {
        tracing::warn!(target: "pgcache::tower", error = %err, "HTTP cache unavailable; serving from the handler");
        self.forward(CacheStatusMember::fwd("miss").detail("cache-unavailable")).await
    }
}
