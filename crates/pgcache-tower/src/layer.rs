//! [`PgCacheLayer`]: the configuration, the key hook and the cache, nothing else.

use std::time::Duration;

use pgcache_core::{Codec, JsonCodec, SharedCache};
use tower_layer::Layer;

use crate::config::{Config, DefaultKey, KeyScope, MakeKey, Shared};
use crate::purge::HttpCache;
use crate::service::PgCache;

/// A [`tower_layer::Layer`] that puts a shared, RFC 9111 HTTP response cache in front of a service.
///
/// `new()` takes the cache; the setters configure it (each documents its default). Defaults are safe
/// for a shared cache: only responses with explicit freshness are stored, requests with `Cookie`
/// bypass, responses with `Set-Cookie`/`private`/`no-store` are never stored. `K` is the key hook
/// ([`make_key`](Self::make_key)). To purge what the layer stored, keep an [`HttpCache`] (from
/// [`http_cache`](Self::http_cache)) in your application state; the layer itself holds only its
/// configuration.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use pgcache_core::NullCache;
/// use pgcache_tower::PgCacheLayer;
///
/// let layer = PgCacheLayer::new(NullCache::new())
///     .default_ttl(Duration::from_secs(30))   // for responses without Cache-Control
///     .max_ttl(Duration::from_secs(3600))
///     .stale_if_error(Duration::from_secs(300))
///     .sort_query(true)
///     .ignore_query_params(["utm_*", "fbclid"]);
/// let app: Router = Router::new().route("/products/{id}", get(|| async { "product" })).layer(layer);
/// ```
#[derive(Clone)]
#[must_use]
pub struct PgCacheLayer<K = DefaultKey> {
    config: Config,
    make_key: K,
    store: SharedCache,
}

impl<K> std::fmt::Debug for PgCacheLayer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCacheLayer")
            .field("config", &self.config)
            .field("make_key", &std::any::type_name::<K>())
            .finish_non_exhaustive()
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.config.$name = value;
            self
        }
    };
    ($(#[$doc:meta])* $name:ident: $ty:ty => $wrap:ident) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.config.$name = $wrap(value);
            self
        }
    };
}

impl PgCacheLayer {
    /// A layer caching into `cache` with the default options: anything that converts into a
    /// [`SharedCache`] (a [`PostgresCache`](pgcache_core::PostgresCache), a
    /// [`NullCache`](pgcache_core::NullCache), a `SharedCache`, pgcache-axum's `Cache`). The layer stores
    /// bytes, so the cache's codec does not matter.
    ///
    /// The layer never connects nor migrates by itself: to start before PostgreSQL is reachable, give it
    /// a [`PostgresCache::connect_lazy`](pgcache_core::PostgresCache::connect_lazy) cache, which connects
    /// on first use (requests are served uncached until it can).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), pgcache_core::Error> {
    /// use pgcache_core::{CacheSettings, PostgresCache};
    /// use pgcache_tower::PgCacheLayer;
    ///
    /// let settings = CacheSettings::new("postgresql://localhost/app").schema_prefix("http_");
    /// // Connected up front (after the migrations)...
    /// PostgresCache::init_db(&settings).await?;
    /// let layer = PgCacheLayer::new(PostgresCache::connect(settings.clone()).await?);
    /// // ...or on first use (no migrations).
    /// let lazy = PgCacheLayer::new(PostgresCache::connect_lazy(settings)?);
    /// # let _ = (layer, lazy); Ok(()) }
    /// ```
    pub fn new<C: Codec + Clone>(cache: impl Into<SharedCache<C>>) -> Self {
        Self { config: Config::default(), make_key: DefaultKey, store: cache.into().with_codec(JsonCodec) }
    }
}

impl<K> PgCacheLayer<K> {
    setter! {
        /// Freshness lifetime for storable responses that carry no `s-maxage`, `max-age` or `Expires`.
        /// Default: none, such responses are not stored. Set it on layers of routes that should be
        /// cached without saying so in their headers (it is also the TTL of cached gRPC responses).
        ///
        /// ```
        /// # use std::time::Duration;
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let layer = layer.default_ttl(Duration::from_secs(60));
        /// ```
        default_ttl: Duration => Some
    }

    setter! {
        /// Heuristic freshness (RFC 9111 §4.2.2) for responses without explicit freshness that carry
        /// `Last-Modified` and are heuristically cacheable (200, 203, 204, 300, 301, 308, 404, 405, 410,
        /// 414, 501) or `public`: 10 % of the time between `Last-Modified` and `Date`, at most one day (then
        /// clamped by `min_ttl` / `max_ttl`). It is used before `default_ttl`. Default: off, since a
        /// guessed lifetime in a shared cache surprises people; such responses are then stored stale and
        /// revalidated on use.
        ///
        /// ```
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let layer = layer.heuristic_freshness(true);
        /// ```
        heuristic_freshness: bool
    }

    setter! {
        /// Lower bound on the freshness lifetime of every stored response (overrides the headers).
        /// Default: zero.
        ///
        /// ```
        /// # use std::time::Duration;
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let layer = layer.min_ttl(Duration::from_secs(5));
        /// ```
        min_ttl: Duration
    }

    setter! {
        /// Upper bound on the freshness lifetime of every stored response (overrides the headers).
        /// Default: none.
        ///
        /// ```
        /// # use std::time::Duration;
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let layer = layer.max_ttl(Duration::from_secs(3600));
        /// ```
        max_ttl: Duration => Some
    }

    setter! {
        /// `stale-while-revalidate` window (RFC 5861) for responses that do not give one. Default: zero.
        /// Never applied to `must-revalidate`, `proxy-revalidate` or `s-maxage` responses.
        ///
        /// ```
        /// # use std::time::Duration;
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let layer = layer.stale_while_revalidate(Duration::from_secs(30));
        /// ```
        stale_while_revalidate: Duration
    }

    setter! {
        /// `stale-if-error` window (RFC 5861) for responses that do not give one. Default: zero.
        ///
        /// ```
        /// # use std::time::Duration;
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let layer = layer.stale_if_error(Duration::from_secs(600));
        /// ```
        stale_if_error: Duration
    }

    setter! {
        /// How long a stale response that carries a validator (`ETag`, `Last-Modified`) is kept past its
        /// freshness to be revalidated with a conditional request (RFC 9111 §4.3): a `304` refreshes it
        /// and its stored body is served. Never served during this window without a successful
        /// validation. Default: 1 hour; zero removes responses as soon as nothing allows their use.
        ///
        /// ```
        /// # use std::time::Duration;
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let layer = layer.revalidate_for(Duration::from_secs(24 * 3600));
        /// ```
        revalidate_for: Duration
    }

    setter! {
        /// The most variants (`Vary` selections) kept per URI: storing one more removes the variant stored
        /// first, as shared caches bound variants. Concurrent fills on several nodes can overshoot it
        /// briefly. Default: 32; at least 1.
        ///
        /// ```
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let layer = layer.max_variants(8);
        /// ```
        max_variants: usize
    }

    /// The targeted cache-control field (RFC 9213) this cache obeys first, ahead of `CDN-Cache-Control`
    /// and then `Cache-Control`, and removes from every response it sends. The first of these fields
    /// present with a valid value (a Structured Fields dictionary) governs the response alone:
    /// `Cache-Control` and `Expires` are then ignored, in either direction. Default:
    /// [`PGCACHE_CONTROL`](crate::PGCACHE_CONTROL) (`PgCache-Control`).
    ///
    /// ```
    /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
    /// let layer = layer.targeted_field(http::HeaderName::from_static("edge-cache-control"));
    /// ```
    pub fn targeted_field(mut self, name: http::HeaderName) -> Self {
        self.config.targeted_field = name;
        self
    }

    setter! {
        /// How long an uncacheable URL is remembered as such ("hit-for-pass"), so concurrent requests for
        /// it go to the handler in parallel instead of queueing behind the fill lock. Default: 10 s.
        ///
        /// ```
        /// # use std::time::Duration;
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let layer = layer.hit_for_pass_ttl(Duration::from_secs(30));
        /// ```
        hit_for_pass_ttl: Duration
    }

    setter! {
        /// Largest response body stored. Larger (or unknown-length bodies that grow past it) are streamed
        /// to the client and not stored. Default: 1 MiB.
        ///
        /// ```
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let layer = layer.max_body_bytes(4 * 1024 * 1024);
        /// ```
        max_body_bytes: usize
    }

    setter! {
        /// Largest request body read to key a cacheable POST; larger requests bypass the cache.
        /// Default: 64 KiB.
        ///
        /// ```
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let layer = layer.max_request_body_bytes(16 * 1024);
        /// ```
        max_request_body_bytes: usize
    }

    setter! {
        /// Treat POST as cacheable on this layer (for GraphQL/search routes): keyed by a SHA-256 of the
        /// body, and not invalidating. Default: `false` (POST is an unsafe method that invalidates).
        ///
        /// ```
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let graphql_layer = layer.cache_post(true);
        /// ```
        cache_post: bool
    }

    setter! {
        /// Serve requests that carry `Cookie` from the cache (and store their responses when storable).
        /// Default: `false`: such requests bypass the cache. Only enable it for routes whose responses do
        /// not depend on cookies, or that say `Vary: Cookie`, or with a [`make_key`](Self::make_key)
        /// hook that keys by the principal.
        ///
        /// ```
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let layer = layer.allow_cookies(true);
        /// ```
        allow_cookies: bool
    }

    setter! {
        /// Honour the client's `Cache-Control: no-cache` / `max-age=0` / `Pragma: no-cache` (revalidate
        /// with the handler) and `no-store` (bypass). Default: `false`: a shared cache ignores them so
        /// clients cannot force regeneration.
        ///
        /// ```
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let layer = layer.honor_client_no_cache(true);
        /// ```
        honor_client_no_cache: bool
    }

    setter! {
        /// Invalidate the target URI (every method, query and variant, on every node) after a 2xx/3xx
        /// response to an unsafe method (RFC 9111 §4.4), plus same-origin `Location`/`Content-Location`
        /// and the groups of `Cache-Group-Invalidation` (RFC 9875). Default: `true`.
        ///
        /// ```
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let layer = layer.invalidate_unsafe(false);
        /// ```
        invalidate_unsafe: bool
    }

    setter! {
        /// Sort query parameters by name in the key (stable: repeated parameters keep their order).
        /// Default: `false`.
        ///
        /// ```
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let layer = layer.sort_query(true);
        /// ```
        sort_query: bool
    }

    /// Query parameters left out of the key (`name`, or a `prefix*`). Default: none.
    ///
    /// ```
    /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
    /// let layer = layer.ignore_query_params(["utm_*", "fbclid"]);
    /// ```
    pub fn ignore_query_params<I, S>(mut self, params: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.ignored_params.extend(params.into_iter().map(Into::into));
        self
    }

    /// Allow-lists a unary gRPC method (`/package.Service/Method`) for caching: keyed by its request
    /// message bytes, stored only when it ends with `grpc-status: 0`, replayed with its trailers.
    /// Other gRPC calls (and every streaming call) pass through untouched.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
    /// let layer = layer.grpc_method("/catalog.Catalog/GetProduct").default_ttl(Duration::from_secs(60));
    /// ```
    pub fn grpc_method(mut self, path: impl Into<String>) -> Self {
        self.config.grpc_methods.push(path.into());
        self
    }

    /// Sets the key hook: `make_key` computes a part of the key from the request (headers, extensions
    /// such as an authenticated principal), and `scope` says whether that part
    /// [extends](KeyScope::Extend) the URI part of the key or [replaces](KeyScope::Replace) it. The hook
    /// returning `None` bypasses the cache for that request (`detail=key`). Default: [`DefaultKey`]
    /// (no custom part). A closure `Fn(&Parts) -> Option<String>` is a [`MakeKey`].
    ///
    /// ```
    /// use http::request::Parts;
    /// use pgcache_tower::KeyScope;
    /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
    ///
    /// // One entry per URI and tenant; requests without a tenant are not cached.
    /// let layer = layer.make_key(KeyScope::Extend, |parts: &Parts| {
    ///     Some(parts.headers.get("x-tenant")?.to_str().ok()?.to_owned())
    /// });
    /// ```
    pub fn make_key<K2: MakeKey>(self, scope: KeyScope, make_key: K2) -> PgCacheLayer<K2> {
        let mut config = self.config;
        config.key_scope = scope;
        PgCacheLayer { config, make_key, store: self.store }
    }

    /// Prefix of every key and tag of this layer, to keep several apps apart in one store.
    /// Default: `http:`.
    ///
    /// ```
    /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
    /// let layer = layer.namespace("shop:");
    /// ```
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.config.namespace = namespace.into();
        self
    }

    /// Scheme used in keys when the request URI has none (HTTP/1.1 origin-form). Default: `http`.
    ///
    /// ```
    /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
    /// let layer = layer.scheme("https");
    /// ```
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.config.scheme = scheme.into();
        self
    }

    /// The cache's name in `Cache-Status`. Default: `pgcache`.
    ///
    /// ```
    /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
    /// let layer = layer.status_name("edge-1");
    /// ```
    pub fn status_name(mut self, name: impl Into<String>) -> Self {
        self.config.status_name = name.into();
        self
    }

    /// A handle that purges what this layer stores (same cache, same namespace), without the layer.
    ///
    /// ```
    /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
    /// let http = layer.namespace("shop:").http_cache();
    /// // keep `http` in the application state: http.purge_tags(&["product-42"]).await?
    /// # let _ = http;
    /// ```
    pub fn http_cache(&self) -> HttpCache {
        HttpCache::from_parts(self.store.clone(), self.config.namespace.clone())
    }
}

impl<S, K: Clone> Layer<S> for PgCacheLayer<K> {
    type Service = PgCache<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        let shared = Shared::new(self.config.clone(), self.store.clone());
        PgCache::new(inner, std::sync::Arc::new(shared), self.make_key.clone())
    }
}
