//! A profiles CRUD web app backed by PostgreSQL, with reads served through the cache (`Cached<T>` /
//! `Lookup<T>`) and writes that evict the cached copies on every instance.
//!
//! Run it (from the repository root; `with-postgres` starts a throw-away PostgreSQL):
//!
//! ```sh
//! scripts/with-postgres cargo run -p pgcache-examples --bin profiles -- --port 3000
//! curl -si localhost:3000/profiles/1                       # cache-status: pgcache; fwd=uri-miss; stored
//! curl -si localhost:3000/profiles/1                       # cache-status: pgcache; hit; detail=local
//! curl -s -X PUT localhost:3000/profiles/1 -H 'content-type: application/json' -d '{"name":"Ava B."}'
//! curl -s localhost:3000/healthz
//! ```
//!
//! Against your own database: `PGCACHE_DSN=postgresql://... cargo run -p pgcache-examples --bin profiles`.
//! Routes: `GET/POST /profiles`, `GET/PUT/DELETE /profiles/{id}`, `GET /healthz`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Result;
use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use pgcache_axum::{Cache, CacheResource, Lookup};
use pgcache_core::{CacheStore, ListenerState, Ttl};
use pgcache_examples::db::{NewProfile, Profile, ProfileDb};
use serde::{Deserialize, Serialize};

/// The key of the profile list.
const LIST_KEY: &str = "profiles:list";
/// How long reads stay cached when nothing changes them.
const TTL: Duration = Duration::from_secs(300);

fn profile_key(id: i64) -> String {
    format!("profile:{id}")
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
    cache: Cache,
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

    fn key(Path(id): &Path<i64>, _state: &AppState) -> String {
        profile_key(*id)
    }

    async fn load(Path(id): Path<i64>, state: AppState) -> Result<Self, AppError> {
        state.db.get(id).await?.ok_or(AppError::NotFound)
    }

    fn ttl(&self) -> Ttl {
        Ttl::After(TTL)
    }
}

/// The whole list, cached under `profiles:list`.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
struct ProfileList(Vec<Profile>);

impl CacheResource<AppState> for ProfileList {
    type Input = ();
    type Rejection = AppError;

    fn key((): &(), _state: &AppState) -> String {
        LIST_KEY.to_owned()
    }

    async fn load((): (), state: AppState) -> Result<Self, AppError> {
        Ok(ProfileList(state.db.list().await?))
    }

    fn ttl(&self) -> Ttl {
        Ttl::After(TTL)
    }
}

/// A cached value as JSON with its RFC 9211 `Cache-Status`.
fn cached_json<T: Serialize>(lookup: Lookup<T>) -> Response {
    ([("cache-status", lookup.cache_status())], Json(lookup.value)).into_response()
}

async fn list(lookup: Lookup<ProfileList>) -> Response {
    cached_json(lookup)
}

async fn read(lookup: Lookup<Profile>) -> Response {
    cached_json(lookup)
}

async fn create(State(state): State<AppState>, Json(new): Json<NewProfile>) -> Result<Response, AppError> {
    let profile = state.db.create(&new).await?;
    state.cache.delete(LIST_KEY).await?;
    Ok((StatusCode::CREATED, Json(profile)).into_response())
}

async fn update(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(new): Json<NewProfile>,
) -> Result<Json<Profile>, AppError> {
    let profile = state.db.update(id, &new).await?.ok_or(AppError::NotFound)?;
    // After the commit: evict the copies on every instance (one statement, one NOTIFY).
    state.cache.delete_many(&[&profile_key(id), LIST_KEY]).await?;
    Ok(Json(profile))
}

async fn delete(State(state): State<AppState>, Path(id): Path<i64>) -> Result<StatusCode, AppError> {
    if !state.db.delete(id).await? {
        return Err(AppError::NotFound);
    }
    state.cache.delete_many(&[&profile_key(id), LIST_KEY]).await?;
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

fn app(state: AppState) -> Router {
    Router::new()
        .route("/profiles", get(list).post(create))
        .route("/profiles/{id}", get(read).put(update).delete(delete))
        .route("/healthz", get(healthz))
        .with_state(state)
}

#[tokio::main]
async fn main() -> Result<()> {
    pgcache_examples::init_tracing();
    let args = Args::parse();
    let settings = pgcache_examples::settings_from_env("profiles")?;
    let db = ProfileDb::connect(&settings.dsn).await?;
    let cache = pgcache_examples::connect_cache(settings).await?;

    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port))).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let state = AppState { cache: Cache::new(cache.clone()), db };
    axum::serve(listener, app(state)).with_graceful_shutdown(pgcache_examples::shutdown_signal()).await?;
    cache.close().await;
    Ok(())
}
