//! The request flow: classify, look up, serve (fresh, stale, 304), fill on a miss through the core's
//! dogpile-safe `get_or_load`, revalidate (once per stale version across nodes), and invalidate after
//! unsafe methods. Cache failures are logged and the request is served by the inner service.
//!
//! This file classifies and looks up; `fill.rs` handles misses, `refresh.rs` stale entries.

mod fill;
mod refresh;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use pgcache_core::{BoxError, Entry, Error, Fill, Loaded, Loader, SetOptions, Source, Ttl};
use tower_service::Service;

use crate::body::{buffer, read_request, Buffered, PgBody, ReplayBody};
use crate::entry::{encode_stored, now_ms, Record, Stored};
use crate::key::{self, Keys};
use crate::layer::{Config, Shared};
use crate::policy::{self, CacheControl, Decision, RequestFacts, PGCACHE_CONTROL};
use crate::status::Status;

use self::fill::miss;
use self::refresh::serve;

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

type Resp<RB> = Response<PgBody<RB>>;

/// How long a refresh result stays under its refresh key (only concurrent requests read it).
const REFRESH_RESULT_TTL: Duration = Duration::from_secs(5);
/// How long a failed fill or refresh is remembered, so waiters go to the handler in parallel.
const ERROR_PASS_TTL: Duration = Duration::from_secs(1);

/// What a leader's loader hands back to its own request, beside the value it gives the store.
enum Out<RB: Body, E> {
    /// The response was stored; serve it from the record.
    Stored(Box<Stored>),
    /// The handler answered a revalidation with 304; the freshened record was stored.
    Validated(Box<Stored>),
    /// Not stored: this response (streamed), with the reason.
    Response(Resp<RB>, &'static str),
    /// The inner service failed.
    Error(E),
}

type Side<RB, E> = Arc<Mutex<Option<Out<RB, E>>>>;

fn side<RB: Body, E>() -> Side<RB, E> {
    Arc::new(Mutex::new(None))
}

fn put<RB: Body, E>(side: &Side<RB, E>, out: Out<RB, E>) {
    if let Ok(mut slot) = side.lock() {
        *slot = Some(out);
    }
}

fn take<RB: Body, E>(side: &Side<RB, E>) -> Option<Out<RB, E>> {
    side.lock().ok().and_then(|mut slot| slot.take())
}

/// One cacheable request, shared with loaders and background refreshes.
struct Ctx {
    sh: Arc<Shared>,
    parts: Parts,
    body: Bytes,
    keys: Keys,
    facts: RequestFacts,
    head: bool,
    /// Carries `Authorization` or (allowed) `Cookie`: never leads a collapsed fill nor leaves a
    /// hit-for-pass marker, so one user's request cannot make a URL uncacheable for everyone.
    credentialed: bool,
    force_revalidate: bool,
    only_if_cached: bool,
}

/// How to rebuild the request for the inner service.
enum Mode<'a> {
    /// As the client sent it.
    Forward,
    /// To fill the cache: GET for HEAD, client conditionals and ranges removed.
    Fill,
    /// As `Fill`, with the stored response's validators.
    Revalidate(&'a Stored),
}

impl Ctx {
    fn config(&self) -> &Config {
        &self.sh.config
    }

    fn request<B: ReplayBody>(&self, mode: Mode<'_>) -> Request<B> {
        let mut req = Request::new(B::from_bytes(self.body.clone()));
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = self.parts.uri.clone();
        *req.version_mut() = self.parts.version;
        *req.headers_mut() = self.parts.headers.clone();
        *req.extensions_mut() = self.parts.extensions.clone();
        if matches!(mode, Mode::Forward) {
            return req;
        }
        if self.head {
            *req.method_mut() = Method::GET;
        }
        let headers = req.headers_mut();
        for name in [
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_UNMODIFIED_SINCE,
            header::IF_RANGE,
            header::RANGE,
        ] {
            headers.remove(name);
        }
        if let Mode::Revalidate(stored) = mode {
            if let Some(etag) = stored.headers.get(header::ETAG) {
                headers.insert(header::IF_NONE_MATCH, etag.clone());
            }
            if let Some(modified) = stored.headers.get(header::LAST_MODIFIED) {
                headers.insert(header::IF_MODIFIED_SINCE, modified.clone());
            }
        }
        req
    }

    fn base_tags(&self) -> Vec<String> {
        vec![self.keys.all_tag.clone(), self.keys.uri_tag.clone()]
    }

    fn vary_matches(&self, stored: &Stored) -> bool {
        let names: Vec<HeaderName> = stored.vary.iter().map(|(n, _)| n.clone()).collect();
        key::selected(&names, &self.parts.headers) == stored.vary
    }
}

async fn call<S, Req>(inner: &mut S, req: Req) -> Result<S::Response, S::Error>
where
    S: Service<Req>,
{
    std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
    inner.call(req).await
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().get(..16).is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc")))
}

/// Removes the targeted field, adds `Cache-Status`, drops the body of HEAD answers.
fn finish<RB: Body>(sh: &Shared, mut resp: Resp<RB>, status: &Status, strip_body: bool) -> Resp<RB> {
    resp.headers_mut().remove(PGCACHE_CONTROL);
    status.apply(&sh.config.status_name, resp.headers_mut());
    if strip_body {
        *resp.body_mut() = PgBody::empty();
    }
    resp
}

/// The entry point of the service.
pub(crate) async fn handle<S, B, RB>(sh: Arc<Shared>, inner: S, req: Request<B>) -> Result<Resp<RB>, S::Error>
where
    S: Inner<B, RB>,
    B: ReplayBody,
    RB: ResBody,
{
    let cfg = &sh.config;
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
            return pass(&sh, inner, req, Status::fwd("bypass").detail("grpc")).await;
        }
        if policy::is_unsafe(&method) && cfg.invalidate_unsafe {
            return unsafe_request(sh, inner, req).await;
        }
        return pass(&sh, inner, req, Status::fwd("method")).await;
    }
    if let Some(reason) = bypass_reason(cfg, req.headers()) {
        return pass(&sh, inner, req, Status::fwd("bypass").detail(reason)).await;
    }
    let (parts, body) = req.into_parts();
    let body = if method == Method::POST {
        match read_request(body, cfg.max_request_body_bytes).await {
            Ok(bytes) => bytes,
            Err(body) => {
                let status = Status::fwd("bypass").detail("request-too-large");
                return pass(&sh, inner, Request::from_parts(parts, body), status).await;
            }
        }
    } else if !body.is_end_stream() {
        return pass(&sh, inner, Request::from_parts(parts, body), Status::fwd("bypass").detail("request-body")).await;
    } else {
        Bytes::new()
    };
    let digest = (method == Method::POST).then(|| key::body_digest(&body));
    let Some(keys) = key::primary(cfg, &parts, digest.as_ref(), grpc) else {
        let req = Request::from_parts(parts, B::from_bytes(body));
        return pass(&sh, inner, req, Status::fwd("bypass").detail("key")).await;
    };
    let client = CacheControl::parse(&parts.headers, &header::CACHE_CONTROL);
    let pragma = parts.headers.get(header::PRAGMA).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"));
    let authorization = parts.headers.contains_key(header::AUTHORIZATION);
    let ctx = Arc::new(Ctx {
        facts: RequestFacts { authorization, grpc },
        credentialed: authorization || parts.headers.contains_key(header::COOKIE),
        force_revalidate: cfg.honor_client_no_cache && (client.no_cache || client.max_age == Some(0) || pragma),
        only_if_cached: client.only_if_cached,
        head: method == Method::HEAD,
        sh: Arc::clone(&sh),
        parts,
        body,
        keys,
    });
    lookup(ctx, inner).await
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

/// Straight to the inner service, body untouched.
async fn pass<S, B, RB>(sh: &Shared, mut inner: S, req: Request<B>, mut status: Status) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: Body<Data = Bytes>,
{
    let resp = call(&mut inner, req).await?;
    status.fwd_status = Some(resp.status().as_u16());
    Ok(finish(sh, resp.map(PgBody::passthrough), &status, false))
}

/// An unsafe method: forward, then invalidate the URI on success (RFC 9111 §4.4, RFC 9875 §3).
async fn unsafe_request<S, B, RB>(sh: Arc<Shared>, mut inner: S, req: Request<B>) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: Body<Data = Bytes>,
{
    let method = req.method().clone();
    let uri = req.uri().clone();
    let authority = key::authority_of(req.uri(), req.headers());
    let resp = call(&mut inner, req).await?;
    let mut status = Status::fwd("method");
    status.fwd_status = Some(resp.status().as_u16());
    if policy::invalidates(&method, resp.status()) {
        let tags = invalidation_tags(&sh.config, &authority, &uri, resp.headers());
        let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        status = match sh.store.delete_tags(&refs).await {
            Ok(_) => status.detail("invalidated"),
            Err(e) => {
                tracing::warn!(target: "pgcache::tower", error = %e, uri = %uri, "could not invalidate after an unsafe request");
                status.detail("invalidation-failed")
            }
        };
    }
    Ok(finish(&sh, resp.map(PgBody::passthrough), &status, false))
}

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

async fn lookup<S, B, RB>(ctx: Arc<Ctx>, inner: S) -> Result<Resp<RB>, S::Error>
where
    S: Inner<B, RB>,
    B: ReplayBody,
    RB: ResBody,
{
    let primary = ctx.keys.primary.clone();
    let entry = match ctx.sh.store.get_entry(&primary).await {
        Ok(entry) => entry,
        Err(e) => return unavailable(ctx, inner, e).await,
    };
    let Some(entry) = entry else {
        return miss(ctx, inner, primary, "uri-miss").await;
    };
    match Record::decode(&entry.value) {
        Some(Record::Response(stored)) if ctx.vary_matches(&stored) => serve(ctx, inner, primary, stored, entry).await,
        Some(Record::Response(stored)) => {
            let names = stored.vary.iter().map(|(n, _)| n.clone()).collect();
            variant(ctx, inner, names).await
        }
        Some(Record::Variants(names)) => variant(ctx, inner, names).await,
        Some(Record::Pass(_)) => forward(ctx, inner, Status::fwd("uri-miss").detail("pass")).await,
        None => miss(ctx, inner, primary, "uri-miss").await,
    }
}

async fn variant<S, B, RB>(ctx: Arc<Ctx>, inner: S, names: Vec<HeaderName>) -> Result<Resp<RB>, S::Error>
where
    S: Inner<B, RB>,
    B: ReplayBody,
    RB: ResBody,
{
    let selected = key::selected(&names, &ctx.parts.headers);
    let vkey = key::variant(&ctx.keys.primary, &selected);
    match ctx.sh.store.get_entry(&vkey).await {
        Err(e) => unavailable(ctx, inner, e).await,
        Ok(Some(entry)) => match Record::decode(&entry.value) {
            Some(Record::Response(stored)) if ctx.vary_matches(&stored) => serve(ctx, inner, vkey, stored, entry).await,
            Some(Record::Pass(_)) => forward(ctx, inner, Status::fwd("vary-miss").detail("pass")).await,
            _ => miss(ctx, inner, vkey, "vary-miss").await,
        },
        Ok(None) => miss(ctx, inner, vkey, "vary-miss").await,
    }
}

fn ttl_left(stored: &Stored, age: Duration) -> i64 {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    (ms(stored.freshness.lifetime) - ms(age)).div_euclid(1000)
}

/// A response from a stored record: 304 when the client's conditional matches, body dropped for HEAD.
fn respond<RB: Body>(ctx: &Ctx, stored: &Stored, age: Duration, status: Status) -> Resp<RB> {
    let conditional = ctx.parts.headers.contains_key(header::IF_NONE_MATCH)
        || ctx.parts.headers.contains_key(header::IF_MODIFIED_SINCE);
    let get_like = matches!(ctx.parts.method, Method::GET | Method::HEAD);
    let mut resp = if get_like
        && conditional
        && stored.status.is_success()
        && policy::not_modified(&ctx.parts.headers, &stored.headers)
    {
        let mut resp = Response::new(PgBody::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        for name in policy::NOT_MODIFIED_HEADERS {
            for value in stored.headers.get_all(&name) {
                resp.headers_mut().append(name.clone(), value.clone());
            }
        }
        resp
    } else {
        let body =
            if ctx.head { PgBody::empty() } else { PgBody::replay(stored.body.clone(), stored.trailers.clone()) };
        let mut resp = Response::new(body);
        *resp.status_mut() = stored.status;
        *resp.headers_mut() = stored.headers.clone();
        resp
    };
    if let Ok(age) = HeaderValue::from_str(&age.as_secs().to_string()) {
        resp.headers_mut().insert(header::AGE, age);
    }
    finish(&ctx.sh, resp, &status, false)
}

/// The inner service answers for a request the cache cannot help with.
async fn forward<S, B, RB>(ctx: Arc<Ctx>, mut inner: S, mut status: Status) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>>,
    B: ReplayBody,
    RB: Body<Data = Bytes>,
{
    let resp = call(&mut inner, ctx.request(Mode::Forward)).await?;
    status.fwd_status = Some(resp.status().as_u16());
    Ok(finish(&ctx.sh, resp.map(PgBody::passthrough), &status, false))
}

/// Fail open: the store failed, the handler answers.
async fn unavailable<S, B, RB>(ctx: Arc<Ctx>, inner: S, err: Error) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>>,
    B: ReplayBody,
    RB: Body<Data = Bytes>,
{
    tracing::warn!(target: "pgcache::tower", error = %err, "HTTP cache unavailable; serving from the handler");
    forward(ctx, inner, Status::fwd("miss").detail("cache-unavailable")).await
}
