//! The request flow: classify, look up, serve (fresh, stale, 304), fill on a miss through the core's
//! dogpile-safe `get_or_load`, revalidate (once per stale version across nodes), and invalidate after
//! unsafe methods. Cache failures are logged and the request is served by the inner service.

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

type Resp<RB> = Response<PgBody<RB>>;

/// How long a refresh result stays under its refresh key (only concurrent requests read it).
const REFRESH_RESULT_TTL: Duration = Duration::from_secs(5);
/// How long a failed fill or refresh is remembered, so waiters go to the handler in parallel.
const ERROR_PASS_TTL: Duration = Duration::from_secs(1);

/// What a leader's loader hands back to its own request, beside the value it gives the store.
enum Out<RB: Body, E> {
    /// The response was stored; serve it from the record.
    Stored(Box<Stored>),
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
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: ReplayBody,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Send + 'static,
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
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: ReplayBody,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Send + 'static,
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
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: ReplayBody,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Send + 'static,
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

/// A usable stored response: fresh → hit; stale within stale-while-revalidate → hit and one background
/// refresh; otherwise (or `no-cache`) → revalidate now.
async fn serve<S, B, RB>(
    ctx: Arc<Ctx>,
    inner: S,
    key: String,
    stored: Box<Stored>,
    entry: Entry,
) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: ReplayBody,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Send + 'static,
{
    let age = stored.age(entry.expiry.remaining());
    let f = stored.freshness;
    let must_validate = f.no_cache || ctx.force_revalidate;
    if !must_validate && age < f.lifetime {
        let status = Status::hit().ttl(ttl_left(&stored, age));
        return Ok(respond(&ctx, &stored, age, status));
    }
    if !must_validate && age < f.lifetime + f.stale_while_revalidate {
        spawn_refresh(Arc::clone(&ctx), inner, key, stored.clone(), entry.version);
        let status = Status::hit().ttl(ttl_left(&stored, age)).detail("stale-while-revalidate");
        return Ok(respond(&ctx, &stored, age, status));
    }
    revalidate(ctx, inner, key, stored, entry.version, age).await
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

/// A miss on `key`: one request (across every node) runs the handler; the others wait and share it.
async fn miss<S, B, RB>(ctx: Arc<Ctx>, inner: S, key: String, fwd: &'static str) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: ReplayBody,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Send + 'static,
{
    if ctx.only_if_cached {
        let mut resp = Response::new(PgBody::empty());
        *resp.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        return Ok(finish(&ctx.sh, resp, &Status::default().detail("only-if-cached"), false));
    }
    if ctx.credentialed {
        return fill_direct(ctx, inner, key, fwd).await;
    }
    let out = side::<RB, S::Error>();
    let loader: Loader = {
        let (ctx, inner, key, out) = (Arc::clone(&ctx), inner.clone(), key.clone(), Arc::clone(&out));
        Box::new(move || Box::pin(fill_loader(ctx, inner, key, out)))
    };
    let result = ctx.sh.store.get_or_load(&key, loader).await;
    let mut status = Status::fwd(fwd);
    match (result, take(&out)) {
        (_, Some(Out::Error(e))) => Err(e),
        (_, Some(Out::Response(resp, reason))) => {
            status.fwd_status = Some(resp.status().as_u16());
            let head = ctx.head;
            Ok(finish(&ctx.sh, resp, &status.detail(reason), head))
        }
        (result, Some(Out::Stored(stored))) => {
            status.fwd_status = Some(stored.status.as_u16());
            status.ttl = Some(ttl_left(&stored, stored.freshness.initial_age));
            match result {
                Ok(Loaded { stored: true, .. }) => status.stored = true,
                Ok(_) => status.detail = Some("cache-unavailable"),
                Err(e) => {
                    tracing::warn!(target: "pgcache::tower", error = %e, "could not store the response");
                    status.detail = Some("cache-unavailable");
                }
            }
            Ok(respond(&ctx, &stored, stored.freshness.initial_age, status))
        }
        (Ok(loaded), None) => waiter(ctx, inner, loaded, fwd).await,
        (Err(e), None) => unavailable(ctx, inner, e).await,
    }
}

/// A request that did not run the loader: the value was filled by another request (or was there).
async fn waiter<S, B, RB>(ctx: Arc<Ctx>, inner: S, loaded: Loaded, fwd: &'static str) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: ReplayBody,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Send + 'static,
{
    let mut status = match loaded.source {
        Source::Local | Source::Shared => Status::hit(),
        _ => Status::fwd(fwd),
    };
    status.collapsed = loaded.source == Source::Collapsed;
    let names = match Record::decode(&loaded.value) {
        Some(Record::Response(stored)) if ctx.vary_matches(&stored) => {
            let age = stored.age(None);
            let status = status.ttl(ttl_left(&stored, age));
            return Ok(respond(&ctx, &stored, age, status));
        }
        Some(Record::Response(stored)) => stored.vary.iter().map(|(n, _)| n.clone()).collect(),
        Some(Record::Variants(names)) => names,
        Some(Record::Pass(_)) => return forward(ctx, inner, status.detail("pass")).await,
        None => return forward(ctx, inner, Status::fwd("miss")).await,
    };
    // Another variant than the leader's: read it, else fill it without collapsing.
    let vkey = key::variant(&ctx.keys.primary, &key::selected(&names, &ctx.parts.headers));
    if let Ok(Some(entry)) = ctx.sh.store.get_entry(&vkey).await {
        if let Some(Record::Response(stored)) = Record::decode(&entry.value) {
            if ctx.vary_matches(&stored) {
                let age = stored.age(entry.expiry.remaining());
                return Ok(respond(&ctx, &stored, age, status.ttl(ttl_left(&stored, age))));
            }
        }
    }
    fill_direct(ctx, inner, vkey, "vary-miss").await
}

/// Fills without collapsing (credentialed requests, second variants): handler, then store if storable.
async fn fill_direct<S, B, RB>(
    ctx: Arc<Ctx>,
    mut inner: S,
    key: String,
    fwd: &'static str,
) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>>,
    B: ReplayBody,
    RB: Body<Data = Bytes>,
{
    let resp = call(&mut inner, ctx.request(Mode::Fill)).await?;
    let mut status = Status::fwd(fwd);
    status.fwd_status = Some(resp.status().as_u16());
    match prepare(&ctx, resp).await {
        Prepared::Store(stored) => {
            let (value, options) = place(&ctx, &key, &stored).await;
            match ctx.sh.store.set_entry(&key, value, &options).await {
                Ok(_) => status.stored = true,
                Err(e) => {
                    tracing::warn!(target: "pgcache::tower", error = %e, "could not store the response");
                    status.detail = Some("cache-unavailable");
                }
            }
            status.ttl = Some(ttl_left(&stored, stored.freshness.initial_age));
            Ok(respond(&ctx, &stored, stored.freshness.initial_age, status))
        }
        Prepared::Pass(resp, reason) => Ok(finish(&ctx.sh, resp, &status.detail(reason), ctx.head)),
        Prepared::Failed(resp) => Ok(finish(&ctx.sh, resp, &status.detail("body-error"), ctx.head)),
    }
}

/// The loader of a miss: run the handler; store the response, or a hit-for-pass marker.
async fn fill_loader<S, B, RB>(
    ctx: Arc<Ctx>,
    mut inner: S,
    key: String,
    out: Side<RB, S::Error>,
) -> Result<Fill, BoxError>
where
    S: Service<Request<B>, Response = Response<RB>>,
    B: ReplayBody,
    RB: Body<Data = Bytes>,
{
    let resp = match call(&mut inner, ctx.request(Mode::Fill)).await {
        Ok(resp) => resp,
        Err(e) => {
            put(&out, Out::Error(e));
            return Err("the inner service failed".into());
        }
    };
    let server_error = resp.status().is_server_error();
    match prepare(&ctx, resp).await {
        Prepared::Store(stored) => {
            let (value, options) = place(&ctx, &key, &stored).await;
            put(&out, Out::Stored(stored));
            Ok(Fill { value, options })
        }
        Prepared::Pass(resp, reason) => {
            let ttl = if server_error { ERROR_PASS_TTL } else { ctx.config().hit_for_pass_ttl };
            put(&out, Out::Response(resp, reason));
            let options = SetOptions { ttl: Ttl::After(ttl), tags: ctx.base_tags() };
            Ok(Fill { value: Record::Pass(reason.to_owned()).encode(), options })
        }
        Prepared::Failed(resp) => {
            put(&out, Out::Response(resp, "body-error"));
            Err("the response body failed".into())
        }
    }
}

enum Prepared<RB: Body> {
    Store(Box<Stored>),
    Pass(Resp<RB>, &'static str),
    Failed(Resp<RB>),
}

/// Applies the storage rules, and buffers the body only when the response may be stored.
async fn prepare<RB>(ctx: &Ctx, resp: Response<RB>) -> Prepared<RB>
where
    RB: Body<Data = Bytes>,
{
    let (parts, body) = resp.into_parts();
    let (freshness, vary) = match policy::decide(&ctx.sh.rules, ctx.facts, parts.status, &parts.headers) {
        Decision::Store { freshness, vary } => (freshness, vary),
        Decision::Pass(reason) => {
            return Prepared::Pass(Response::from_parts(parts, PgBody::passthrough(body)), reason)
        }
    };
    let max = ctx.config().max_body_bytes;
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Prepared::Pass(Response::from_parts(parts, PgBody::passthrough(body)), "too-large");
    }
    let (data, trailers) = match buffer(body, max).await {
        Buffered::Complete { data, trailers } => (data, trailers),
        Buffered::TooLarge(body) => return Prepared::Pass(Response::from_parts(parts, body), "too-large"),
        Buffered::Failed(body) => return Prepared::Failed(Response::from_parts(parts, body)),
    };
    if ctx.facts.grpc && !grpc_ok(&parts.headers, trailers.as_ref()) {
        return Prepared::Pass(Response::from_parts(parts, PgBody::replay(data, trailers)), "grpc-status");
    }
    let listed = policy::connection_listed(&parts.headers);
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        if !policy::is_unstored_header(name, &listed) {
            headers.append(name.clone(), value.clone());
        }
    }
    let bodiless = matches!(parts.status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    if !ctx.facts.grpc && !bodiless && !headers.contains_key(header::CONTENT_LENGTH) {
        // So that HEAD answers from the entry announce the GET's length.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
    }
    Prepared::Store(Box::new(Stored {
        status: parts.status,
        headers,
        body: data,
        trailers,
        stored_at_ms: now_ms(),
        keep_ms: u64::try_from(freshness.keep_for().as_millis()).unwrap_or(u64::MAX),
        freshness,
        vary: key::selected(&vary, &ctx.parts.headers),
    }))
}

/// A gRPC response succeeded: `grpc-status: 0` in the trailers (or the headers of a trailers-only one).
fn grpc_ok(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> bool {
    let status = trailers.and_then(|t| t.get("grpc-status")).or_else(|| headers.get("grpc-status"));
    status.is_some_and(|s| s.as_bytes() == b"0")
}

/// Where a stored response goes: its own key when it does not vary, else a variant key with a Vary
/// index under the primary key. Writes what does not belong to `key` itself and returns the value
/// (and options) for `key`.
async fn place(ctx: &Ctx, key: &str, stored: &Stored) -> (Bytes, SetOptions) {
    let tags = key::response_tags(&ctx.config().namespace, &ctx.keys, &stored.headers);
    let options = SetOptions { ttl: Ttl::After(stored.freshness.keep_for()), tags };
    let record = encode_stored(stored);
    let primary = ctx.keys.primary.as_str();
    if stored.vary.is_empty() {
        if key != primary {
            write(ctx, primary, record.clone(), &options).await;
        }
        return (record, options);
    }
    let names = stored.vary.iter().map(|(n, _)| n.clone()).collect();
    let vkey = key::variant(primary, &stored.vary);
    let index = Record::Variants(names).encode();
    let index_options = SetOptions { ttl: options.ttl, tags: ctx.base_tags() };
    if key == primary {
        write(ctx, &vkey, record, &options).await;
        return (index, index_options);
    }
    if key != vkey {
        write(ctx, &vkey, record.clone(), &options).await;
        write(ctx, primary, index, &index_options).await;
    }
    (record, options)
}

async fn write(ctx: &Ctx, key: &str, value: Bytes, options: &SetOptions) {
    if let Err(e) = ctx.sh.store.set_entry(key, value, options).await {
        tracing::warn!(target: "pgcache::tower", error = %e, "could not store a cache entry");
    }
}

/// Revalidates a stale (or `no-cache`) entry now: one request per stale version across every node asks
/// the handler (conditionally); the others share its answer. Serves stale on error within
/// `stale-if-error`.
async fn revalidate<S, B, RB>(
    ctx: Arc<Ctx>,
    inner: S,
    key: String,
    stored: Box<Stored>,
    version: i64,
    age: Duration,
) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: ReplayBody,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Send + 'static,
{
    let f = stored.freshness;
    let stale_ok = age < f.lifetime + f.stale_if_error && !f.stale_if_error.is_zero();
    let out = side::<RB, S::Error>();
    let loader: Loader = {
        let (ctx, inner, key, old, out) =
            (Arc::clone(&ctx), inner.clone(), key.clone(), stored.clone(), Arc::clone(&out));
        Box::new(move || Box::pin(refresh_loader(ctx, inner, key, old, out)))
    };
    let result = ctx.sh.store.get_or_load(&key::refresh(&key, version), loader).await;
    let serve_stale = |fwd_status: Option<u16>| {
        let mut status = Status::fwd("stale").ttl(ttl_left(&stored, age)).detail("stale-if-error");
        status.fwd_status = fwd_status;
        respond(&ctx, &stored, age, status)
    };
    match (result, take(&out)) {
        (_, Some(Out::Stored(new))) => {
            let mut status = Status::fwd("stale").ttl(ttl_left(&new, Duration::ZERO));
            status.stored = true;
            status.fwd_status = Some(new.status.as_u16());
            Ok(respond(&ctx, &new, Duration::ZERO, status))
        }
        (_, Some(Out::Error(e))) => {
            if stale_ok {
                Ok(serve_stale(None))
            } else {
                Err(e)
            }
        }
        (_, Some(Out::Response(resp, reason))) => {
            if reason == "error" && stale_ok {
                return Ok(serve_stale(Some(resp.status().as_u16())));
            }
            let mut status = Status::fwd("stale").detail(reason);
            status.fwd_status = Some(resp.status().as_u16());
            let head = ctx.head;
            Ok(finish(&ctx.sh, resp, &status, head))
        }
        (Ok(loaded), None) => match Record::decode(&loaded.value) {
            Some(Record::Response(new)) if ctx.vary_matches(&new) => {
                let mut status = Status::fwd("stale");
                status.collapsed = true;
                let age = new.age(None);
                Ok(respond(&ctx, &new, age, status.ttl(ttl_left(&new, age))))
            }
            Some(Record::Pass(reason)) if reason == "error" && stale_ok => Ok(serve_stale(None)),
            _ => forward(ctx, inner, Status::fwd("stale")).await,
        },
        (Err(e), None) => unavailable(ctx, inner, e).await,
    }
}

/// Serves nothing: runs the refresh in the background (stale-while-revalidate).
fn spawn_refresh<S, B, RB>(ctx: Arc<Ctx>, inner: S, key: String, stored: Box<Stored>, version: i64)
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: ReplayBody,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Send + 'static,
{
    let store = Arc::clone(&ctx.sh.store);
    let refresh_key = key::refresh(&key, version);
    let out = side::<RB, S::Error>();
    let loader: Loader = Box::new(move || Box::pin(refresh_loader(ctx, inner, key, stored, out)));
    tokio::spawn(async move {
        if let Err(e) = store.get_or_load(&refresh_key, loader).await {
            tracing::debug!(target: "pgcache::tower", error = %e, "background refresh failed; the stale entry stays");
        }
    });
}

/// The loader of a refresh: ask the handler with the stored validators; on 304 freshen the stored
/// response, on a storable answer replace it, on an error keep it (and tell the waiters), on an
/// uncacheable answer replace it with a hit-for-pass marker. Its value (under the refresh key) is the
/// new record, or a marker.
async fn refresh_loader<S, B, RB>(
    ctx: Arc<Ctx>,
    mut inner: S,
    key: String,
    old: Box<Stored>,
    out: Side<RB, S::Error>,
) -> Result<Fill, BoxError>
where
    S: Service<Request<B>, Response = Response<RB>>,
    B: ReplayBody,
    RB: Body<Data = Bytes>,
{
    let short = SetOptions { ttl: Ttl::After(REFRESH_RESULT_TTL), tags: ctx.base_tags() };
    let error_marker = || Fill {
        value: Record::Pass("error".to_owned()).encode(),
        options: SetOptions { ttl: Ttl::After(ERROR_PASS_TTL), tags: ctx.base_tags() },
    };
    let resp = match call(&mut inner, ctx.request(Mode::Revalidate(&old))).await {
        Ok(resp) => resp,
        Err(e) => {
            put(&out, Out::Error(e));
            return Ok(error_marker());
        }
    };
    if resp.status() == StatusCode::NOT_MODIFIED {
        let headers = freshen(&old.headers, resp.headers());
        let facts = ctx.facts;
        return match policy::decide(&ctx.sh.rules, facts, old.status, &headers) {
            Decision::Store { freshness, .. } => {
                let new = Stored {
                    headers,
                    freshness,
                    stored_at_ms: now_ms(),
                    keep_ms: u64::try_from(freshness.keep_for().as_millis()).unwrap_or(u64::MAX),
                    ..(*old).clone()
                };
                let (value, options) = place(&ctx, &key, &new).await;
                write(&ctx, &key, value, &options).await;
                let encoded = encode_stored(&new);
                put(&out, Out::Stored(Box::new(new)));
                Ok(Fill { value: encoded, options: short })
            }
            Decision::Pass(reason) => {
                let pass = Record::Pass(reason.to_owned()).encode();
                let options = SetOptions { ttl: Ttl::After(ctx.config().hit_for_pass_ttl), tags: ctx.base_tags() };
                write(&ctx, &key, pass.clone(), &options).await;
                let mut resp = Response::new(PgBody::replay(old.body.clone(), old.trailers.clone()));
                *resp.status_mut() = old.status;
                *resp.headers_mut() = headers;
                put(&out, Out::Response(resp, reason));
                Ok(Fill { value: pass, options: short })
            }
        };
    }
    if policy::is_error_status(resp.status()) {
        put(&out, Out::Response(resp.map(PgBody::passthrough), "error"));
        return Ok(error_marker());
    }
    match prepare(&ctx, resp).await {
        Prepared::Store(new) => {
            let (value, options) = place(&ctx, &key, &new).await;
            write(&ctx, &key, value, &options).await;
            let encoded = encode_stored(&new);
            put(&out, Out::Stored(new));
            Ok(Fill { value: encoded, options: short })
        }
        Prepared::Pass(resp, reason) => {
            let pass = Record::Pass(reason.to_owned()).encode();
            let options = SetOptions { ttl: Ttl::After(ctx.config().hit_for_pass_ttl), tags: ctx.base_tags() };
            write(&ctx, &key, pass.clone(), &options).await;
            put(&out, Out::Response(resp, reason));
            Ok(Fill { value: pass, options: short })
        }
        Prepared::Failed(resp) => {
            put(&out, Out::Response(resp, "body-error"));
            Err("the response body failed".into())
        }
    }
}

/// The stored headers updated with those of a 304 (RFC 9111 §4.3.4), except framing fields.
fn freshen(stored: &HeaderMap, update: &HeaderMap) -> HeaderMap {
    let listed = policy::connection_listed(update);
    let mut merged = stored.clone();
    for name in update.keys() {
        if policy::is_unstored_header(name, &listed) || name == header::CONTENT_LENGTH {
            continue;
        }
        merged.remove(name);
        for value in update.get_all(name) {
            merged.append(name.clone(), value.clone());
        }
    }
    merged
}
