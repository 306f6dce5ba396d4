//! A tonic gRPC service with a cached unary `GetProfile` (see `proto/profiles.proto`), and a client that
//! calls it twice and shows that the second answer came from the cache.
//!
//! Run it (from the repository root; `with-postgres` starts a throw-away PostgreSQL):
//!
//! ```sh
//! scripts/with-postgres cargo run -p pgcache-examples --bin grpc_profiles -- --port 50051
//! # in another terminal:
//! cargo run -p pgcache-examples --bin grpc_profiles -- --client --addr http://127.0.0.1:50051 --id 1
//! ```
//!
//! Two cache levels, like the profiles web app: `PgCacheLayer` (pgcache-tower) caches whole `GetProfile`
//! responses, trailers included, and answers repeated calls without reaching the service (`cache-status:
//! pgcache-http; hit; ...` in the response metadata); behind it, the handler keeps each profile as protobuf
//! bytes under `grpc:profile:{id}` with the core's dogpile-safe `get_or_load` (one database read per key
//! across every server instance). Against your own database:
//! `PGCACHE_DSN=postgresql://... cargo run -p pgcache-examples --bin grpc_profiles`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::Parser;
use pgcache_core::{CacheStore, Fill, LoadError, PostgresCache, Ttl};
use pgcache_examples::db::ProfileDb;
use pgcache_tower::PgCacheLayer;
use prost::Message;
use tonic::{Request, Response, Status};

#[allow(missing_docs, unreachable_pub, clippy::all)]
mod pb {
    tonic::include_proto!("profiles.v1");
}

use pb::profiles_client::ProfilesClient;
use pb::profiles_server::{Profiles, ProfilesServer};
use pb::{GetProfileRequest, Profile};

/// How long a profile stays cached.
const TTL: Duration = Duration::from_secs(60);
/// How long a whole `GetProfile` response stays cached.
const RESPONSE_TTL: Duration = Duration::from_secs(30);
/// The method the response cache may serve (only allow-listed unary methods are cached).
const GET_PROFILE: &str = "/profiles.v1.Profiles/GetProfile";

#[derive(Parser)]
#[command(about = "A cached tonic GetProfile service, and a client for it")]
struct Args {
    /// Run the client instead of the server.
    #[arg(long)]
    client: bool,
    /// Server: port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 50051)]
    port: u16,
    /// Client: the server's address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Client: the profile to ask for.
    #[arg(long, default_value_t = 1)]
    id: i64,
}

struct ProfileService {
    cache: PostgresCache,
    db: ProfileDb,
}

#[tonic::async_trait]
impl Profiles for ProfileService {
    async fn get_profile(&self, request: Request<GetProfileRequest>) -> Result<Response<Profile>, Status> {
        let id = request.into_inner().id;
        let db = self.db.clone();
        // Runs on a miss only, once per key across every server instance; errors are never cached.
        let loader = move || async move {
            let row = db.get(id).await.map_err(|e| Status::internal(format!("{e:#}")))?;
            let row = row.ok_or_else(|| Status::not_found(format!("no profile {id}")))?;
            let message = Profile { id: row.id, name: row.name, bio: row.bio };
            Ok(Fill::new(message.encode_to_vec(), Ttl::After(TTL)))
        };
        let loaded = self.cache.get_or_load(&format!("grpc:profile:{id}"), loader).await.map_err(|err| match err {
            LoadError::Loader(status) => status,
            LoadError::Cache(err) if err.is_unavailable() => Status::unavailable(err.to_string()),
            LoadError::Cache(err) => Status::internal(err.to_string()),
        })?;
        let profile = Profile::decode(loaded.value).map_err(|e| Status::internal(format!("cached value: {e}")))?;
        Ok(Response::new(profile))
    }
}

async fn serve(port: u16) -> Result<()> {
    let settings = pgcache_examples::settings_from_env("grpc_profiles")?;
    let db = ProfileDb::connect(&settings.dsn).await?;
    let cache = pgcache_examples::connect_cache(settings).await?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let response_cache =
        PgCacheLayer::new(cache.clone()).grpc_method(GET_PROFILE).default_ttl(RESPONSE_TTL).status_name("pgcache-http");
    tonic::transport::Server::builder()
        .layer(response_cache)
        .add_service(ProfilesServer::new(ProfileService { cache: cache.clone(), db }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            pgcache_examples::shutdown_signal(),
        )
        .await?;
    cache.close().await;
    Ok(())
}

/// Calls `GetProfile` twice and reports where each answer came from.
async fn client(addr: String, id: i64) -> Result<()> {
    let mut client = ProfilesClient::connect(addr).await?;
    let mut second_hit = false;
    for call in 1..=2 {
        let response = client
            .get_profile(GetProfileRequest { id })
            .await
            .map_err(|status| anyhow!("GetProfile({id}) failed: {:?}: {}", status.code(), status.message()))?;
        let status = response.metadata().get("cache-status").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let profile = response.into_inner();
        println!("call {call}: {profile:?} (cache-status: {status})");
        second_hit = status.contains("; hit");
    }
    if !second_hit {
        bail!("the second answer did not come from the cache");
    }
    println!("the second answer came from the cache");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    pgcache_examples::init_tracing();
    let args = Args::parse();
    if args.client {
        client(args.addr, args.id).await
    } else {
        serve(args.port).await
    }
}
