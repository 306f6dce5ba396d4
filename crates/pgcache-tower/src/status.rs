//! The `Cache-Status` response field (RFC 9211) this layer adds to every response.

use std::fmt::Write as _;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `cache-status`.
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// One `Cache-Status` member, built up as the request is handled.
#[derive(Clone, Debug, Default)]
pub(crate) struct Status {
    pub(crate) hit: bool,
    pub(crate) fwd: Option<&'static str>,
    pub(crate) fwd_status: Option<u16>,
    pub(crate) stored: bool,
    pub(crate) collapsed: bool,
    pub(crate) ttl: Option<i64>,
    pub(crate) detail: Option<&'static str>,
}

impl Status {
    /// Served from the cache.
    pub(crate) fn hit() -> Self {
        Self { hit: true, ..Self::default() }
    }

    /// Forwarded to the handler for `reason` (`uri-miss`, `vary-miss`, `miss`, `stale`, `bypass`, `method`, `request`).
    pub(crate) fn fwd(reason: &'static str) -> Self {
        Self { fwd: Some(reason), ..Self::default() }
    }

    pub(crate) fn detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    pub(crate) fn ttl(mut self, ttl: i64) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The member's text, `name; hit; ttl=5` style.
    pub(crate) fn render(&self, name: &str) -> String {
        let mut out = name.to_owned();
        if self.hit {
            out.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            let _ = write!(out, "; fwd={fwd}");
        }
        if let Some(code) = self.fwd_status {
            let _ = write!(out, "; fwd-status={code}");
        }
        if self.stored {
            out.push_str("; stored");
        }
        if self.collapsed {
            out.push_str("; collapsed");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(out, "; ttl={ttl}");
        }
        if let Some(detail) = self.detail {
            let _ = write!(out, "; detail={detail}");
        }
        out
    }

    /// Appends this member to the response's `Cache-Status` (caches closer to the user come last).
    pub(crate) fn apply(&self, name: &str, headers: &mut HeaderMap) {
        let ours = self.render(name);
        let existing: Vec<&str> = headers.get_all(&CACHE_STATUS).iter().filter_map(|v| v.to_str().ok()).collect();
        let value = if existing.is_empty() { ours } else { format!("{}, {ours}", existing.join(", ")) };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(CACHE_STATUS, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc9211_members() {
        let mut s = Status::fwd("uri-miss");
        s.fwd_status = Some(200);
        s.stored = true;
        assert_eq!(s.ttl(60).render("pgcache"), "pgcache; fwd=uri-miss; fwd-status=200; stored; ttl=60");
        assert_eq!(
            Status::hit().ttl(-2).detail("stale-while-revalidate").render("c"),
            "c; hit; ttl=-2; detail=stale-while-revalidate"
        );
        let mut h = HeaderMap::new();
        h.insert(CACHE_STATUS, HeaderValue::from_static("origin; fwd=miss"));
        Status::hit().apply("pgcache", &mut h);
        assert_eq!(h.get(CACHE_STATUS).unwrap(), "origin; fwd=miss, pgcache; hit");
    }
}
