//! RFC 9111 rules for a shared cache, as pure functions: `Cache-Control` parsing, storability, freshness,
//! and conditional-request evaluation (RFC 9110 §13). No I/O here; every rule is unit-tested below.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};

use crate::date;

/// The default targeted cache-control field (RFC 9213) of this cache: obeyed ahead of `CDN-Cache-Control`
/// and `Cache-Control` when present and valid, and removed from every response before it leaves the
/// layer. [`PgCacheLayer::targeted_field`](crate::PgCacheLayer::targeted_field) names another one.
pub const PGCACHE_CONTROL: HeaderName = HeaderName::from_static("pgcache-control");

/// `CDN-Cache-Control` (RFC 9213 §3): obeyed after this cache's own targeted field, ahead of
/// `Cache-Control`, and passed on (caches further along may obey it too).
pub(crate) const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// Parsed `Cache-Control` directives (request or response).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) only_if_cached: bool,
    pub(crate) must_understand: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    pub(crate) stale_while_revalidate: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
}

impl CacheControl {
    /// Parses every `name` field of `headers` (a list of comma-separated directives, names
    /// case-insensitive, quoted arguments allowed). Duplicate delta-second directives keep the smallest
    /// value; an unparsable delta-seconds value counts as 0 (stale), per RFC 9111 §1.2.2 / §4.2.1.
    pub(crate) fn parse(headers: &HeaderMap, name: &HeaderName) -> Self {
        let mut cc = Self::default();
        for value in headers.get_all(name) {
            let Ok(text) = value.to_str() else { continue };
            for (directive, arg) in directives(text) {
                if arg == Some("?0") {
                    // A Structured Fields `false` (targeted fields, RFC 9213 §2.1): the directive is absent.
                    continue;
                }
                let seconds = || arg.and_then(delta_seconds).unwrap_or(0);
                let min = |slot: &mut Option<u64>, v: u64| *slot = Some(slot.map_or(v, |old| old.min(v)));
                match directive.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    // A qualified no-cache="field" is treated as unqualified (allowed: RFC 9111 §5.2.2.4).
                    "no-cache" => cc.no_cache = true,
                    // A qualified private="field" is treated as unqualified (never stored): stricter than §5.2.2.7.
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    "only-if-cached" => cc.only_if_cached = true,
                    "must-understand" => cc.must_understand = true,
                    "max-age" => min(&mut cc.max_age, seconds()),
                    "s-maxage" => min(&mut cc.s_maxage, seconds()),
                    "stale-while-revalidate" => min(&mut cc.stale_while_revalidate, seconds()),
                    "stale-if-error" => min(&mut cc.stale_if_error, seconds()),
                    _ => {}
                }
            }
        }
        cc
    }

    /// The directives of a targeted field (RFC 9213 §2.1: a Structured Fields dictionary), or `None`
    /// when the field is absent, empty or not a valid dictionary (the next field in line then applies).
    pub(crate) fn parse_targeted(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut present = false;
        for value in headers.get_all(name) {
            let text = value.to_str().ok()?;
            if !is_sf_dictionary(text) {
                return None;
            }
            present |= !text.trim().is_empty();
        }
        present.then(|| Self::parse(headers, name))
    }
}

/// The response directives that govern a response (RFC 9213 §2.2): the first present and valid targeted
/// field in `targeted` order, else `Cache-Control`. The flag says a targeted field was used (then
/// `Expires` is ignored too).
pub(crate) fn response_directives(targeted: &[HeaderName], headers: &HeaderMap) -> (CacheControl, bool) {
    for name in targeted {
        if let Some(cc) = CacheControl::parse_targeted(headers, name) {
            return (cc, true);
        }
    }
    (CacheControl::parse(headers, &header::CACHE_CONTROL), false)
}

/// Whether `text` is a Structured Fields dictionary (RFC 8941 §3.2), checked leniently: each member a
/// valid key, optionally `=` a bare item (integer, decimal, string, token, byte sequence, boolean), with
/// parameters allowed. Hand-written: the check is small and the `sfv` crate would parse a second time.
fn is_sf_dictionary(text: &str) -> bool {
    split_outside_quotes(text, ',').into_iter().all(|member| {
        let member = member.trim();
        let item = split_outside_quotes(member, ';').into_iter().next().unwrap_or("");
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        let key_ok = key.starts_with(|c: char| c.is_ascii_lowercase() || c == '*')
            && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b));
        key_ok && value.is_none_or(is_sf_bare_item)
    })
}

fn is_sf_bare_item(v: &str) -> bool {
    let number = v.strip_prefix('-').unwrap_or(v);
    let is_number = !number.is_empty()
        && number.starts_with(|c: char| c.is_ascii_digit())
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().filter(|b| *b == b'.').count() <= 1;
    let is_string = v.len() >= 2 && v.starts_with('"') && v.ends_with('"');
    let is_token = v.starts_with(|c: char| c.is_ascii_alphabetic() || c == '*')
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b));
    let is_bytes = v.len() >= 2 && v.starts_with(':') && v.ends_with(':');
    is_number || is_string || is_token || is_bytes || v == "?0" || v == "?1"
}

/// Splits at `sep` outside double quotes (with `\` escapes inside them).
fn split_outside_quotes(text: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut in_quotes, mut escaped, mut start) = (false, false, 0);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            c if c == sep && !in_quotes => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// The largest delta-seconds value this cache represents: 2^31, which RFC 9111 §1.2.2 says any larger
/// value (or any overflowing calculation) counts as.
pub(crate) const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// The largest duration this cache computes with (2^31 seconds); every sum of lifetimes saturates here.
pub(crate) const MAX_DELTA: Duration = Duration::from_secs(MAX_DELTA_SECONDS);

/// A delta-seconds value (RFC 9111 §1.2.2: `1*DIGIT`), clamped to 2^31; `None` when it is not one.
pub(crate) fn delta_seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits: the only way `parse` fails is overflow, which counts as the maximum.
    Some(text.parse::<u64>().unwrap_or(MAX_DELTA_SECONDS).min(MAX_DELTA_SECONDS))
}

/// `a + b`, saturating at [`MAX_DELTA`] (RFC 9111 §1.2.2: an overflowing calculation counts as 2^31 s).
pub(crate) fn add(a: Duration, b: Duration) -> Duration {
    a.saturating_add(b).min(MAX_DELTA)
}

/// Splits a directive list into `(name, argument)` pairs, honouring quoted strings.
fn directives(text: &str) -> Vec<(&str, Option<&str>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        // Find the end of this directive: the next comma outside quotes.
        let mut in_quotes = false;
        let mut escaped = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_quotes => escaped = true,
                '"' => in_quotes = !in_quotes,
                ',' if !in_quotes => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let (item, tail) = rest.split_at(end);
        rest = tail.strip_prefix(',').unwrap_or(tail);
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        match item.split_once('=') {
            Some((name, arg)) => out.push((name.trim(), Some(arg.trim().trim_matches('"')))),
            None => out.push((item, None)),
        }
    }
    out
}

/// Splits a comma-separated header (all its fields) into trimmed, non-empty elements.
pub(crate) fn list_values<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The options of the layer that the storage rules read.
#[derive(Clone, Debug)]
pub(crate) struct Rules {
    pub(crate) default_ttl: Option<Duration>,
    /// Derive a lifetime from `Last-Modified` (RFC 9111 §4.2.2) before falling back to `default_ttl`.
    pub(crate) heuristic_freshness: bool,
    pub(crate) min_ttl: Duration,
    pub(crate) max_ttl: Option<Duration>,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    /// How long a stale response with a validator is kept to be revalidated (RFC 9111 §4.3).
    pub(crate) revalidate_for: Duration,
    /// The targeted fields obeyed ahead of `Cache-Control`, first match wins (RFC 9213 §2.2).
    pub(crate) targeted: Vec<HeaderName>,
}

/// What the request contributes to the storage decision.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RequestFacts {
    /// The request carried `Authorization`.
    pub(crate) authorization: bool,
    /// The request is a gRPC call (success is decided by `grpc-status`, not the HTTP status).
    pub(crate) grpc: bool,
}

/// How long a stored response stays fresh and may be served stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// Freshness lifetime (RFC 9111 §4.2.1), after clamps.
    pub(crate) lifetime: Duration,
    /// `Age` of the response when it was stored (§4.2.3 `corrected_initial_age` for an in-process origin).
    pub(crate) initial_age: Duration,
    /// Window after expiry in which a stale copy is served while one refresh runs (RFC 5861).
    pub(crate) stale_while_revalidate: Duration,
    /// Window after expiry in which a stale copy is served when the handler fails (RFC 5861).
    pub(crate) stale_if_error: Duration,
    /// `no-cache`: stored, but every use is revalidated with the handler.
    pub(crate) no_cache: bool,
    /// Window after expiry in which the response is kept to be revalidated with its validator (never
    /// served without a successful validation); zero without a validator.
    pub(crate) revalidate: Duration,
}

impl Freshness {
    /// How long the entry is kept in the store: until the last moment it may still be used.
    pub(crate) fn keep_for(&self) -> Duration {
        let stale = self.stale_while_revalidate.max(self.stale_if_error).max(self.revalidate);
        add(self.lifetime, stale).saturating_sub(self.initial_age).max(Duration::from_millis(1))
    }
}

/// The outcome of the storage rules for one response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Store it with this freshness; `vary` lists the (lowercase, sorted) request headers it varies on.
    Store { freshness: Freshness, vary: Vec<HeaderName> },
    /// Do not store; the token says why (sent as the `Cache-Status` `detail`).
    Pass(&'static str),
}

/// The statuses a shared cache may store without explicit freshness (RFC 9110 §15.1 "heuristically
/// cacheable"), minus 206 (this cache does not assemble ranges).
const HEURISTIC: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The final statuses this cache understands (those RFC 9110 defines), for `must-understand`
/// (RFC 9111 §5.2.2.3). 206 and 304 are not among them: this cache neither combines partial
/// responses nor stores a 304.
const UNDERSTOOD: [u16; 40] = [
    200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 305, 307, 308, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409,
    410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 426, 500, 501, 502, 503, 504, 505,
];

/// RFC 9111 §3 for a shared cache, with this layer's safer defaults (see the crate docs).
pub(crate) fn decide(rules: &Rules, req: RequestFacts, status: StatusCode, headers: &HeaderMap) -> Decision {
    let code = status.as_u16();
    // Final statuses only; 206 and 304 only when understood, which they are not (§3).
    if status.is_informational() || code == 206 || code == 304 {
        return Decision::Pass("status");
    }
    let (cc, targeted) = response_directives(&rules.targeted, headers);
    if cc.must_understand {
        // §5.2.2.3: stored only when the status is understood, and then `no-store` is ignored.
        if !UNDERSTOOD.contains(&code) {
            return Decision::Pass("must-understand");
        }
    } else if cc.no_store {
        return Decision::Pass("no-store");
    }
    if cc.private {
        return Decision::Pass("private");
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Decision::Pass("set-cookie");
    }
    let vary = match vary_names(headers) {
        Some(vary) => vary,
        None => return Decision::Pass("vary-star"),
    };
    if req.authorization && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Decision::Pass("authorization");
    }
    if is_event_stream(headers) {
        return Decision::Pass("streaming");
    }
    if req.grpc && headers.get("grpc-status").is_some_and(|s| s.as_bytes() != b"0") {
        return Decision::Pass("grpc-status");
    }
    let explicit = explicit_lifetime(&cc, headers, targeted);
    // Heuristic freshness (the layer's `default_ttl`) applies to heuristically cacheable statuses and to
    // responses marked `public` (RFC 9111 §4.2.2); any other final status needs explicit freshness (§3).
    let heuristic_ok = HEURISTIC.contains(&code) || cc.public;
    if explicit.is_none() && !heuristic_ok {
        return Decision::Pass("status");
    }
    let has_validator = headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    let heuristic = || rules.heuristic_freshness.then(|| heuristic_lifetime(headers)).flatten();
    let mut lifetime = match explicit.or_else(heuristic).or(rules.default_ttl) {
        Some(lifetime) => lifetime.max(rules.min_ttl),
        None => Duration::ZERO,
    };
    if let Some(max) = rules.max_ttl {
        lifetime = lifetime.min(max);
    }
    // must-revalidate / proxy-revalidate, s-maxage (which implies proxy-revalidate in a shared cache,
    // §5.2.2.10) and no-cache (a successful validation before every use, §5.2.2.4) forbid serving stale;
    // so does a stored error (5xx) response.
    let no_stale =
        cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some() || cc.no_cache || status.is_server_error();
    let window = |explicit: Option<u64>, default: Duration| match (no_stale, explicit) {
        (true, _) => Duration::ZERO,
        (false, Some(s)) => Duration::from_secs(s),
        (false, None) => default,
    };
    let freshness = Freshness {
        lifetime,
        initial_age: age_header(headers),
        stale_while_revalidate: window(cc.stale_while_revalidate, rules.stale_while_revalidate),
        stale_if_error: window(cc.stale_if_error, rules.stale_if_error),
        no_cache: cc.no_cache,
        revalidate: if has_validator { rules.revalidate_for.min(MAX_DELTA) } else { Duration::ZERO },
    };
    let kept = freshness
        .lifetime
        .max(freshness.stale_while_revalidate)
        .max(freshness.stale_if_error)
        .max(freshness.revalidate);
    let last_use = add(
        freshness.lifetime,
        freshness.stale_while_revalidate.max(freshness.stale_if_error).max(freshness.revalidate),
    );
    if kept.is_zero() || freshness.initial_age >= last_use {
        return Decision::Pass("no-ttl");
    }
    Decision::Store { freshness, vary }
}

/// `s-maxage` > `max-age` > `Expires - Date` (RFC 9111 §4.2.1); `Expires` is ignored when a targeted
/// field governs the response (RFC 9213 §2.2).
fn explicit_lifetime(cc: &CacheControl, headers: &HeaderMap, targeted: bool) -> Option<Duration> {
    if let Some(s) = cc.s_maxage.or(cc.max_age) {
        return Some(Duration::from_secs(s));
    }
    if targeted {
        return None;
    }
    let expires = headers.get(header::EXPIRES)?;
    // An invalid Expires (e.g. "0") means already expired.
    let Some(expires) = expires.to_str().ok().and_then(date::parse) else {
        return Some(Duration::ZERO);
    };
    let date =
        headers.get(header::DATE).and_then(|v| v.to_str().ok()).and_then(date::parse).unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO).min(MAX_DELTA))
}

/// The longest heuristic lifetime given (a common cap: a guess should not outlive a day).
const MAX_HEURISTIC: Duration = Duration::from_secs(24 * 3600);

/// RFC 9111 §4.2.2's typical heuristic: 10 % of the time since `Last-Modified` (as of `Date`, else
/// now), at most [`MAX_HEURISTIC`]; `None` without a valid `Last-Modified`.
fn heuristic_lifetime(headers: &HeaderMap) -> Option<Duration> {
    let modified = headers.get(header::LAST_MODIFIED).and_then(|v| v.to_str().ok()).and_then(date::parse)?;
    let date =
        headers.get(header::DATE).and_then(|v| v.to_str().ok()).and_then(date::parse).unwrap_or_else(SystemTime::now);
    Some((date.duration_since(modified).unwrap_or(Duration::ZERO) / 10).min(MAX_HEURISTIC))
}

/// The `Age` of a response (RFC 9111 §5.1): the first member when the field is a list, clamped to
/// 2^31 s; zero when absent or invalid.
fn age_header(headers: &HeaderMap) -> Duration {
    list_values(headers, &header::AGE).next().and_then(delta_seconds).map_or(Duration::ZERO, Duration::from_secs)
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"))
}

/// The header names of `Vary`, lowercase, sorted and deduplicated; `None` for `Vary: *`.
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for item in list_values(headers, &header::VARY) {
        if item == "*" {
            return None;
        }
        // Unparsable names cannot match any request header; treat them like `*` (never stored).
        names.push(HeaderName::from_bytes(item.as_bytes()).ok()?);
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// Whether a status counts as an error for `stale-if-error` (RFC 5861 §4).
pub(crate) fn is_error_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// Whether a response to an unsafe request invalidates the target URI (RFC 9111 §4.4: 2xx or 3xx).
pub(crate) fn invalidates(method: &Method, status: StatusCode) -> bool {
    is_unsafe(method) && (status.is_success() || status.is_redirection())
}

/// Methods that are not safe (RFC 9110 §9.2.1), the ones whose success invalidates.
pub(crate) fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

/// The answer to a client's conditional GET/HEAD against a stored response (RFC 9110 §13.2.2).
pub(crate) fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            // `*` matches any current representation.
            return list_values(request, &header::IF_NONE_MATCH).any(|t| t == "*");
        };
        return list_values(request, &header::IF_NONE_MATCH).any(|t| t == "*" || weak_eq(t, etag));
    }
    let since = request.get(header::IF_MODIFIED_SINCE).and_then(|v| v.to_str().ok());
    // RFC 9111 §4.3.2: `Last-Modified`, else the `Date` the response was generated.
    let modified = stored.get(header::LAST_MODIFIED).or_else(|| stored.get(header::DATE)).and_then(|v| v.to_str().ok());
    match (since.and_then(date::parse), modified.and_then(date::parse)) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// Whether a 304 answering a revalidation of `stored` identifies it for update (RFC 9111 §4.3.4): the
/// 304's entity tag equals the stored one (strongly when the 304's is strong, weakly when it is weak);
/// without an entity tag, its `Last-Modified` equals the stored one; a 304 with neither validator
/// answers the stored response's own conditional and selects it.
pub(crate) fn selected_for_update(stored: &HeaderMap, update: &HeaderMap) -> bool {
    fn text(h: &HeaderMap, name: HeaderName) -> Option<&str> {
        h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
    }
    if let Some(new) = text(update, header::ETAG) {
        let Some(old) = text(stored, header::ETAG) else { return false };
        return if new.starts_with("W/") { weak_eq(new, old) } else { !old.starts_with("W/") && new == old };
    }
    if let Some(new) = text(update, header::LAST_MODIFIED) {
        let old = text(stored, header::LAST_MODIFIED).and_then(date::parse);
        return old.is_some() && old == date::parse(new);
    }
    true
}

/// Weak comparison of two entity tags (RFC 9110 §8.8.3.2): equal opaque tags, `W/` ignored.
pub(crate) fn weak_eq(a: &str, b: &str) -> bool {
    let opaque = |t: &str| {
        let t = t.trim();
        t.strip_prefix("W/").unwrap_or(t).to_owned()
    };
    let (a, b) = (opaque(a), opaque(b));
    a.starts_with('"') && a.len() >= 2 && a == b
}

/// Headers a 304 built from a stored response carries (RFC 9110 §15.4.5).
pub(crate) const NOT_MODIFIED_HEADERS: [HeaderName; 6] =
    [header::CACHE_CONTROL, header::CONTENT_LOCATION, header::DATE, header::ETAG, header::EXPIRES, header::VARY];

/// Hop-by-hop and per-use fields never stored (RFC 9111 §3.1), plus fields this cache regenerates.
pub(crate) fn is_unstored_header(name: &HeaderName, connection_listed: &[String]) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "set-cookie"
            | "age"
            | "cache-status"
    ) || *name == PGCACHE_CONTROL
        || connection_listed.iter().any(|c| c == name.as_str())
}

/// The field names listed in `Connection` (lowercase), which are hop-by-hop too.
pub(crate) fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    list_values(headers, &header::CONNECTION).map(str::to_ascii_lowercase).collect()
}

/// Fields that describe the stored content bytes themselves: a 304 never replaces them, since the body
/// served stays the stored one (RFC 9111 §3.2 excepts `Content-Length`, and lets a cache keep the fields
/// "necessary to assure integrity of the stored response").
const DESCRIBES_STORED_CONTENT: [&str; 4] = ["content-length", "content-encoding", "content-range", "content-md5"];

/// The stored headers updated with those of a 304 (RFC 9111 §4.3.4), except hop-by-hop fields and the
/// fields that describe the stored content.
pub(crate) fn freshen(stored: &HeaderMap, update: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(update);
    let mut merged = stored.clone();
    for name in update.keys() {
        if is_unstored_header(name, &listed) || DESCRIBES_STORED_CONTENT.contains(&name.as_str()) {
            continue;
        }
        merged.remove(name);
        for value in update.get_all(name) {
            merged.append(name.clone(), value.clone());
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_304_never_replaces_the_fields_that_describe_the_stored_content() {
        let stored = headers(&[
            ("content-encoding", "gzip"),
            ("content-range", "bytes 0-9/10"),
            ("content-md5", "a"),
            ("content-length", "10"),
            ("x-a", "old"),
        ]);
        let update = headers(&[
            ("content-encoding", "br"),
            ("content-range", "bytes 0-4/5"),
            ("content-md5", "b"),
            ("content-length", "5"),
            ("x-a", "new"),
        ]);
        let merged = freshen(&stored, &update);
        for (name, value) in [
            ("content-encoding", "gzip"),
            ("content-range", "bytes 0-9/10"),
            ("content-md5", "a"),
            ("content-length", "10"),
        ] {
            assert_eq!(merged.get(name).unwrap(), value, "{name}");
        }
        assert_eq!(merged.get("x-a").unwrap(), "new");
    }

    #[test]
    fn a_304_updates_only_the_stored_response_its_validator_selects() {
        let stored = headers(&[("etag", "\"a\""), ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(selected_for_update(&stored, &headers(&[("etag", "\"a\"")])));
        assert!(!selected_for_update(&stored, &headers(&[("etag", "\"b\"")])), "another strong validator");
        assert!(selected_for_update(&stored, &headers(&[("etag", "W/\"a\"")])), "weak: weak comparison");
        let weak = headers(&[("etag", "W/\"a\"")]);
        assert!(!selected_for_update(&weak, &headers(&[("etag", "\"a\"")])), "strong never matches a weak tag");
        let lm = headers(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(selected_for_update(&lm, &headers(&[("last-modified", "Sunday, 06-Nov-94 08:49:37 GMT")])));
        assert!(!selected_for_update(&lm, &headers(&[("last-modified", "Sun, 06 Nov 1994 08:49:38 GMT")])));
        assert!(selected_for_update(&stored, &HeaderMap::new()), "no validator: the conditional's own answer");
    }

    #[test]
    fn if_modified_since_compares_with_date_when_there_is_no_last_modified() {
        let stored = headers(&[("date", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(not_modified(&headers(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]), &stored));
        assert!(!not_modified(&headers(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:36 GMT")]), &stored));
    }

    #[test]
    fn heuristic_freshness_is_a_tenth_of_the_time_since_last_modified_when_enabled() {
        let h =
            headers(&[("date", "Sun, 06 Nov 1994 10:00:00 GMT"), ("last-modified", "Sun, 06 Nov 1994 09:00:00 GMT")]);
        let lifetime = |rules: &Rules, status: u16| match decide(
            rules,
            RequestFacts::default(),
            StatusCode::from_u16(status).unwrap(),
            &h,
        ) {
            Decision::Store { freshness, .. } => Some(freshness.lifetime),
            Decision::Pass(_) => None,
        };
        let on = Rules { heuristic_freshness: true, ..rules() };
        assert_eq!(lifetime(&on, 200), Some(Duration::from_secs(360)));
        assert_eq!(lifetime(&rules(), 200), Some(Duration::ZERO), "off: stored stale, to revalidate");
        assert_eq!(lifetime(&on, 500), None, "not heuristically cacheable");
        let long =
            headers(&[("date", "Sun, 06 Nov 2022 10:00:00 GMT"), ("last-modified", "Sun, 06 Nov 1994 09:00:00 GMT")]);
        assert_eq!(heuristic_lifetime(&long), Some(MAX_HEURISTIC));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn rules() -> Rules {
        Rules {
            default_ttl: None,
            heuristic_freshness: false,
            min_ttl: Duration::ZERO,
            max_ttl: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            revalidate_for: Duration::from_secs(3600),
            targeted: vec![PGCACHE_CONTROL, CDN_CACHE_CONTROL],
        }
    }

    fn decide_h(pairs: &[(&str, &str)]) -> Decision {
        decide(&rules(), RequestFacts::default(), StatusCode::OK, &headers(pairs))
    }

    fn lifetime(d: Decision) -> Option<u64> {
        match d {
            Decision::Store { freshness, .. } => Some(freshness.lifetime.as_secs()),
            Decision::Pass(_) => None,
        }
    }

    #[test]
    fn parses_directives_case_and_quotes() {
        let h = headers(&[
            ("cache-control", "Public, MAX-AGE=60, private=\"a, b\", s-maxage=\"30\""),
            ("cache-control", "max-age=10"),
        ]);
        let cc = CacheControl::parse(&h, &header::CACHE_CONTROL);
        assert!(cc.public && cc.private);
        assert_eq!(cc.max_age, Some(10));
        assert_eq!(cc.s_maxage, Some(30));
        let bad = CacheControl::parse(&headers(&[("cache-control", "max-age=abc")]), &header::CACHE_CONTROL);
        assert_eq!(bad.max_age, Some(0));
    }

    #[test]
    fn ttl_precedence() {
        assert_eq!(lifetime(decide_h(&[("cache-control", "max-age=60, s-maxage=5")])), Some(5));
        assert_eq!(lifetime(decide_h(&[("cache-control", "max-age=60")])), Some(60));
        let date = httpdate::fmt_http_date(SystemTime::now());
        let exp = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        assert_eq!(lifetime(decide_h(&[("date", &date), ("expires", &exp)])), Some(120));
        assert_eq!(decide_h(&[("expires", "0")]), Decision::Pass("no-ttl"));
        assert_eq!(decide_h(&[]), Decision::Pass("no-ttl"));
        let with_default = Rules { default_ttl: Some(Duration::from_secs(7)), ..rules() };
        let d = decide(&with_default, RequestFacts::default(), StatusCode::OK, &HeaderMap::new());
        assert_eq!(lifetime(d), Some(7));
    }

    #[test]
    fn clamps() {
        let r = Rules { min_ttl: Duration::from_secs(10), max_ttl: Some(Duration::from_secs(100)), ..rules() };
        let d = |cc: &str| {
            lifetime(decide(&r, RequestFacts::default(), StatusCode::OK, &headers(&[("cache-control", cc)])))
        };
        assert_eq!(d("max-age=1"), Some(10));
        assert_eq!(d("max-age=1000"), Some(100));
    }

    #[test]
    fn refusals() {
        assert_eq!(decide_h(&[("cache-control", "no-store, max-age=60")]), Decision::Pass("no-store"));
        assert_eq!(decide_h(&[("cache-control", "private, max-age=60")]), Decision::Pass("private"));
        assert_eq!(decide_h(&[("cache-control", "private=\"x\", max-age=60")]), Decision::Pass("private"));
        assert_eq!(decide_h(&[("cache-control", "max-age=60"), ("set-cookie", "a=b")]), Decision::Pass("set-cookie"));
        assert_eq!(decide_h(&[("cache-control", "max-age=60"), ("vary", "accept, *")]), Decision::Pass("vary-star"));
        assert_eq!(
            decide_h(&[("cache-control", "max-age=60"), ("content-type", "text/event-stream")]),
            Decision::Pass("streaming")
        );
        assert_eq!(decide_h(&[("cache-control", "max-age=0")]), Decision::Pass("no-ttl"));
        assert_eq!(decide_h(&[("cache-control", "max-age=60"), ("age", "61")]), Decision::Pass("no-ttl"));
    }

    #[test]
    fn statuses() {
        let h = headers(&[("cache-control", "max-age=60")]);
        for (code, ok) in [
            (200, true),
            (404, true),
            (301, true),
            (302, true),
            (206, false),
            (304, false),
            (500, true),
            (503, true),
            (501, true),
            (201, true),
            (599, true),
            (101, false),
        ] {
            let d = decide(&rules(), RequestFacts::default(), StatusCode::from_u16(code).unwrap(), &h);
            assert_eq!(matches!(d, Decision::Store { .. }), ok, "status {code}");
        }
        // 302 needs explicit freshness; 200 can use the default.
        let r = Rules { default_ttl: Some(Duration::from_secs(5)), ..rules() };
        assert_eq!(decide(&r, RequestFacts::default(), StatusCode::FOUND, &HeaderMap::new()), Decision::Pass("status"));
    }

    #[test]
    fn authorization_needs_explicit_permission() {
        let auth = RequestFacts { authorization: true, grpc: false };
        let d = |cc: &str| decide(&rules(), auth, StatusCode::OK, &headers(&[("cache-control", cc)]));
        assert_eq!(d("max-age=60"), Decision::Pass("authorization"));
        assert!(matches!(d("public, max-age=60"), Decision::Store { .. }));
        assert!(matches!(d("s-maxage=60"), Decision::Store { .. }));
        assert!(matches!(d("must-revalidate, max-age=60"), Decision::Store { .. }));
    }

    #[test]
    fn targeted_field_wins() {
        let d = decide_h(&[("cache-control", "no-store"), ("pgcache-control", "max-age=30")]);
        assert_eq!(lifetime(d), Some(30));
        assert_eq!(
            decide_h(&[("cache-control", "max-age=30"), ("pgcache-control", "no-store")]),
            Decision::Pass("no-store")
        );
    }

    #[test]
    fn stale_windows() {
        let get = |cc: &str| match decide_h(&[("cache-control", cc)]) {
            Decision::Store { freshness, .. } => {
                (freshness.stale_while_revalidate.as_secs(), freshness.stale_if_error.as_secs())
            }
            Decision::Pass(p) => panic!("{p}"),
        };
        assert_eq!(get("max-age=1, stale-while-revalidate=30, stale-if-error=60"), (30, 60));
        assert_eq!(get("max-age=1, must-revalidate, stale-while-revalidate=30"), (0, 0));
        assert_eq!(get("s-maxage=1, stale-while-revalidate=30"), (0, 0), "s-maxage implies proxy-revalidate");
        assert_eq!(get("max-age=1, proxy-revalidate, stale-if-error=30"), (0, 0));
        assert!(matches!(
            decide_h(&[("cache-control", "max-age=0, stale-while-revalidate=30")]),
            Decision::Store { .. }
        ));
        let r = Rules { stale_if_error: Duration::from_secs(9), ..rules() };
        match decide(&r, RequestFacts::default(), StatusCode::OK, &headers(&[("cache-control", "max-age=5")])) {
            Decision::Store { freshness, .. } => {
                assert_eq!(freshness.stale_if_error.as_secs(), 9);
                assert_eq!(freshness.keep_for().as_secs(), 14);
            }
            Decision::Pass(p) => panic!("{p}"),
        }
    }

    #[test]
    fn stored_errors_are_never_served_stale() {
        let r =
            Rules { stale_if_error: Duration::from_secs(9), stale_while_revalidate: Duration::from_secs(9), ..rules() };
        let h = headers(&[("cache-control", "max-age=5, stale-while-revalidate=60")]);
        let Decision::Store { freshness, .. } =
            decide(&r, RequestFacts::default(), StatusCode::SERVICE_UNAVAILABLE, &h)
        else {
            panic!()
        };
        assert_eq!((freshness.stale_while_revalidate, freshness.stale_if_error), (Duration::ZERO, Duration::ZERO));
    }

    #[test]
    fn must_understand_stores_only_understood_statuses_and_overrides_no_store() {
        let h = headers(&[("cache-control", "must-understand, no-store, max-age=60")]);
        let d = |code: u16| decide(&rules(), RequestFacts::default(), StatusCode::from_u16(code).unwrap(), &h);
        assert!(matches!(d(200), Decision::Store { .. }));
        assert_eq!(d(299), Decision::Pass("must-understand"));
        let plain = headers(&[("cache-control", "max-age=60")]);
        let unknown = decide(&rules(), RequestFacts::default(), StatusCode::from_u16(299).unwrap(), &plain);
        assert!(matches!(unknown, Decision::Store { .. }), "an unknown final status with explicit freshness is stored");
    }

    #[test]
    fn responses_with_validators_are_kept_for_revalidation() {
        let kept = |pairs: &[(&str, &str)]| match decide_h(pairs) {
            Decision::Store { freshness, .. } => Some((freshness.lifetime.as_secs(), freshness.revalidate.as_secs())),
            Decision::Pass(_) => None,
        };
        assert_eq!(kept(&[("cache-control", "max-age=10"), ("etag", "\"a\"")]), Some((10, 3600)));
        assert_eq!(kept(&[("cache-control", "max-age=10")]), Some((10, 0)));
        // No freshness at all, but a validator and a heuristically cacheable status: stored stale.
        assert_eq!(kept(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]), Some((0, 3600)));
        assert_eq!(kept(&[("cache-control", "max-age=0"), ("etag", "\"a\"")]), Some((0, 3600)));
        assert_eq!(kept(&[]), None);
        // A no-cache response without max-age is stored when it can be revalidated.
        assert!(matches!(decide_h(&[("cache-control", "no-cache"), ("etag", "\"a\"")]), Decision::Store { .. }));
        let r = Rules { revalidate_for: Duration::ZERO, ..rules() };
        let h = headers(&[("cache-control", "max-age=0"), ("etag", "\"a\"")]);
        assert_eq!(decide(&r, RequestFacts::default(), StatusCode::OK, &h), Decision::Pass("no-ttl"));
    }

    #[test]
    fn cdn_cache_control_governs_ahead_of_cache_control_in_both_directions() {
        assert_eq!(lifetime(decide_h(&[("cache-control", "no-store"), ("cdn-cache-control", "max-age=30")])), Some(30));
        assert_eq!(
            decide_h(&[("cache-control", "max-age=30"), ("cdn-cache-control", "no-store")]),
            Decision::Pass("no-store")
        );
        assert_eq!(
            decide_h(&[("cache-control", "max-age=30"), ("cdn-cache-control", "private")]),
            Decision::Pass("private")
        );
        // Expires is ignored too when a targeted field governs.
        let exp = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        assert_eq!(decide_h(&[("expires", &exp), ("cdn-cache-control", "no-cache")]), Decision::Pass("no-ttl"));
        // Our own targeted field comes first.
        assert_eq!(
            lifetime(decide_h(&[("pgcache-control", "max-age=5"), ("cdn-cache-control", "max-age=30")])),
            Some(5)
        );
        // An invalid targeted field is ignored: Cache-Control applies.
        assert_eq!(
            lifetime(decide_h(&[("cache-control", "max-age=30"), ("cdn-cache-control", "max-age=5, MAX-AGE")])),
            Some(30)
        );
        assert_eq!(
            lifetime(decide_h(&[("cache-control", "max-age=30"), ("cdn-cache-control", "max-age=\"5")])),
            Some(30)
        );
        // A boolean false is no directive.
        assert_eq!(lifetime(decide_h(&[("cdn-cache-control", "max-age=30, no-store=?0")])), Some(30));
    }

    #[test]
    fn no_cache_is_stored_and_flagged() {
        let r = Rules { default_ttl: Some(Duration::from_secs(60)), ..rules() };
        match decide(
            &r,
            RequestFacts::default(),
            StatusCode::OK,
            &headers(&[("cache-control", "no-cache"), ("etag", "\"a\"")]),
        ) {
            Decision::Store { freshness, .. } => assert!(freshness.no_cache),
            Decision::Pass(p) => panic!("{p}"),
        }
    }

    #[test]
    fn grpc_errors_in_headers_are_refused() {
        let grpc = RequestFacts { authorization: false, grpc: true };
        let h = headers(&[("cache-control", "max-age=60"), ("grpc-status", "5")]);
        assert_eq!(decide(&rules(), grpc, StatusCode::OK, &h), Decision::Pass("grpc-status"));
    }

    #[test]
    fn vary_is_normalised() {
        let h = headers(&[("vary", "Accept-Language, accept"), ("vary", "ACCEPT")]);
        let names = vary_names(&h).unwrap();
        assert_eq!(names.iter().map(HeaderName::as_str).collect::<Vec<_>>(), ["accept", "accept-language"]);
    }

    #[test]
    fn conditionals() {
        let stored = headers(&[("etag", "\"v1\""), ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert!(not_modified(&headers(&[("if-none-match", "W/\"v1\"")]), &stored));
        assert!(not_modified(&headers(&[("if-none-match", "\"x\", \"v1\"")]), &stored));
        assert!(not_modified(&headers(&[("if-none-match", "*")]), &stored));
        assert!(!not_modified(&headers(&[("if-none-match", "\"v2\"")]), &stored));
        // If-None-Match wins over If-Modified-Since.
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"v2\""), ("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            &stored
        ));
        assert!(not_modified(&headers(&[("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")]), &stored));
        assert!(!not_modified(&headers(&[("if-modified-since", "Tue, 20 Oct 2015 07:28:00 GMT")]), &stored));
        assert!(!not_modified(&headers(&[("if-modified-since", "garbage")]), &stored));
        assert!(!weak_eq("v1", "v1"));
    }

    #[test]
    fn invalidation_rules() {
        assert!(invalidates(&Method::POST, StatusCode::CREATED));
        assert!(invalidates(&Method::DELETE, StatusCode::SEE_OTHER));
        assert!(!invalidates(&Method::POST, StatusCode::BAD_REQUEST));
        assert!(!invalidates(&Method::GET, StatusCode::OK));
    }

    #[test]
    fn hop_by_hop() {
        let listed = connection_listed(&headers(&[("connection", "X-Foo, close")]));
        assert!(is_unstored_header(&HeaderName::from_static("x-foo"), &listed));
        assert!(is_unstored_header(&header::TRANSFER_ENCODING, &listed));
        assert!(!is_unstored_header(&header::ETAG, &listed));
    }

    #[test]
    fn overflowing_values_count_as_2_pow_31_seconds() {
        let d = decide_h(&[("cache-control", "max-age=1, stale-while-revalidate=18446744073709551615")]);
        let Decision::Store { freshness, .. } = d else { panic!("{d:?}") };
        assert_eq!(freshness.stale_while_revalidate, MAX_DELTA);
        assert_eq!(freshness.keep_for(), MAX_DELTA);
        assert_eq!(lifetime(decide_h(&[("cache-control", "max-age=99999999999999999999999")])), Some(1 << 31));
        assert_eq!(delta_seconds(" 12 "), Some(12));
        assert_eq!(delta_seconds("-1"), None);
        assert_eq!(delta_seconds("1.5"), None);
        assert_eq!(add(MAX_DELTA, Duration::MAX), MAX_DELTA);
    }

    #[test]
    fn age_uses_the_first_member_of_a_list() {
        let d = decide_h(&[("cache-control", "max-age=3600"), ("age", "7200, 0")]);
        assert_eq!(d, Decision::Pass("no-ttl"));
        let d = decide_h(&[("cache-control", "max-age=3600"), ("age", "60, 7200")]);
        let Decision::Store { freshness, .. } = d else { panic!("{d:?}") };
        assert_eq!(freshness.initial_age, Duration::from_secs(60));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Header values as they come off the wire: any visible ASCII and spaces, with the tokens and
        /// numbers the parsers look for mixed in.
        fn value() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                "[ -~]{0,12}",
                Just("max-age=".to_owned()),
                Just("s-maxage=".to_owned()),
                Just("stale-while-revalidate=".to_owned()),
                Just("stale-if-error=".to_owned()),
                Just("no-cache".to_owned()),
                Just("must-revalidate".to_owned()),
                Just("public".to_owned()),
                Just("\"".to_owned()),
                Just(",".to_owned()),
                any::<u64>().prop_map(|n| n.to_string()),
                Just("18446744073709551616".to_owned()),
                Just("Sun, 06 Nov 1994 08:49:37 GMT".to_owned()),
                Just("W/\"a\"".to_owned()),
                Just("*".to_owned()),
            ];
            proptest::collection::vec(piece, 0..8).prop_map(|parts| parts.concat())
        }

        fn header_map(fields: Vec<(&'static str, String)>) -> HeaderMap {
            let mut h = HeaderMap::new();
            for (name, v) in fields {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.append(HeaderName::from_static(name), v);
                }
            }
            h
        }

        fn response_headers() -> impl Strategy<Value = HeaderMap> {
            let name = prop_oneof![
                Just("cache-control"),
                Just("pgcache-control"),
                Just("cdn-cache-control"),
                Just("age"),
                Just("expires"),
                Just("date"),
                Just("vary"),
                Just("etag"),
                Just("last-modified"),
            ];
            proptest::collection::vec((name, value()), 0..8).prop_map(header_map)
        }

        fn any_rules() -> impl Strategy<Value = Rules> {
            let d =
                prop_oneof![Just(Duration::ZERO), Just(Duration::MAX), (0u64..1_000_000).prop_map(Duration::from_secs)];
            let windows = (d.clone(), d.clone(), d.clone());
            (proptest::option::of(d.clone()), d.clone(), proptest::option::of(d), windows).prop_map(
                |(default_ttl, min_ttl, max_ttl, (stale_while_revalidate, stale_if_error, revalidate_for))| Rules {
                    default_ttl,
                    // On: the heuristic's date arithmetic gets the arbitrary dates too.
                    heuristic_freshness: true,
                    min_ttl,
                    max_ttl,
                    stale_while_revalidate,
                    stale_if_error,
                    revalidate_for,
                    targeted: vec![PGCACHE_CONTROL, CDN_CACHE_CONTROL],
                },
            )
        }

        proptest! {
            #[test]
            fn storage_decisions_never_panic_and_stay_within_bounds(
                rules in any_rules(),
                headers in response_headers(),
                status in 100u16..1000,
                authorization in any::<bool>(),
            ) {
                let Ok(status) = StatusCode::from_u16(status) else { return Ok(()) };
                let facts = RequestFacts { authorization, grpc: false };
                match decide(&rules, facts, status, &headers) {
                    Decision::Store { freshness, vary } => {
                        prop_assert!(!status.is_informational());
                        prop_assert!(freshness.keep_for() <= MAX_DELTA);
                        prop_assert!(freshness.keep_for() >= Duration::from_millis(1));
                        prop_assert!(freshness.initial_age <= MAX_DELTA);
                        let (cc, _) = response_directives(&rules.targeted, &headers);
                        prop_assert!(!cc.no_store || cc.must_understand);
                        prop_assert!(!cc.private);
                        prop_assert!(!matches!(status.as_u16(), 206 | 304));
                        prop_assert!(vary.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
                    }
                    Decision::Pass(reason) => prop_assert!(!reason.is_empty()),
                }
            }

            #[test]
            fn parsers_never_panic(text in value(), other in value()) {
                let h = header_map(vec![("cache-control", text.clone()), ("if-none-match", other.clone())]);
                let cc = CacheControl::parse(&h, &header::CACHE_CONTROL);
                prop_assert!(cc.max_age.is_none_or(|s| s <= MAX_DELTA_SECONDS));
                prop_assert!(cc.stale_while_revalidate.is_none_or(|s| s <= MAX_DELTA_SECONDS));
                prop_assert!(age_header(&header_map(vec![("age", text.clone())])) <= MAX_DELTA);
                let stored = header_map(vec![("etag", text.clone()), ("last-modified", text.clone())]);
                let _ = not_modified(&h, &stored);
                let _ = vary_names(&header_map(vec![("vary", text)]));
                let _ = freshen(&stored, &h);
            }
        }
    }
}
