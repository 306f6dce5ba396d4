//! Round trips of a `get_or_set` miss (issue 9, item 4), counted from the statement metrics
//! (`pgcache.db.statement.duration`, one sample per statement). One test per binary: the counts are
//! process-wide.

use std::collections::HashMap;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use pgcache_core::prelude::*;
use pgcache_tests::{connect, node, settings_for};

#[tokio::test]
async fn a_miss_reads_the_row_and_tries_the_lock_in_one_statement() -> anyhow::Result<()> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install()?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut statements = move || {
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let (_, key) = key.into_parts();
            if key.name() != pgcache_core::telemetry::STATEMENT_DURATION {
                continue;
            }
            let op = key.labels().find(|l| l.key() == "db.operation").map(|l| l.value().to_owned());
            if let (Some(op), DebugValue::Histogram(samples)) = (op, value) {
                *counts.entry(op).or_default() += samples.len();
            }
        }
        counts.clone()
    };
    let settings = settings_for("rt_miss");
    let first = connect(&settings).await?;
    let second = PostgresCache::connect(node(&settings, "b")).await?;
    statements();

    // A cold key: the read that misses takes the lock; one re-read under it, the write, the unlock.
    let v: String = first.get_or_set("k", || async { Ok::<_, std::io::Error>("v".to_owned()) }, None).await?;
    assert_eq!(v, "v");
    let miss = statements();
    let n = |c: &HashMap<String, usize>, op: &str| c.get(op).copied().unwrap_or(0);
    assert_eq!(n(&miss, "get_or_lock"), 1, "{miss:?}");
    assert_eq!(n(&miss, "try_advisory_lock"), 0, "no separate lock statement: {miss:?}");
    assert_eq!(n(&miss, "get_for_load"), 1, "{miss:?}");
    assert_eq!(n(&miss, "upsert"), 1, "{miss:?}");
    assert_eq!(n(&miss, "advisory_unlock"), 1, "{miss:?}");

    // Another node finds it in the table: one statement, no lock taken (so none to release).
    let v: String = second
        .get_or_set("k", || async { Ok::<_, std::io::Error>("loaded again".to_owned()) }, Some(Duration::from_secs(60)))
        .await?;
    assert_eq!(v, "v");
    let hit = statements();
    assert_eq!(n(&hit, "get_or_lock") - n(&miss, "get_or_lock"), 1, "{hit:?}");
    assert_eq!(n(&hit, "advisory_unlock"), n(&miss, "advisory_unlock"), "{hit:?}");
    assert_eq!(n(&hit, "get_for_load"), n(&miss, "get_for_load"), "{hit:?}");
    first.close().await;
    second.close().await;
    Ok(())
}
