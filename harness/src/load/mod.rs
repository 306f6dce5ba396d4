//! `load`: the coordinator. It prepares one shared table, starts N worker processes (this binary's hidden
//! `worker` command), starts them together, shows progress, then reads every process's events, checks
//! them for consistency, and reports latency per operation and per path.

pub(crate) mod check;
pub(crate) mod events;
pub(crate) mod faults;
pub(crate) mod worker;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use pgcache_core::{CacheSettings, PostgresCache};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::cli::LoadArgs;
use crate::stats::{fmt_us, Latency, Summary};
use events::{now_ns, Event, Op, Via};
use worker::WorkerConfig;

const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// What `load` found; the command exits non-zero when `violations > 0`.
pub(crate) struct Outcome {
    pub(crate) violations: u64,
    pub(crate) report: LoadReport,
}

/// The JSON results file (`results.json`).
#[derive(Debug, serde::Serialize)]
pub(crate) struct LoadReport {
    pub(crate) config: serde_json::Value,
    pub(crate) wall_seconds: f64,
    pub(crate) ops_total: u64,
    pub(crate) throughput_ops_per_s: f64,
    /// Latency per operation.
    pub(crate) ops: BTreeMap<&'static str, Summary>,
    /// Latency per path: get_hit, get_miss, l1_hit, l2_hit, collapsed, miss_load, set, delete.
    pub(crate) paths: BTreeMap<&'static str, Summary>,
    /// Share of `get_or_set` calls answered from the local cache.
    pub(crate) l1_hit_ratio: f64,
    /// Share of `get` calls that found a value.
    pub(crate) get_hit_ratio: f64,
    pub(crate) invalidation: Invalidation,
    pub(crate) errors: BTreeMap<&'static str, u64>,
    pub(crate) check: check::Outcome,
    /// Peak resident set size of each worker process, in KiB (0 where unknown).
    pub(crate) worker_peak_rss_kb: Vec<u64>,
    /// With `--read-dsn`: `get`'s shared-table reads a replica answered.
    pub(crate) replica_reads: u64,
    /// With `--read-dsn`: `get`'s shared-table reads sent to the primary instead.
    pub(crate) replica_fallbacks: u64,
}

/// Invalidation propagation: probe write acknowledged on process 0 to the new value seen on another process.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Invalidation {
    pub(crate) probe_writes: u64,
    pub(crate) samples: u64,
    /// Probe writes some process never saw change (it saw a later one first, or the run ended).
    pub(crate) unseen: u64,
    pub(crate) delay: Summary,
}

/// Runs `load` without printing the report (for `bench`); fails on any consistency violation.
pub(crate) async fn run_quiet(args: &LoadArgs) -> anyhow::Result<LoadReport> {
    let args = LoadArgs { quiet_report: true, ..args.clone() };
    let outcome = run(&args).await?;
    anyhow::ensure!(outcome.violations == 0, "the load run found {} consistency violations", outcome.violations);
    Ok(outcome.report)
}

/// Runs `load` with `args`; prints the report and writes `results.json` and the charts (PNG and SVG:
/// latency, throughput, invalidation lag, L1 hit ratio) to `--out`.
pub(crate) async fn run(args: &LoadArgs) -> anyhow::Result<Outcome> {
    tokio::fs::create_dir_all(&args.out).await.with_context(|| format!("creating {}", args.out.display()))?;
    let run_id = format!("{:x}", now_ns() % 0xff_ffff);
    let settings = CacheSettings::new(&args.db.dsn)
        .schema_prefix(format!("harness_{run_id}_"))
        .notify_channel(format!("harness_{run_id}"))
        .unlogged(args.db.unlogged)
        .disable_notify(args.disable_notify)
        .local_ttl(args.local_ttl)
        .local_max_entries(if args.no_local { 0 } else { args.keys.max(10_000) })
        .local_max_bytes(if args.no_local { 0 } else { 256 * 1024 * 1024 })
        .max_pool_size(usize::try_from(args.pool_size).unwrap_or(16))
        .min_pool_size(1)
        .application_name(format!("harness_{run_id}"))
        .fail_open(!args.faults)
        .loader_soft_timeout(args.loader_soft_timeout);
    let settings = args.db.apply(settings);
    let shards = worker::shard_settings(&settings);
    anyhow::ensure!(shards.len() == 1 || args.prefill == 0, "--prefill writes to --dsn only: not with --shard");
    anyhow::ensure!(shards.len() == 1 || !args.faults, "--faults targets --dsn only: not with --shard");
    for shard in &shards {
        PostgresCache::init_db(shard)
            .await
            .with_context(|| format!("init_db on {} (is PostgreSQL running?)", shard.dsn))?;
    }
    let result = run_with_table(args, &settings, &run_id).await;
    if let (Ok(outcome), false) = (&result, args.quiet_report) {
        if shards.len() > 1 || !settings.read_dsns.is_empty() {
            print_topology(&shards, &outcome.report).await;
        }
    }
    if !args.keep {
        for shard in &shards {
            if let Err(e) = drop_table(shard).await {
                eprintln!("warning: could not drop the run's table on {}: {e:#}", shard.dsn);
            }
        }
    }
    result
}

async fn run_with_table(args: &LoadArgs, settings: &CacheSettings, run_id: &str) -> anyhow::Result<Outcome> {
    if args.prefill > 0 {
        let started = Instant::now();
        prefill(settings, args.prefill, args.value_size).await?;
        eprintln!("prefilled {} rows in {:.1}s", args.prefill, started.elapsed().as_secs_f64());
    }
    let duration = if args.ops.is_some() { None } else { Some(args.duration.unwrap_or(DEFAULT_DURATION)) };
    let workers = u64::from(args.processes) * u64::from(args.tasks.max(1));
    let ops_per_task = args.ops.map(|ops| ops.div_ceil(workers));
    let exe = std::env::current_exe().context("cannot find this executable to start workers")?;
    let mut children = Vec::new();
    let mut event_files = Vec::new();
    for index in 0..args.processes {
        let events = args.out.join(format!("events-{run_id}-{index}.log"));
        event_files.push(events.clone());
        let config = WorkerConfig {
            index,
            processes: args.processes,
            tasks: args.tasks,
            settings: settings.clone(),
            keys: args.keys,
            zipf: args.zipf,
            value_size: usize::try_from(args.value_size).unwrap_or(usize::MAX),
            mix: [args.reads, args.get_or_set, args.writes, args.deletes],
            ttl: args.ttl.0,
            fill: worker::FillPlan {
                stale_for: args.stale_for,
                refresh_after: args.refresh_after,
                early_refresh: args.early_refresh,
                failing_loaders: args.failing_loaders,
            },
            ops_per_task,
            probe_interval: args.probe_interval,
            events,
            seed: args.seed,
        };
        let child = Command::new(&exe)
            .arg("worker")
            .arg("--config")
            .arg(serde_json::to_string(&config)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting worker {index} ({})", exe.display()))?;
        children.push(child);
    }
    let mut lines = Vec::new();
    for (index, child) in children.iter_mut().enumerate() {
        let stdout = child.stdout.take().context("worker stdout")?;
        let mut reader = BufReader::new(stdout).lines();
        match tokio::time::timeout(Duration::from_secs(30), reader.next_line()).await {
            Ok(Ok(Some(line))) if line == "ready" => lines.push(reader),
            other => bail!("worker {index} did not become ready: {other:?} (see its error above)"),
        }
    }
    // Start everyone together, a little in the future so the `go` lines arrive first.
    let start = now_ns() + 50_000_000;
    let end = duration.map_or(u64::MAX, |d| start + u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    for child in &mut children {
        let mut stdin = child.stdin.take().context("worker stdin")?;
        stdin.write_all(format!("go {start} {end}\n").as_bytes()).await?;
        stdin.flush().await?;
    }
    let bar = progress_bar(args, duration);
    let progress =
        std::sync::Arc::new((0..args.processes).map(|_| std::sync::atomic::AtomicU64::new(0)).collect::<Vec<_>>());
    let mut readers = Vec::new();
    for (index, mut reader) in lines.into_iter().enumerate() {
        let progress = std::sync::Arc::clone(&progress);
        readers.push(tokio::spawn(async move {
            // `Some(peak RSS in KiB)` once the worker said `done` (then its replica and primary reads).
            let mut finished = None;
            let mut reads = (0u64, 0u64);
            while let Ok(Some(line)) = reader.next_line().await {
                let (kind, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                let mut words = rest.split_whitespace();
                if kind == "progress" || kind == "done" {
                    if let (Some(slot), Some(Ok(n))) = (progress.get(index), words.next().map(str::parse)) {
                        slot.store(n, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                if kind == "done" {
                    let mut number = || words.next().and_then(|w| w.parse::<u64>().ok()).unwrap_or(0);
                    finished = Some(number());
                    reads = (number(), number());
                }
            }
            finished.map(|peak| (peak, reads))
        }));
    }
    let ticker = {
        let bar = bar.clone();
        let progress = std::sync::Arc::clone(&progress);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let ops: u64 = progress.iter().map(|p| p.load(std::sync::atomic::Ordering::Relaxed)).sum();
                match duration {
                    Some(_) => bar.set_position(now_ns().saturating_sub(start) / 1_000_000),
                    None => bar.set_position(ops),
                }
                bar.set_message(format!("{ops} ops"));
            }
        })
    };
    let (stop_faults, faults_stopped) = tokio::sync::watch::channel(false);
    let injector = args.faults.then(|| {
        let restart = args.restart_cmd.clone().or_else(|| std::env::var("PGCACHE_PG_RESTART").ok());
        if restart.is_none() {
            eprintln!("--faults without --restart-cmd (or PGCACHE_PG_RESTART): no server restart is injected");
        }
        let app = settings.application_name.clone();
        tokio::spawn(faults::inject(settings.dsn.clone(), app, args.fault_interval, restart, faults_stopped))
    });
    let mut failed = Vec::new();
    let mut worker_peak_rss_kb = Vec::new();
    // Shared-table reads of `get` answered by a replica, and sent to the primary instead.
    let mut replica_reads = (0u64, 0u64);
    for (index, (child, reader)) in children.iter_mut().zip(readers).enumerate() {
        let finished = reader.await.ok().flatten();
        let status = child.wait().await?;
        match finished {
            Some((peak, (replica, primary))) if status.success() => {
                worker_peak_rss_kb.push(peak);
                replica_reads.0 += replica;
                replica_reads.1 += primary;
            }
            _ => failed.push(format!("worker {index} exited with {status}")),
        }
    }
    let wall = now_ns().saturating_sub(start);
    let _ = stop_faults.send(true);
    let injected = match injector {
        Some(task) => Some(task.await.context("the fault injector failed")?),
        None => None,
    };
    if let Some(injected) = &injected {
        eprintln!("faults injected: {injected:?}");
    }
    ticker.abort();
    bar.finish_and_clear();
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }

    let bound = args.staleness_bound.unwrap_or(if args.disable_notify || args.no_local {
        args.local_ttl + Duration::from_secs(1)
    } else {
        Duration::from_secs(1)
    });
    let params = check::Params {
        bound: nanos(bound),
        ttl: args.ttl.0.map(nanos),
        stale: args.stale_for.map(nanos),
        prefill: args.prefill,
        slack: 20_000_000,
        origin: start,
    };
    // The events stream from the files, one line at a time: into the analysis and the per-key counts, then
    // into the checker, a range of keys at a time.
    let mut analysis = Analysis::default();
    let mut counts = check::KeyCounts::default();
    let mut timeline = crate::charts::Timeline::new(start);
    for path in &event_files {
        events::read_file(path, |event| {
            analysis.add(event);
            counts.add(event);
            timeline.add(event);
        })?;
    }
    let scratch = args.out.join(format!("check-{run_id}"));
    let checked = check::check_files(&event_files, &counts, params, &scratch, args.check_budget);
    if !args.keep {
        for path in &event_files {
            let _ = tokio::fs::remove_file(path).await;
        }
    }
    let checked = checked?;
    let config = serde_json::json!({
        "processes": args.processes, "tasks": args.tasks, "duration_s": duration.map(|d| d.as_secs_f64()),
        "ops": args.ops, "keys": args.keys, "zipf": args.zipf, "value_size": args.value_size,
        "mix": {"get": args.reads, "get_or_set": args.get_or_set, "set": args.writes, "delete": args.deletes},
        "ttl_s": args.ttl.0.map(|d| d.as_secs_f64()), "local_ttl_s": args.local_ttl.as_secs_f64(),
        "staleness_bound_s": bound.as_secs_f64(), "pool_size": args.pool_size,
        "disable_notify": args.disable_notify, "no_local": args.no_local, "unlogged": args.db.unlogged,
        "stale_for_s": args.stale_for.map(|d| d.as_secs_f64()), "refresh_after_s": args.refresh_after.map(|d| d.as_secs_f64()),
        "early_refresh": args.early_refresh, "failing_loaders_pct": args.failing_loaders,
        "loader_soft_timeout_s": args.loader_soft_timeout.map(|d| d.as_secs_f64()),
        "prefill": args.prefill, "check_budget": args.check_budget, "faults": injected, "machine_cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
    });
    let params = chart_params(&config);
    let (mut report, _) = analysis.finish(config, wall, checked);
    report.worker_peak_rss_kb = worker_peak_rss_kb;
    report.replica_reads = replica_reads.0;
    report.replica_fallbacks = replica_reads.1;
    if !args.quiet_report {
        print_report(&report, &args.out);
    }
    let json = serde_json::to_string_pretty(&report)?;
    tokio::fs::write(args.out.join("results.json"), json).await?;
    for chart in crate::charts::write(&args.out, &params, &timeline)? {
        println!("chart: {}", chart.display());
    }
    if !args.quiet_report {
        println!("{}", verdict(&report));
    }
    Ok(Outcome { violations: report.check.violations_total, report })
}

/// The run's parameters, for the charts' captions.
fn chart_params(config: &serde_json::Value) -> String {
    let c = |name: &str| config.get(name).map_or_else(|| "-".to_owned(), ToString::to_string);
    let mix = &config["mix"];
    format!(
        "{} procs x {} tasks, {} keys, {} B values, mix get/gos/set/del {}/{}/{}/{}, local_ttl {} s{}{}",
        c("processes"),
        c("tasks"),
        c("keys"),
        c("value_size"),
        mix["get"],
        mix["get_or_set"],
        mix["set"],
        mix["delete"],
        c("local_ttl_s"),
        if config["disable_notify"] == true { ", notify off" } else { "" },
        if config["unlogged"] == true { ", unlogged" } else { "" },
    )
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn progress_bar(args: &LoadArgs, duration: Option<Duration>) -> ProgressBar {
    if args.quiet {
        return ProgressBar::hidden();
    }
    let (len, template) = match (duration, args.ops) {
        (Some(d), _) => (nanos(d) / 1_000_000, "{spinner} [{elapsed_precise}] {wide_bar} {percent}% {msg}"),
        (None, Some(ops)) => (ops, "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ops"),
        (None, None) => (0, "{spinner} {msg}"),
    };
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// The report's figures, gathered one event at a time (bounded by the number of probe writes, not of
/// operations).
#[derive(Default)]
struct Analysis {
    ops: BTreeMap<&'static str, Latency>,
    paths: BTreeMap<&'static str, Latency>,
    errors: BTreeMap<&'static str, u64>,
    gets: u64,
    get_hits: u64,
    gos: u64,
    gos_local: u64,
    probe_writes: BTreeMap<u64, u64>,
    seen: Vec<(u32, u64, u64)>,
}

impl Analysis {
    fn add(&mut self, event: &Event) {
        let (ops, paths) = (&mut self.ops, &mut self.paths);
        let mut record = |op: Op, path: &'static str, start: u64, end: u64| {
            ops.entry(op.name()).or_default().record(end.saturating_sub(start));
            paths.entry(path).or_default().record(end.saturating_sub(start));
        };
        match *event {
            Event::Read { start, end, seen, .. } => {
                self.gets += 1;
                self.get_hits += u64::from(seen.is_some());
                record(Op::Get, if seen.is_some() { "get_hit" } else { "get_miss" }, start, end);
            }
            Event::GetOrSet { start, end, via, .. } => {
                self.gos += 1;
                self.gos_local += u64::from(via == Via::Local);
                let path = match via {
                    Via::Local => "l1_hit",
                    Via::Shared => "l2_hit",
                    Via::Collapsed => "collapsed",
                    Via::Loaded => "miss_load",
                    Via::Stale => "stale",
                };
                record(Op::GetOrSet, path, start, end);
            }
            Event::Write { start, end, .. } => record(Op::Set, "set", start, end),
            Event::Delete { start, end, .. } => record(Op::Delete, "delete", start, end),
            Event::Error { op, .. } => *self.errors.entry(op.name()).or_default() += 1,
            Event::ProbeWrite { seq, end, .. } => {
                self.probe_writes.insert(seq, end);
            }
            Event::ProbeSeen { process, seq, at } => self.seen.push((process, seq, at)),
            Event::LoaderRun { .. } => {}
        }
    }

    /// Builds the report; also returns the per-path histograms for the chart.
    fn finish(
        self,
        config: serde_json::Value,
        wall_ns: u64,
        check: check::Outcome,
    ) -> (LoadReport, Vec<(String, Latency)>) {
        let Self { ops, paths, errors, gets, get_hits, gos, gos_local, probe_writes, seen } = self;
        let mut delay = Latency::new();
        let readers: std::collections::BTreeSet<u32> = seen.iter().map(|(p, _, _)| *p).collect();
        for &(_, seq, at) in &seen {
            if let Some(&acked) = probe_writes.get(&seq) {
                // Seen before the writer got its acknowledgement: count as 0 (the commit preceded both).
                delay.record(at.saturating_sub(acked));
            }
        }
        let expected = probe_writes.len() as u64 * readers.len() as u64;
        let total: u64 = ops.values().map(Latency::len).sum::<u64>() + errors.values().sum::<u64>();
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let chart: Vec<(String, Latency)> = paths.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        let report = LoadReport {
            config,
            wall_seconds: wall_ns as f64 / 1e9,
            ops_total: total,
            throughput_ops_per_s: ratio(total, wall_ns) * 1e9,
            ops: ops.iter().map(|(k, v)| (*k, v.summary())).collect(),
            paths: paths.iter().map(|(k, v)| (*k, v.summary())).collect(),
            l1_hit_ratio: ratio(gos_local, gos),
            get_hit_ratio: ratio(get_hits, gets),
            invalidation: Invalidation {
                probe_writes: probe_writes.len() as u64,
                samples: delay.len(),
                unseen: expected.saturating_sub(delay.len()),
                delay: delay.summary(),
            },
            errors,
            check,
            worker_peak_rss_kb: Vec::new(),
            replica_reads: 0,
            replica_fallbacks: 0,
        };
        (report, chart)
    }
}

fn print_report(r: &LoadReport, out: &Path) {
    println!("ran: {}", chart_params(&r.config));
    println!(
        "ops: {} in {:.2}s = {:.0} ops/s   L1 hit ratio (get_or_set): {:.1}%   get hit ratio: {:.1}%",
        r.ops_total,
        r.wall_seconds,
        r.throughput_ops_per_s,
        r.l1_hit_ratio * 100.0,
        r.get_hit_ratio * 100.0
    );
    println!(
        "{:<22} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "op / path", "count", "mean", "p50", "p95", "p99", "max"
    );
    let row = |name: &str, s: &Summary| {
        println!(
            "{:<22} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
            name,
            s.count,
            fmt_us(s.mean_us),
            fmt_us(s.p50_us),
            fmt_us(s.p95_us),
            fmt_us(s.p99_us),
            fmt_us(s.max_us)
        );
    };
    for (name, s) in &r.ops {
        row(name, s);
    }
    for (name, s) in &r.paths {
        row(&format!("  path {name}"), s);
    }
    let inv = &r.invalidation;
    if inv.samples > 0 {
        row("invalidation delay", &inv.delay);
    }
    println!(
        "probe writes: {}, sightings: {}, unseen: {}   loader runs: {} on {} keys, duplicate loads: {}, background loads: {}, stale answers: {}   errors: {:?}",
        inv.probe_writes,
        inv.samples,
        inv.unseen,
        r.check.loader_runs,
        r.check.keys_loaded,
        r.check.duplicate_loads,
        r.check.background_loads,
        r.check.stale_answers,
        r.errors
    );
    println!(
        "reads checked: {}, violations: {}   worker peak RSS (KiB): {:?}",
        r.check.reads_checked, r.check.violations_total, r.worker_peak_rss_kb
    );
    for v in &r.check.violations {
        println!("VIOLATION [{}] key k:{}: {}", v.kind, v.key, v.detail);
        for line in &v.timeline {
            println!("    {line}");
        }
    }
    println!("results: {}", out.join("results.json").display());
}

/// The summary's last line: the consistency check's verdict.
fn verdict(r: &LoadReport) -> String {
    match r.check.violations_total {
        0 => format!("PASS: consistency check, {} reads checked, 0 violations", r.check.reads_checked),
        n => format!("FAIL: consistency check, {} reads checked, {n} violations", r.check.reads_checked),
    }
}

/// Inserts `rows` rows `k:0..` in one statement, as write (0, 0) without TTL.
async fn prefill(settings: &CacheSettings, rows: u64, value_size: u64) -> anyhow::Result<()> {
    let client = connect_raw(&settings.dsn).await?;
    let table = format!("\"{}cache_entries\"", settings.schema_prefix);
    let rows = i64::try_from(rows)?;
    let size = i32::try_from(value_size)?;
    // The same header as events::encode_value, padded with '.'.
    let sql = format!(
        "INSERT INTO {table} (key, value) SELECT 'k:' || i, \
         convert_to(rpad('k:' || i || '|0|0|0|', greatest($2::int, length('k:' || i || '|0|0|0|')), '.'), 'UTF8') \
         FROM generate_series(0, $1::bigint - 1) AS i"
    );
    client.execute(&sql, &[&rows, &size]).await.context("prefill")?;
    client.execute(&format!("ANALYZE {table}"), &[]).await?;
    Ok(())
}

/// Prints each primary's share of the run's table traffic (rows written, index scans), from the
/// server's own statistics (`pg_stat_user_tables`, flushed when the workers' sessions ended).
async fn print_topology(shards: &[CacheSettings], report: &LoadReport) {
    let mut rows = Vec::new();
    for shard in shards {
        let table = format!("{}cache_entries", shard.schema_prefix);
        let sql = "SELECT COALESCE(n_tup_ins + n_tup_upd + n_tup_del, 0), COALESCE(idx_scan, 0) \
                   FROM pg_stat_user_tables WHERE relname = $1";
        let load = async {
            let client = connect_raw(&shard.dsn).await?;
            let row = client.query_one(sql, &[&table]).await?;
            anyhow::Ok((row.try_get::<_, i64>(0)?, row.try_get::<_, i64>(1)?))
        };
        match load.await {
            Ok(load) => rows.push((shard.dsn.clone(), load)),
            Err(e) => eprintln!("warning: no statistics from {}: {e:#}", shard.dsn),
        }
    }
    let writes: i64 = rows.iter().map(|(_, (w, _))| w).sum();
    let scans: i64 = rows.iter().map(|(_, (_, s))| s).sum();
    let share = |part: i64, all: i64| if all > 0 { 100.0 * part as f64 / all as f64 } else { 0.0 };
    let (replica, primary) = (report.replica_reads, report.replica_fallbacks);
    if replica + primary > 0 {
        let all = i64::try_from(replica + primary).unwrap_or(i64::MAX);
        println!(
            "get's shared-table reads: replica {replica} ({:.1} %), primary {primary} ({:.1} %)",
            share(i64::try_from(replica).unwrap_or(i64::MAX), all),
            share(i64::try_from(primary).unwrap_or(i64::MAX), all)
        );
    }
    for (dsn, (w, s)) in &rows {
        println!(
            "shard {}: {w} rows written ({:.1} %), {s} index scans ({:.1} %)",
            server_label(dsn),
            share(*w, writes),
            share(*s, scans)
        );
    }
}

/// `host:port` of a DSN, never its credentials.
fn server_label(dsn: &str) -> String {
    let Ok(config) = dsn.parse::<tokio_postgres::Config>() else { return "(unparsable DSN)".to_owned() };
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(name)) => name.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    format!("{host}:{}", config.get_ports().first().copied().unwrap_or(5432))
}

/// A plain tokio-postgres connection (for setup, teardown and the raw baselines).
pub(crate) async fn connect_raw(dsn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) =
        tokio_postgres::connect(dsn, tokio_postgres::NoTls).await.with_context(|| "connecting to PostgreSQL")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Drops everything `init_db` created for this run's prefix.
pub(crate) async fn drop_table(settings: &CacheSettings) -> anyhow::Result<()> {
    let client = connect_raw(&settings.dsn).await?;
    let p = &settings.schema_prefix;
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS \"{p}cache_entries\", \"{p}cache_schema\", \"{p}cache_incarnation\", \"{p}cache_invalidations\", \
             \"{p}cache_changes\", \"{p}cache_pollers\", \"{p}cache_leases\" CASCADE; \
             DROP SEQUENCE IF EXISTS \"{p}cache_version_seq\"; \
             DROP FUNCTION IF EXISTS \"{p}cache_notify\"() CASCADE; \
             DROP FUNCTION IF EXISTS \"{p}cache_wake_flusher\"() CASCADE; \
             DROP FUNCTION IF EXISTS \"{p}cache_bump_version\"() CASCADE;"
        ))
        .await?;
    Ok(())
}
