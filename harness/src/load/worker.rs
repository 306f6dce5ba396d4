//! One worker process of `load`: connects, waits for the coordinator's `go`, runs its tasks, writes its
//! events to a file, and reports progress on stdout (`ready`, `progress N`, `done N PEAK_RSS_KB`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use pgcache_core::{CacheSettings, CacheStore, Fill, SetOptions, ShardedCache, Source, Ttl};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::events::{decode_value, encode_value, key_name, now_ns, Event, EventFile, EventSink, Op, Via, WriteId};

/// Everything a worker needs, passed by the coordinator as JSON.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct WorkerConfig {
    pub(crate) index: u32,
    pub(crate) processes: u32,
    pub(crate) tasks: u32,
    pub(crate) settings: CacheSettings,
    pub(crate) keys: u64,
    pub(crate) zipf: f64,
    pub(crate) value_size: usize,
    /// Weights of get, get_or_set, set, delete.
    pub(crate) mix: [u32; 4],
    pub(crate) ttl: Option<Duration>,
    /// How `get_or_set` fills are written and how their loaders behave.
    #[serde(default)]
    pub(crate) fill: FillPlan,
    /// Operations per task (`None`: run until the coordinator's end time).
    pub(crate) ops_per_task: Option<u64>,
    pub(crate) probe_interval: Duration,
    pub(crate) events: PathBuf,
    pub(crate) seed: u64,
}

/// The fail-safe and refresh options of every fill, and how often a loader fails.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct FillPlan {
    pub(crate) stale_for: Option<Duration>,
    pub(crate) refresh_after: Option<Duration>,
    pub(crate) early_refresh: bool,
    /// Percentage of loader runs that fail.
    pub(crate) failing_loaders: u32,
}

impl FillPlan {
    fn options(&self, ttl: Ttl) -> SetOptions {
        let mut options = SetOptions::ttl(ttl);
        options.stale_for = self.stale_for;
        options.refresh_after = self.refresh_after;
        options.early_refresh = self.early_refresh;
        options
    }
}

/// Where loaders record their runs: they may run after their caller returned (background refresh), so
/// they send to one task of the process that writes to its own sink.
type LoaderRuns = tokio::sync::mpsc::UnboundedSender<Event>;

const PROBE_KEY: &str = "probe";
const PROBE_POLL: Duration = Duration::from_millis(1);

/// One settings value per primary: `settings` itself without shards, else one per `shard_dsns` entry,
/// the first one with the read replicas (`scripts/with-topology` replicates the first primary).
pub(crate) fn shard_settings(settings: &CacheSettings) -> Vec<CacheSettings> {
    if settings.shard_dsns.is_empty() {
        return vec![settings.clone()];
    }
    settings
        .shard_dsns
        .iter()
        .enumerate()
        .map(|(i, dsn)| {
            let mut shard = settings.clone();
            shard.dsn = dsn.clone();
            shard.shard_dsns = Vec::new();
            if i > 0 {
                shard.read_dsns = Vec::new();
            }
            shard
        })
        .collect()
}

/// Runs the worker to completion.
pub(crate) async fn run(config: WorkerConfig) -> anyhow::Result<()> {
    let cache = ShardedCache::connect_shards(shard_settings(&config.settings))
        .await
        .with_context(|| format!("worker {}: cannot connect", config.index))?;
    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"ready\n").await?;
    stdout.flush().await?;
    // The coordinator answers `go START END` (ns since the epoch) once every process is connected.
    let mut line = String::new();
    BufReader::new(tokio::io::stdin()).read_line(&mut line).await?;
    let mut words = line.split_whitespace();
    anyhow::ensure!(words.next() == Some("go"), "worker {}: expected `go`, got {line:?}", config.index);
    let start: u64 = words.next().context("go without start")?.parse()?;
    let end: u64 = words.next().context("go without end")?.parse()?;
    tokio::time::sleep(Duration::from_nanos(start.saturating_sub(now_ns()))).await;

    let config = Arc::new(config);
    let file = EventFile::create(&config.events)?;
    let done = Arc::new(AtomicU64::new(0));
    let (runs, mut recorded) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let recorder = {
        let mut sink = file.sink();
        tokio::spawn(async move {
            while let Some(event) = recorded.recv().await {
                sink.push(&event).await;
            }
            sink.flush().await;
        })
    };
    let mut tasks = Vec::new();
    for task in 0..config.tasks {
        let (cache, config, done, runs) = (cache.clone(), Arc::clone(&config), Arc::clone(&done), runs.clone());
        tasks.push(tokio::spawn(client_task(cache, config, task, end, done, file.sink(), runs)));
    }
    drop(runs);
    // With `--ops` there is no end time: the probe runs until this process's client tasks are done.
    let (stop_probe, stopped) = tokio::sync::watch::channel(false);
    let mut probe = None;
    if !config.probe_interval.is_zero() && config.processes > 1 {
        probe = Some(if config.index == 0 {
            tokio::spawn(probe_writer(cache.clone(), config.probe_interval, end, stopped, file.sink()))
        } else {
            tokio::spawn(probe_reader(cache.clone(), config.index, end, stopped, file.sink()))
        });
    }
    let reporter = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut out = tokio::io::stdout();
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let line = format!("progress {}\n", done.load(Ordering::Relaxed));
                if out.write_all(line.as_bytes()).await.is_err() || out.flush().await.is_err() {
                    break;
                }
            }
        })
    };
    for task in tasks {
        task.await?;
    }
    // A timed run's probe goes on to the end (with `--tasks 0` it is the whole run: `bench` measures
    // propagation that way); only an `--ops` run, which has no end time, stops it with its tasks.
    if end == u64::MAX {
        let _ = stop_probe.send(true);
    }
    if let Some(probe) = probe {
        probe.await?;
    }
    reporter.abort();
    let status = cache.status();
    // Background refreshes still running hold the last senders; they finish within their loader's run.
    cache.close().await;
    if tokio::time::timeout(Duration::from_secs(10), recorder).await.is_err() {
        eprintln!("worker {}: background loader runs did not finish in 10 s", config.index);
    }
    file.finish(&config.events).await?;
    let peak_kb = peak_rss_kb().unwrap_or(0);
    let (replica, primary) = (status.replica_reads, status.replica_fallbacks);
    stdout
        .write_all(format!("done {} {peak_kb} {replica} {primary}\n", done.load(Ordering::Relaxed)).as_bytes())
        .await?;
    stdout.flush().await?;
    Ok(())
}

/// This process's peak resident set size in KiB (`VmHWM` of `/proc/self/status`; `None` off Linux).
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Picks operations from the mix until the op quota or the end time, recording one event each.
async fn client_task(
    cache: ShardedCache,
    config: Arc<WorkerConfig>,
    task: u32,
    end: u64,
    done: Arc<AtomicU64>,
    mut sink: EventSink,
    runs: LoaderRuns,
) {
    let writer = config.index * 65_536 + task + 1;
    let mut rng = SmallRng::seed_from_u64(config.seed ^ (u64::from(writer) << 20));
    // Zipf ranks start at 1; an exponent of 0 is uniform.
    let zipf = Zipf::new(config.keys, config.zipf.max(1e-9)).ok();
    let total: u32 = config.mix.iter().sum();
    let ttl = Ttl::from(config.ttl);
    let mut seq = 0u64;
    let mut errors = 0u64;
    let mut ops = 0u64;
    loop {
        match config.ops_per_task {
            Some(quota) if ops >= quota => break,
            None if now_ns() >= end => break,
            _ => {}
        }
        ops += 1;
        let key = match &zipf {
            Some(z) => (z.sample(&mut rng) as u64).clamp(1, config.keys) - 1,
            None => rng.gen_range(0..config.keys),
        };
        let name = key_name(key);
        let mut pick = rng.gen_range(0..total.max(1));
        let op = [Op::Get, Op::GetOrSet, Op::Set, Op::Delete]
            .into_iter()
            .zip(config.mix)
            .find(|(_, weight)| {
                let hit = pick < *weight;
                pick = pick.saturating_sub(*weight);
                hit
            })
            .map_or(Op::Get, |(op, _)| op);
        let start = now_ns();
        let event = match op {
            Op::Get => match cache.get_entry(&name).await {
                Ok(entry) => {
                    let seen = entry.map(|e| seen_id(key, &e.value));
                    Event::Read { key, start, end: now_ns(), seen }
                }
                Err(_) => Event::Error { op, start, end: now_ns() },
            },
            Op::GetOrSet => {
                seq += 1;
                let id = (writer, seq);
                let value = Bytes::from(encode_value(key, id, start, config.value_size));
                let fails = config.fill.failing_loaders > 0 && rng.gen_range(0..100) < config.fill.failing_loaders;
                let (options, runs) = (config.fill.options(ttl), runs.clone());
                let loader = move || async move {
                    let begun = now_ns();
                    let _ = runs.send(Event::LoaderRun { key, id, start: begun, end: now_ns(), ok: !fails });
                    if fails {
                        return Err(std::io::Error::other("loader failed on purpose"));
                    }
                    Ok(Fill { value, options, output: () })
                };
                match cache.get_or_load(&name, loader).await {
                    Ok(loaded) => {
                        let via = match loaded.source {
                            Source::Local => Via::Local,
                            Source::Shared => Via::Shared,
                            Source::Loaded => Via::Loaded,
                            Source::Stale => Via::Stale,
                            _ => Via::Collapsed,
                        };
                        let seen = seen_id(key, &loaded.value);
                        Event::GetOrSet { key, start, end: now_ns(), seen, via, stored: loaded.stored }
                    }
                    Err(_) => Event::Error { op, start, end: now_ns() },
                }
            }
            Op::Set => {
                seq += 1;
                let id = (writer, seq);
                let value = Bytes::from(encode_value(key, id, start, config.value_size));
                match cache.set_entry(&name, value, &SetOptions::ttl(ttl)).await {
                    Ok(_) => Event::Write { key, id, start, end: now_ns() },
                    Err(_) => Event::Error { op, start, end: now_ns() },
                }
            }
            Op::Delete => {
                seq += 1;
                match cache.delete(&name).await {
                    Ok(_) => Event::Delete { key, id: (writer, seq), start, end: now_ns() },
                    Err(_) => Event::Error { op, start, end: now_ns() },
                }
            }
        };
        if let Event::Error { op, .. } = &event {
            errors += 1;
            if errors <= 3 {
                eprintln!("worker {} task {task}: {} failed", config.index, op.name());
            }
        }
        sink.push(&event).await;
        done.fetch_add(1, Ordering::Relaxed);
    }
    sink.flush().await;
}

/// The write a value came from; an undecodable value or one of another key maps to an id nobody wrote.
fn seen_id(key: u64, value: &[u8]) -> WriteId {
    match decode_value(value) {
        Some((k, id)) if k == key => id,
        _ => (u32::MAX, u64::MAX),
    }
}

/// Process 0 writes the probe key every `interval`, until `end` or until `stop` turns true.
async fn probe_writer(cache: ShardedCache, interval: Duration, end: u64, mut stop: Stop, mut sink: EventSink) {
    let mut seq = 0;
    while now_ns() < end && !*stop.borrow() {
        seq += 1;
        let start = now_ns();
        let value = Bytes::from(format!("{seq}"));
        if cache.set_entry(PROBE_KEY, value, &SetOptions::ttl(Ttl::Never)).await.is_ok() {
            sink.push(&Event::ProbeWrite { seq, start, end: now_ns() }).await;
        }
        pause(interval, &mut stop).await;
    }
    sink.flush().await;
}

/// The other processes poll the probe key (an L1 hit until the invalidation evicts it), until `end` or `stop`.
async fn probe_reader(cache: ShardedCache, process: u32, end: u64, mut stop: Stop, mut sink: EventSink) {
    let mut last = 0u64;
    while now_ns() < end && !*stop.borrow() {
        if let Ok(Some(entry)) = cache.get_entry(PROBE_KEY).await {
            let seq = std::str::from_utf8(&entry.value).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            if seq > last {
                last = seq;
                sink.push(&Event::ProbeSeen { process, seq, at: now_ns() }).await;
            }
        }
        pause(PROBE_POLL, &mut stop).await;
    }
    sink.flush().await;
}

/// Turns true when the probe must stop (its process's client tasks are done).
type Stop = tokio::sync::watch::Receiver<bool>;

/// Sleeps for `period`, or less if `stop` changes meanwhile.
async fn pause(period: Duration, stop: &mut Stop) {
    tokio::select! {
        () = tokio::time::sleep(period) => {}
        _ = stop.changed() => {}
    }
}
