//! `pgcache doctor`: checks what a running pgcache deployment depends on, one line per check, and fails
//! (exit status 1) when any check fails. Warnings do not fail.

use std::fmt;

use anyhow::Result;
use pgcache_core::{CacheSettings, PostgresCache};
use tokio_postgres::Client;

use crate::db;

/// NOTIFY queue usage above which notifications risk being refused (the queue is 8 GB by default;
/// a listener stuck in a transaction pins it).
const QUEUE_WARN: f64 = 0.5;
/// Dead tuples above this share of the table: autovacuum is not keeping up.
const DEAD_WARN: f64 = 0.2;
/// Free connections below this share of `max_connections`.
const HEADROOM_WARN: f64 = 0.1;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        })
    }
}

/// One check's line.
pub(crate) struct Check {
    pub(crate) verdict: Verdict,
    pub(crate) name: &'static str,
    pub(crate) detail: String,
}

fn check(verdict: Verdict, name: &'static str, detail: String) -> Check {
    Check { verdict, name, detail }
}

/// Runs every check.
pub(crate) async fn run(client: &Client, settings: &CacheSettings) -> Result<Vec<Check>> {
    let mut checks = Vec::new();

    let expected = PostgresCache::SCHEMA_VERSION;
    let found = PostgresCache::schema_version(settings).await?;
    let intact = PostgresCache::schema_is_current(settings).await?;
    checks.push(match (found, intact) {
        (0, _) => check(
            Verdict::Fail,
            "schema",
            format!("not installed for prefix {:?}: run init_db", settings.schema_prefix),
        ),
        (v, true) => check(Verdict::Ok, "schema", format!("version {v}, intact")),
        (v, false) if v < expected => {
            check(Verdict::Fail, "schema", format!("version {v}, this library needs {expected}: run init_db"))
        }
        (v, false) if v > expected => {
            check(Verdict::Fail, "schema", format!("version {v} is newer than this library's {expected}"))
        }
        (v, false) => {
            check(Verdict::Fail, "schema", format!("version {v} but damaged (objects missing or changed): run init_db"))
        }
    });

    let configured = &settings.notify_channel;
    checks.push(match db::notified_channel(client, settings).await? {
        Some(channel) if &channel == configured => check(Verdict::Ok, "channel", format!("the notify function notifies {channel:?}")),
        Some(channel) => check(
            Verdict::Fail,
            "channel",
            format!("the notify function notifies {channel:?}, the configuration says {configured:?}: caches on one of them hear nothing; run init_db with the right channel"),
        ),
        None => check(Verdict::Fail, "channel", "no notify function installed".to_owned()),
    });

    let listeners = db::listeners(client, settings).await?;
    checks.push(if listeners > 0 {
        check(Verdict::Ok, "listeners", format!("{listeners} listener connection(s) on {configured:?}"))
    } else {
        check(
            Verdict::Warn,
            "listeners",
            format!("no listener connection seen on {configured:?} (no cache running, or notifications disabled)"),
        )
    });

    let usage = db::notify_queue_usage(client).await?;
    let verdict = if usage > QUEUE_WARN { Verdict::Warn } else { Verdict::Ok };
    checks.push(check(verdict, "notify queue", format!("{:.4} % used", usage * 100.0)));

    checks.push(match db::table_health(client, settings).await? {
        Some(t) => {
            let dead_share = if t.live + t.dead > 0 { t.dead as f64 / (t.live + t.dead) as f64 } else { 0.0 };
            let verdict = if dead_share > DEAD_WARN { Verdict::Warn } else { Verdict::Ok };
            let vacuumed = t.last_autovacuum.or(t.last_vacuum).unwrap_or_else(|| "never".to_owned());
            check(
                verdict,
                "table",
                format!(
                    "{} live, {} dead rows ({:.1} % dead), {} bytes, last vacuum {vacuumed}",
                    t.live,
                    t.dead,
                    dead_share * 100.0,
                    t.bytes
                ),
            )
        }
        None => check(Verdict::Fail, "table", "the entries table does not exist".to_owned()),
    });

    let (max, reserved, used) = db::connections(client).await?;
    let free = (max - reserved - used).max(0);
    let verdict = if (free as f64) < HEADROOM_WARN * max as f64 { Verdict::Warn } else { Verdict::Ok };
    checks.push(check(
        verdict,
        "connections",
        format!("{used} in use of max_connections {max} ({reserved} reserved): {free} free"),
    ));
    Ok(checks)
}
