//! The counterpart of the original library's FastAPI example: one cache connected at start-up, closed on
//! shutdown, and a random number cached for 10 s under one key, shared by every instance.
//!
//! Run it (from the repository root; `with-postgres` starts a throw-away PostgreSQL):
//!
//! ```sh
//! scripts/with-postgres cargo run -p pgcache-examples --bin fastapi_counterpart -- --port 8000
//! curl -s localhost:8000/number            # {"data":{"value":4711,"generated_at":"..."}}
//! curl -s -X POST localhost:8000/number    # a fresh number, seen by every instance
//! ```
//!
//! Against your own database: `PGCACHE_DSN=postgresql://... cargo run -p pgcache-examples --bin
//! fastapi_counterpart`. Two instances on two ports against one database answer the same number, and a
//! POST on one is seen by the other.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Result;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use pgcache_core::{PostgresCache, TypedCache};
use rand::Rng;
use serde::{Deserialize, Serialize};

const KEY: &str = "demo:random-number";
const TTL: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(about = "The FastAPI example's counterpart: GET/POST /number, cached in PostgreSQL")]
struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 8000)]
    port: u16,
}

/// The cached payload.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Payload {
    value: u32,
    generated_at: String,
}

/// Every answer is `{"data": ...}`.
#[derive(Serialize)]
struct Data {
    data: Payload,
}

/// A fresh payload, slowly (the "expensive computation" the cache saves).
async fn generate() -> Payload {
    tokio::time::sleep(Duration::from_millis(100)).await;
    Payload { value: rand::thread_rng().gen_range(1..=10_000), generated_at: chrono::Utc::now().to_rfc3339() }
}

async fn read_number(State(cache): State<PostgresCache>) -> Result<Json<Data>, AppError> {
    let data = cache.get_or_set(KEY, || async { Ok::<_, std::convert::Infallible>(generate().await) }, TTL).await?;
    Ok(Json(Data { data }))
}

async fn refresh_number(State(cache): State<PostgresCache>) -> Result<Json<Data>, AppError> {
    let data = generate().await;
    cache.set(KEY, &data, TTL).await?;
    Ok(Json(Data { data }))
}

/// A cache error as a 500 (the details go to the log, not to the client).
struct AppError(pgcache_core::Error);

impl From<pgcache_core::Error> for AppError {
    fn from(err: pgcache_core::Error) -> Self {
        AppError(err)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        tracing::error!(error = %self.0, "cache error");
        (StatusCode::INTERNAL_SERVER_ERROR, "cache error").into_response()
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    pgcache_examples::init_tracing();
    let args = Args::parse();
    let settings = pgcache_examples::settings_from_env("fastapi_counterpart")?;
    // Start-up: create the schema if needed and connect the one cache of this process.
    let cache = pgcache_examples::connect_cache(settings).await?;

    let app = Router::new().route("/number", get(read_number).post(refresh_number)).with_state(cache.clone());
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port))).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).with_graceful_shutdown(pgcache_examples::shutdown_signal()).await?;

    // Shutdown: stop the listener and sweeper, close every connection.
    cache.close().await;
    println!("cache closed, bye");
    Ok(())
}
