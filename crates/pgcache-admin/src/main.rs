//! `pgcache`: the admin command of a pgcache table.
//!
//! ```sh
//! export PGCACHE_DSN=postgresql://user:password@localhost:5432/app   # or --dsn
//! pgcache stats                          # entries, bytes, expired, ages (the cache_stats view)
//! pgcache keys --pattern 'profile:%'     # keys with size, TTL left and tags
//! pgcache get profile:1                  # one entry (text, or hex when not UTF-8; --raw for the bytes)
//! pgcache purge --key profile:1 --tag users --uri https://example.com/profiles/1
//! pgcache clear --yes                    # every entry of the prefix
//! pgcache sweep                          # delete expired rows now
//! pgcache doctor                         # schema, channel, listeners, NOTIFY queue, bloat, connections
//! ```
//!
//! `--prefix`/`PGCACHE_SCHEMA_PREFIX` and `--channel`/`PGCACHE_NOTIFY_CHANNEL` select the cache, as in
//! `CacheSettings`. Purges, `clear` and `sweep` go through `PostgresCache`, so every node is notified.
//! Exit status: 0 on success, 1 when `doctor` finds a failing check, 2 on errors.

mod db;
mod doctor;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use pgcache_core::{CacheSettings, CacheStore, PostgresCache};
use pgcache_tower::HttpCache;

#[derive(Parser)]
#[command(name = "pgcache", about = "Inspect and operate a pgcache table", version)]
struct Cli {
    /// The database (a PostgreSQL URL or key=value string).
    #[arg(long, env = "PGCACHE_DSN", hide_env_values = true)]
    dsn: String,
    /// The cache's schema_prefix.
    #[arg(long, env = "PGCACHE_SCHEMA_PREFIX", default_value = "pgcache_")]
    prefix: String,
    /// The cache's notify_channel.
    #[arg(long, env = "PGCACHE_NOTIFY_CHANNEL", default_value = "pgcache_events")]
    channel: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Entries, bytes, expired-but-not-swept rows and ages (the cache_stats view).
    Stats,
    /// Keys matching a SQL LIKE pattern, in key order, with size, TTL left and tags.
    Keys {
        /// SQL LIKE pattern (`%` any run, `_` one character).
        #[arg(long, default_value = "%")]
        pattern: String,
        /// Most keys to list.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// One entry: version, TTL left, tags and value (text, or hex when not UTF-8).
    Get {
        /// The key.
        key: String,
        /// Write the value's bytes to stdout, nothing else.
        #[arg(long)]
        raw: bool,
    },
    /// Delete entries by key, tag or HTTP URI (every node evicts its local copies).
    Purge {
        /// Keys to delete.
        #[arg(long = "key")]
        keys: Vec<String>,
        /// Tags whose entries to delete.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Absolute URIs whose HTTP layer responses to delete (every method, query and variant).
        #[arg(long = "uri")]
        uris: Vec<String>,
        /// The HTTP layer's namespace, when it was given one.
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Delete every entry of the prefix.
    Clear {
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
    /// Delete expired rows now (what the background sweeper does).
    Sweep,
    /// Check the schema, the channel, the listeners, the NOTIFY queue, bloat and connection headroom.
    Doctor,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgcache: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let settings = CacheSettings::new(cli.dsn).schema_prefix(cli.prefix).notify_channel(cli.channel);
    settings.validate()?;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Stats => {
            let client = db::connect(&settings).await?;
            for (name, value) in db::stats(&client, &settings).await? {
                writeln!(out, "{name:<16} {value}")?;
            }
        }
        Command::Keys { pattern, limit } => {
            let client = db::connect(&settings).await?;
            for row in db::keys(&client, &settings, &pattern, limit.max(0)).await? {
                let ttl = ttl_text(row.expires_in_s);
                writeln!(out, "{}\t{} B\t{ttl}\t{}", row.key, row.value_bytes, row.tags.join(","))?;
            }
        }
        Command::Get { key, raw } => {
            let client = db::connect(&settings).await?;
            let Some(entry) = db::entry(&client, &settings, &key).await? else {
                bail!("no entry {key:?}");
            };
            if raw {
                out.write_all(&entry.value)?;
            } else {
                writeln!(out, "version  {}", entry.version)?;
                writeln!(out, "ttl      {}", ttl_text(entry.expires_in_s))?;
                writeln!(out, "tags     {}", entry.tags.join(","))?;
                writeln!(out, "bytes    {}", entry.value.len())?;
                match std::str::from_utf8(&entry.value) {
                    Ok(text) => writeln!(out, "value    {text}")?,
                    Err(_) => writeln!(out, "value    (hex) {}", hex(&entry.value))?,
                }
            }
        }
        Command::Purge { keys, tags, uris, namespace } => {
            if keys.is_empty() && tags.is_empty() && uris.is_empty() {
                bail!("name what to purge: --key, --tag or --uri");
            }
            let cache = PostgresCache::connect(settings).await?;
            let purged = purge(&cache, &keys, &tags, &uris, namespace).await;
            cache.close().await;
            writeln!(out, "purged {} entries", purged?)?;
        }
        Command::Clear { yes } => {
            if !yes {
                bail!("clear deletes every entry of the prefix: confirm with --yes");
            }
            let cache = PostgresCache::connect(settings).await?;
            let cleared = cache.clear().await;
            cache.close().await;
            writeln!(out, "cleared {} entries", cleared?)?;
        }
        Command::Sweep => {
            let cache = PostgresCache::connect(settings).await?;
            let swept = cache.cleanup_expired().await;
            cache.close().await;
            writeln!(out, "swept {} expired rows", swept?)?;
        }
        Command::Doctor => {
            let client = db::connect(&settings).await?;
            let checks = doctor::run(&client, &settings).await?;
            for c in &checks {
                writeln!(out, "{} {:<13} {}", c.verdict, c.name, c.detail)?;
            }
            if checks.iter().any(|c| c.verdict == doctor::Verdict::Fail) {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn purge(
    cache: &PostgresCache,
    keys: &[String],
    tags: &[String],
    uris: &[String],
    namespace: Option<String>,
) -> Result<u64> {
    let mut purged = 0;
    if !keys.is_empty() {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        purged += cache.delete_many(&keys).await?;
    }
    if !tags.is_empty() {
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        purged += cache.delete_tags(&tags).await?;
    }
    if !uris.is_empty() {
        let mut http = HttpCache::new(cache.clone());
        if let Some(namespace) = namespace {
            http = http.namespace(namespace);
        }
        for uri in uris {
            let uri: http::Uri = uri.parse().with_context(|| format!("--uri {uri:?} is not a URI"))?;
            purged += http.purge_uri(&uri).await?;
        }
    }
    Ok(purged)
}

fn ttl_text(expires_in_s: Option<f64>) -> String {
    match expires_in_s {
        None => "no ttl".to_owned(),
        Some(s) if s <= 0.0 => "expired".to_owned(),
        Some(s) => format!("{s:.0} s left"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
