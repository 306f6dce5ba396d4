//! [`PgCacheLayer`]: the configuration, the store, and programmatic purges.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::Uri;
use pgcache_core::{CacheSettings, CacheStore, Error, NullCache, PostgresCache};
use tower_layer::Layer;

use crate::key;
use crate::lazy::LazyCache;
use crate::policy::Rules;
use crate::service::PgCache;

/// A custom key function: returns the key part for a request, or `None` to not cache it.
pub(crate) type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// Whether a custom key part extends or replaces the default key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyMode {
    Extend,
    Replace,
}

/// Every option of the layer (see the setters of [`PgCacheLayer`] for each one's meaning and default).
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) namespace: String,
    pub(crate) scheme: String,
    pub(crate) status_name: String,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) min_ttl: Duration,
    pub(crate) max_ttl: Option<Duration>,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
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
    pub(crate) key_fn: Option<(KeyFn, KeyMode)>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            namespace: "http:".to_owned(),
            scheme: "http".to_owned(),
            status_name: "pgcache".to_owned(),
            default_ttl: None,
            min_ttl: Duration::ZERO,
            max_ttl: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
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
            key_fn: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("namespace", &self.namespace)
            .field("default_ttl", &self.default_ttl)
            .field("min_ttl", &self.min_ttl)
            .field("max_ttl", &self.max_ttl)
            .field("stale_while_revalidate", &self.stale_while_revalidate)
            .field("stale_if_error", &self.stale_if_error)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("cache_post", &self.cache_post)
            .field("grpc_methods", &self.grpc_methods)
            .field("allow_cookies", &self.allow_cookies)
            .field("honor_client_no_cache", &self.honor_client_no_cache)
            .field("custom_key", &self.key_fn.as_ref().map(|(_, mode)| *mode))
            .finish_non_exhaustive()
    }
}

impl Config {
    pub(crate) fn rules(&self) -> Rules {
        Rules {
            default_ttl: self.default_ttl,
            min_ttl: self.min_ttl,
            max_ttl: self.max_ttl,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
        }
    }
}

/// The configuration and store shared by every clone of the service.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) rules: Rules,
    pub(crate) store: Arc<dyn CacheStore>,
}

/// Anything the layer can cache into: a [`PostgresCache`], a [`NullCache`], an `Arc<dyn CacheStore>`,
/// or [`CacheSettings`] (the layer then connects lazily, on the first request, running `init_db` first).
pub trait IntoStore {
    /// The store as a shared trait object.
    fn into_store(self) -> Arc<dyn CacheStore>;
}

impl<C: Clone + Send + Sync + 'static> IntoStore for PostgresCache<C> {
    fn into_store(self) -> Arc<dyn CacheStore> {
        Arc::new(self)
    }
}

impl<C: Send + Sync + 'static> IntoStore for NullCache<C> {
    fn into_store(self) -> Arc<dyn CacheStore> {
        Arc::new(self)
    }
}

impl IntoStore for Arc<dyn CacheStore> {
    fn into_store(self) -> Arc<dyn CacheStore> {
        self
    }
}

impl IntoStore for CacheSettings {
    fn into_store(self) -> Arc<dyn CacheStore> {
        Arc::new(LazyCache::new(self))
    }
}

/// A [`tower_layer::Layer`] that puts a shared, RFC 9111 HTTP response cache in front of a service.
///
/// `new()` takes the store; the setters configure it (each documents its default). Defaults are safe
/// for a shared cache: only responses with explicit freshness are stored, requests with `Cookie`
/// bypass, responses with `Set-Cookie`/`private`/`no-store` are never stored.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use pgcache_core::NullCache;
/// use pgcache_tower::PgCacheLayer;
///
/// let layer = PgCacheLayer::new(NullCache::new())
///     .default_ttl(Some(Duration::from_secs(30)))   // for responses without Cache-Control
///     .max_ttl(Some(Duration::from_secs(3600)))
///     .stale_if_error(Duration::from_secs(300))
///     .sort_query(true)
///     .ignore_query_params(["utm_*", "fbclid"]);
/// let app: Router = Router::new().route("/products/{id}", get(|| async { "product" })).layer(layer);
/// ```
#[derive(Clone)]
pub struct PgCacheLayer {
    config: Config,
    store: Arc<dyn CacheStore>,
}

impl std::fmt::Debug for PgCacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCacheLayer").field("config", &self.config).finish_non_exhaustive()
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        #[must_use]
        pub fn $name(mut self, value: $ty) -> Self {
            self.config.$name = value;
            self
        }
    };
}

impl PgCacheLayer {
    /// A layer caching into `store` with the default options.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), pgcache_core::Error> {
    /// use pgcache_core::{CacheSettings, PostgresCache};
    /// use pgcache_tower::PgCacheLayer;
    ///
    /// let settings = CacheSettings::new("postgresql://localhost/app").schema_prefix("http_");
    /// // Connected up front…
    /// PostgresCache::init_db(&settings).await?;
    /// let layer = PgCacheLayer::new(PostgresCache::connect(settings.clone()).await?);
    /// // …or lazily, on the first request (init_db included).
    /// let lazy = PgCacheLayer::new(settings);
    /// # let _ = (layer, lazy); Ok(()) }
    /// ```
    pub fn new(store: impl IntoStore) -> Self {
        Self { config: Config::default(), store: store.into_store() }
    }

    setter! {
        /// Freshness lifetime for storable responses that carry no `s-maxage`, `max-age` or `Expires`.
        /// `None` (the default): such responses are not stored. Set it on layers of routes that should be
        /// cached without saying so in their headers (it is also the TTL of cached gRPC responses).
        ///
        /// ```
        /// # use std::time::Duration;
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let layer = layer.default_ttl(Some(Duration::from_secs(60)));
        /// ```
        default_ttl: Option<Duration>
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
        /// Upper bound on the freshness lifetime of every stored response. Default: `None` (no bound).
        ///
        /// ```
        /// # use std::time::Duration;
        /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
        /// let layer = layer.max_ttl(Some(Duration::from_secs(3600)));
        /// ```
        max_ttl: Option<Duration>
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
        /// not depend on cookies, or that say `Vary: Cookie`, or with a [`key_fn`](Self::key_fn) that
        /// keys by the principal.
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
    #[must_use]
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
    /// let layer = layer.grpc_method("/catalog.Catalog/GetProduct").default_ttl(Some(Duration::from_secs(60)));
    /// ```
    #[must_use]
    pub fn grpc_method(mut self, path: impl Into<String>) -> Self {
        self.config.grpc_methods.push(path.into());
        self
    }

    /// Adds a part computed from the request (headers, extensions such as an authenticated principal)
    /// to the key. Returning `None` bypasses the cache for that request.
    ///
    /// ```
    /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
    /// let layer = layer.key_fn(|parts: &http::request::Parts| {
    ///     Some(parts.headers.get("x-tenant")?.to_str().ok()?.to_owned())
    /// });
    /// ```
    #[must_use]
    pub fn key_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.config.key_fn = Some((Arc::new(f), KeyMode::Extend));
        self
    }

    /// Replaces the default key (scheme, authority, path, query) by the function's result; the method,
    /// `Vary` and (for cacheable POST) the body digest are still part of it. Unsafe-method invalidation
    /// keeps working: it goes by URI tags, not keys.
    ///
    /// ```
    /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
    /// let layer = layer.replace_key_fn(|parts: &http::request::Parts| Some(parts.uri.path().to_owned()));
    /// ```
    #[must_use]
    pub fn replace_key_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.config.key_fn = Some((Arc::new(f), KeyMode::Replace));
        self
    }

    /// Prefix of every key and tag of this layer, to keep several apps apart in one store.
    /// Default: `http:`.
    ///
    /// ```
    /// # let layer = pgcache_tower::PgCacheLayer::new(pgcache_core::NullCache::new());
    /// let layer = layer.namespace("shop:");
    /// ```
    #[must_use]
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
    #[must_use]
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
    #[must_use]
    pub fn status_name(mut self, name: impl Into<String>) -> Self {
        self.config.status_name = name.into();
        self
    }

    /// Purges every stored response of a URI (any method, query, `Vary` variant), on every node.
    ///
    /// ```no_run
    /// # async fn demo(layer: pgcache_tower::PgCacheLayer) -> Result<(), pgcache_core::Error> {
    /// layer.purge_uri(&"http://shop.example/products/42".parse().unwrap()).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The URI has no authority (`http://host/...` is needed); the store's errors.
    pub async fn purge_uri(&self, uri: &Uri) -> Result<u64, Error> {
        let Some(authority) = uri.authority() else {
            return Err(Error::InvalidSetting {
                name: "uri",
                reason: "purge_uri needs an absolute URI with an authority (http://host/path)".to_owned(),
            });
        };
        let tag = key::uri_tag(&self.config.namespace, &authority.as_str().to_ascii_lowercase(), uri.path());
        self.store.delete_tags(&[tag.as_str()]).await
    }

    /// Purges every response tagged with any of these `Surrogate-Key`s or `Cache-Groups` names.
    ///
    /// ```no_run
    /// # async fn demo(layer: pgcache_tower::PgCacheLayer) -> Result<(), pgcache_core::Error> {
    /// layer.purge_tags(&["product-42"]).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The store's errors.
    pub async fn purge_tags(&self, tags: &[&str]) -> Result<u64, Error> {
        let tags: Vec<String> = tags.iter().map(|t| key::surrogate_tag(&self.config.namespace, t)).collect();
        let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        self.store.delete_tags(&refs).await
    }

    /// Purges every response this layer's namespace stored.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn purge_all(&self) -> Result<u64, Error> {
        let tag = format!("{}all", self.config.namespace);
        self.store.delete_tags(&[tag.as_str()]).await
    }

    /// The store this layer caches into.
    pub fn store(&self) -> &Arc<dyn CacheStore> {
        &self.store
    }
}

impl<S> Layer<S> for PgCacheLayer {
    type Service = PgCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let shared = Shared { rules: self.config.rules(), config: self.config.clone(), store: Arc::clone(&self.store) };
        PgCache::new(inner, Arc::new(shared))
    }
}
