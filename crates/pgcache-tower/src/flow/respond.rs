//! Responses the cache builds: an answer from a stored response (a 304 to a matching conditional, a
//! 206 or 416 to a `Range`, no body for HEAD, `Age`), the finish every response gets (`Cache-Status` added, the targeted
//! `PgCache-Control` field removed), and the RFC's 504 for `only-if-cached`.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body::Body;

use crate::body::PgBody;
use crate::config::Config;
use crate::entry::Stored;
use crate::policy;
use crate::range::{self, RangeAnswer};
use crate::status::CacheStatusMember;

/// Seconds of freshness left after `age` (negative when stale), for `Cache-Status: ttl`.
pub(crate) fn ttl_left(stored: &Stored, age: Duration) -> i64 {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    (ms(stored.freshness.lifetime) - ms(age)).div_euclid(1000)
}

/// The answer to `req` from a stored response of this `age`: 304 when the client's conditional
/// matches (RFC 9110 §13.2.2), the body dropped for HEAD, `Age` set. Not finished.
pub(crate) fn from_stored<B: Body>(req: &Parts, stored: &Stored, age: Duration) -> Response<PgBody<B>> {
    let conditional =
        req.headers.contains_key(header::IF_NONE_MATCH) || req.headers.contains_key(header::IF_MODIFIED_SINCE);
    let get_like = matches!(req.method, Method::GET | Method::HEAD);
    let mut resp =
        if get_like && conditional && stored.status.is_success() && policy::not_modified(&req.headers, &stored.headers)
        {
            let mut resp = Response::new(PgBody::empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            for name in policy::NOT_MODIFIED_HEADERS {
                for value in stored.headers.get_all(&name) {
                    resp.headers_mut().append(name.clone(), value.clone());
                }
            }
            resp
        } else if req.method == Method::GET && req.headers.contains_key(header::RANGE) {
            ranged(req, stored)
        } else {
            let body = if req.method == Method::HEAD {
                PgBody::empty()
            } else {
                PgBody::replay(stored.body.clone(), stored.trailers.clone())
            };
            let mut resp = Response::new(body);
            *resp.status_mut() = stored.status;
            *resp.headers_mut() = stored.headers.clone();
            resp
        };
    resp.headers_mut().insert(header::AGE, HeaderValue::from(age.as_secs()));
    resp
}

/// A fresh hit to a plain GET with a head already finished (the same head `from_stored` and `finish`
/// give it, remembered): the stored body, and the hit counted.
pub(crate) fn plain_hit<B: Body>(stored: &Stored, status: StatusCode, headers: HeaderMap) -> Response<PgBody<B>> {
    let mut resp = Response::new(PgBody::replay(stored.body.clone(), stored.trailers.clone()));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    pgcache_core::telemetry::http_response(CacheStatusMember::hit().outcome());
    resp
}

/// The answer to a GET with `Range` (RFC 9110 §14): a 206 with the selected bytes of a stored 200, a
/// 416 when none exists, else the whole stored response.
fn ranged<B: Body>(req: &Parts, stored: &Stored) -> Response<PgBody<B>> {
    let len = stored.body.len();
    let (status, body, content_range) = match range::select(&req.headers, stored.status, &stored.headers, len) {
        RangeAnswer::Full => {
            let mut resp = Response::new(PgBody::replay(stored.body.clone(), stored.trailers.clone()));
            *resp.status_mut() = stored.status;
            *resp.headers_mut() = stored.headers.clone();
            return resp;
        }
        RangeAnswer::Partial(bytes) => {
            let content_range = format!("bytes {}-{}/{len}", bytes.start, bytes.end.saturating_sub(1));
            (StatusCode::PARTIAL_CONTENT, stored.body.slice(bytes), content_range)
        }
        RangeAnswer::Unsatisfiable => (StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new(), format!("bytes */{len}")),
    };
    let mut resp = Response::new(PgBody::replay(body.clone(), None));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    if status == StatusCode::PARTIAL_CONTENT {
        // §15.3.7: the representation's fields, as for a 200, describing the part sent.
        *headers = stored.headers.clone();
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Ok(value) = HeaderValue::from_str(&content_range) {
        headers.insert(header::CONTENT_RANGE, value);
    }
    resp
}

/// Every response leaves through here: this cache's targeted field removed, our `Cache-Status` member
/// appended (named as configured), the body dropped when `strip_body` (a HEAD answered by a GET fill).
pub(crate) fn finish<B: Body>(
    mut resp: Response<PgBody<B>>,
    status: &CacheStatusMember,
    cfg: &Config,
    strip_body: bool,
) -> Response<PgBody<B>> {
    resp.headers_mut().remove(&cfg.targeted_field);
    status.append_to(&cfg.status_name, resp.headers_mut());
    pgcache_core::telemetry::http_response(status.outcome());
    if strip_body {
        *resp.body_mut() = PgBody::empty();
    }
    resp
}

/// RFC 9111 §5.2.1.7: no stored response may be used and the handler must not be asked: 504.
pub(crate) fn only_if_cached<B: Body>(cfg: &Config) -> Response<PgBody<B>> {
    let mut resp = Response::new(PgBody::empty());
    *resp.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    finish(resp, &CacheStatusMember::default().detail("only-if-cached"), cfg, false)
}
