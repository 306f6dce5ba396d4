//! The Python library's rows: `harness/python/compare_driver.py` (our own driver reproducing the procedure of
//! the library's `benchmarks/cache_benchmark.py`, which is not in its PyPI package) run by the given
//! interpreter against the same PostgreSQL (through the same latency proxy), in the same run.
//!
//! The driver is compiled into the binary and fed to `python -` on stdin, so `compare` runs from any
//! directory. It prints every latency; the histograms and the table are built here, exactly as for the
//! other rows.

use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::workload::Workload;
use super::{Backend, Row};
use crate::stats::Latency;

/// The driver's source.
const DRIVER: &str = include_str!("../../python/compare_driver.py");

/// One kind of operation as the driver reports it.
#[derive(Debug, serde::Deserialize)]
struct Kind {
    latencies_ns: Vec<u64>,
    hits: u64,
    span_s: f64,
    think_s: f64,
}

/// The driver's report.
#[derive(Debug, serde::Deserialize)]
pub(super) struct Report {
    library_version: Option<String>,
    instances: usize,
    write: Kind,
    read: Kind,
}

impl Report {
    /// The row of the table.
    pub(super) fn into_row(self, backend: Backend) -> Row {
        let hist = |k: &Kind| {
            let mut h = Latency::new();
            for &ns in &k.latencies_ns {
                h.record(ns);
            }
            h
        };
        let (w, r) = (hist(&self.write), hist(&self.read));
        let rate = |n: u64, span: f64| if span > 0.0 { n as f64 / span } else { 0.0 };
        let think = |k: &Kind, n: u64| if n == 0 { 0.0 } else { k.think_s * 1000.0 / n as f64 };
        Row {
            backend,
            instances: self.instances,
            write_ops_per_s: rate(w.len(), self.write.span_s),
            read_ops_per_s: rate(r.len(), self.read.span_s),
            hit_rate: if r.len() == 0 { 0.0 } else { self.read.hits as f64 / r.len() as f64 },
            write_think_mean_ms: think(&self.write, w.len()),
            read_think_mean_ms: think(&self.read, r.len()),
            write: w.summary(),
            read: r.summary(),
            library_version: self.library_version,
        }
    }
}

/// Runs the driver once in `mode` (`full`, `no-local`, `no-notify`) with the workload's shape.
pub(super) async fn run(
    python: &Path,
    dsn: &str,
    mode: &str,
    work: &Workload,
    schema_prefix: &str,
    channel: &str,
) -> anyhow::Result<Report> {
    if !(dsn.starts_with("postgresql://") || dsn.starts_with("postgres://")) {
        bail!("the Python library (asyncpg) needs a URL DSN (postgresql://user@host:port/db)");
    }
    let mut command = Command::new(python);
    command
        .arg("-")
        .args(["--dsn", dsn, "--mode", mode, "--schema-prefix", schema_prefix, "--channel", channel])
        .args(["--writers", &work.writers.to_string(), "--readers", &work.readers.to_string()])
        .args(["--write-iterations", &work.write_iterations.to_string()])
        .args(["--read-iterations", &work.read_iterations.to_string()])
        .args(["--keyspace", &work.keyspace.to_string(), "--ttl", &work.ttl.as_secs_f64().to_string()])
        .args(["--write-think-max", &work.write_think.as_secs_f64().to_string()])
        .args(["--read-think-max", &work.read_think.as_secs_f64().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if !work.instance_per_client {
        command.args(["--shared", "--pool-size", &work.pool_size.to_string()]);
    }
    let mut child = command.spawn().with_context(|| format!("starting {}", python.display()))?;
    let mut stdin = child.stdin.take().context("the driver's stdin")?;
    stdin.write_all(DRIVER.as_bytes()).await.context("sending the driver to python")?;
    drop(stdin);
    let output = child.wait_with_output().await.context("waiting for the Python driver")?;
    if !output.status.success() {
        bail!("the Python driver failed ({}); its error is above", output.status);
    }
    serde_json::from_slice(&output.stdout).context("parsing the Python driver's report")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_report_becomes_a_row_with_the_same_statistics() {
        let report: Report = serde_json::from_str(
            r#"{"library_version":"0.1.1","instances":3,
                "write":{"latencies_ns":[1000000,3000000],"hits":0,"span_s":2.0,"think_s":0.004},
                "read":{"latencies_ns":[500000,500000,500000,500000],"hits":3,"span_s":1.0,"think_s":0.004}}"#,
        )
        .unwrap();
        let row = report.into_row(Backend::PythonFull);
        assert_eq!(row.instances, 3);
        assert!((row.write.mean_us - 2000.0).abs() < 5.0, "{}", row.write.mean_us);
        assert_eq!(row.write.count, 2);
        assert!((row.write_ops_per_s - 1.0).abs() < 1e-9);
        assert!((row.read_ops_per_s - 4.0).abs() < 1e-9);
        assert!((row.hit_rate - 0.75).abs() < 1e-9);
        assert!((row.write_think_mean_ms - 2.0).abs() < 1e-9);
        assert!((row.read_think_mean_ms - 1.0).abs() < 1e-9);
    }
}
