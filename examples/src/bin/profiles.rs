//! A profiles CRUD web app backed by PostgreSQL. Reads are cached twice: whole HTTP responses by
//! `PgCacheLayer` (pgcache-tower, `Cache-Status: pgcache-http; ...` and `Age`), and the values behind them
//! by `Lookup<T>` (pgcache-axum, `Cache-Status: pgcache; ...`). Writes evict both, on every instance.
//!
//! Run it (from the repository root; `with-postgres` starts a throw-away PostgreSQL):
//!
//! ```sh
//! scripts/with-postgres cargo run -p pgcache-examples --bin profiles -- --port 3000
//! curl -si localhost:3000/profiles/1      # cache-status: pgcache; fwd=uri-miss; stored, pgcache-http; fwd=uri-miss; ...
//! curl -si localhost:3000/profiles/1      # cache-status: pgcache-http; hit; ttl=59   age: 1
//! curl -s -X PUT localhost:3000/profiles/1 -H 'content-type: application/json' -d '{"name":"Ava B."}'
//! curl -s localhost:3000/healthz
//! curl -s localhost:3000/metrics          # Prometheus text: pgcache_requests{...}, pgcache_invalidation_lag_bucket{...}
//! ```
//!
//! Invalidation by the application's own rows: at start-up the app calls
//! `cache.invalidate_on("profiles", "profile-row:{id}")`, and every cached profile value is tagged
//! `profile-row:{id}`. A change to the row by anyone, e.g. by hand with
//! `psql "$PGCACHE_DSN" -c "UPDATE profiles SET name = 'Ava (psql)' WHERE id = 1"`, deletes the cached
//! value in the same transaction, and the next `GET /profiles/1/value` on every instance serves the new
//! row. (That route is cached by the value cache only; `/profiles/{id}` also caches the whole HTTP
//! response, whose surrogate-key tags the row triggers do not know, so it is purged by the app's own
//! writes only.)
//!
//! Against your own database: `PGCACHE_DSN=postgresql://... cargo run -p pgcache-examples --bin profiles`.
//! Routes: `GET/POST /profiles`, `GET/PUT/DELETE /profiles/{id}`, `GET /profiles/{id}/value`, `GET /healthz`,
//! `GET /metrics`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Result;
use axum::extract::{FromRef, Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use pgcache_axum::{Cache, CacheResource, Lookup};
use pgcache_core::{CacheStore, ListenerState, Ttl};
use pgcache_examples::db::{NewProfile, Profile, ProfileDb};
use pgcache_tower::{HttpCache, PgCacheLayer};
use serde::{Deserialize, Serialize};

/// The key of the profile list.
const LIST_KEY: &str = "profiles:list";
/// How long values stay cached when nothing changes them.
const TTL: Duration = Duration::from_secs(300);
/// How long whole HTTP responses stay cached when nothing changes them.
const HTTP_TTL: Duration = Duration::from_secs(60);
/// The `Surrogate-Key` of the list response.
const LIST_SURROGATE: &str = "profiles-list";

fn profile_key(id: i64) -> String {
    format!("profile:{id}")
}

/// The table and tag template of the row triggers: a change to row `id` of `profiles` deletes every
/// entry tagged `profile-row:{id}`.
const ROWS_TABLE: &str = "profiles";
const ROW_TAG: &str = "profile-row:{id}";

/// The tag of the values built from row `id` (what [`ROW_TAG`] expands to).
fn row_tag(id: i64) -> String {
    format!("profile-row:{id}")
}

/// The `Surrogate-Key` of a profile's response.
fn profile_surrogate(id: i64) -> String {
    format!("profile-{id}")
}

#[derive(Parser)]
#[command(about = "A profiles CRUD app whose reads are cached in PostgreSQL")]
struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    port: u16,
}

#[derive(Clone, FromRef)]
struct AppState {
    /// The value cache, for `Cached<T>`/`Lookup<T>` and direct use.
    cache: Cache,
    /// Purges the HTTP response cache in front of the read routes after writes.
    http_cache: HttpCache,
    db: ProfileDb,
}

/// What handlers and loaders fail with.
enum AppError {
    NotFound,
    Internal(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for AppError {
    fn from(err: E) -> Self {
        AppError::Internal(err.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::NotFound => (StatusCode::NOT_FOUND, "no such profile").into_response(),
            AppError::Internal(err) => {
                tracing::error!(error = %format!("{err:#}"), "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
            }
        }
    }
}

/// One profile, cached under `profile:{id}`.
impl CacheResource<AppState> for Profile {
    type Input = Path<i64>;
    type Rejection = AppError;
    type Codec = pgcache_core::JsonCodec;

    fn key(Path(id): &Path<i64>, _state: &AppState) -> String {
        profile_key(*id)
    }

    async fn load(Path(id): Path<i64>, state: AppState) -> Result<Self, AppError> {
        state.db.get(id).await?.ok_or(AppError::NotFound)
    }

    fn ttl(&self) -> Ttl {
        Ttl::After(TTL)
    }

    /// Tagged by its row: the row triggers delete it whenever the row changes, whoever changes it.
    fn tags(&self) -> Vec<String> {
        vec![row_tag(self.id)]
    }
}

/// The whole list, cached under `profiles:list`.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
struct ProfileList(Vec<Profile>);

impl CacheResource<AppState> for ProfileList {
    type Input = ();
    type Rejection = AppError;
    type Codec = pgcache_core::JsonCodec;

    fn key((): &(), _state: &AppState) -> String {
        LIST_KEY.to_owned()
    }

    async fn load((): (), state: AppState) -> Result<Self, AppError> {
        Ok(ProfileList(state.db.list().await?))
    }

    fn ttl(&self) -> Ttl {
        Ttl::After(TTL)
    }

    /// Tagged by every row it shows: a change to any of them deletes it (a row inserted by hand is not
    /// among them: the app's own creates delete the list).
    fn tags(&self) -> Vec<String> {
        self.0.iter().map(|p| row_tag(p.id)).collect()
    }
}

/// A cached value as JSON with its RFC 9211 `Cache-Status` and the `Surrogate-Key` that purges the HTTP
/// response built from it.
fn cached_json<T: Serialize>(lookup: Lookup<T>, surrogate_key: String) -> Response {
    let cache_status = lookup.cache_status();
    let mut response = Json(lookup.value).into_response();
    let headers = response.headers_mut();
    headers.insert("cache-status", cache_status);
    if let Ok(key) = HeaderValue::try_from(surrogate_key) {
        headers.insert("surrogate-key", key);
    }
    response
}

async fn list(lookup: Lookup<ProfileList>) -> Response {
    cached_json(lookup, LIST_SURROGATE.to_owned())
}

async fn read(lookup: Lookup<Profile>) -> Response {
    let surrogate = profile_surrogate(lookup.value.id);
    cached_json(lookup, surrogate)
}

/// The profile from the value cache only (no HTTP response cache): shows invalidation by the row.
async fn read_value(lookup: Lookup<Profile>) -> Response {
    let cache_status = lookup.cache_status();
    let mut response = Json(lookup.value).into_response();
    response.headers_mut().insert("cache-status", cache_status);
    response
}

/// After a committed write: drop the cached values and the cached HTTP responses built from them, on
/// every instance (each is one statement and one NOTIFY).
async fn invalidate(state: &AppState, id: Option<i64>) -> Result<(), AppError> {
    match id {
        Some(id) => {
            state.cache.delete_many(&[&profile_key(id), LIST_KEY]).await?;
            state.http_cache.purge_tags(&[&profile_surrogate(id), LIST_SURROGATE]).await?;
        }
        None => {
            state.cache.delete(LIST_KEY).await?;
            state.http_cache.purge_tags(&[LIST_SURROGATE]).await?;
        }
    }
    Ok(())
}

async fn create(State(state): State<AppState>, Json(new): Json<NewProfile>) -> Result<Response, AppError> {
    let profile = state.db.create(&new).await?;
    invalidate(&state, None).await?;
    Ok((StatusCode::CREATED, Json(profile)).into_response())
}

async fn update(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(new): Json<NewProfile>,
) -> Result<Json<Profile>, AppError> {
    let profile = state.db.update(id, &new).await?.ok_or(AppError::NotFound)?;
    invalidate(&state, Some(id)).await?;
    Ok(Json(profile))
}

async fn delete(State(state): State<AppState>, Path(id): Path<i64>) -> Result<StatusCode, AppError> {
    if !state.db.delete(id).await? {
        return Err(AppError::NotFound);
    }
    invalidate(&state, Some(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The cache's health: listener state and pool, `503` while local copies cannot be trusted.
async fn healthz(cache: Cache) -> Response {
    let status = cache.status();
    let healthy = !status.closed && status.listener != ListenerState::Reconnecting;
    let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({ "status": if healthy { "ok" } else { "degraded" }, "cache": status });
    (code, Json(body)).into_response()
}

fn app(state: AppState, http_cache: PgCacheLayer) -> Router {
    // `MethodRouter::layer` wraps only the methods added before it: the GETs.
    Router::new()
        .route("/profiles", get(list).layer(http_cache.clone()).post(create))
        .route("/profiles/{id}", get(read).layer(http_cache).put(update).delete(delete))
        .route("/profiles/{id}/value", get(read_value))
        .route("/healthz", get(healthz))
        .with_state(state)
}

#[tokio::main]
async fn main() -> Result<()> {
    pgcache_examples::init_tracing();
    let args = Args::parse();
    let settings = pgcache_examples::settings_from_env("profiles")?;
    // Before the cache connects: it registers its metric handles when it is created.
    let metrics = pgcache_examples::install_prometheus()?;
    let db = ProfileDb::connect(&settings.dsn).await?;
    let cache = pgcache_examples::connect_cache(settings).await?;
    // Idempotent: every instance runs it at start-up.
    cache.invalidate_on(ROWS_TABLE, ROW_TAG).await?;

    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port))).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let cache_handle = Cache::new(cache.clone());
    // Responses carry no Cache-Control, so the layer needs a default TTL; the HTTP entries are named
    // `pgcache-http` in Cache-Status to tell them from the value cache's `pgcache`.
    let http_layer = PgCacheLayer::new(cache_handle.clone()).default_ttl(HTTP_TTL).status_name("pgcache-http");
    let state = AppState { cache: cache_handle, http_cache: http_layer.http_cache(), db };
    let app = app(state, http_layer).route("/metrics", get(move || std::future::ready(metrics.render())));
    axum::serve(listener, app).with_graceful_shutdown(pgcache_examples::shutdown_signal()).await?;
    cache.close().await;
    Ok(())
}
