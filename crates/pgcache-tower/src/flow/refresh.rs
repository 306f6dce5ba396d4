//! Stored responses in use: fresh hits, stale-while-revalidate, and revalidation once per stale
//! version across nodes (with stale-if-error).

use super::fill::{only_if_cached, place, prepare, write, Prepared};
use super::*;

/// A usable stored response: fresh → hit; stale within stale-while-revalidate → hit and one background
/// refresh; otherwise (or `no-cache`) → revalidate now.
pub(super) async fn serve<S, B, RB>(
    ctx: Arc<Ctx>,
    inner: S,
    key: String,
    stored: Box<Stored>,
    entry: Entry,
) -> Result<Resp<RB>, S::Error>
where
    S: Inner<B, RB>,
    B: ReplayBody,
    RB: ResBody,
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
    if ctx.only_if_cached {
        return Ok(only_if_cached(&ctx));
    }
    revalidate(ctx, inner, key, stored, entry.version, age).await
}

/// Revalidates a stale (or `no-cache`) entry now: one request per stale version across every node asks
/// the handler (conditionally); the others share its answer. Serves stale on error within
/// `stale-if-error`.
pub(super) async fn revalidate<S, B, RB>(
    ctx: Arc<Ctx>,
    inner: S,
    key: String,
    stored: Box<Stored>,
    version: i64,
    age: Duration,
) -> Result<Resp<RB>, S::Error>
where
    S: Inner<B, RB>,
    B: ReplayBody,
    RB: ResBody,
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
    let taken = take(&out);
    let validated = matches!(taken, Some(Out::Validated(_)));
    match (result, taken) {
        (_, Some(Out::Stored(new) | Out::Validated(new))) => {
            let mut status = Status::fwd("stale").ttl(ttl_left(&new, Duration::ZERO));
            status.stored = true;
            status.fwd_status = Some(if validated { 304 } else { new.status.as_u16() });
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
pub(super) fn spawn_refresh<S, B, RB>(ctx: Arc<Ctx>, inner: S, key: String, stored: Box<Stored>, version: i64)
where
    S: Inner<B, RB>,
    B: ReplayBody,
    RB: ResBody,
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
pub(super) async fn refresh_loader<S, B, RB>(
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
                put(&out, Out::Validated(Box::new(new)));
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
pub(super) fn freshen(stored: &HeaderMap, update: &HeaderMap) -> HeaderMap {
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
