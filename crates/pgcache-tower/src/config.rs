//! What a [`PgCacheLayer`](crate::PgCacheLayer) is configured with: the options ([`Config`]), the key
//! hook ([`MakeKey`], [`DefaultKey`], [`KeyScope`]), and [`Shared`], what every clone of the service reads.

use std::time::Duration;

use http::request::Parts;
use pgcache_core::SharedCache;

use http::HeaderName;

use crate::decoded::Decoded;
use crate::key::KeyMemo;
use crate::policy::{Rules, CDN_CACHE_CONTROL, PGCACHE_CONTROL};

/// Computes the custom part of a request's cache key, or declines to cache the request.
///
/// This is the key hook of [`PgCacheLayer::make_key`](crate::PgCacheLayer::make_key), in the manner of
/// tower-http's `Predicate`: implemented for every `Fn(&Parts) -> Option<String>` closure that is
/// `Clone + Send + Sync + 'static`, with [`DefaultKey`] (no custom part) as the default. The part is
/// hashed into the key together with the method, `Vary` and (for a cacheable POST) the body digest;
/// [`KeyScope`] says whether it also keeps the URI part.
///
/// ```
/// use http::request::Parts;
/// use pgcache_tower::MakeKey;
///
/// /// Keys by the tenant header; requests without one are not cached.
/// #[derive(Clone)]
/// struct ByTenant;
///
/// impl MakeKey for ByTenant {
///     fn make_key(&self, parts: &Parts) -> Option<String> {
///         Some(parts.headers.get("x-tenant")?.to_str().ok()?.to_owned())
///     }
/// }
///
/// let (parts, ()) = http::Request::get("/").header("x-tenant", "a").body(()).unwrap().into_parts();
/// assert_eq!(ByTenant.make_key(&parts).as_deref(), Some("a"));
/// ```
pub trait MakeKey: Clone + Send + Sync + 'static {
    /// The custom key part of this request, or `None` to bypass the cache for it
    /// (`Cache-Status: ...; fwd=bypass; detail=key`).
    fn make_key(&self, parts: &Parts) -> Option<String>;
}

impl<F> MakeKey for F
where
    F: Fn(&Parts) -> Option<String> + Clone + Send + Sync + 'static,
{
    fn make_key(&self, parts: &Parts) -> Option<String> {
        self(parts)
    }
}

/// The default key hook: no custom part, every request is keyed by its URI alone.
///
/// ```
/// use pgcache_tower::{DefaultKey, MakeKey};
///
/// let (parts, ()) = http::Request::get("/a").body(()).unwrap().into_parts();
/// assert_eq!(DefaultKey.make_key(&parts).as_deref(), Some(""));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultKey;

impl MakeKey for DefaultKey {
    fn make_key(&self, _parts: &Parts) -> Option<String> {
        Some(String::new())
    }
}

/// How the part a [`MakeKey`] computes combines with the URI part of the key (scheme, authority,
/// path, normalised query).
///
/// The method (HEAD counts as GET), the `Vary` selection and the body digest of a cacheable POST are
/// part of every key, whatever the scope. Unsafe-method invalidation and
/// [`HttpCache::purge_uri`](crate::HttpCache::purge_uri) work with either scope: they go by URI tags,
/// not keys.
///
/// ```
/// use pgcache_tower::KeyScope;
///
/// assert_eq!(KeyScope::default(), KeyScope::Extend);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyScope {
    /// The URI part and the custom part (the default): one entry per URI and custom value.
    #[default]
    Extend,
    /// The custom part instead of the URI part: requests for different URIs that get the same custom
    /// part share an entry.
    Replace,
}

/// Every option of the layer except the key hook (see the setters of
/// [`PgCacheLayer`](crate::PgCacheLayer) for each one's meaning and default).
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) namespace: String,
    pub(crate) scheme: String,
    pub(crate) status_name: String,
    /// `None`: responses without freshness information are not stored.
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) heuristic_freshness: bool,
    pub(crate) min_ttl: Duration,
    /// `None`: no upper bound.
    pub(crate) max_ttl: Option<Duration>,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    pub(crate) revalidate_for: Duration,
    pub(crate) max_variants: usize,
    pub(crate) targeted_field: HeaderName,
    pub(crate) hit_for_pass_ttl: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_request_body_bytes: usize,
    pub(crate) cache_post: bool,
    pub(crate) grpc_methods: Vec<String>,
    pub(crate) allow_cookies: bool,
    pub(crate) honor_client_no_cache: bool,
    pub(crate) invalidate_unsafe: bool,
    pub(crate) sort_query: bool,
    pub(crate) ignored_params: Vec<String>,
    pub(crate) key_scope: KeyScope,
}

/// The namespace of layers and [`HttpCache`](crate::HttpCache) handles that do not set one.
pub(crate) const DEFAULT_NAMESPACE: &str = "http:";

impl Default for Config {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            scheme: "http".to_owned(),
            status_name: "pgcache".to_owned(),
            default_ttl: None,
            heuristic_freshness: false,
            min_ttl: Duration::ZERO,
            max_ttl: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            revalidate_for: Duration::from_secs(3600),
            max_variants: 32,
            targeted_field: PGCACHE_CONTROL,
            hit_for_pass_ttl: Duration::from_secs(10),
            max_body_bytes: 1024 * 1024,
            max_request_body_bytes: 64 * 1024,
            cache_post: false,
            grpc_methods: Vec::new(),
            allow_cookies: false,
            honor_client_no_cache: false,
            invalidate_unsafe: true,
            sort_query: false,
            ignored_params: Vec::new(),
            key_scope: KeyScope::Extend,
        }
    }
}

impl Config {
    /// The options the storage rules read.
    pub(crate) fn rules(&self) -> Rules {
        Rules {
            default_ttl: self.default_ttl,
            heuristic_freshness: self.heuristic_freshness,
            min_ttl: self.min_ttl,
            max_ttl: self.max_ttl,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
            revalidate_for: self.revalidate_for,
            targeted: vec![self.targeted_field.clone(), CDN_CACHE_CONTROL],
        }
    }
}

/// The configuration and store every clone of the service reads (the key hook stays with the service).
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) rules: Rules,
    pub(crate) store: SharedCache,
    /// Records decoded from the store's values, so L1 hits do not decode again.
    pub(crate) decoded: Decoded,
    /// Primary keys by what they are made of, so hits do not hash again.
    pub(crate) keys: KeyMemo,
}

impl Shared {
    pub(crate) fn new(config: Config, store: SharedCache) -> Self {
        Self { rules: config.rules(), config, store, decoded: Decoded::default(), keys: KeyMemo::default() }
    }
}
