//! The clients and the timed run of one backend: writers and readers at once, each with its think time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures_util::future::try_join_all;
use pgcache_core::{CacheSettings, CacheStore, PostgresCache, Ttl};
use rand::Rng;

use super::{Backend, Row};
use crate::stats::Latency;

/// What every client of one run does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Workload {
    pub(crate) writers: u32,
    pub(crate) readers: u32,
    pub(crate) keyspace: u64,
    pub(crate) write_iterations: u64,
    pub(crate) read_iterations: u64,
    pub(crate) ttl: Duration,
    /// Upper bound of the uniform think time after a write (zero: none).
    pub(crate) write_think: Duration,
    /// Upper bound of the uniform think time after a read (zero: none).
    pub(crate) read_think: Duration,
    pub(crate) instance_per_client: bool,
    pub(crate) pool_size: usize,
}

/// One client's handle to a backend.
#[derive(Clone)]
enum Client {
    Pg(PostgresCache),
    Redis(redis::aio::MultiplexedConnection),
    Raw(RawPostgres),
}

/// PostgreSQL with no cache in front: the statements a cache's write and shared read would send at the
/// least (an upsert of key, value and expiry; a point read of a live row), prepared once per connection.
#[derive(Clone)]
struct RawPostgres {
    pool: deadpool_postgres::Pool,
    upsert: Arc<str>,
    select: Arc<str>,
}

impl RawPostgres {
    fn new(dsn: &str, table: &str, pool_size: usize) -> anyhow::Result<Self> {
        let config: tokio_postgres::Config = dsn.parse()?;
        let manager = deadpool_postgres::Manager::from_config(
            config,
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
        );
        Ok(Self {
            pool: deadpool_postgres::Pool::builder(manager).max_size(pool_size).build()?,
            upsert: format!(
                "INSERT INTO {table} (key, value, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3)) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at"
            )
            .into(),
            select: format!("SELECT value FROM {table} WHERE key = $1 AND expires_at > now()").into(),
        })
    }

    /// Opens one connection and prepares both statements on it, as a cache instance connects one (its
    /// `min_pool_size`) before serving.
    async fn warm(&self) -> anyhow::Result<()> {
        let client = self.pool.get().await?;
        client.prepare_cached(&self.upsert).await?;
        client.prepare_cached(&self.select).await?;
        Ok(())
    }
}

impl Client {
    async fn set(&mut self, key: &str, value: Bytes, ttl: Duration) -> anyhow::Result<()> {
        match self {
            Client::Pg(c) => Ok(c.set_bytes(key, value, Ttl::After(ttl)).await?),
            Client::Redis(c) => {
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                Ok(redis::cmd("SET").arg(key).arg(&value[..]).arg("PX").arg(ms).query_async(c).await?)
            }
            Client::Raw(raw) => {
                let client = raw.pool.get().await?;
                let upsert = client.prepare_cached(&raw.upsert).await?;
                client.execute(&upsert, &[&key, &&value[..], &ttl.as_secs_f64()]).await?;
                Ok(())
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
            Client::Raw(raw) => {
                let client = raw.pool.get().await?;
                let select = client.prepare_cached(&raw.select).await?;
                Ok(client.query_opt(&select, &[&key]).await?.is_some())
            }
        }
    }
}

/// The clients of one run: one per writer and reader, over one shared instance or one instance each.
pub(crate) struct Clients {
    clients: Vec<Client>,
    /// The distinct cache instances (or Redis connections) behind the clients, closed after the run.
    instances: Vec<Client>,
}

impl Clients {
    /// pgcache clients: one shared instance, or with `instance_per_client` one instance (own pool, listener
    /// and local cache) per client, all connected before the run starts.
    pub(crate) async fn pgcache(settings: &CacheSettings, work: &Workload) -> anyhow::Result<Self> {
        let total = usize::try_from(work.writers + work.readers).unwrap_or(usize::MAX);
        let n = if work.instance_per_client { total } else { 1 };
        let instances: Vec<Client> = try_join_all((0..n).map(|_| PostgresCache::connect(settings.clone())))
            .await?
            .into_iter()
            .map(Client::Pg)
            .collect();
        let clients = (0..total).map(|i| instances[i % instances.len()].clone()).collect();
        Ok(Self { clients, instances })
    }

    /// Raw PostgreSQL clients over a new table `table`: one pool, or with `instance_per_client` one pool
    /// per client, as [`pgcache`](Self::pgcache) gives the cache.
    pub(crate) async fn raw_postgres(dsn: &str, table: &str, work: &Workload) -> anyhow::Result<Self> {
        let setup = crate::load::connect_raw(dsn).await?;
        setup
            .batch_execute(&format!(
                "CREATE TABLE {table} (key text PRIMARY KEY, value bytea NOT NULL, expires_at timestamptz NOT NULL)"
            ))
            .await
            .context("creating the raw table")?;
        let total = usize::try_from(work.writers + work.readers).unwrap_or(usize::MAX);
        let n = if work.instance_per_client { total } else { 1 };
        let raw = (0..n).map(|_| RawPostgres::new(dsn, table, work.pool_size)).collect::<anyhow::Result<Vec<_>>>()?;
        try_join_all(raw.iter().map(RawPostgres::warm)).await?;
        let instances: Vec<Client> = raw.into_iter().map(Client::Raw).collect();
        let clients = (0..total).map(|i| instances[i % instances.len()].clone()).collect();
        Ok(Self { clients, instances })
    }

    /// Redis clients: one connection each, as the Python benchmark gives every client its own client.
    pub(crate) async fn redis(url: &str, clients: u32) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let connections = try_join_all((0..clients).map(|_| client.get_multiplexed_async_connection()))
            .await
            .context("connecting to Redis")?;
        let clients: Vec<Client> = connections.into_iter().map(Client::Redis).collect();
        Ok(Self { instances: clients.clone(), clients })
    }

    async fn close(self) {
        drop(self.clients);
        for instance in self.instances {
            match instance {
                Client::Pg(cache) => cache.close().await,
                Client::Raw(raw) => raw.pool.close(),
                Client::Redis(_) => {}
            }
        }
    }
}

/// Drops the table of [`Clients::raw_postgres`].
pub(crate) async fn drop_raw_table(dsn: &str, table: &str) -> anyhow::Result<()> {
    crate::load::connect_raw(dsn).await?.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await?;
    Ok(())
}

/// What one client task measured.
struct TaskOutcome {
    latency: Latency,
    hits: u64,
    started: Instant,
    finished: Instant,
    think: Duration,
}

/// Sleeps U(0, `max`) (nothing when `max` is zero); returns the time actually slept.
async fn think(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let pause = rand::thread_rng().gen_range(Duration::ZERO..=max);
    let t = Instant::now();
    tokio::time::sleep(pause).await;
    t.elapsed()
}

fn elapsed_ns(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs the writers and readers on `clients` and summarises them as a row of the table.
pub(crate) async fn run(work: &Workload, backend: Backend, clients: Clients) -> anyhow::Result<Row> {
    let instances = clients.instances.len();
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (i, client) in clients.clients.iter().cloned().enumerate() {
        let w = *work;
        if let Some(writer) = u32::try_from(i).ok().filter(|&i| i < w.writers) {
            writers.push(tokio::spawn(write_task(client, writer, w)));
        } else {
            readers.push(tokio::spawn(read_task(client, w)));
        }
    }
    let mut collect = Vec::new();
    for task in writers {
        collect.push(task.await.context("a writer task panicked")?);
    }
    let mut read_results = Vec::new();
    for task in readers {
        read_results.push(task.await.context("a reader task panicked")?);
    }
    clients.close().await;
    let write: Vec<TaskOutcome> = collect.into_iter().collect::<anyhow::Result<_>>()?;
    let read: Vec<TaskOutcome> = read_results.into_iter().collect::<anyhow::Result<_>>()?;
    Ok(summarise(backend, instances, &write, &read))
}

async fn write_task(mut client: Client, writer: u32, w: Workload) -> anyhow::Result<TaskOutcome> {
    let mut latency = Latency::new();
    let mut slept = Duration::ZERO;
    let started = Instant::now();
    for iteration in 0..w.write_iterations {
        let key = format!("bench:{}", rand::thread_rng().gen_range(0..w.keyspace));
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let value = serde_json::json!({"writer": writer, "iteration": iteration, "ts": ts});
        let value = Bytes::from(serde_json::to_vec(&value)?);
        let t = Instant::now();
        client.set(&key, value, w.ttl).await?;
        latency.record(elapsed_ns(t));
        slept += think(w.write_think).await;
    }
    Ok(TaskOutcome { latency, hits: 0, started, finished: Instant::now(), think: slept })
}

async fn read_task(mut client: Client, w: Workload) -> anyhow::Result<TaskOutcome> {
    let mut latency = Latency::new();
    let (mut hits, mut slept) = (0, Duration::ZERO);
    let started = Instant::now();
    for _ in 0..w.read_iterations {
        let key = format!("bench:{}", rand::thread_rng().gen_range(0..w.keyspace));
        let t = Instant::now();
        hits += u64::from(client.get(&key).await?);
        latency.record(elapsed_ns(t));
        slept += think(w.read_think).await;
    }
    Ok(TaskOutcome { latency, hits, started, finished: Instant::now(), think: slept })
}

/// Throughput as the Python benchmark counts it: operations over the span from the first client's start
/// to the last one's finish (think time included).
fn rate(ops: u64, span: Duration) -> f64 {
    if span.is_zero() {
        0.0
    } else {
        ops as f64 / span.as_secs_f64()
    }
}

fn mean_ms(total: Duration, ops: u64) -> f64 {
    if ops == 0 {
        0.0
    } else {
        total.as_secs_f64() * 1000.0 / ops as f64
    }
}

fn summarise(backend: Backend, instances: usize, write: &[TaskOutcome], read: &[TaskOutcome]) -> Row {
    let merge = |tasks: &[TaskOutcome]| {
        let mut h = Latency::new();
        for t in tasks {
            h.merge(&t.latency);
        }
        let span = match (tasks.iter().map(|t| t.started).min(), tasks.iter().map(|t| t.finished).max()) {
            (Some(a), Some(b)) => b.saturating_duration_since(a),
            _ => Duration::ZERO,
        };
        let think: Duration = tasks.iter().map(|t| t.think).sum();
        (h, span, think)
    };
    let (w, w_span, w_think) = merge(write);
    let (r, r_span, r_think) = merge(read);
    let hits: u64 = read.iter().map(|t| t.hits).sum();
    Row {
        backend,
        instances,
        write_ops_per_s: rate(w.len(), w_span),
        read_ops_per_s: rate(r.len(), r_span),
        hit_rate: if r.len() == 0 { 0.0 } else { hits as f64 / r.len() as f64 },
        write_think_mean_ms: mean_ms(w_think, w.len()),
        read_think_mean_ms: mean_ms(r_think, r.len()),
        write: w.summary(),
        read: r.summary(),
        library_version: None,
    }
}
