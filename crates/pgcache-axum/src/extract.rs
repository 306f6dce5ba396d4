//! [`Cached<T>`] and [`Lookup<T>`]: a value from the cache, loaded once across every process on a miss.

use std::future::Future;
use std::ops::{Deref, DerefMut};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderValue;
use pgcache_core::{CacheStore, Codec, Error, Expiry, Fill, LoadError, SetOptions, Source, Ttl, TypedCache};
use pgcache_tower::CacheStatusMember;
use serde::{de::DeserializeOwned, Serialize};

use crate::cache::Cache;
use crate::rejection::{CacheMisconfigured, CachedRejection};

/// A value that [`Cached<T>`] can serve: how to key it from a request, how to load it, how long to keep it.
///
/// The key and the loader depend only on declared inputs: [`Input`](Self::Input) is any extractor that
/// does not consume the body (`Path<u64>`, `Query<Filter>`, a header or authenticated principal extractor,
/// or a tuple of them), and the app state `S`. Two requests with the same key get the same value, so
/// everything the value depends on must be in the key (include the principal for per-user data), and
/// the key should name the resource (`profile:{id}`) so two resources never share one.
///
/// Values are stored with the [`Codec`](Self::Codec) of the resource, which must be the codec of the
/// app's [`Cache<C>`](crate::Cache) (JSON by default). Loader errors are never cached: the next request
/// loads again. To cache "not found" too, make the resource an `Option` and load `None`.
///
/// `#[derive(FromRef)]` needs axum's `macros` feature.
///
/// ```
/// use axum::extract::{FromRef, Path};
/// use axum::http::StatusCode;
/// use pgcache_axum::{Cache, CacheResource};
/// use pgcache_core::{JsonCodec, Ttl};
/// use serde::{Deserialize, Serialize};
/// use std::time::Duration;
///
/// #[derive(Clone, FromRef)]
/// struct AppState {
///     cache: Cache,
///     // db: Pool, ...
/// }
///
/// #[derive(Serialize, Deserialize)]
/// struct Profile {
///     id: u64,
///     name: String,
/// }
///
/// impl CacheResource<AppState> for Profile {
///     type Input = Path<u64>;
///     type Rejection = StatusCode;
///     type Codec = JsonCodec;
///
///     fn key(Path(id): &Path<u64>, _state: &AppState) -> String {
///         format!("profile:{id}")
///     }
///
///     async fn load(Path(id): Path<u64>, _state: AppState) -> Result<Self, StatusCode> {
///         // SELECT ... FROM profiles WHERE id = $1, or:
///         if id == 0 {
///             return Err(StatusCode::NOT_FOUND);
///         }
///         Ok(Profile { id, name: format!("user {id}") })
///     }
///
///     fn ttl(&self) -> Ttl {
///         Ttl::After(Duration::from_secs(300))
///     }
///
///     fn tags(&self) -> Vec<String> {
///         vec!["profiles".to_owned()]
///     }
/// }
/// ```
pub trait CacheResource<S>: Serialize + DeserializeOwned + Send + Sized + 'static
where
    S: Clone + Send + Sync + 'static,
{
    /// The request inputs the key and the loader depend on, as an extractor. Its rejection is answered
    /// as is ([`CachedRejection::Input`]).
    type Input: FromRequestParts<S> + Send + 'static;

    /// What a failed load answers with ([`CachedRejection::Load`]): a `StatusCode`, or your error type
    /// implementing `IntoResponse` (a 404 for a missing row, a 500 for a database error).
    type Rejection: axum::response::IntoResponse + Send + 'static;

    /// How the value is stored: the codec of the app's [`Cache<C>`](crate::Cache), found in the state
    /// through `Cache<Self::Codec>: FromRef<S>` (`JsonCodec` for a plain `Cache`).
    type Codec: Codec + Clone;

    /// The cache key for this input: name the resource and include every input the value depends on.
    /// A key that is empty, contains NUL or is longer than `max_key_bytes` rejects the request with 400.
    fn key(input: &Self::Input, state: &S) -> String;

    /// Loads the value on a miss. Runs at most once per key at a time across every process sharing the
    /// database (the others wait and get this value); it gets the input and a clone of the state.
    fn load(input: Self::Input, state: S) -> impl Future<Output = Result<Self, Self::Rejection>> + Send;

    /// How long the loaded value stays cached (the cache's `default_ttl` unless overridden).
    fn ttl(&self) -> Ttl {
        Ttl::Default
    }

    /// Tags to store with the loaded value, for group invalidation with
    /// [`CacheStore::delete_tags`] (none by default).
    fn tags(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The rejection of [`Cached<T>`] and [`Lookup<T>`] for resource `T` in state `S`.
pub type RejectionFor<T, S> = CachedRejection<
    <<T as CacheResource<S>>::Input as FromRequestParts<S>>::Rejection,
    <T as CacheResource<S>>::Rejection,
>;

/// Extractor for a [`CacheResource`]: the value from the cache, or loaded by `T::load` on a miss, at most
/// once across every process (the others wait for it), then cached for everyone.
///
/// The cache comes from the state (`Cache<T::Codec>: FromRef<S>`). When PostgreSQL is unreachable the cache fails
/// open (the default): the loader runs and the request succeeds uncached. Rejections are typed
/// ([`CachedRejection`]): the input's and the loader's own responses, 400 for a key that cannot be
/// cached, 503 when failing closed, 500 for a misconfigured cache.
///
/// ```no_run
/// # use axum::{extract::{FromRef, Path}, http::StatusCode, routing::get, Json, Router};
/// # use pgcache_axum::{Cache, CacheResource, Cached};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Clone, FromRef)] struct AppState { cache: Cache }
/// # #[derive(Serialize, Deserialize)] struct Profile { id: u64 }
/// # impl CacheResource<AppState> for Profile {
/// #     type Input = Path<u64>;
/// #     type Rejection = StatusCode;
/// #     type Codec = pgcache_core::JsonCodec;
/// #     fn key(Path(id): &Path<u64>, _: &AppState) -> String { format!("profile:{id}") }
/// #     async fn load(Path(id): Path<u64>, _: AppState) -> Result<Self, StatusCode> { Ok(Profile { id }) }
/// # }
/// async fn profile(Cached(p): Cached<Profile>) -> Json<Profile> {
///     Json(p)
/// }
///
/// # async fn serve(state: AppState) {
/// let app = Router::new().route("/profiles/{id}", get(profile)).with_state(state);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.unwrap();
/// axum::serve(listener, app).await.unwrap();
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cached<T>(pub T);

impl<T> Cached<T> {
    /// The value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Cached<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Cached<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<S, T> FromRequestParts<S> for Cached<T>
where
    T: CacheResource<S>,
    Cache<T::Codec>: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    type Rejection = RejectionFor<T, S>;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Lookup::from_parts(parts, state).await.map(|lookup| Cached(lookup.value))
    }
}

/// Like [`Cached<T>`], and also says where the value came from, for a `Cache-Status` header or metrics.
///
/// ```no_run
/// # use axum::{extract::{FromRef, Path}, http::StatusCode, response::IntoResponse, Json};
/// # use pgcache_axum::{Cache, CacheResource, Lookup};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Clone, FromRef)] struct AppState { cache: Cache }
/// # #[derive(Serialize, Deserialize)] struct Profile { id: u64 }
/// # impl CacheResource<AppState> for Profile {
/// #     type Input = Path<u64>;
/// #     type Rejection = StatusCode;
/// #     type Codec = pgcache_core::JsonCodec;
/// #     fn key(Path(id): &Path<u64>, _: &AppState) -> String { format!("profile:{id}") }
/// #     async fn load(Path(id): Path<u64>, _: AppState) -> Result<Self, StatusCode> { Ok(Profile { id }) }
/// # }
/// async fn profile(lookup: Lookup<Profile>) -> impl IntoResponse {
///     ([("cache-status", lookup.cache_status())], Json(lookup.value))
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lookup<T> {
    /// The value.
    pub value: T,
    /// Where it came from: this process's local cache, the shared table, another caller's load, or this
    /// request's own load.
    pub source: Source,
    /// Whether the value is in the shared table (false when this request loaded it and could not store
    /// it: the database was down and the cache failed open, or the value was over `max_value_bytes`).
    pub stored: bool,
    /// True when the database could not be reached and the value was loaded without the cache (fail open).
    pub unavailable: bool,
    /// Time left before the cached entry expires ([`Expiry::Never`] when it has no TTL or was not stored).
    pub expiry: Expiry,
}

impl<T> Lookup<T> {
    /// Whether the value was already cached (locally or in the shared table) when asked.
    pub fn is_hit(&self) -> bool {
        matches!(self.source, Source::Local | Source::Shared)
    }

    /// An RFC 9211 `Cache-Status` member named `pgcache`, with the entry's remaining `ttl` in seconds:
    ///
    /// - `pgcache; hit; ttl=42; detail=local` (or `detail=shared`): it was cached;
    /// - `pgcache; fwd=uri-miss; collapsed; ttl=60`: another request loaded it while this one waited;
    /// - `pgcache; fwd=uri-miss; stored; ttl=60`: this request loaded and stored it;
    /// - `pgcache; fwd=uri-miss; detail=cache-unavailable`: loaded without the cache (database down, fail
    ///   open); `pgcache; fwd=uri-miss` when it could not be stored for another reason.
    ///
    /// ```
    /// # use pgcache_axum::Lookup;
    /// # use pgcache_core::Source;
    /// # fn demo(lookup: Lookup<u32>) {
    /// if lookup.source == Source::Local {
    ///     assert!(lookup.cache_status().to_str().unwrap().starts_with("pgcache; hit"));
    /// }
    /// # }
    /// ```
    pub fn cache_status(&self) -> HeaderValue {
        self.cache_status_member().header_value("pgcache")
    }

    /// This lookup as an RFC 9211 `Cache-Status` member (the same type `pgcache-tower` renders), to name
    /// the cache otherwise or add to it.
    pub fn cache_status_member(&self) -> CacheStatusMember {
        let mut member = match (self.source, self.stored) {
            (Source::Local | Source::Shared, _) => CacheStatusMember::hit(),
            (Source::Collapsed, _) => CacheStatusMember::fwd("uri-miss").collapsed(),
            (_, true) => CacheStatusMember::fwd("uri-miss").stored(),
            (_, false) => CacheStatusMember::fwd("uri-miss"),
        };
        if let (Expiry::In(left), true) = (self.expiry, self.stored) {
            member = member.ttl(i64::try_from(left.as_secs()).unwrap_or(i64::MAX));
        }
        match self.source {
            Source::Local => member.detail("local"),
            Source::Shared => member.detail("shared"),
            _ if self.unavailable => member.detail("cache-unavailable"),
            _ => member,
        }
    }

    /// Runs the extraction: input, key, then the cache's `get_or_load` with `T::load` as the loader.
    /// [`Cached<T>`] and this type's `FromRequestParts` impls call it; call it directly to extract
    /// without a router.
    ///
    /// # Errors
    /// See [`CachedRejection`].
    ///
    /// # Cancel safety
    /// Dropping the future (the client went away) never strands other requests waiting for the same key:
    /// one of them loads instead.
    pub async fn from_parts<S>(parts: &mut Parts, state: &S) -> Result<Self, RejectionFor<T, S>>
    where
        T: CacheResource<S>,
        Cache<T::Codec>: FromRef<S>,
        S: Clone + Send + Sync + 'static,
    {
        let input = T::Input::from_request_parts(parts, state).await.map_err(CachedRejection::Input)?;
        let key = T::key(&input, state);
        let cache = Cache::<T::Codec>::from_ref(state);
        let codec = cache.codec().clone();
        let loader = {
            let (state, key) = (state.clone(), key.clone());
            move || async move {
                let value = T::load(input, state).await.map_err(LoadFailure::Rejected)?;
                let bytes = codec.encode(&value).map_err(|source| LoadFailure::Codec(Error::Codec { key, source }))?;
                let options = SetOptions::ttl(value.ttl()).tags(value.tags());
                Ok(Fill { value: bytes, options, output: value })
            }
        };
        let answer = cache.get_or_load(&key, loader).await;
        pgcache_core::telemetry::resource_lookup(std::any::type_name::<T>(), &answer);
        match answer {
            Ok(hit) => {
                let value = match hit.output {
                    Some(value) => value,
                    None => cache
                        .codec()
                        .decode(&hit.value)
                        .map_err(|source| misconfigured(Error::Codec { key: key.clone(), source }))?,
                };
                Ok(Lookup {
                    value,
                    source: hit.source,
                    stored: hit.stored,
                    unavailable: hit.unavailable,
                    expiry: hit.expiry,
                })
            }
            Err(LoadError::Loader(LoadFailure::Rejected(rejection))) => Err(CachedRejection::Load(rejection)),
            Err(LoadError::Loader(LoadFailure::Codec(err))) => Err(misconfigured(err)),
            Err(LoadError::Cache(err)) => Err(CachedRejection::from_cache_error(err)),
        }
    }
}

/// Why a resource's load failed: its own rejection, or its value could not be encoded.
enum LoadFailure<R> {
    Rejected(R),
    Codec(Error),
}

fn misconfigured<I, L>(err: Error) -> CachedRejection<I, L> {
    CachedRejection::Misconfigured(CacheMisconfigured(err))
}

impl<S, T> FromRequestParts<S> for Lookup<T>
where
    T: CacheResource<S>,
    Cache<T::Codec>: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    type Rejection = RejectionFor<T, S>;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Self::from_parts(parts, state).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::extract::Query;
    use axum::http::{Request, StatusCode};
    use axum::response::IntoResponse;
    use pgcache_core::NullCache;
    use serde::Deserialize;

    use super::*;

    #[derive(Clone)]
    struct AppState {
        cache: Cache,
        loads: Arc<AtomicUsize>,
    }

    impl FromRef<AppState> for Cache {
        fn from_ref(state: &AppState) -> Self {
            state.cache.clone()
        }
    }

    #[derive(Deserialize)]
    struct Params {
        id: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Item {
        id: String,
    }

    impl CacheResource<AppState> for Item {
        type Input = Query<Params>;
        type Rejection = (StatusCode, &'static str);
        type Codec = pgcache_core::JsonCodec;

        fn key(Query(p): &Query<Params>, _state: &AppState) -> String {
            if p.id == "empty-key" {
                String::new()
            } else {
                format!("item:{}", p.id)
            }
        }

        async fn load(Query(p): Query<Params>, state: AppState) -> Result<Self, Self::Rejection> {
            state.loads.fetch_add(1, Ordering::SeqCst);
            match p.id.as_str() {
                "missing" => Err((StatusCode::NOT_FOUND, "no such item")),
                _ => Ok(Item { id: p.id }),
            }
        }
    }

    fn state() -> AppState {
        AppState { cache: Cache::new(NullCache::new()), loads: Arc::new(AtomicUsize::new(0)) }
    }

    async fn extract(uri: &str, state: &AppState) -> Result<Lookup<Item>, RejectionFor<Item, AppState>> {
        let (mut parts, ()) = Request::builder().uri(uri).body(()).unwrap_or_default().into_parts();
        Lookup::from_parts(&mut parts, state).await
    }

    #[tokio::test]
    async fn a_miss_runs_the_loader() {
        let state = state();
        let lookup = extract("/item?id=7", &state).await.unwrap();
        assert_eq!(lookup.value, Item { id: "7".into() });
        assert_eq!((lookup.source, lookup.stored, lookup.unavailable), (Source::Loaded, false, false));
        assert_eq!(lookup.cache_status(), "pgcache; fwd=uri-miss");
        assert!(!lookup.is_hit());
        assert_eq!(state.loads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn cache_status_names_the_source() {
        let minute = Expiry::In(std::time::Duration::from_millis(59_900));
        let cases = [
            (Source::Local, true, false, minute, "pgcache; hit; ttl=59; detail=local", true),
            (Source::Shared, true, false, Expiry::Never, "pgcache; hit; detail=shared", true),
            (Source::Collapsed, true, false, minute, "pgcache; fwd=uri-miss; collapsed; ttl=59", false),
            (Source::Loaded, true, false, minute, "pgcache; fwd=uri-miss; stored; ttl=59", false),
            (Source::Loaded, false, true, Expiry::Never, "pgcache; fwd=uri-miss; detail=cache-unavailable", false),
            (Source::Loaded, false, false, minute, "pgcache; fwd=uri-miss", false),
        ];
        for (source, stored, unavailable, expiry, header, hit) in cases {
            let lookup = Lookup { value: (), source, stored, unavailable, expiry };
            assert_eq!((lookup.cache_status(), lookup.is_hit()), (HeaderValue::from_static(header), hit));
        }
    }

    #[tokio::test]
    async fn bad_input_is_the_input_extractors_rejection() {
        let state = state();
        let err = extract("/item", &state).await.unwrap_err();
        assert!(matches!(err, CachedRejection::Input(_)), "{err:?}");
        assert_eq!(err.into_response().status(), StatusCode::BAD_REQUEST);
        assert_eq!(state.loads.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_invalid_key_is_400_and_loads_nothing() {
        let state = state();
        let err = extract("/item?id=empty-key", &state).await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
        assert_eq!(state.loads.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_loader_rejection_is_answered_as_is() {
        let state = state();
        let err = extract("/item?id=missing", &state).await.unwrap_err();
        assert!(matches!(err, CachedRejection::Load((StatusCode::NOT_FOUND, "no such item"))));
        assert_eq!(err.into_response().status(), StatusCode::NOT_FOUND);
    }
}
