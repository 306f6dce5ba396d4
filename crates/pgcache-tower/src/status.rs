//! The `Cache-Status` response field (RFC 9211): [`CacheStatusMember`], the one place it is rendered
//! (this layer and pgcache-axum's extractors both use it).

use std::borrow::Cow;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `cache-status`.
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// One member of an RFC 9211 `Cache-Status` field: what one cache did with one request.
///
/// Built with consuming methods, rendered with the cache's name. [`append_to`](Self::append_to) adds it
/// after the members already in a header map (caches closer to the user come last, §2).
///
/// ```
/// use http::HeaderMap;
/// use pgcache_tower::CacheStatusMember;
///
/// let miss = CacheStatusMember::fwd("uri-miss").fwd_status(200).stored().ttl(60);
/// assert_eq!(miss.render("pgcache"), "pgcache; fwd=uri-miss; fwd-status=200; stored; ttl=60");
///
/// let mut headers = HeaderMap::new();
/// headers.insert("cache-status", "origin; fwd=miss".parse().unwrap());
/// CacheStatusMember::hit().ttl(42).detail("local").append_to("pgcache", &mut headers);
/// assert_eq!(headers["cache-status"], "origin; fwd=miss, pgcache; hit; ttl=42; detail=local");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct CacheStatusMember {
    pub(crate) hit: bool,
    pub(crate) fwd: Option<Cow<'static, str>>,
    pub(crate) fwd_status: Option<u16>,
    pub(crate) stored: bool,
    pub(crate) collapsed: bool,
    pub(crate) ttl: Option<i64>,
    pub(crate) detail: Option<Cow<'static, str>>,
}

impl CacheStatusMember {
    /// `hit`: served from the cache without going forward.
    pub fn hit() -> Self {
        Self { hit: true, ..Self::default() }
    }

    /// `fwd=reason`: the request went forward (to the handler), for this reason: `bypass`, `method`,
    /// `uri-miss`, `vary-miss`, `miss`, `request`, `stale` or `partial` (RFC 9211 §2.2).
    pub fn fwd(reason: impl Into<Cow<'static, str>>) -> Self {
        Self { fwd: Some(reason.into()), ..Self::default() }
    }

    /// `fwd-status=code`: the status the next hop (the handler) answered with.
    pub fn fwd_status(mut self, code: u16) -> Self {
        self.fwd_status = Some(code);
        self
    }

    /// `stored`: the response was stored by this cache.
    pub fn stored(mut self) -> Self {
        self.stored = true;
        self
    }

    /// `collapsed`: the request was collapsed with another one (it waited for another request's fill).
    pub fn collapsed(mut self) -> Self {
        self.collapsed = true;
        self
    }

    /// `ttl=seconds`: the response's remaining freshness lifetime (negative when stale).
    pub fn ttl(mut self, seconds: i64) -> Self {
        self.ttl = Some(seconds);
        self
    }

    /// `detail=...`: implementation-specific detail (rendered as a token when it is one, else quoted).
    pub fn detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Whether this member says `hit`.
    pub fn is_hit(&self) -> bool {
        self.hit
    }

    /// The `cache.outcome` label of the `pgcache.http.responses` metric: `hit`, `stale` (a stale
    /// response served), `collapsed`, or the forward reason (`uri-miss`, `vary-miss`, `bypass`, ...).
    pub(crate) fn outcome(&self) -> &'static str {
        let stale_served = matches!(self.detail.as_deref(), Some("stale-while-revalidate" | "stale-if-error"));
        match self.fwd.as_deref() {
            _ if stale_served => "stale",
            None if self.hit => "hit",
            _ if self.collapsed => "collapsed",
            Some("uri-miss") => "uri-miss",
            Some("vary-miss") => "vary-miss",
            Some("miss") => "miss",
            Some("stale") => "stale-forward",
            Some("bypass") => "bypass",
            Some("method") => "method",
            Some("request") => "request",
            Some("partial") => "partial",
            _ => "other",
        }
    }

    /// The member's text, `name; hit; ttl=5` style (the name is quoted unless it is a token).
    ///
    /// ```
    /// # use pgcache_tower::CacheStatusMember;
    /// assert_eq!(CacheStatusMember::hit().render("edge-1"), "edge-1; hit");
    /// assert_eq!(CacheStatusMember::fwd("bypass").detail("no way").render("c"), "c; fwd=bypass; detail=\"no way\"");
    /// ```
    pub fn render(&self, name: &str) -> String {
        let mut out = String::with_capacity(48);
        push_item(&mut out, name);
        if self.hit {
            out.push_str("; hit");
        }
        if let Some(fwd) = &self.fwd {
            out.push_str("; fwd=");
            push_item(&mut out, fwd);
        }
        if let Some(code) = self.fwd_status {
            out.push_str("; fwd-status=");
            out.push_str(itoa::Buffer::new().format(code));
        }
        if self.stored {
            out.push_str("; stored");
        }
        if self.collapsed {
            out.push_str("; collapsed");
        }
        if let Some(ttl) = self.ttl {
            out.push_str("; ttl=");
            out.push_str(itoa::Buffer::new().format(ttl));
        }
        if let Some(detail) = &self.detail {
            out.push_str("; detail=");
            push_item(&mut out, detail);
        }
        out
    }

    /// The member alone as a header value (for a response that has no other `Cache-Status`).
    ///
    /// ```
    /// # use pgcache_tower::CacheStatusMember;
    /// assert_eq!(CacheStatusMember::hit().header_value("pgcache"), "pgcache; hit");
    /// ```
    pub fn header_value(&self, name: &str) -> HeaderValue {
        // `render` only emits visible ASCII, always a valid header value.
        HeaderValue::try_from(self.render(name)).unwrap_or_else(|_| HeaderValue::from_static("pgcache"))
    }

    /// Appends this member to the `Cache-Status` of `headers`, after the members already there (from
    /// caches closer to the origin), as one field.
    pub fn append_to(&self, name: &str, headers: &mut HeaderMap) {
        let ours = self.render(name);
        if !headers.contains_key(&CACHE_STATUS) {
            // The usual case: the rendered string becomes the value without another copy.
            if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(ours)) {
                headers.insert(CACHE_STATUS, value);
            }
            return;
        }
        let existing: Vec<&str> = headers.get_all(&CACHE_STATUS).iter().filter_map(|v| v.to_str().ok()).collect();
        let value = if existing.is_empty() { ours } else { format!("{}, {ours}", existing.join(", ")) };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(CACHE_STATUS, value);
        }
    }
}

/// Appends `s` as a structured-field token when it is one (RFC 8941 §3.3.4), else as a string.
fn push_item(out: &mut String, s: &str) {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:/".contains(c);
    let token = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '*') && s.chars().all(tchar);
    if token {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc9211_members() {
        let s = CacheStatusMember::fwd("uri-miss").fwd_status(200).stored();
        assert_eq!(s.ttl(60).render("pgcache"), "pgcache; fwd=uri-miss; fwd-status=200; stored; ttl=60");
        assert_eq!(
            CacheStatusMember::hit().ttl(-2).detail("stale-while-revalidate").render("c"),
            "c; hit; ttl=-2; detail=stale-while-revalidate"
        );
        let mut h = HeaderMap::new();
        h.insert(CACHE_STATUS, HeaderValue::from_static("origin; fwd=miss"));
        CacheStatusMember::hit().append_to("pgcache", &mut h);
        assert_eq!(h.get(CACHE_STATUS).unwrap(), "origin; fwd=miss, pgcache; hit");
    }

    #[test]
    fn names_and_details_that_are_not_tokens_are_quoted() {
        assert_eq!(CacheStatusMember::hit().render("my cache"), "\"my cache\"; hit");
        assert_eq!(CacheStatusMember::hit().detail("a\"b\u{7f}").render("c"), "c; hit; detail=\"a\\\"b\"");
        assert_eq!(CacheStatusMember::hit().render("9c"), "\"9c\"; hit");
    }
}
