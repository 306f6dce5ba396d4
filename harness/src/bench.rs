//! `bench`: each pgcache figure next to its baseline, measured in the same run, as a ratio.
//!
//! | row | pgcache | baseline |
//! | --- | --- | --- |
//! | L1 hit latency | `get_bytes` served from L1 | raw moka `get` (same `Arc<str>` key, `Arc` of `Bytes` + version value) |
//! | L1 hit, metrics on | `get_bytes` from L1 on a cache recording into a Prometheus recorder | the same on a cache without a recorder (target ≤ 1.05) |
//! | L2 hit latency | `get_bytes`, local cache off | raw tokio-postgres prepared `SELECT` of the same row (the core's statement) |
//! | L2 hit throughput | 16 tasks, local cache off, pool 16 | 16 tasks on a deadpool pool of 16, prepared `SELECT` |
//! | set latency | `set_bytes` | the core's upsert statement on the same table (same triggers); and on a copy without triggers |
//! | set latency, group commit | `set_bytes`, one client, group commit on | the same, `group_commit = false` (a lone write must be no slower) |
//! | writes/s, 16 and 64 writers | `set_bytes` from N tasks on one instance (pool 16), group commit on | a bare prepared upsert (no triggers) from N tasks on a deadpool pool of 16 (the floor); and group commit off |
//! | get_or_set miss | `get_or_set` of a cold key (trivial loader) | the round trips of the previous design by hand on one connection: read, try-lock, re-read, upsert, unlock |
//! | get_many(16) | one `get_many_bytes` of 16 keys | 16 sequential `get_bytes` |
//! | Redis | L2 hit and L1 hit | redis-rs `GET` over loopback |
//! | invalidation | probe write on one process, change seen on another (idle database) | target p99 ≤ 10 ms |
//! | invalidation under writes | the same while 2 processes x 16 tasks write | report |
//! | HTTP from L1 | axum route behind `PgCacheLayer`, served from L1 | the same route without the layer |
//! | HTTP miss | 100 concurrent requests for one URL over 2 layer instances, 50 ms handler | handler runs once |
//!
//! Latency rows interleave pgcache and baseline in rounds so drift (other work on the machine) hits both.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use pgcache_core::{CacheSettings, CacheStore, PostgresCache, Ttl};
use rand::{Rng, SeedableRng};

use crate::cli::DbArgs;
use crate::redis_server::RedisServer;
use crate::stats::{fmt_us, Latency};

/// Options of `bench`.
#[derive(Debug, Clone, Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    pub(crate) db: DbArgs,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub(crate) value_size: usize,
    /// Scale of the iteration counts (1 = the default run of about a minute).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) scale: f64,
    /// Skip the Redis rows.
    #[arg(long)]
    pub(crate) no_redis: bool,
    /// Run only these sections (default: all).
    #[arg(long, value_delimiter = ',')]
    pub(crate) only: Vec<Section>,
    /// Where to write bench.json.
    #[arg(long, default_value = "harness-out")]
    pub(crate) out: PathBuf,
}

/// A section of the table (for `--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Section {
    /// L1 hit vs raw moka.
    L1,
    /// L2 hit latency vs raw prepared SELECT.
    L2,
    /// L2 throughput with 16 tasks.
    Throughput,
    /// set vs raw upsert, and the trigger's cost.
    Set,
    /// Writes per second with 16 and 64 concurrent writers, group commit on and off, against a bare upsert.
    Writes,
    /// get_or_set of a cold key vs the previous design's round trips by hand.
    Miss,
    /// get_many(16) vs sequential gets.
    GetMany,
    /// Redis GET.
    Redis,
    /// Invalidation propagation across processes.
    Invalidation,
    /// The PgCacheLayer rows.
    Http,
}

/// One row of the table.
#[derive(Debug, serde::Serialize)]
pub(crate) struct BenchRow {
    pub(crate) what: String,
    pub(crate) pgcache: String,
    pub(crate) baseline: String,
    /// pgcache / baseline, in the direction of the target (latency: lower is better; throughput: higher).
    pub(crate) ratio: Option<f64>,
    pub(crate) target: String,
    pub(crate) met: Option<bool>,
}

const KEYS: usize = 1000;

fn key(i: usize) -> String {
    format!("bench:{i}")
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs every row and prints the table.
pub(crate) async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.db.shards.is_empty() && args.db.read_dsns.is_empty(),
        "bench measures one server: run `load` with --shard / --read-dsn"
    );
    let n = |base: f64| ((base * args.scale).round() as usize).max(10);
    let id = format!("{:x}", crate::load::events::now_ns() % 0xff_ffff);
    let base = args.db.apply(
        CacheSettings::new(&args.db.dsn)
            .schema_prefix(format!("bench_{id}_"))
            .notify_channel(format!("bench_{id}"))
            .unlogged(args.db.unlogged)
            .max_pool_size(16),
    );
    PostgresCache::init_db(&base).await.context("init_db (is PostgreSQL running? see --dsn)")?;
    let result = rows(args, &base, n).await;
    let _ = crate::load::drop_table(&base).await;
    let rows = result?;
    let table = table(&rows);
    println!("{table}");
    tokio::fs::create_dir_all(&args.out).await?;
    tokio::fs::write(args.out.join("bench.json"), serde_json::to_string_pretty(&rows)?).await?;
    tokio::fs::write(args.out.join("bench.md"), table).await?;
    Ok(())
}

async fn rows(args: &BenchArgs, base: &CacheSettings, n: impl Fn(f64) -> usize) -> anyhow::Result<Vec<BenchRow>> {
    let full = PostgresCache::connect(base.clone()).await?;
    let unbatched = PostgresCache::connect(base.clone().group_commit(false)).await?;
    let remote = PostgresCache::connect(base.clone().local_max_entries(0)).await?;
    let value = Bytes::from(vec![b'v'; args.value_size]);
    let items: Vec<(String, Bytes)> = (0..KEYS).map(|i| (key(i), value.clone())).collect();
    let refs: Vec<(&str, Bytes)> = items.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    full.set_many_bytes(&refs, Ttl::Never).await?;
    let table = format!("\"{}cache_entries\"", base.schema_prefix);
    let raw = crate::load::connect_raw(&base.dsn).await?;
    let mut out = Vec::new();
    let want = |section: Section| args.only.is_empty() || args.only.contains(&section);
    let (mut l1, mut l2_p50): (Option<f64>, Option<f64>) = (None, None);
    let window = Duration::from_secs_f64((3.0 * args.scale).clamp(0.5, 30.0));
    let hot = key(7);
    let mut rng = rand::rngs::StdRng::from_entropy();

    if want(Section::L1) {
        // L1 hit vs raw moka get.
        eprintln!("bench: L1 hit");
        full.get_bytes(&hot).await?;
        let moka: moka::future::Cache<Arc<str>, Arc<(Bytes, i64)>> =
            moka::future::Cache::builder().max_capacity(10_000).build();
        moka.insert(Arc::from(hot.as_str()), Arc::new((value.clone(), 1))).await;
        let (mut l1_total, mut moka_total, mut l1_ops) = (Duration::ZERO, Duration::ZERO, 0u64);
        for _ in 0..10 {
            let rounds = n(50_000.0);
            let t = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(full.get_bytes(std::hint::black_box(&hot)).await?);
            }
            l1_total += t.elapsed();
            let t = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(moka.get(std::hint::black_box(hot.as_str())).await);
            }
            moka_total += t.elapsed();
            l1_ops += rounds as u64;
        }
        let l1_us = ns(l1_total) as f64 / l1_ops as f64 / 1000.0;
        l1 = Some(l1_us);
        let moka_us = ns(moka_total) as f64 / l1_ops as f64 / 1000.0;
        out.push(latency_row("L1 hit latency (mean)", l1_us, moka_us, "raw moka get", 1.5));
        out.push(l1_with_metrics(&full, base, &hot, n(50_000.0)).await?);
    }
    if want(Section::L2) {
        // L2 hit latency: local cache off vs raw prepared SELECT (the core's statement) of the same row.
        eprintln!("bench: L2 hit");
        let select = raw
            .prepare(&format!(
                "SELECT value, version, (EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::bigint FROM {table} \
             WHERE key = $1 AND (expires_at IS NULL OR expires_at > now())"
            ))
            .await?;
        let (mut l2, mut pg) = (Latency::new(), Latency::new());
        for _ in 0..5 {
            for _ in 0..n(1000.0) {
                let t = Instant::now();
                remote.get_bytes(&hot).await?.context("L2 row missing")?;
                l2.record(ns(t.elapsed()));
            }
            for _ in 0..n(1000.0) {
                let t = Instant::now();
                raw.query_one(&select, &[&hot]).await?;
                pg.record(ns(t.elapsed()));
            }
        }
        let (l2s, pgs) = (l2.summary(), pg.summary());
        l2_p50 = Some(l2s.p50_us);
        out.push(latency_row("L2 hit latency (p50, L1 off)", l2s.p50_us, pgs.p50_us, "raw prepared SELECT", 1.2));
        out.push(latency_row("L2 hit latency (mean, L1 off)", l2s.mean_us, pgs.mean_us, "raw prepared SELECT", 1.2));
    }
    if want(Section::Throughput) {
        // L2 throughput, 16 tasks: pool of 16 on both sides.
        eprintln!("bench: L2 throughput");
        let pool = raw_pool(&base.dsn)?;
        let sql = Arc::new(select_sql(&table));
        let mut ours = 0.0;
        let mut theirs = 0.0;
        for _ in 0..2 {
            ours += throughput(16, window, {
                let remote = remote.clone();
                move |k| {
                    let remote = remote.clone();
                    async move { remote.get_bytes(&k).await.map(drop).map_err(anyhow::Error::from) }
                }
            })
            .await?;
            theirs += throughput(16, window, {
                let (pool, sql) = (pool.clone(), Arc::clone(&sql));
                move |k| {
                    let (pool, sql) = (pool.clone(), Arc::clone(&sql));
                    async move {
                        let client = pool.get().await?;
                        let stmt = client.prepare_cached(&sql).await?;
                        client.query_opt(&stmt, &[&k]).await?;
                        anyhow::Ok(())
                    }
                }
            })
            .await?;
        }
        out.push(throughput_row(
            "L2 hit throughput, 16 tasks (ops/s)",
            ours / 2.0,
            theirs / 2.0,
            "raw deadpool, 16 tasks",
            0.85,
        ));
        pool.close();
    }
    if want(Section::Set) {
        // set vs raw upsert with the same trigger, and the trigger's own cost.
        eprintln!("bench: set");
        let bare = format!("\"{}bench_bare\"", base.schema_prefix);
        raw.batch_execute(&format!("CREATE TABLE {bare} (LIKE {table} INCLUDING ALL)")).await?;
        let upsert = |t: &str| {
            format!(
            "INSERT INTO {t} (key, value, expires_at, tags) VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond', $4) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, \
             tags = EXCLUDED.tags RETURNING version"
        )
        };
        let with_trigger = raw.prepare(&upsert(&table)).await?;
        let without_trigger = raw.prepare(&upsert(&bare)).await?;
        let (mut set, mut raw_set, mut bare_set) = (Latency::new(), Latency::new(), Latency::new());
        let mut set_unbatched = Latency::new();
        let ttl_ms: Option<i64> = Some(300_000);
        let tags: Vec<String> = Vec::new();
        for _ in 0..5 {
            // Group commit on and off alternate write by write (each going first half the time), so drift
            // and ordering hit both alike.
            for i in 0..n(500.0) {
                let pair = [(&full, &mut set), (&unbatched, &mut set_unbatched)];
                let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
                let [mut a, mut b] = pair.map(Some);
                for which in order {
                    let Some((cache, latency)) = (if which == 0 { a.take() } else { b.take() }) else { continue };
                    let k = key(rng.gen_range(0..KEYS));
                    let t = Instant::now();
                    cache.set_bytes(&k, value.clone(), Ttl::After(Duration::from_secs(300))).await?;
                    latency.record(ns(t.elapsed()));
                }
            }
            for _ in 0..n(500.0) {
                let k = key(rng.gen_range(0..KEYS));
                let t = Instant::now();
                raw.query_one(&with_trigger, &[&k, &&value[..], &ttl_ms, &tags]).await?;
                raw_set.record(ns(t.elapsed()));
            }
            for _ in 0..n(500.0) {
                let k = key(rng.gen_range(0..KEYS));
                let t = Instant::now();
                raw.query_one(&without_trigger, &[&k, &&value[..], &ttl_ms, &tags]).await?;
                bare_set.record(ns(t.elapsed()));
            }
        }
        let (s, r, b) = (set.summary(), raw_set.summary(), bare_set.summary());
        out.push(latency_row("set latency (p50)", s.p50_us, r.p50_us, "raw upsert, same triggers", 1.2));
        let u = set_unbatched.summary();
        out.push(latency_row(
            "set latency, 1 client, group commit on (p50)",
            s.p50_us,
            u.p50_us,
            "group commit off",
            1.1,
        ));
        out.push(BenchRow {
            what: "cost of the notify trigger (p50)".into(),
            pgcache: format!("{} with trigger", fmt_us(r.p50_us)),
            baseline: format!("{} without", fmt_us(b.p50_us)),
            ratio: Some(r.p50_us / b.p50_us),
            target: "report".into(),
            met: None,
        });
    }
    if want(Section::Writes) {
        out.extend(write_rows(&full, &unbatched, &raw, &table, &base.dsn, &value, window).await?);
    }
    if want(Section::Miss) {
        eprintln!("bench: get_or_set miss");
        let read = raw
            .prepare(&format!("{} AND key = $1", select_sql(&table).replace(" WHERE key = $1 AND", " WHERE")))
            .await?;
        let try_lock = raw.prepare("SELECT pg_try_advisory_lock($1)").await?;
        let unlock = raw.prepare("SELECT pg_advisory_unlock($1)").await?;
        let upsert = raw
            .prepare(&format!(
                "INSERT INTO {table} (key, value, expires_at) VALUES ($1, $2, now() + interval '300 seconds') \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at RETURNING version"
            ))
            .await?;
        let (mut ours, mut by_hand) = (Latency::new(), Latency::new());
        for round in 0..5 {
            for i in 0..n(300.0) {
                let k = format!("miss:{round}:{i}");
                let v = value.clone();
                let t = Instant::now();
                let fill = move || async move {
                    Ok::<_, std::io::Error>(pgcache_core::Fill::new(v, Ttl::After(Duration::from_secs(300))))
                };
                full.get_or_load(&k, fill).await.map_err(|e| anyhow::anyhow!("get_or_load: {e}"))?;
                ours.record(ns(t.elapsed()));
            }
            for i in 0..n(300.0) {
                let k = format!("miss-by-hand:{round}:{i}");
                let lock = full.lock_key(&k);
                let t = Instant::now();
                raw.query_opt(&read, &[&k]).await?;
                raw.query_one(&try_lock, &[&lock]).await?;
                raw.query_opt(&read, &[&k]).await?;
                raw.query_one(&upsert, &[&k, &&value[..]]).await?;
                raw.query_one(&unlock, &[&lock]).await?;
                by_hand.record(ns(t.elapsed()));
            }
        }
        let (o, h) = (ours.summary(), by_hand.summary());
        out.push(BenchRow {
            what: "get_or_set miss (p50)".into(),
            pgcache: fmt_us(o.p50_us),
            baseline: format!("{} read, try-lock, re-read, upsert, unlock by hand", fmt_us(h.p50_us)),
            ratio: Some(o.p50_us / h.p50_us),
            target: "report".into(),
            met: None,
        });
    }
    if want(Section::GetMany) {
        // get_many(16) vs 16 sequential gets, L1 off.
        eprintln!("bench: get_many");
        let (mut many, mut seq) = (Duration::ZERO, Duration::ZERO);
        let mut batches = 0u64;
        for _ in 0..5 {
            for _ in 0..n(200.0) {
                let start = rng.gen_range(0..KEYS - 16);
                let keys: Vec<String> = (start..start + 16).map(key).collect();
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                let t = Instant::now();
                remote.get_many_bytes(&refs).await?;
                many += t.elapsed();
                let t = Instant::now();
                for k in &refs {
                    remote.get_bytes(k).await?;
                }
                seq += t.elapsed();
                batches += 1;
            }
        }
        let keys_per_s = |d: Duration| (batches * 16) as f64 / d.as_secs_f64();
        out.push(throughput_row("get_many(16) (keys/s)", keys_per_s(many), keys_per_s(seq), "16 sequential gets", 5.0));
    }
    if want(Section::Redis) {
        // Redis GET.
        if args.no_redis {
            eprintln!("notice: --no-redis: skipping the Redis rows");
        } else {
            eprintln!("bench: redis");
            match RedisServer::start().await {
                Ok(server) => {
                    let mut conn = redis::Client::open(server.url.as_str())?.get_multiplexed_async_connection().await?;
                    let _: () = redis::cmd("SET").arg(&hot).arg(&value[..]).query_async(&mut conn).await?;
                    let mut redis_get = Latency::new();
                    for _ in 0..n(5000.0) {
                        let t = Instant::now();
                        let _: Option<Vec<u8>> = redis::cmd("GET").arg(&hot).query_async(&mut conn).await?;
                        redis_get.record(ns(t.elapsed()));
                    }
                    let rs = redis_get.summary();
                    out.push(BenchRow {
                        what: "Redis GET over loopback (p50 / mean)".into(),
                        pgcache: "-".into(),
                        baseline: format!("{} / {}", fmt_us(rs.p50_us), fmt_us(rs.mean_us)),
                        ratio: None,
                        target: "report".into(),
                        met: None,
                    });
                    if let Some(l2) = l2_p50 {
                        out.push(BenchRow {
                            what: "L2 hit vs Redis GET (p50)".into(),
                            pgcache: fmt_us(l2),
                            baseline: format!("{} redis GET", fmt_us(rs.p50_us)),
                            ratio: Some(l2 / rs.p50_us),
                            target: "report".into(),
                            met: None,
                        });
                    }
                    if let Some(l1) = l1 {
                        out.push(BenchRow {
                            what: "L1 hit vs Redis GET (mean)".into(),
                            pgcache: fmt_us(l1),
                            baseline: format!("{} redis GET", fmt_us(rs.mean_us)),
                            ratio: Some(l1 / rs.mean_us),
                            target: "report".into(),
                            met: None,
                        });
                    }
                }
                Err(e) => eprintln!("notice: skipping the Redis rows: {e:#}"),
            }
        }
    }
    full.close().await;
    unbatched.close().await;
    remote.close().await;

    if want(Section::Invalidation) {
        // Invalidation propagation across processes on an idle database.
        eprintln!("bench: invalidation propagation (2 processes, idle)");
        let secs = format!("{}s", (5.0 * args.scale).clamp(2.0, 60.0));
        let out_dir = args.out.join("bench-invalidation");
        let load = crate::cli::load_args(&[
            "--dsn",
            &base.dsn,
            "--processes",
            "2",
            "--tasks",
            "0",
            "--probe-interval",
            "10ms",
            "--duration",
            &secs,
            "--quiet",
            "--out",
            &out_dir.to_string_lossy(),
        ])?;
        let report = crate::load::run_quiet(&load).await?;
        let p99 = report.invalidation.delay.p99_us;
        out.push(BenchRow {
            what: format!("invalidation propagation p99 (idle, {} samples)", report.invalidation.samples),
            pgcache: format!("{} (p50 {})", fmt_us(p99), fmt_us(report.invalidation.delay.p50_us)),
            baseline: "-".into(),
            ratio: None,
            target: "p99 ≤ 10ms".into(),
            // No sample is no measurement, never a pass.
            met: Some(report.invalidation.samples > 0 && p99 <= 10_000.0),
        });
    }
    if want(Section::Invalidation) {
        eprintln!("bench: invalidation propagation (2 processes x 16 writing tasks)");
        let secs = format!("{}s", (5.0 * args.scale).clamp(2.0, 60.0));
        let out_dir = args.out.join("bench-invalidation-load");
        let load = crate::cli::load_args(&[
            "--dsn",
            &base.dsn,
            "--processes",
            "2",
            "--tasks",
            "16",
            "--reads",
            "0",
            "--get-or-set",
            "0",
            "--writes",
            "90",
            "--deletes",
            "10",
            "--keys",
            "1000",
            "--probe-interval",
            "10ms",
            "--duration",
            &secs,
            "--quiet",
            "--out",
            &out_dir.to_string_lossy(),
        ])?;
        let report = crate::load::run_quiet(&load).await?;
        let inv = &report.invalidation;
        out.push(BenchRow {
            what: format!("invalidation propagation p99 under 2 x 16 writers ({} samples)", inv.samples),
            pgcache: format!("{} (p50 {})", fmt_us(inv.delay.p99_us), fmt_us(inv.delay.p50_us)),
            baseline: "-".into(),
            ratio: None,
            target: "report".into(),
            met: None,
        });
    }
    if want(Section::Http) {
        eprintln!("bench: HTTP (PgCacheLayer)");
        out.extend(crate::http_bench::rows(base, window).await?);
    }
    Ok(out)
}

/// The L1 hit on a cache whose metrics go to a Prometheus recorder, against `plain` (created before any
/// recorder, so its handles are no-ops), interleaved in rounds. The recorder is local to the observed
/// cache's creation (`connect_lazy` registers its hot-path handles synchronously), so no other row records.
async fn l1_with_metrics(
    plain: &PostgresCache,
    base: &CacheSettings,
    hot: &str,
    rounds: usize,
) -> anyhow::Result<BenchRow> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let observed = metrics::with_local_recorder(&recorder, || PostgresCache::connect_lazy(base.clone()))?;
    // Connected on this first read; the second fills the local cache (once the listener is up).
    let deadline = Instant::now() + Duration::from_secs(10);
    while observed.local_usage().await.0 == 0 {
        anyhow::ensure!(Instant::now() < deadline, "the observed cache never held {hot} locally");
        observed.get_bytes(hot).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (mut on, mut off, mut ops) = (Duration::ZERO, Duration::ZERO, 0u64);
    for _ in 0..10 {
        let t = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(observed.get_bytes(std::hint::black_box(hot)).await?);
        }
        on += t.elapsed();
        let t = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(plain.get_bytes(std::hint::black_box(hot)).await?);
        }
        off += t.elapsed();
        ops += rounds as u64;
    }
    let recorded = handle.render();
    anyhow::ensure!(
        recorded.contains("cache_operation=\"get\",cache_outcome=\"l1_hit\""),
        "the observed cache recorded no L1 hit: {recorded}"
    );
    observed.close().await;
    let per_op = |d: Duration| ns(d) as f64 / ops as f64 / 1000.0;
    Ok(latency_row("L1 hit latency, metrics on (mean)", per_op(on), per_op(off), "metrics off", 1.05))
}

/// Writes per second from 16 and 64 tasks: `set_bytes` with group commit on and off, against a bare
/// prepared upsert (a copy of the table without triggers) on a deadpool pool of 16, interleaved in rounds.
async fn write_rows(
    batched: &PostgresCache,
    unbatched: &PostgresCache,
    raw: &tokio_postgres::Client,
    table: &str,
    dsn: &str,
    value: &Bytes,
    window: Duration,
) -> anyhow::Result<Vec<BenchRow>> {
    let bare = format!("{}_floor\"", table.trim_end_matches('"'));
    raw.batch_execute(&format!("CREATE TABLE IF NOT EXISTS {bare} (LIKE {table} INCLUDING ALL)")).await?;
    let sql = Arc::new(format!(
        "INSERT INTO {bare} (key, value, expires_at) VALUES ($1, $2, now() + interval '300 seconds') \
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at"
    ));
    let pool = raw_pool(dsn)?;
    let mut out = Vec::new();
    for writers in [16usize, 64] {
        eprintln!("bench: writes/s, {writers} writers");
        let (mut on, mut off, mut floor) = (0.0, 0.0, 0.0);
        for _ in 0..2 {
            for (cache, sum) in [(batched, &mut on), (unbatched, &mut off)] {
                let (cache, value) = (cache.clone(), value.clone());
                *sum += throughput(writers, window, move |k| {
                    let (cache, value) = (cache.clone(), value.clone());
                    async move {
                        cache
                            .set_bytes(&k, value, Ttl::After(Duration::from_secs(300)))
                            .await
                            .map_err(anyhow::Error::from)
                    }
                })
                .await?;
            }
            let (pool, sql, value) = (pool.clone(), Arc::clone(&sql), value.clone());
            floor += throughput(writers, window, move |k| {
                let (pool, sql, value) = (pool.clone(), Arc::clone(&sql), value.clone());
                async move {
                    let client = pool.get().await?;
                    let stmt = client.prepare_cached(&sql).await?;
                    client.execute(&stmt, &[&k, &&value[..]]).await?;
                    anyhow::Ok(())
                }
            })
            .await?;
        }
        let (on, off, floor) = (on / 2.0, off / 2.0, floor / 2.0);
        out.push(BenchRow {
            what: format!("writes/s, {writers} writers, group commit on"),
            pgcache: format!("{on:.0}"),
            baseline: format!("{floor:.0} bare upsert (no triggers), pool 16"),
            ratio: Some(on / floor),
            target: "report".into(),
            met: None,
        });
        out.push(throughput_row(
            &format!("writes/s, {writers} writers, group commit on vs off"),
            on,
            off,
            "group commit off",
            1.0,
        ));
    }
    pool.close();
    raw.batch_execute(&format!("DROP TABLE IF EXISTS {bare}")).await?;
    Ok(out)
}

fn select_sql(table: &str) -> String {
    format!(
        "SELECT value, version, (EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::bigint FROM {table} \
         WHERE key = $1 AND (expires_at IS NULL OR expires_at > now())"
    )
}

fn raw_pool(dsn: &str) -> anyhow::Result<deadpool_postgres::Pool> {
    let config: tokio_postgres::Config = dsn.parse()?;
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
    );
    Ok(deadpool_postgres::Pool::builder(manager).max_size(16).build()?)
}

/// Runs `op` on random keys from `tasks` tasks for `window`; returns operations per second.
async fn throughput<F, Fut>(tasks: usize, window: Duration, op: F) -> anyhow::Result<f64>
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let deadline = Instant::now() + window;
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let op = op.clone();
        handles.push(tokio::spawn(async move {
            let mut count = 0u64;
            while Instant::now() < deadline {
                let k = key(rand::thread_rng().gen_range(0..KEYS));
                op(k).await?;
                count += 1;
            }
            anyhow::Ok(count)
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn latency_row(what: &str, ours_us: f64, base_us: f64, baseline: &str, max_ratio: f64) -> BenchRow {
    let ratio = ours_us / base_us;
    BenchRow {
        what: what.into(),
        pgcache: fmt_us(ours_us),
        baseline: format!("{} {baseline}", fmt_us(base_us)),
        ratio: Some(ratio),
        target: format!("≤ {max_ratio}x"),
        met: Some(ratio <= max_ratio),
    }
}

fn throughput_row(what: &str, ours: f64, base: f64, baseline: &str, min_ratio: f64) -> BenchRow {
    let ratio = ours / base;
    BenchRow {
        what: what.into(),
        pgcache: format!("{ours:.0}"),
        baseline: format!("{base:.0} {baseline}"),
        ratio: Some(ratio),
        target: format!("≥ {min_ratio}x"),
        met: Some(ratio >= min_ratio),
    }
}

fn format_ratio(x: f64) -> String {
    if x < 0.01 {
        format!("{x:.4}x (1/{:.0})", 1.0 / x)
    } else {
        format!("{x:.2}x")
    }
}

/// The markdown table.
pub(crate) fn table(rows: &[BenchRow]) -> String {
    let mut out = String::from(
        "| what | pgcache | baseline | ratio | target | met |\n| --- | ---: | ---: | ---: | --- | --- |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.what,
            r.pgcache,
            r.baseline,
            r.ratio.map_or_else(|| "-".to_owned(), format_ratio),
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            }
        ));
    }
    out
}
