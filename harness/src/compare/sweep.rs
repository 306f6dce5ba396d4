//! `compare --sweep-writers 1,2,4,…`: the backends once per writer count, and with `--before-harness` an
//! older build's `compare --backends full` at the same point, interleaved so both see the same machine.
//! Prints one table of write means (p99), writes sweep.json and the figure of write latency against
//! concurrent writers.

use std::process::Stdio;

use anyhow::{bail, Context};
use tokio::process::Command;

use super::{compare, figure, header, CompareArgs, Durability};
use crate::netem::Netem;

/// One point of one series.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Point {
    pub(crate) series: String,
    pub(crate) writers: u32,
    pub(crate) write_mean_ms: f64,
    pub(crate) write_p99_ms: f64,
    pub(crate) write_ops_per_s: f64,
}

/// Runs the sweep (see the module docs).
pub(super) async fn run(args: &CompareArgs, netem: Option<Netem>, durability: &Durability) -> anyhow::Result<()> {
    let mut points = Vec::new();
    for &writers in &args.sweep_writers {
        if let Some(before) = &args.before_harness {
            points.push(run_before(args, before, writers).await?);
            eprintln!("{} at {writers} writers: done", args.before_label);
        }
        for row in compare(args, netem, args.workload(writers)).await? {
            points.push(Point {
                series: row.backend.label().to_owned(),
                writers,
                write_mean_ms: row.write.mean_us / 1000.0,
                write_p99_ms: row.write.p99_us / 1000.0,
                write_ops_per_s: row.write_ops_per_s,
            });
        }
    }
    let header = header(args, netem, durability, 0).replacen("writers=0", "writers=swept", 1);
    println!("{header}\n\n{}", table(&points));
    let json = serde_json::json!({ "header": header, "durability": durability, "points": points });
    tokio::fs::write(args.out.join("sweep.json"), serde_json::to_string_pretty(&json)?).await?;
    for path in figure::write_latency_vs_writers(&args.out, &header, &points)? {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The older harness's `compare` at `writers` writers: its `full` row, read from its compare.json.
async fn run_before(args: &CompareArgs, binary: &std::path::Path, writers: u32) -> anyhow::Result<Point> {
    let out = std::env::temp_dir().join(format!("pgcache-compare-before-{}-{writers}", std::process::id()));
    let mut command = Command::new(binary);
    command
        .args(["compare", "--backends", "full", "--writers", &writers.to_string()])
        .args(["--readers", &args.readers.to_string(), "--keyspace", &args.keyspace.to_string()])
        .args(["--write-iterations", &args.write_iterations.to_string()])
        .args(["--read-iterations", &args.read_iterations.to_string()])
        .args(["--ttl", &format!("{}ms", args.ttl.as_millis()), "--pool-size", &args.pool_size.to_string()])
        .args(["--network-latency-ms", &args.network_latency_ms.to_string()])
        .args(["--network-jitter-ms", &args.network_jitter_ms.to_string()])
        .arg("--out")
        .arg(&out)
        .env("PGCACHE_DSN", &args.db.dsn)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if args.managed_service {
        command.arg("--managed-service");
    }
    if args.db.unlogged {
        command.arg("--unlogged");
    }
    let status = command.status().await.with_context(|| format!("running {}", binary.display()))?;
    if !status.success() {
        bail!("{} compare exited with {status}", binary.display());
    }
    let text =
        tokio::fs::read_to_string(out.join("compare.json")).await.context("the before harness's compare.json")?;
    let _ = tokio::fs::remove_dir_all(&out).await;
    let full = full_row(&text)?;
    Ok(Point { series: args.before_label.clone(), writers, ..full })
}

/// The `full` row of a compare.json: a bare array of rows (older builds) or `{"rows": […]}` (this one).
fn full_row(text: &str) -> anyhow::Result<Point> {
    let json: serde_json::Value = serde_json::from_str(text).context("parsing compare.json")?;
    let rows = json.get("rows").unwrap_or(&json).as_array().context("compare.json has no rows")?;
    let row = rows.iter().find(|r| r["backend"] == "full").context("compare.json has no full row")?;
    let number = |v: &serde_json::Value| v.as_f64().context("compare.json: a figure is not a number");
    Ok(Point {
        series: String::new(),
        writers: 0,
        write_mean_ms: number(&row["write"]["mean_us"])? / 1000.0,
        write_p99_ms: number(&row["write"]["p99_us"])? / 1000.0,
        write_ops_per_s: number(&row["write_ops_per_s"])?,
    })
}

/// Writers down, series across: write mean (p99) in ms.
fn table(points: &[Point]) -> String {
    let mut series: Vec<&str> = Vec::new();
    for p in points {
        if !series.contains(&p.series.as_str()) {
            series.push(&p.series);
        }
    }
    let mut writers: Vec<u32> = points.iter().map(|p| p.writers).collect();
    writers.dedup();
    let mut out = format!("| writers | {} |\n", series.join(" | "));
    out.push_str(&format!("| ---: |{}\n", " ---: |".repeat(series.len())));
    for w in writers {
        let cells: Vec<String> = series
            .iter()
            .map(|s| {
                points
                    .iter()
                    .find(|p| p.writers == w && p.series == *s)
                    .map_or_else(|| "–".to_owned(), |p| format!("{:.3} ({:.3})", p.write_mean_ms, p.write_p99_ms))
            })
            .collect();
        out.push_str(&format!("| {w} | {} |\n", cells.join(" | ")));
    }
    out.push_str("\nwrite mean (p99), ms\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_row_is_read_from_old_and_new_compare_json() {
        let row = r#"{"backend":"full","write":{"mean_us":2500.0,"p99_us":9000.0},"write_ops_per_s":400.0}"#;
        let old = format!(r#"[{{"backend":"redis"}},{row}]"#);
        let new = format!(r#"{{"header":"h","rows":[{row}]}}"#);
        for text in [old, new] {
            let p = full_row(&text).unwrap();
            assert_eq!((p.write_mean_ms, p.write_p99_ms, p.write_ops_per_s), (2.5, 9.0, 400.0));
        }
        assert!(full_row(r#"[{"backend":"redis"}]"#).is_err());
    }

    #[test]
    fn the_sweep_table_has_a_row_per_writer_count_and_a_column_per_series() {
        let p = |series: &str, writers, mean| Point {
            series: series.to_owned(),
            writers,
            write_mean_ms: mean,
            write_p99_ms: mean * 2.0,
            write_ops_per_s: 1.0,
        };
        let t = table(&[p("before", 1, 1.0), p("after", 1, 0.5), p("before", 4, 2.0)]);
        assert!(t.starts_with("| writers | before | after |"), "{t}");
        assert!(t.contains("| 1 | 1.000 (2.000) | 0.500 (1.000) |"), "{t}");
        assert!(t.contains("| 4 | 2.000 (4.000) | – |"), "{t}");
    }
}
