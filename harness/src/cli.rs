//! Command-line interface: the subcommands, their options, and their validation.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

/// Load harness and benchmarks for pgcache (PostgreSQL as a coherent distributed cache).
#[derive(Debug, Parser)]
#[command(name = "pgcache-harness", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Multi-process mixed workload with a read-consistency check (exits 1 on any violation).
    Load(LoadArgs),
    /// The original Python library's benchmark: writers and readers against four backends.
    Compare(crate::compare::CompareArgs),
    /// pgcache next to raw moka, raw tokio-postgres and Redis, measured in one run, as ratios.
    Bench(crate::bench::BenchArgs),
    /// Internal: one worker process of `load` (started by the coordinator).
    #[command(hide = true)]
    Worker {
        /// The worker's configuration, as JSON.
        #[arg(long)]
        config: String,
    },
}

/// Options shared by every command that talks to PostgreSQL.
#[derive(Debug, Clone, Args)]
pub(crate) struct DbArgs {
    /// PostgreSQL DSN (postgresql://user@host:port/db).
    #[arg(long, env = "PGCACHE_DSN", hide_env_values = true)]
    pub(crate) dsn: String,
    /// Create the cache table UNLOGGED (faster writes; emptied after a crash).
    #[arg(long)]
    pub(crate) unlogged: bool,
    /// Direct DSN for the listener, locks and schema work when --dsn goes through a transaction pooler.
    #[arg(long, hide_env_values = true)]
    pub(crate) listen_dsn: Option<String>,
    /// Send unnamed, typed statements instead of server-side prepared ones (for PgBouncer < 1.21).
    #[arg(long)]
    pub(crate) no_prepared_statements: bool,
    /// `load`: shard the cache over these primaries (repeat, or separate with commas); the cache then
    /// ignores `--dsn`. `scripts/with-topology` exports them as PGCACHE_SHARD_DSNS.
    #[arg(long = "shard", value_delimiter = ',')]
    pub(crate) shards: Vec<String>,
    /// `load`: read replicas (repeat, or separate with commas) of the first primary (`--dsn`, or the
    /// first `--shard`): `get`'s shared-table reads go there, fenced.
    #[arg(long = "read-dsn", value_delimiter = ',')]
    pub(crate) read_dsns: Vec<String>,
}

impl DbArgs {
    /// `settings` with this topology's connection options.
    pub(crate) fn apply(&self, settings: pgcache_core::CacheSettings) -> pgcache_core::CacheSettings {
        let settings = settings
            .prepared_statements(!self.no_prepared_statements)
            .shard_dsns(self.shards.iter().cloned())
            .read_dsns(self.read_dsns.iter().cloned());
        match &self.listen_dsn {
            Some(direct) => settings.listen_dsn(direct.clone()),
            None => settings,
        }
    }
}

/// Options of `load`.
#[derive(Debug, Clone, Args)]
pub(crate) struct LoadArgs {
    #[command(flatten)]
    pub(crate) db: DbArgs,
    /// Worker OS processes.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) processes: u32,
    /// Client tasks per process.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub(crate) tasks: u32,
    /// How long to run (e.g. 10s, 500ms, 2m). Default 10s unless --ops is given.
    #[arg(long, value_parser = parse_duration, conflicts_with = "ops")]
    pub(crate) duration: Option<Duration>,
    /// Total operations over all processes and tasks, instead of --duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) ops: Option<u64>,
    /// Number of distinct keys (k:0 .. k:N-1), read with a Zipf distribution.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub(crate) keys: u64,
    /// Zipf exponent of the key distribution (0 = uniform).
    #[arg(long, default_value_t = 1.0, value_parser = parse_zipf)]
    pub(crate) zipf: f64,
    /// Value size in bytes (at least the ~40-byte header that carries key, writer, sequence and time).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub(crate) value_size: u64,
    /// Weight of plain reads (`get`) in the mix.
    #[arg(long, default_value_t = 60)]
    pub(crate) reads: u32,
    /// Weight of `get_or_set` with a counting loader in the mix.
    #[arg(long, default_value_t = 25)]
    pub(crate) get_or_set: u32,
    /// Weight of writes (`set`) in the mix.
    #[arg(long, default_value_t = 10)]
    pub(crate) writes: u32,
    /// Weight of deletes in the mix.
    #[arg(long, default_value_t = 5)]
    pub(crate) deletes: u32,
    /// TTL of every write and fill (e.g. 5s); `never` for none.
    #[arg(long, default_value = "5s", value_parser = parse_ttl)]
    pub(crate) ttl: TtlArg,
    /// Fail-safe window of every `get_or_set` fill (`SetOptions::stale_for`): past its TTL, a failing or
    /// slow loader is answered with the stale value (checked: never past the window, never before expiry).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) stale_for: Option<Duration>,
    /// Deterministic early refresh of every fill (`SetOptions::refresh_after`): hits start one background
    /// refresh per key across the cluster (checked: loader runs of a key never overlap).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) refresh_after: Option<Duration>,
    /// Probabilistic early refresh (XFetch) of every fill (`SetOptions::early_refresh`).
    #[arg(long)]
    pub(crate) early_refresh: bool,
    /// Percentage of loader runs that fail (exercises the fail-safe path with --stale-for).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub(crate) failing_loaders: u32,
    /// `loader_soft_timeout` of every process (fail-safe answers while a slow loader goes on).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) loader_soft_timeout: Option<Duration>,
    /// Local (L1) TTL of each process's cache.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) local_ttl: Duration,
    /// Staleness bound checked on reads. Default: 1s with notifications, local TTL + 1s without.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) staleness_bound: Option<Duration>,
    /// Connection pool size per process.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub(crate) pool_size: u64,
    /// Disable LISTEN/NOTIFY (L1 TTL is then the only staleness bound).
    #[arg(long)]
    pub(crate) disable_notify: bool,
    /// Disable the local cache (every read goes to PostgreSQL).
    #[arg(long)]
    pub(crate) no_local: bool,
    /// Prefill the table with this many rows (k:0 ..) in one INSERT ... SELECT generate_series.
    #[arg(long, default_value_t = 0)]
    pub(crate) prefill: u64,
    /// Interval of the invalidation probe (one process writes, the others poll); 0 disables it.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub(crate) probe_interval: Duration,
    /// Directory for the JSON results, the SVG chart and the per-process event logs.
    #[arg(long, default_value = "harness-out")]
    pub(crate) out: PathBuf,
    /// Keep the cache table (and event logs) after the run instead of dropping it.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Random seed (per-task seeds derive from it).
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Inject faults during the run: listener kills and idle pool-backend kills (`pg_terminate_backend`)
    /// every --fault-interval, and one server restart (third round) through --restart-cmd. Reads then
    /// fail closed, so an outage is an error, not a miss the checker would count.
    #[arg(long)]
    pub(crate) faults: bool,
    /// Time between two faults.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) fault_interval: Duration,
    /// Shell command restarting the server for --faults (`scripts/with-postgres` exports one as
    /// PGCACHE_PG_RESTART); without one, no restart is injected.
    #[arg(long)]
    pub(crate) restart_cmd: Option<String>,
    /// Events the checker holds in memory at once; above it, it checks a range of keys at a time (for tests).
    #[arg(long, default_value_t = 4_000_000, hide = true)]
    pub(crate) check_budget: u64,
    /// Do not print the report (used when another command runs `load`).
    #[arg(skip)]
    pub(crate) quiet_report: bool,
}

impl LoadArgs {
    /// Rejects combinations clap cannot express.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if u64::from(self.reads) + u64::from(self.get_or_set) + u64::from(self.writes) + u64::from(self.deletes) == 0 {
            bail!("the operation mix is empty: give at least one of --reads, --get-or-set, --writes, --deletes a weight above 0");
        }
        if self.prefill > self.keys {
            bail!("--prefill {} is larger than --keys {}: prefill at most the key space", self.prefill, self.keys);
        }
        if self.tasks == 0 && self.probe_interval.is_zero() {
            bail!("--tasks 0 with --probe-interval 0 does nothing");
        }
        if self.tasks == 0 && self.ops.is_some() {
            bail!("--tasks 0 runs only the probe, which has no operation count: give --duration instead of --ops");
        }
        Ok(())
    }
}

/// Parses `load` options from `argv` (without the command name), for commands that run `load` inside.
pub(crate) fn load_args(argv: &[&str]) -> anyhow::Result<LoadArgs> {
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: LoadArgs,
    }
    let wrap = Wrap::try_parse_from(std::iter::once("load").chain(argv.iter().copied()))?;
    wrap.args.validate()?;
    Ok(wrap.args)
}

/// Parses `10s`, `250ms`, `2m`, `1h`, `1.5s`, or a bare number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: use a number with a unit, e.g. 10s, 250ms, 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "us" | "µs" => value / 1_000_000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} in {text:?}: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?} is not a valid duration: {e}"))
}

/// A TTL option: a duration, or `never`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TtlArg(pub(crate) Option<Duration>);

pub(crate) fn parse_ttl(text: &str) -> Result<TtlArg, String> {
    if text.eq_ignore_ascii_case("never") || text.eq_ignore_ascii_case("none") {
        return Ok(TtlArg(None));
    }
    let d = parse_duration(text)?;
    if d < Duration::from_millis(1) {
        return Err("a TTL must be at least 1ms (or `never`)".to_owned());
    }
    Ok(TtlArg(Some(d)))
}

fn parse_zipf(text: &str) -> Result<f64, String> {
    let v: f64 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if !(0.0..=10.0).contains(&v) {
        return Err("the Zipf exponent must be between 0 and 10".to_owned());
    }
    Ok(v)
}

/// Runs the chosen command; the exit code tells success (0), violations (1) or errors (2).
pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Load(args) => {
            args.validate()?;
            let outcome = crate::load::run(&args).await?;
            Ok(if outcome.violations == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Compare(args) => crate::compare::run(&args).await.map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => crate::bench::run(&args).await.map(|()| ExitCode::SUCCESS),
        Command::Worker { config } => {
            let config = serde_json::from_str(&config).context("worker: bad --config")?;
            crate::load::worker::run(config).await.map(|()| ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_ttl("never"), Ok(TtlArg(None)));
        assert!(parse_ttl("0s").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn cli_rejects_bad_options() {
        assert!(Cli::try_parse_from(["h", "load", "--dsn", "x", "--processes", "0"]).is_err());
        assert!(Cli::try_parse_from(["h", "load", "--dsn", "x", "--duration", "1s", "--ops", "5"]).is_err());
        assert!(Cli::try_parse_from(["h", "load", "--dsn", "x", "--zipf", "-1"]).is_err());
        let ok = Cli::try_parse_from(["h", "load", "--dsn", "x", "--processes", "2", "--tasks", "4"]);
        assert!(ok.is_ok());
    }
}
