//! `compare`: the original Python library's benchmark, same flags, backends and table (plus p99).
//!
//! W writer tasks each `set` `{"writer", "iteration", "ts"}` on a random key of the keyspace, R reader tasks
//! each `get` a random key, all at once. Backends: the full cache, the cache without local cache
//! (`local_max_entries = 0`), the cache with notifications disabled, and Redis. With
//! `--network-latency-ms` every connection (PostgreSQL, the listener, Redis) goes through a loopback proxy
//! that adds that round trip, so local-cache hits stay local as they would in production.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use pgcache_core::{CacheSettings, CacheStore, PostgresCache, Ttl};
use rand::Rng;

use crate::cli::{parse_duration, DbArgs};
use crate::netem::{self, Netem};
use crate::redis_server::RedisServer;
use crate::stats::Latency;

/// Options of `compare` (the Python benchmark's flags).
#[derive(Debug, Clone, Args)]
pub(crate) struct CompareArgs {
    #[command(flatten)]
    pub(crate) db: DbArgs,
    /// Writer tasks.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub(crate) writers: u32,
    /// Reader tasks.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub(crate) readers: u32,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) keyspace: u64,
    /// `set` calls per writer.
    #[arg(long, default_value_t = 200)]
    pub(crate) write_iterations: u64,
    /// `get` calls per reader.
    #[arg(long, default_value_t = 1000)]
    pub(crate) read_iterations: u64,
    /// TTL of every write.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) ttl: Duration,
    /// Emulated network round trip added to every connection, in ms.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) network_latency_ms: f64,
    /// Emulated jitter (±half on each leg), in ms.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) network_jitter_ms: f64,
    /// Shortcut for the Python benchmark's "managed service" profile: 1.5 ms + 0.5 ms jitter.
    #[arg(long)]
    pub(crate) managed_service: bool,
    /// Backends to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "full,no-local,no-notify,redis")]
    pub(crate) backends: Vec<Backend>,
    /// Connection pool size of each cache.
    #[arg(long, default_value_t = 16)]
    pub(crate) pool_size: usize,
    /// Where to write compare.json.
    #[arg(long, default_value = "harness-out")]
    pub(crate) out: PathBuf,
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
    /// Redis GET/SET through redis-rs (multiplexed connection).
    Redis,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::Full => "pgcache (full)",
            Backend::NoLocal => "pgcache (no local cache)",
            Backend::NoNotify => "pgcache (notify disabled)",
            Backend::Redis => "redis",
        }
    }
}

/// One row of the table.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Row {
    pub(crate) backend: Backend,
    pub(crate) write: crate::stats::Summary,
    pub(crate) write_ops_per_s: f64,
    pub(crate) read: crate::stats::Summary,
    pub(crate) read_ops_per_s: f64,
    pub(crate) hit_rate: f64,
}

#[derive(Clone)]
enum Client {
    Pg(PostgresCache),
    Redis(redis::aio::MultiplexedConnection),
}

impl Client {
    async fn set(&mut self, key: &str, value: Bytes, ttl: Duration) -> anyhow::Result<()> {
        match self {
            Client::Pg(c) => Ok(c.set_bytes(key, value, Ttl::After(ttl)).await?),
            Client::Redis(c) => {
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                Ok(redis::cmd("SET").arg(key).arg(&value[..]).arg("PX").arg(ms).query_async(c).await?)
            }
        }
    }

    async fn get(&mut self, key: &str) -> anyhow::Result<bool> {
        match self {
            Client::Pg(c) => Ok(c.get_bytes(key).await?.is_some()),
            Client::Redis(c) => {
                let v: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(c).await?;
                Ok(v.is_some())
            }
        }
    }
}

/// Runs every backend and prints the table.
pub(crate) async fn run(args: &CompareArgs) -> anyhow::Result<()> {
    let netem = if args.managed_service {
        Some(Netem { rtt: Duration::from_micros(1500), jitter: Duration::from_micros(500) })
    } else if args.network_latency_ms > 0.0 || args.network_jitter_ms > 0.0 {
        Some(Netem {
            rtt: Duration::try_from_secs_f64(args.network_latency_ms / 1000.0).context("--network-latency-ms")?,
            jitter: Duration::try_from_secs_f64(args.network_jitter_ms / 1000.0).context("--network-jitter-ms")?,
        })
    } else {
        None
    };
    let rows = compare(args, netem).await?;
    println!("{}", table(&rows, args, netem));
    tokio::fs::create_dir_all(&args.out).await?;
    tokio::fs::write(args.out.join("compare.json"), serde_json::to_string_pretty(&rows)?).await?;
    Ok(())
}

/// Runs the workload on each backend; Redis is skipped with a notice when it cannot be had.
pub(crate) async fn compare(args: &CompareArgs, netem: Option<Netem>) -> anyhow::Result<Vec<Row>> {
    let dsn = match netem {
        Some(n) => netem::rewrite_dsn(&args.db.dsn, netem::proxy(netem::dsn_target(&args.db.dsn).await?, n).await?)?,
        None => args.db.dsn.clone(),
    };
    let mut rows = Vec::new();
    for &backend in &args.backends {
        let row = match backend {
            Backend::Redis => match RedisServer::start().await {
                Ok(server) => {
                    let url = match netem {
                        Some(n) => {
                            let target = server.url.trim_start_matches("redis://").trim_end_matches('/').parse()?;
                            format!("redis://{}/", netem::proxy(target, n).await?)
                        }
                        None => server.url.clone(),
                    };
                    let conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
                    let row = workload(args, backend, Client::Redis(conn)).await?;
                    drop(server);
                    row
                }
                Err(e) => {
                    eprintln!("notice: skipping the Redis backend: {e:#}");
                    continue;
                }
            },
            _ => {
                let id = format!("{:x}", crate::load::events::now_ns() % 0xff_ffff);
                let mut settings = CacheSettings::new(&dsn)
                    .schema_prefix(format!("cmp_{id}_"))
                    .notify_channel(format!("cmp_{id}"))
                    .unlogged(args.db.unlogged)
                    .max_pool_size(args.pool_size);
                settings = match backend {
                    Backend::NoLocal => settings.local_max_entries(0),
                    Backend::NoNotify => settings.disable_notify(true),
                    _ => settings,
                };
                PostgresCache::init_db(&settings).await.context("init_db")?;
                let cache = PostgresCache::connect(settings.clone()).await?;
                let row = workload(args, backend, Client::Pg(cache.clone())).await;
                cache.close().await;
                let _ = crate::load::drop_table(
                    &CacheSettings::new(&args.db.dsn).schema_prefix(settings.schema_prefix.clone()),
                )
                .await;
                row?
            }
        };
        eprintln!("{}: done", backend.label());
        rows.push(row);
    }
    Ok(rows)
}

async fn workload(args: &CompareArgs, backend: Backend, client: Client) -> anyhow::Result<Row> {
    let started = Instant::now();
    let mut writers = Vec::new();
    for writer in 0..args.writers {
        let mut client = client.clone();
        let (keyspace, iterations, ttl) = (args.keyspace, args.write_iterations, args.ttl);
        writers.push(tokio::spawn(async move {
            let mut h = Latency::new();
            for iteration in 0..iterations {
                let key = format!("bench:{}", rand::thread_rng().gen_range(0..keyspace));
                let ts =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                let value = serde_json::json!({"writer": writer, "iteration": iteration, "ts": ts});
                let value = Bytes::from(serde_json::to_vec(&value)?);
                let t = Instant::now();
                client.set(&key, value, ttl).await?;
                h.record(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
            anyhow::Ok((h, started.elapsed()))
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..args.readers {
        let mut client = client.clone();
        let (keyspace, iterations) = (args.keyspace, args.read_iterations);
        readers.push(tokio::spawn(async move {
            let mut h = Latency::new();
            let mut hits = 0u64;
            for _ in 0..iterations {
                let key = format!("bench:{}", rand::thread_rng().gen_range(0..keyspace));
                let t = Instant::now();
                hits += u64::from(client.get(&key).await?);
                h.record(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
            anyhow::Ok((h, hits, started.elapsed()))
        }));
    }
    let (mut write, mut write_wall) = (Latency::new(), Duration::ZERO);
    for w in writers {
        let (h, wall) = w.await??;
        write.merge(&h);
        write_wall = write_wall.max(wall);
    }
    let (mut read, mut hits, mut read_wall) = (Latency::new(), 0, Duration::ZERO);
    for r in readers {
        let (h, n, wall) = r.await??;
        read.merge(&h);
        hits += n;
        read_wall = read_wall.max(wall);
    }
    let rate = |n: u64, d: Duration| if d.is_zero() { 0.0 } else { n as f64 / d.as_secs_f64() };
    Ok(Row {
        backend,
        write_ops_per_s: rate(write.len(), write_wall),
        read_ops_per_s: rate(read.len(), read_wall),
        hit_rate: if read.len() == 0 { 0.0 } else { hits as f64 / read.len() as f64 },
        write: write.summary(),
        read: read.summary(),
    })
}

/// The markdown table of the Python benchmark (plus p99 columns).
pub(crate) fn table(rows: &[Row], args: &CompareArgs, netem: Option<Netem>) -> String {
    let mut out = format!(
        "writers={} readers={} keyspace={} write_iterations={} read_iterations={} ttl={:?} network={}\n\n",
        args.writers,
        args.readers,
        args.keyspace,
        args.write_iterations,
        args.read_iterations,
        args.ttl,
        netem.map_or_else(|| "loopback".to_owned(), |n| format!("+{:?} rtt ±{:?}", n.rtt, n.jitter / 2)),
    );
    out.push_str("| backend | write mean (ms) | write p95 (ms) | write p99 (ms) | write ops/s | read mean (ms) | read p95 (ms) | read p99 (ms) | read ops/s | hit rate |\n");
    out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in rows {
        let ms = |us: f64| format!("{:.3}", us / 1000.0);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {:.0} | {:.1}% |\n",
            r.backend.label(),
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
    out
}
