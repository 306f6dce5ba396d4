//! [`Ctx`]: one cacheable request, as read once (its parts, body bytes and keys, and what the storage
//! rules need to know about it), and rebuilt for the inner service as often as the flow needs it.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::request::Parts;
use http::{Method, Request};

use crate::body::ReplayBody;
use crate::config::Config;
use crate::entry::Stored;
use crate::key::Keys;
use crate::policy::{CacheControl, RequestFacts};

/// One cacheable request, shared with loaders and background refreshes.
pub(crate) struct Ctx {
    pub(crate) parts: Parts,
    pub(crate) body: Bytes,
    pub(crate) keys: Arc<Keys>,
    pub(crate) facts: RequestFacts,
    /// HEAD: answered from the GET entry, filled with a GET.
    pub(crate) head: bool,
    /// Carries `Authorization` or (allowed) `Cookie`: never leads a collapsed fill nor leaves a
    /// hit-for-pass marker, so one user's request cannot make a URL uncacheable for everyone.
    pub(crate) credentialed: bool,
    /// The client asked to revalidate (`no-cache`, `max-age=0`, `Pragma: no-cache`) and the layer honours it.
    pub(crate) force_revalidate: bool,
    /// `only-if-cached`: a miss gets a 504, the handler is never asked.
    pub(crate) only_if_cached: bool,
    /// A GET with `Range`: answered (206, 416) from a fresh stored response; forwarded as it is, and
    /// nothing stored, when there is none.
    pub(crate) range: bool,
    /// A GET without conditionals or `Range`: every fresh hit at one age gets the same head.
    pub(crate) plain: bool,
}

/// How to rebuild the request for the inner service.
pub(crate) enum Mode<'a> {
    /// As the client sent it.
    Forward,
    /// To fill the cache: GET for HEAD, client conditionals and ranges removed.
    Fill,
    /// As `Fill`, with the stored response's validators.
    Revalidate(&'a Stored),
}

impl Ctx {
    pub(crate) fn new(cfg: &Config, parts: Parts, body: Bytes, keys: Arc<Keys>, grpc: bool) -> Self {
        let client = CacheControl::parse(&parts.headers, &header::CACHE_CONTROL);
        let pragma = parts.headers.get(header::PRAGMA).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"));
        let authorization = parts.headers.contains_key(header::AUTHORIZATION);
        Self {
            facts: RequestFacts { authorization, grpc },
            credentialed: authorization || parts.headers.contains_key(header::COOKIE),
            force_revalidate: cfg.honor_client_no_cache && (client.no_cache || client.max_age == Some(0) || pragma),
            only_if_cached: client.only_if_cached,
            head: parts.method == Method::HEAD,
            range: parts.method == Method::GET && parts.headers.contains_key(header::RANGE),
            plain: parts.method == Method::GET
                && !parts.headers.contains_key(header::RANGE)
                && !parts.headers.contains_key(header::IF_NONE_MATCH)
                && !parts.headers.contains_key(header::IF_MODIFIED_SINCE),
            parts,
            body,
            keys,
        }
    }

    /// The request headers (for `Vary` selection).
    pub(crate) fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    /// The request line stored with a response, for operators: the fill's method (GET for a HEAD) and
    /// the target as the layer keyed it (authority, then path and query).
    pub(crate) fn request_line(&self) -> (&str, String) {
        let method = if self.head { "GET" } else { self.parts.method.as_str() };
        let path = self.parts.uri.path_and_query().map_or("/", |p| p.as_str());
        (method, format!("{}{path}", self.keys.origin))
    }

    /// Whether this request selects `stored` (its `Vary` values match).
    pub(crate) fn selects(&self, stored: &Stored) -> bool {
        stored.selected_by(&self.parts.headers)
    }

    /// The request rebuilt for the inner service.
    pub(crate) fn request<B: ReplayBody>(&self, mode: Mode<'_>) -> Request<B> {
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
}
