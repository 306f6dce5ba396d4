//! Responses the cache builds: an answer from a stored response (a 304 to a matching conditional, no
//! body for HEAD, `Age`), the finish every response gets (`Cache-Status` added, the targeted
//! `PgCache-Control` field removed), and the RFC's 504 for `only-if-cached`.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body::Body;

use crate::body::PgBody;
use crate::config::Config;
use crate::entry::Stored;
use crate::policy;
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
