//! Misses: the dogpile-safe fill through the core's `get_or_load`, waiters, storing and placement.

use super::*;

/// A miss on `key`: one request (across every node) runs the handler; the others wait and share it.
pub(super) async fn miss<S, B, RB>(
    ctx: Arc<Ctx>,
    inner: S,
    key: String,
    fwd: &'static str,
) -> Result<Resp<RB>, S::Error>
where
    S: Inner<B, RB>,
    B: ReplayBody,
    RB: ResBody,
{
    if ctx.only_if_cached {
        return Ok(only_if_cached(&ctx));
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
        (result, Some(Out::Stored(stored) | Out::Validated(stored))) => {
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
pub(super) async fn waiter<S, B, RB>(
    ctx: Arc<Ctx>,
    inner: S,
    loaded: Loaded,
    fwd: &'static str,
) -> Result<Resp<RB>, S::Error>
where
    S: Inner<B, RB>,
    B: ReplayBody,
    RB: ResBody,
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
        Some(Record::Pass(_)) => {
            // Not storable (hit-for-pass): everyone goes to the handler, in parallel.
            let mut pass = Status::fwd(fwd).detail("pass");
            pass.collapsed = status.collapsed;
            return forward(ctx, inner, pass).await;
        }
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
pub(super) async fn fill_direct<S, B, RB>(
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
pub(super) async fn fill_loader<S, B, RB>(
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

pub(super) enum Prepared<RB: Body> {
    Store(Box<Stored>),
    Pass(Resp<RB>, &'static str),
    Failed(Resp<RB>),
}

/// Applies the storage rules, and buffers the body only when the response may be stored.
pub(super) async fn prepare<RB>(ctx: &Ctx, resp: Response<RB>) -> Prepared<RB>
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
pub(super) fn grpc_ok(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> bool {
    let status = trailers.and_then(|t| t.get("grpc-status")).or_else(|| headers.get("grpc-status"));
    status.is_some_and(|s| s.as_bytes() == b"0")
}

/// Where a stored response goes: its own key when it does not vary, else a variant key with a Vary
/// index under the primary key. Writes what does not belong to `key` itself and returns the value
/// (and options) for `key`.
pub(super) async fn place(ctx: &Ctx, key: &str, stored: &Stored) -> (Bytes, SetOptions) {
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

pub(super) async fn write(ctx: &Ctx, key: &str, value: Bytes, options: &SetOptions) {
    if let Err(e) = ctx.sh.store.set_entry(key, value, options).await {
        tracing::warn!(target: "pgcache::tower", error = %e, "could not store a cache entry");
    }
}

/// RFC 9111 §5.2.1.7: no stored response may be used, and the handler must not be asked.
pub(super) fn only_if_cached<RB: Body>(ctx: &Ctx) -> Resp<RB> {
    let mut resp = Response::new(PgBody::empty());
    *resp.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    finish(&ctx.sh, resp, &Status::default().detail("only-if-cached"), false)
}
