//! Cache keys: the primary key (method, scheme, authority, path, normalised query, custom part, body
//! hash), the variant key (the request headers named by `Vary`), and the tags every entry carries.
//!
//! Keys are SHA-256 digests of a length-prefixed encoding, so no two different inputs share a key by
//! construction, and a stored response also keeps the exact header values it was selected by (checked
//! again before serving).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use http::Method;
use sha2::{Digest, Sha256};

use crate::config::{Config, KeyScope};

/// The keys of one cacheable request, and what its tags are made of (computed only when an entry is
/// written: a hit needs the primary key alone).
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    /// The primary key (the response, or the Vary index when it varies).
    pub(crate) primary: String,
    /// The layer's namespace.
    namespace: String,
    /// The request path, for the URI tag.
    path: String,
    /// `authority` (lowercase), the scope of Cache-Groups (RFC 9875 §2).
    pub(crate) origin: String,
}

/// A length-prefixed SHA-256 over fields.
struct Hasher(Sha256);

impl Hasher {
    fn new(domain: &str) -> Self {
        let mut h = Self(Sha256::new());
        h.field(domain.as_bytes());
        h
    }

    fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    fn hex(self) -> String {
        hex16(&self.0.finalize())
    }
}

/// The first 16 bytes of a digest in lowercase hex (a table lookup: `format!` per byte was a fifth of the
/// cost of a hit).
fn hex16(digest: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for b in digest.iter().take(16) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// The exact bytes a [`Hasher`] would digest (its length-prefixed fields), kept to memoise keys.
struct Fields(Vec<u8>);

thread_local! {
    /// The buffer [`Fields`] are written into, reused by every request of a thread (a hit allocates none).
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Fields {
    /// Starts in this thread's scratch buffer; [`Fields::done`] gives it back.
    fn new(domain: &str) -> Self {
        let mut buf = SCRATCH.take();
        buf.clear();
        let mut f = Self(buf);
        f.field(domain.as_bytes());
        f
    }

    /// Returns the buffer for the next request of this thread (unless it grew large: a huge key once
    /// must not pin its memory).
    fn done(self) {
        if self.0.capacity() <= 4096 {
            SCRATCH.set(self.0);
        }
    }

    fn field(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        self.0.extend_from_slice(bytes);
    }
}

/// Primary keys already computed, by the bytes they are made of: a hit looks its key up with one
/// `HashMap` probe instead of a SHA-256, its hex and four allocations. The stored key format is
/// unchanged (the SHA-256 is computed once per distinct input). Bounded: past [`KeyMemo::MAX`] inputs it
/// forgets arbitrary ones.
#[derive(Default)]
pub(crate) struct KeyMemo {
    by_input: RwLock<HashMap<Vec<u8>, Arc<Keys>, foldhash::fast::RandomState>>,
}

impl KeyMemo {
    const MAX: usize = 4096;

    fn get_or_insert(&self, input: &[u8], make: impl FnOnce(&[u8]) -> Keys) -> Arc<Keys> {
        if let Some(keys) = self.by_input.read().unwrap_or_else(PoisonError::into_inner).get(input) {
            return Arc::clone(keys);
        }
        let keys = Arc::new(make(input));
        let mut memo = self.by_input.write().unwrap_or_else(PoisonError::into_inner);
        while memo.len() >= Self::MAX {
            let Some(victim) = memo.keys().next().cloned() else { break };
            memo.remove(&victim);
        }
        memo.insert(input.to_vec(), Arc::clone(&keys));
        keys
    }
}

/// SHA-256 of a request body, for keys of cacheable POST requests.
pub(crate) fn body_digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// The lowercase authority of a request: from the URI (HTTP/2, absolute form) or the `Host` header.
pub(crate) fn authority_of(uri: &http::Uri, headers: &HeaderMap) -> String {
    authority_cow(uri, headers).into_owned()
}

/// As [`authority_of`], borrowed when it is already lowercase (the usual case: no allocation on a hit).
fn authority_cow<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Cow<'a, str> {
    let raw = match uri.authority() {
        Some(a) => a.as_str(),
        None => headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default(),
    };
    if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(raw.to_ascii_lowercase())
    } else {
        Cow::Borrowed(raw)
    }
}

/// Tag of every entry of `authority` + `path` in namespace `ns`.
pub(crate) fn uri_tag(ns: &str, authority: &str, path: &str) -> String {
    let mut h = Hasher::new("uri");
    h.field(authority.as_bytes());
    h.field(path.as_bytes());
    format!("{ns}u:{}", h.hex())
}

/// Tag of a Cache-Groups group (scoped to its origin, RFC 9875 §2).
pub(crate) fn group_tag(ns: &str, origin: &str, group: &str) -> String {
    let mut h = Hasher::new("group");
    h.field(origin.as_bytes());
    h.field(group.as_bytes());
    format!("{ns}g:{}", h.hex())
}

/// Tag of a surrogate key (and of a Cache-Groups group, unscoped), for programmatic purges.
pub(crate) fn surrogate_tag(ns: &str, key: &str) -> String {
    let mut h = Hasher::new("surrogate");
    h.field(key.as_bytes());
    format!("{ns}s:{}", h.hex())
}

/// Tag of every entry of namespace `ns`.
pub(crate) fn all_tag(ns: &str) -> String {
    format!("{ns}all")
}

impl Keys {
    /// The tags of every entry of this request: namespace and URI.
    pub(crate) fn base_tags(&self) -> Vec<String> {
        vec![all_tag(&self.namespace), self.uri_tag()]
    }

    /// Tag of every entry for this URI (any method, query or variant): what unsafe methods purge.
    pub(crate) fn uri_tag(&self) -> String {
        uri_tag(&self.namespace, &self.origin, &self.path)
    }
}

/// The keys of a request; `custom` is the part the key hook computed (`""` for none), which extends
/// or replaces the URI part as `cfg.key_scope` says.
pub(crate) fn primary(
    cfg: &Config,
    memo: &KeyMemo,
    parts: &Parts,
    custom: &str,
    body: Option<&[u8; 32]>,
    grpc: bool,
) -> Arc<Keys> {
    let authority = authority_cow(&parts.uri, &parts.headers);
    let path = parts.uri.path();
    let mut h = Fields::new("primary");
    // GET and HEAD share entries: HEAD is answered from the GET response.
    let class = if parts.method == Method::HEAD { Method::GET.as_str() } else { parts.method.as_str() };
    h.field(class.as_bytes());
    if cfg.key_scope == KeyScope::Extend {
        let scheme = parts.uri.scheme_str().unwrap_or(&cfg.scheme);
        h.field(scheme.as_bytes());
        h.field(authority.as_bytes());
        h.field(path.as_bytes());
        match parts.uri.query() {
            Some(query) if cfg.sort_query || !cfg.ignored_params.is_empty() => {
                h.field(normalised_query(cfg, Some(query)).as_bytes());
            }
            query => h.field(query.unwrap_or("").as_bytes()),
        }
    }
    h.field(custom.as_bytes());
    h.field(body.map_or(&[][..], |b| &b[..]));
    if grpc {
        // The request bytes depend on the encoding, the response on what the client accepts.
        for name in ["grpc-encoding", "grpc-accept-encoding"] {
            h.field(joined(&parts.headers, &HeaderName::from_static(name)).as_deref().unwrap_or(b""));
        }
    }
    // The digest covers the fields above; the memo's input also has what the tags are made of.
    let hashed = h.0.len();
    h.field(authority.as_bytes());
    h.field(path.as_bytes());
    let keys = memo.get_or_insert(&h.0, |input| {
        let ns = &cfg.namespace;
        Keys {
            primary: format!("{ns}p:{}", hex16(&Sha256::digest(&input[..hashed]))),
            namespace: ns.clone(),
            path: path.to_owned(),
            origin: authority.into_owned(),
        }
    });
    h.done();
    keys
}

/// The query string after the configured normalisation (sorting, dropped parameters).
pub(crate) fn normalised_query(cfg: &Config, query: Option<&str>) -> String {
    let Some(query) = query else { return String::new() };
    if !cfg.sort_query && cfg.ignored_params.is_empty() {
        return query.to_owned();
    }
    let ignored = |name: &str| {
        cfg.ignored_params.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == p,
        })
    };
    let mut pairs: Vec<&str> =
        query.split('&').filter(|p| !p.is_empty()).filter(|p| !ignored(p.split('=').next().unwrap_or(p))).collect();
    if cfg.sort_query {
        // Stable by name: repeated parameters keep their order.
        pairs.sort_by_key(|p| p.split('=').next().unwrap_or(p));
    }
    pairs.join("&")
}

/// Request fields whose members are case-insensitive and unordered by their grammar (RFC 9110 §12.5.3,
/// §12.5.4: codings and language ranges, preference given by weights alone), so that `Vary` treats
/// `en, de` and `De,EN` as one variant (§4.1 of RFC 9111 allows normalising).
const UNORDERED_CASELESS: [HeaderName; 2] = [header::ACCEPT_ENCODING, header::ACCEPT_LANGUAGE];

/// All fields `name` joined with `,` and normalised: whitespace around commas removed; members of
/// the [`UNORDERED_CASELESS`] fields lowercased, stripped of all whitespace and sorted.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    if UNORDERED_CASELESS.contains(name) {
        let mut members: Vec<Vec<u8>> = values
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(|m| m.iter().filter(|b| !b.is_ascii_whitespace()).map(u8::to_ascii_lowercase).collect::<Vec<u8>>())
            .filter(|m| !m.is_empty())
            .collect();
        members.sort();
        return Some(members.join(&b','));
    }
    let mut out = Vec::new();
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let parts: Vec<&[u8]> = v.as_bytes().split(|b| *b == b',').map(|p| p.trim_ascii()).collect();
        out.extend(parts.join(&b','));
    }
    Some(out)
}

/// The request values of the `Vary` headers `names`: a SHA-256 of each normalised value, so that
/// credentials a response varies on (`Authorization`, `Cookie`) are compared exactly but never stored.
pub(crate) fn selected(names: &[HeaderName], headers: &HeaderMap) -> Vec<(HeaderName, Option<Bytes>)> {
    names.iter().map(|n| (n.clone(), joined(headers, n).map(|v| Bytes::copy_from_slice(&Sha256::digest(&v))))).collect()
}

/// The key of one variant of `primary`.
pub(crate) fn variant(primary: &str, selected: &[(HeaderName, Option<Bytes>)]) -> String {
    let mut h = Hasher::new("variant");
    for (name, value) in selected {
        h.field(name.as_str().as_bytes());
        match value {
            Some(v) => {
                h.field(b"1");
                h.field(v);
            }
            None => h.field(b"0"),
        }
    }
    format!("{primary}:v:{}", h.hex())
}

/// The key that serialises one refresh of `key` at `version` across nodes.
pub(crate) fn refresh(key: &str, version: i64) -> String {
    format!("{key}:r:{version}")
}

/// Groups named by `Cache-Groups` (RFC 9875: a list of strings) or `Cache-Group-Invalidation`.
pub(crate) fn groups(headers: &HeaderMap, name: &str) -> Vec<String> {
    let name = HeaderName::from_bytes(name.as_bytes()).unwrap_or(header::VARY);
    crate::policy::list_values(headers, &name)
        .filter_map(|item| {
            // sf-string: "..." with \" and \\ escapes; anything else is not a valid member.
            let inner = item.strip_prefix('"')?.strip_suffix('"')?;
            Some(inner.replace("\\\"", "\"").replace("\\\\", "\\"))
        })
        .filter(|g| !g.is_empty())
        .collect()
}

/// Keys named by `Surrogate-Key` (space-separated).
pub(crate) fn surrogate_keys(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("surrogate-key")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(str::split_ascii_whitespace)
        .map(str::to_owned)
        .collect()
}

/// Every tag of a stored response: namespace, URI, and its groups and surrogate keys.
pub(crate) fn response_tags(ns: &str, keys: &Keys, headers: &HeaderMap) -> Vec<String> {
    let mut tags = keys.base_tags();
    for g in groups(headers, "cache-groups") {
        tags.push(group_tag(ns, &keys.origin, &g));
        tags.push(surrogate_tag(ns, &g));
    }
    for k in surrogate_keys(headers) {
        tags.push(surrogate_tag(ns, &k));
    }
    tags.sort();
    tags.dedup();
    tags
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Request};

    fn parts(method: &str, uri: &str, host: &str) -> Parts {
        Request::builder().method(method).uri(uri).header("host", host).body(()).unwrap().into_parts().0
    }

    #[test]
    fn key_inputs() {
        let cfg = Config::default();
        let k = |m: &str, u: &str, h: &str| {
            primary(&cfg, &KeyMemo::default(), &parts(m, u, h), "", None, false).primary.clone()
        };
        assert_eq!(k("GET", "/a?x=1", "h"), k("HEAD", "/a?x=1", "H"));
        assert_ne!(k("GET", "/a?x=1", "h"), k("GET", "/a?x=2", "h"));
        assert_ne!(k("GET", "/a", "h"), k("GET", "/a", "other"));
        assert_ne!(k("GET", "/a", "h"), k("POST", "/a", "h"));
        assert_ne!(k("GET", "/a?y=1&x=1", "h"), k("GET", "/a?x=1&y=1", "h"));
        // The URI tag ignores method and query.
        let t = |m: &str, u: &str| primary(&cfg, &KeyMemo::default(), &parts(m, u, "h"), "", None, false).uri_tag();
        assert_eq!(t("GET", "/a?x=1"), t("DELETE", "/a"));
        assert_ne!(t("GET", "/a"), t("GET", "/b"));
        // Body digests separate POST keys.
        let p = parts("POST", "/q", "h");
        assert_ne!(
            primary(&cfg, &KeyMemo::default(), &p, "", Some(&body_digest(b"a")), false).primary,
            primary(&cfg, &KeyMemo::default(), &p, "", Some(&body_digest(b"b")), false).primary
        );
    }

    #[test]
    fn memoised_keys_are_the_sha256_keys_of_before() {
        let cfg = Config::default();
        let memo = KeyMemo::default();
        let p = parts("GET", "/a?x=1", "H.example");
        let first = primary(&cfg, &memo, &p, "", None, false);
        assert!(Arc::ptr_eq(&first, &primary(&cfg, &memo, &p, "", None, false)), "the second lookup is memoised");
        // The stored key format is unchanged: a SHA-256 over the same length-prefixed fields.
        let mut h = Hasher::new("primary");
        for field in ["GET", "http", "h.example", "/a", "x=1", ""] {
            h.field(field.as_bytes());
        }
        h.field(&[]);
        assert_eq!(first.primary, format!("http:p:{}", h.hex()));
        // Another path with the same custom part under KeyScope::Replace: same key, its own URI tag.
        let replace = Config { key_scope: KeyScope::Replace, ..Config::default() };
        let (x, y) = (parts("GET", "/x", "h"), parts("GET", "/y", "h"));
        let (kx, ky) = (primary(&replace, &memo, &x, "c", None, false), primary(&replace, &memo, &y, "c", None, false));
        assert_eq!(kx.primary, ky.primary);
        assert_ne!(kx.uri_tag(), ky.uri_tag());
    }

    #[test]
    fn query_normalisation() {
        let cfg =
            Config { sort_query: true, ignored_params: vec!["utm_*".into(), "fbclid".into()], ..Config::default() };
        assert_eq!(normalised_query(&cfg, Some("b=2&utm_source=x&a=1&a=0&fbclid=z")), "a=1&a=0&b=2");
        assert_eq!(normalised_query(&Config::default(), Some("b=2&a=1")), "b=2&a=1");
    }

    #[test]
    fn custom_parts_extend_or_replace_the_uri_part() {
        let extend = Config::default();
        let k = |cfg: &Config, uri: &str, custom: &str| {
            primary(cfg, &KeyMemo::default(), &parts("GET", uri, "h"), custom, None, false)
        };
        assert_ne!(k(&extend, "/x", "a").primary, k(&extend, "/x", "b").primary);
        assert_ne!(k(&extend, "/x", "a").primary, k(&extend, "/y", "a").primary);
        let replace = Config { key_scope: KeyScope::Replace, ..Config::default() };
        assert_ne!(k(&replace, "/x", "a").primary, k(&replace, "/x", "b").primary);
        assert_eq!(k(&replace, "/x", "a").primary, k(&replace, "/y?q=1", "a").primary);
        // Invalidation still goes by URI.
        assert_ne!(k(&replace, "/x", "a").uri_tag(), k(&replace, "/y", "a").uri_tag());
    }

    #[test]
    fn variants_and_tags() {
        let mut h = HeaderMap::new();
        h.append("accept-language", HeaderValue::from_static("en , fr"));
        let names = [HeaderName::from_static("accept-language"), HeaderName::from_static("x-none")];
        let sel = selected(&names, &h);
        let mut same = HeaderMap::new();
        same.append("accept-language", HeaderValue::from_static("en,fr"));
        assert_eq!(sel, selected(&names, &same), "whitespace around commas is not significant");
        assert_eq!(sel[0].1.as_deref(), Some(&Sha256::digest(b"en,fr")[..]));
        assert_eq!(sel[1].1, None);
        assert_ne!(variant("p", &sel), variant("p", &selected(&names, &HeaderMap::new())));
        let mut r = HeaderMap::new();
        r.insert("cache-groups", HeaderValue::from_static("\"a\", \"b\\\"c\", bad"));
        r.insert("surrogate-key", HeaderValue::from_static("k1  k2"));
        assert_eq!(groups(&r, "cache-groups"), ["a", "b\"c"]);
        assert_eq!(surrogate_keys(&r), ["k1", "k2"]);
    }
}
