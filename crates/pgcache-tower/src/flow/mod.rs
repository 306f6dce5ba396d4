//! The request flow. [`run`] classifies a request: what the cache cannot serve goes straight to the
//! inner service ([`pass`], with [`invalidate`] after an unsafe method); a cacheable request is read
//! once into a [`Ctx`] and handed to a [`Flow`] (`cacheable.rs`), whose methods read top-down through
//! lookup, fill and refresh.
//!
//! They build on leaves that know nothing of the flow: `inner.rs` (the inner service's bounds),
//! `ctx.rs` (the request, rebuilt for the inner service), `respond.rs` (answers from stored responses,
//! `Cache-Status`) and `place.rs` (what is stored, and under which keys). Cache failures are logged and
//! the request is served by the inner service.

mod cacheable;
mod ctx;
mod inner;
mod place;
mod respond;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, Uri};
use http_body::Body;
use pgcache_core::{CacheStore, Entry};
use tower_service::Service;

use crate::body::{read_request, PgBody, ReplayBody, RequestBody};
use crate::config::{Config, MakeKey, Shared};
use crate::key;
use crate::policy::{self, CacheControl};
use crate::status::CacheStatusMember;

use self::cacheable::Flow;
use self::ctx::Ctx;
use self::inner::{call, Inner, ResBody, Resp};
use self::respond::finish;

/// A request after the steps [`start`] takes without waiting.
pub(crate) enum Started<B, RB: Body> {
    /// Answered already: a fresh hit from the local cache.
    Answered(Resp<RB>),
    /// A cacheable GET or HEAD, read and keyed, for [`keyed`]; with what the local cache answered for its
    /// primary key, if anything.
    Keyed(Box<Ctx>, Option<Entry>),
    /// The key hook declined: to the inner service as it is.
    Pass(Request<B>, CacheStatusMember),
    /// Anything else, untouched, for [`run`].
    Request(Request<B>),
}

/// The steps of [`run`] that never wait, for a GET or HEAD without a body: classified, keyed, and, when
/// the core's local cache answers at once with a fresh response, answered. The service's future is then
/// ready at once: no flow is built, boxed or polled for a local hit.
pub(crate) fn start<B, RB, K>(shared: &Shared, make_key: &K, req: Request<B>) -> Started<B, RB>
where
    B: ReplayBody,
    RB: ResBody,
    K: MakeKey,
{
    let cfg = &shared.config;
    let candidate = matches!(*req.method(), Method::GET | Method::HEAD)
        && !is_grpc(req.headers())
        && bypass_reason(cfg, req.method(), req.headers()).is_none()
        && req.body().is_end_stream();
    if !candidate {
        return Started::Request(req);
    }
    let (parts, _empty) = req.into_parts();
    let Some(custom) = make_key.make_key(&parts) else {
        let req = Request::from_parts(parts, B::from_bytes(Bytes::new()));
        return Started::Pass(req, CacheStatusMember::fwd("bypass").detail("key"));
    };
    let keys = key::primary(cfg, &shared.keys, &parts, &custom, None, false);
    pgcache_core::telemetry::record_key_hash(&keys.primary);
    let ctx = Ctx::new(cfg, parts, Bytes::new(), keys, false);
    let peeked = shared.store.peek_local(&ctx.keys.primary);
    if let Some(resp) = peeked.as_ref().and_then(|entry| cacheable::fresh_now(shared, &ctx, entry)) {
        return Started::Answered(resp);
    }
    Started::Keyed(Box::new(ctx), peeked)
}

/// Goes on with a request [`start`] read and keyed.
pub(crate) async fn keyed<S, B, RB>(
    shared: Arc<Shared>,
    inner: S,
    ctx: Box<Ctx>,
    peeked: Option<Entry>,
) -> Result<Resp<RB>, S::Error>
where
    S: Inner<B, RB>,
    B: ReplayBody,
    RB: ResBody,
{
    Flow::new(shared, inner, *ctx).lookup(peeked).await
}

/// Straight to the inner service, as [`start`] decided.
pub(crate) async fn passed<S, B, RB>(
    shared: Arc<Shared>,
    inner: S,
    req: Request<B>,
    status: CacheStatusMember,
) -> Result<Resp<RB>, S::Error>
where
    S: Inner<B, RB>,
    B: ReplayBody,
    RB: ResBody,
{
    pass(&shared, inner, req, status).await
}

/// Handles one request: the entry point of [`PgCache`](crate::PgCache)'s future for every request
/// [`start`] did not take.
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
            return Box::pin(pass(&shared, inner, req, CacheStatusMember::fwd("bypass").detail("grpc"))).await;
        }
        if policy::is_unsafe(&method) && cfg.invalidate_unsafe {
            return Box::pin(invalidate(&shared, inner, req)).await;
        }
        return Box::pin(pass(&shared, inner, req, CacheStatusMember::fwd("method"))).await;
    }
    if let Some(reason) = bypass_reason(cfg, &method, req.headers()) {
        return Box::pin(pass(&shared, inner, req, CacheStatusMember::fwd("bypass").detail(reason))).await;
    }
    let (parts, body) = req.into_parts();
    let body = if method == Method::POST {
        match read_request(body, cfg.max_request_body_bytes).await {
            RequestBody::Complete(bytes) => bytes,
            RequestBody::TooLarge(body) => {
                let status = CacheStatusMember::fwd("bypass").detail("request-too-large");
                return Box::pin(pass(&shared, inner, Request::from_parts(parts, body), status)).await;
            }
            RequestBody::Failed(body) => {
                // The inner service sees the body fail as it would without the layer (its own
                // rejection: 400, or 413 behind a body limit), and nothing is cached.
                let status = CacheStatusMember::fwd("bypass").detail("request-body-error");
                return Box::pin(pass(&shared, inner, Request::from_parts(parts, body), status)).await;
            }
        }
    } else if !body.is_end_stream() {
        let status = CacheStatusMember::fwd("bypass").detail("request-body");
        return Box::pin(pass(&shared, inner, Request::from_parts(parts, body), status)).await;
    } else {
        Bytes::new()
    };
    let Some(custom) = make_key.make_key(&parts) else {
        let req = Request::from_parts(parts, B::from_bytes(body));
        return Box::pin(pass(&shared, inner, req, CacheStatusMember::fwd("bypass").detail("key"))).await;
    };
    let digest = (method == Method::POST).then(|| key::body_digest(&body));
    let keys = key::primary(cfg, &shared.keys, &parts, &custom, digest.as_ref(), grpc);
    pgcache_core::telemetry::record_key_hash(&keys.primary);
    let ctx = Ctx::new(cfg, parts, body, keys, grpc);
    Flow::new(shared, inner, ctx).lookup(None).await
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().get(..16).is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc")))
}

fn bypass_reason(cfg: &Config, method: &Method, headers: &HeaderMap) -> Option<&'static str> {
    // A GET's `Range` is answered from a fresh stored response (and forwarded otherwise); HEAD ignores
    // it (RFC 9110 §14.2); ranges of any other method are not the cache's business.
    if headers.contains_key(header::RANGE) && !matches!(*method, Method::GET | Method::HEAD) {
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
    Ok(finish(resp.map(PgBody::passthrough), &status, &shared.config, false))
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
    Ok(finish(resp.map(PgBody::passthrough), &status, &shared.config, false))
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
