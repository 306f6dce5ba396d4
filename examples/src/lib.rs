//! Support code shared by the example binaries in `src/bin/`: cache settings from the environment, the
//! `profiles` table, graceful shutdown.
//!
//! Run an example against a throw-away PostgreSQL with `scripts/with-postgres`, e.g.
//! `scripts/with-postgres cargo run -p pgcache-examples --bin profiles`, or set `PGCACHE_DSN` yourself.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use anyhow::{bail, Result};
use pgcache_core::{CacheSettings, PostgresCache};

pub mod db;

/// Cache settings from `PGCACHE_*` environment variables ([`CacheSettings::from_env`]), with a message
/// saying how to get a database when `PGCACHE_DSN` is not set.
///
/// # Errors
/// `PGCACHE_DSN` is not set, or a `PGCACHE_*` variable does not parse.
pub fn settings_from_env(bin: &str) -> Result<CacheSettings> {
    if std::env::var_os("PGCACHE_DSN").is_none() {
        bail!(
            "PGCACHE_DSN is not set. Run this example against a throw-away PostgreSQL with\n\n    \
             scripts/with-postgres cargo run -p pgcache-examples --bin {bin}\n\n\
             from the repository root, or set PGCACHE_DSN=postgresql://user:password@host:5432/dbname"
        );
    }
    Ok(CacheSettings::from_env()?)
}

/// Installs the Prometheus recorder for the `metrics` facade (pgcache's metrics, with bucketed histograms
/// in seconds) and returns the handle that renders the text format for a `/metrics` route.
///
/// # Errors
/// Another recorder is installed already.
pub fn install_prometheus() -> Result<metrics_exporter_prometheus::PrometheusHandle> {
    const SECONDS: [f64; 12] = [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0];
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new().set_buckets(&SECONDS)?.install_recorder()?;
    pgcache_core::telemetry::describe();
    Ok(handle)
}

/// Creates or upgrades the cache schema (`init_db`, idempotent) and connects one cache.
///
/// # Errors
/// The database is unreachable or the settings are invalid.
pub async fn connect_cache(settings: CacheSettings) -> Result<PostgresCache> {
    PostgresCache::init_db(&settings).await?;
    Ok(PostgresCache::connect(settings).await?)
}

/// Resolves on Ctrl-C or SIGTERM, for graceful shutdown.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

/// Logs to stderr, `info` by default (`RUST_LOG` overrides).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
