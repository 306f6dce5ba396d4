//! `pgcache-harness`: the load harness, the original library's benchmark, and side-by-side benchmarks.
//!
//! ```text
//! pgcache-harness load     # N processes x T tasks, mixed workload, consistency check, latency report
//! pgcache-harness compare  # the Python library's writers/readers benchmark against four backends
//! pgcache-harness bench    # pgcache next to raw moka, raw tokio-postgres and Redis, as ratios
//! ```
//!
//! Every command reads the PostgreSQL DSN from `--dsn` or `PGCACHE_DSN`; `scripts/with-postgres` starts a
//! throw-away server and sets it. Run `pgcache-harness <command> --help` for the options.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod bench;
mod charts;
mod cli;
mod compare;
mod http_bench;
mod load;
mod netem;
mod redis_server;
mod stats;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // pgcache reports degraded paths (fail-open reads, lock-wait timeouts) as tracing warnings: show them.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
