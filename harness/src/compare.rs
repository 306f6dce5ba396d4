//! `compare`: the Python library's benchmark (`postgres-cache` 0.1.1, `benchmarks/cache_benchmark.py` in
//! its source), reproduced with its procedure, backends and table (plus p99), and the Python library itself
//! run in the same run.
//!
//! W writer clients each `set` `{"writer", "iteration", "ts"}` on a random key of the keyspace, R reader
//! clients each `get` a random key, all at once. As the Python benchmark does, a writer then thinks U(0, 5 ms)
//! and a reader U(0, 2 ms) (untimed; `--no-think-time` turns it off), and with `--instance-per-client` every
//! client is its own cache instance (own pool, listener and local cache); without it one instance is
//! shared by all (Shape A). Redis always gets one connection per client.
//!
//! Backends: the full cache, the cache without local cache (`local_max_entries = 0`), the cache with
//! notifications disabled, Redis, and with `--python` the Python library's three modes, driven by
//! `harness/python/compare_driver.py` (see [`python`]). With `--network-latency-ms` every connection
//! (PostgreSQL, the listeners, Redis, the Python library's) goes through a loopback proxy that adds that
//! round trip, so local-cache hits stay local as they would in production. `--durable` runs with `fsync`
//! and `synchronous_commit` on (see [`durable`]); `--sweep-writers` draws write latency against concurrent
//! writers, next to an older build of this harness (see [`sweep`]).

mod durable;
mod figure;
mod python;
mod sweep;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use pgcache_core::{CacheSettings, PostgresCache};

use crate::cli::{parse_duration, DbArgs};
use crate::netem::{self, Netem};
use crate::redis_server::RedisServer;
use crate::stats::Summary;

pub(crate) use durable::Durability;
use workload::{Clients, Workload};

/// Options of `compare` (the Python benchmark's flags and defaults, plus the shape, durability and sweep).
#[derive(Debug, Clone, Args)]
pub(crate) struct CompareArgs {
    #[command(flatten)]
    pub(crate) db: DbArgs,
    /// Writer clients.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub(crate) writers: u32,
    /// Reader clients.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub(crate) readers: u32,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) keyspace: u64,
    /// `set` calls per writer.
    #[arg(long, default_value_t = 400)]
    pub(crate) write_iterations: u64,
    /// `get` calls per reader.
    #[arg(long, default_value_t = 800)]
    pub(crate) read_iterations: u64,
    /// TTL of every write.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) ttl: Duration,
    /// Every client is its own cache instance (own pool, listener and local cache), as the Python benchmark
    /// does; without it one instance is shared by every client.
    #[arg(long)]
    pub(crate) instance_per_client: bool,
    /// Upper bound of a writer's think time after each write, U(0, this), in ms (the Python benchmark: 5).
    #[arg(long, default_value_t = 5.0, value_parser = parse_think_ms)]
    pub(crate) write_think_ms: f64,
    /// Upper bound of a reader's think time after each read, U(0, this), in ms (the Python benchmark: 2).
    #[arg(long, default_value_t = 2.0, value_parser = parse_think_ms)]
    pub(crate) read_think_ms: f64,
    /// No think time at all (clients issue their next operation at once).
    #[arg(long)]
    pub(crate) no_think_time: bool,
    /// Emulated network round trip added to every connection, in ms.
    #[arg(long, default_value_t = 0.0, value_parser = parse_think_ms)]
    pub(crate) network_latency_ms: f64,
    /// Emulated jitter (±half on each leg), in ms.
    #[arg(long, default_value_t = 0.0, value_parser = parse_think_ms)]
    pub(crate) network_jitter_ms: f64,
    /// Shortcut for the Python benchmark's "managed service" profile: 1.5 ms + 0.5 ms jitter.
    #[arg(long)]
    pub(crate) managed_service: bool,
    /// Backends to run, in order (`python-*` need `--python`).
    #[arg(long, value_delimiter = ',', default_value = "full,no-local,no-notify,raw-postgres,redis")]
    pub(crate) backends: Vec<Backend>,
    /// Connection pool size of each cache instance (the shared one, or each client's own).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub(crate) pool_size: u64,
    /// A Python interpreter with `postgres-cache` installed, for the `python-*` backends
    /// (`harness/scripts/compare-python.sh` makes one in a throw-away venv).
    #[arg(long, env = "PGCACHE_COMPARE_PYTHON")]
    pub(crate) python: Option<PathBuf>,
    /// Require `fsync`, `synchronous_commit` and `full_page_writes` on, as production runs (start the cluster
    /// with `PGCACHE_PG_DURABLE=1 scripts/with-postgres`); the header always shows the three settings.
    #[arg(long)]
    pub(crate) durable: bool,
    /// Instead of one table: run the backends once per writer count in this list (e.g. 1,2,4,8,16,32,64)
    /// and draw write latency against concurrent writers (write_latency_vs_writers.png/.svg).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) sweep_writers: Vec<u32>,
    /// With `--sweep-writers`: an older `pgcache-harness` binary whose `compare --backends full` runs at
    /// each point too, interleaved, as the "before" series.
    #[arg(long, requires = "sweep_writers")]
    pub(crate) before_harness: Option<PathBuf>,
    /// The legend of the `--before-harness` series.
    #[arg(long, default_value = "before", requires = "before_harness")]
    pub(crate) before_label: String,
    /// Where to write compare.json (and the sweep's files).
    #[arg(long, default_value = "harness-out")]
    pub(crate) out: PathBuf,
}

fn parse_think_ms(text: &str) -> Result<f64, String> {
    let v: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of milliseconds"))?;
    if !(0.0..=60_000.0).contains(&v) {
        return Err("must be between 0 and 60000 ms".to_owned());
    }
    Ok(v)
}

impl CompareArgs {
    /// The emulated network, if any.
    fn netem(&self) -> anyhow::Result<Option<Netem>> {
        let ms = |v: f64, flag: &str| Duration::try_from_secs_f64(v / 1000.0).with_context(|| flag.to_owned());
        Ok(if self.managed_service {
            Some(Netem { rtt: Duration::from_micros(1500), jitter: Duration::from_micros(500) })
        } else if self.network_latency_ms > 0.0 || self.network_jitter_ms > 0.0 {
            Some(Netem {
                rtt: ms(self.network_latency_ms, "--network-latency-ms")?,
                jitter: ms(self.network_jitter_ms, "--network-jitter-ms")?,
            })
        } else {
            None
        })
    }

    /// The workload of one run with `writers` writers.
    fn workload(&self, writers: u32) -> Workload {
        let think = |ms: f64| {
            if self.no_think_time {
                Duration::ZERO
            } else {
                Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::ZERO)
            }
        };
        Workload {
            writers,
            readers: self.readers,
            keyspace: self.keyspace,
            write_iterations: self.write_iterations,
            read_iterations: self.read_iterations,
            ttl: self.ttl,
            write_think: think(self.write_think_ms),
            read_think: think(self.read_think_ms),
            instance_per_client: self.instance_per_client,
            pool_size: usize::try_from(self.pool_size).unwrap_or(usize::MAX),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.backends.iter().any(|b| b.python_mode().is_some()) && self.python.is_none() {
            bail!(
                "the python-* backends need --python (an interpreter with postgres-cache installed): \
                 run harness/scripts/compare-python.sh, which makes one in a throw-away venv"
            );
        }
        if self.before_harness.is_some() && (self.instance_per_client || !self.no_think_time) {
            bail!(
                "--before-harness runs an older compare, which has neither think time nor --instance-per-client: \
                 sweep with --no-think-time and a shared instance so both series measure the same thing"
            );
        }
        Ok(())
    }
}

/// A backend of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Backend {
    /// pgcache with local cache and LISTEN/NOTIFY.
    Full,
    /// pgcache without local cache.
    NoLocal,
    /// pgcache with notifications disabled (local cache bounded by its TTL).
    NoNotify,
    /// Redis GET/SET through redis-rs, one connection per client.
    Redis,
    /// PostgreSQL itself, no cache: a prepared upsert and a point `SELECT` of a plain keyed table through
    /// deadpool (one pool, or one per client with `--instance-per-client`): the floor of any cache whose
    /// every write is a PostgreSQL commit.
    RawPostgres,
    /// The Python library (`--python`), full feature set.
    PythonFull,
    /// The Python library without local cache.
    PythonNoLocal,
    /// The Python library with notifications disabled.
    PythonNoNotify,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::Full => "pgcache (full)",
            Backend::NoLocal => "pgcache (no local cache)",
            Backend::NoNotify => "pgcache (notify disabled)",
            Backend::Redis => "redis",
            Backend::RawPostgres => "raw postgres (no cache)",
            Backend::PythonFull => "python postgres-cache (full)",
            Backend::PythonNoLocal => "python postgres-cache (no local cache)",
            Backend::PythonNoNotify => "python postgres-cache (notify disabled)",
        }
    }

    /// The Python driver's `--mode`, for the Python backends.
    fn python_mode(self) -> Option<&'static str> {
        match self {
            Backend::PythonFull => Some("full"),
            Backend::PythonNoLocal => Some("no-local"),
            Backend::PythonNoNotify => Some("no-notify"),
            _ => None,
        }
    }
}

/// One row of the table.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Row {
    pub(crate) backend: Backend,
    /// Cache instances (pgcache, Python) or Redis connections the clients used.
    pub(crate) instances: usize,
    pub(crate) write: Summary,
    pub(crate) write_ops_per_s: f64,
    pub(crate) read: Summary,
    pub(crate) read_ops_per_s: f64,
    pub(crate) hit_rate: f64,
    /// Think time actually slept per write and per read, in ms (timers round sleeps up).
    pub(crate) write_think_mean_ms: f64,
    pub(crate) read_think_mean_ms: f64,
    /// The Python library's version, for its rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) library_version: Option<String>,
}

/// What compare.json holds.
#[derive(Debug, serde::Serialize)]
struct Report<'a> {
    header: &'a str,
    durability: &'a Durability,
    rows: &'a [Row],
}

/// Runs every backend and prints the table (or the sweep and its figure).
pub(crate) async fn run(args: &CompareArgs) -> anyhow::Result<()> {
    args.validate()?;
    let netem = args.netem()?;
    tokio::fs::create_dir_all(&args.out).await?;
    durable::with_durability(&args.db.dsn, args.durable, |durability| async move {
        if !args.sweep_writers.is_empty() {
            return sweep::run(args, netem, &durability).await;
        }
        let rows = compare(args, netem, args.workload(args.writers)).await?;
        let header = header(args, netem, &durability, args.writers);
        println!("{header}\n\n{}", table(&rows));
        let report = Report { header: &header, durability: &durability, rows: &rows };
        tokio::fs::write(args.out.join("compare.json"), serde_json::to_string_pretty(&report)?).await?;
        Ok(())
    })
    .await
}

/// Runs the workload on each backend; Redis is skipped with a notice when it cannot be had.
async fn compare(args: &CompareArgs, netem: Option<Netem>, work: Workload) -> anyhow::Result<Vec<Row>> {
    let dsn = match netem {
        Some(n) => netem::rewrite_dsn(&args.db.dsn, netem::proxy(netem::dsn_target(&args.db.dsn).await?, n).await?)?,
        None => args.db.dsn.clone(),
    };
    let mut rows = Vec::new();
    for &backend in &args.backends {
        let id = format!("{:x}", crate::load::events::now_ns() % 0xff_ffff);
        let row = if let Some(mode) = backend.python_mode() {
            let python = args.python.as_deref().context("--python is required for the python-* backends")?;
            python::run(python, &dsn, mode, &work, &format!("cmppy_{id}_"), &format!("cmppy_{id}"))
                .await
                .context(backend.label())?
                .into_row(backend)
        } else if backend == Backend::Redis {
            let server = match RedisServer::start().await {
                Ok(server) => server,
                Err(e) => {
                    eprintln!("notice: skipping the Redis backend: {e:#}");
                    continue;
                }
            };
            let url = match netem {
                Some(n) => {
                    let target = server.url.trim_start_matches("redis://").trim_end_matches('/').parse()?;
                    format!("redis://{}/", netem::proxy(target, n).await?)
                }
                None => server.url.clone(),
            };
            let clients = Clients::redis(&url, work.writers + work.readers).await?;
            let row = workload::run(&work, backend, clients).await?;
            drop(server);
            row
        } else if backend == Backend::RawPostgres {
            let table = format!("cmp_{id}_raw");
            let row = match Clients::raw_postgres(&dsn, &table, &work).await {
                Ok(clients) => workload::run(&work, backend, clients).await,
                Err(e) => Err(e),
            };
            let _ = workload::drop_raw_table(&args.db.dsn, &table).await;
            row?
        } else {
            let mut settings = CacheSettings::new(&dsn)
                .schema_prefix(format!("cmp_{id}_"))
                .notify_channel(format!("cmp_{id}"))
                .unlogged(args.db.unlogged)
                .max_pool_size(work.pool_size);
            settings = match backend {
                Backend::NoLocal => settings.local_max_entries(0),
                Backend::NoNotify => settings.disable_notify(true),
                _ => settings,
            };
            PostgresCache::init_db(&settings).await.context("init_db")?;
            let row = match Clients::pgcache(&settings, &work).await {
                Ok(clients) => workload::run(&work, backend, clients).await,
                Err(e) => Err(e),
            };
            let _ = crate::load::drop_table(
                &CacheSettings::new(&args.db.dsn).schema_prefix(settings.schema_prefix.clone()),
            )
            .await;
            row?
        };
        eprintln!("{}: done", backend.label());
        rows.push(row);
    }
    Ok(rows)
}

/// The line above the table: every parameter of the run.
fn header(args: &CompareArgs, netem: Option<Netem>, durability: &Durability, writers: u32) -> String {
    let work = args.workload(writers);
    format!(
        "writers={} readers={} keyspace={} write_iterations={} read_iterations={} ttl={:?} shape={} \
         think={} pool_size={} network={} durability: {}",
        work.writers,
        work.readers,
        work.keyspace,
        work.write_iterations,
        work.read_iterations,
        work.ttl,
        if work.instance_per_client { "instance-per-client" } else { "shared-instance" },
        if work.write_think.is_zero() && work.read_think.is_zero() {
            "off".to_owned()
        } else {
            format!("U(0,{:?})/U(0,{:?})", work.write_think, work.read_think)
        },
        work.pool_size,
        netem.map_or_else(|| "loopback".to_owned(), |n| format!("+{:?} rtt ±{:?}", n.rtt, n.jitter / 2)),
        durability,
    )
}

/// The markdown table of the Python benchmark (plus p99 columns and the instances).
pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| backend | instances | write mean (ms) | write p95 (ms) | write p99 (ms) | write ops/s | read mean (ms) | read p95 (ms) | read p99 (ms) | read ops/s | hit rate |\n",
    );
    out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in rows {
        let ms = |us: f64| format!("{:.3}", us / 1000.0);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {:.0} | {:.1}% |\n",
            r.backend.label(),
            r.instances,
            ms(r.write.mean_us),
            ms(r.write.p95_us),
            ms(r.write.p99_us),
            r.write_ops_per_s,
            ms(r.read.mean_us),
            ms(r.read.p95_us),
            ms(r.read.p99_us),
            r.read_ops_per_s,
            r.hit_rate * 100.0
        ));
    }
    let think: Vec<String> = rows
        .iter()
        .filter(|r| r.write_think_mean_ms > 0.0 || r.read_think_mean_ms > 0.0)
        .map(|r| format!("{} {:.2}/{:.2}", r.backend.label(), r.write_think_mean_ms, r.read_think_mean_ms))
        .collect();
    // Notes go after a blank line: a text line right under a markdown table would become one of its rows.
    let mut notes = Vec::new();
    if !think.is_empty() {
        notes.push(format!("think time slept per write/read (ms): {}", think.join("; ")));
    }
    if let Some(v) = rows.iter().find_map(|r| r.library_version.as_deref()) {
        notes.push(format!("python postgres-cache version: {v}"));
    }
    if !notes.is_empty() {
        out.push_str(&format!("\n{}\n", notes.join("\n\n")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: CompareArgs,
    }

    fn parse(argv: &[&str]) -> Result<CompareArgs, clap::Error> {
        Wrap::try_parse_from(["compare", "--dsn", "x"].iter().chain(argv)).map(|w| w.args)
    }

    #[test]
    fn defaults_are_the_python_benchmarks() {
        let args = parse(&[]).unwrap();
        let work = args.workload(args.writers);
        assert_eq!((work.writers, work.readers, work.keyspace), (16, 32, 64));
        assert_eq!((work.write_iterations, work.read_iterations), (400, 800));
        assert_eq!((work.write_think, work.read_think), (Duration::from_millis(5), Duration::from_millis(2)));
        assert!(!work.instance_per_client);
        let off = parse(&["--no-think-time"]).unwrap().workload(16);
        assert_eq!((off.write_think, off.read_think), (Duration::ZERO, Duration::ZERO));
    }

    #[test]
    fn python_backends_need_an_interpreter_and_before_needs_the_old_shape() {
        assert!(parse(&["--backends", "python-full"]).unwrap().validate().is_err());
        assert!(parse(&["--backends", "python-full", "--python", "/usr/bin/python3"]).unwrap().validate().is_ok());
        let sweep = ["--sweep-writers", "1,2", "--before-harness", "/bin/true"];
        assert!(parse(&sweep).unwrap().validate().is_err(), "think time on");
        let mut ok = sweep.to_vec();
        ok.push("--no-think-time");
        assert!(parse(&ok).unwrap().validate().is_ok());
        ok.push("--instance-per-client");
        assert!(parse(&ok).unwrap().validate().is_err());
        assert!(parse(&["--before-harness", "/bin/true"]).is_err(), "--before-harness needs --sweep-writers");
        assert!(parse(&["--write-think-ms", "-1"]).is_err());
    }
}
