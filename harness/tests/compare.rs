//! `compare` end to end with tiny iteration counts: the Python benchmark's shape (one instance per client,
//! think times), `--no-think-time`, `--durable`, the writer sweep with a "before" binary and its figure, and
//! the Python library's rows when an interpreter with it is given.

use std::path::{Path, PathBuf};
use std::process::Command;

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgcache-compare-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs `compare` with `args` and returns compare.json (or `file`) parsed.
fn compare(args: &[&str], out: &Path, file: &str) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_pgcache-harness"))
        .arg("compare")
        .args(args)
        .arg("--out")
        .arg(out)
        .env("PGCACHE_DSN", pgcache_tests::test_dsn())
        .output()
        .expect("run pgcache-harness");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "compare {args:?} exited with {}: {stderr}", output.status);
    let json = std::fs::read_to_string(out.join(file)).unwrap_or_else(|e| panic!("{file}: {e}; {stderr}"));
    serde_json::from_str(&json).expect("the report parses")
}

fn rows(report: &serde_json::Value) -> &Vec<serde_json::Value> {
    report["rows"].as_array().expect("rows")
}

#[test]
fn instance_per_client_gives_every_client_its_own_cache_and_thinks_between_operations() {
    let out = out_dir("shape-b");
    let report = compare(
        &["--instance-per-client", "--writers", "2", "--readers", "3", "--write-iterations", "6"]
            .into_iter()
            .chain(["--read-iterations", "8", "--backends", "full,no-notify"])
            .collect::<Vec<_>>(),
        &out,
        "compare.json",
    );
    assert!(report["header"].as_str().unwrap_or("").contains("shape=instance-per-client"), "{report}");
    assert_eq!(rows(&report).len(), 2, "{report}");
    for row in rows(&report) {
        assert_eq!(row["instances"], 5, "one cache instance per client: {row}");
        assert_eq!(row["write"]["count"], 12, "{row}");
        assert_eq!(row["read"]["count"], 24, "{row}");
        // U(0, 5 ms) and U(0, 2 ms): 12 and 24 draws have a mean far above 0.1 ms.
        assert!(row["write_think_mean_ms"].as_f64().unwrap_or(0.0) > 0.1, "{row}");
        assert!(row["read_think_mean_ms"].as_f64().unwrap_or(0.0) > 0.1, "{row}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn no_think_time_runs_a_shared_instance_back_to_back() {
    let out = out_dir("shape-a");
    let report = compare(
        &["--no-think-time", "--writers", "2", "--readers", "2", "--write-iterations", "5"]
            .into_iter()
            .chain(["--read-iterations", "5", "--backends", "full"])
            .collect::<Vec<_>>(),
        &out,
        "compare.json",
    );
    let row = &rows(&report)[0];
    let header = report["header"].as_str().unwrap_or("");
    assert!(header.contains("shape=shared-instance") && header.contains("think=off"), "{report}");
    assert_eq!(row["instances"], 1, "{row}");
    assert_eq!(row["write_think_mean_ms"], 0.0, "{row}");
    assert_eq!(row["read_think_mean_ms"], 0.0, "{row}");
    assert_eq!(row["write"]["count"], 10, "{row}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `--durable` runs on a cluster started durable (`PGCACHE_PG_DURABLE=1 scripts/with-postgres`, its own
/// cluster here) and the report says so.
#[test]
fn durable_runs_on_a_cluster_started_with_fsync_and_synchronous_commit_on() {
    let out = out_dir("durable");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/with-postgres");
    let output = Command::new(script)
        .arg(env!("CARGO_BIN_EXE_pgcache-harness"))
        .args(["compare", "--durable", "--no-think-time", "--writers", "1", "--readers", "1"])
        .args(["--write-iterations", "3", "--read-iterations", "3", "--backends", "full", "--out"])
        .arg(&out)
        .env_remove("PGCACHE_DSN")
        .env_remove("PGCACHE_TEST_DSN")
        .env("PGCACHE_PG_DURABLE", "1")
        .output()
        .expect("run scripts/with-postgres pgcache-harness");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).expect("compare.json")).unwrap();
    let d = &report["durability"];
    assert_eq!((d["fsync"].as_str(), d["synchronous_commit"].as_str()), (Some("on"), Some("on")), "{report}");
    assert_eq!(d["full_page_writes"], "on", "{report}");
    assert!(report["header"].as_str().unwrap_or("").contains("fsync=on synchronous_commit=on"), "{report}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `--durable` on a cluster that runs with fsync off fails with the way to start a durable one.
#[test]
fn durable_refuses_a_cluster_with_fsync_off_and_says_how_to_start_one() {
    let out = out_dir("not-durable");
    let output = Command::new(env!("CARGO_BIN_EXE_pgcache-harness"))
        .args(["compare", "--durable", "--backends", "full", "--out"])
        .arg(&out)
        .env("PGCACHE_DSN", pgcache_tests::test_dsn())
        .output()
        .expect("run pgcache-harness");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("fsync=off") && stderr.contains("PGCACHE_PG_DURABLE=1"), "{stderr}");
    let _ = std::fs::remove_dir_all(&out);
}

/// A sweep runs each writer count, the "before" binary at each point (here this same binary), and draws
/// the figure.
#[test]
fn a_writer_sweep_runs_every_point_with_the_before_binary_and_draws_the_figure() {
    let out = out_dir("sweep");
    let me = env!("CARGO_BIN_EXE_pgcache-harness");
    let report = compare(
        &["--sweep-writers", "1,3", "--readers", "0", "--no-think-time", "--write-iterations", "4"]
            .into_iter()
            .chain(["--backends", "full", "--before-harness", me, "--before-label", "the other build"])
            .collect::<Vec<_>>(),
        &out,
        "sweep.json",
    );
    let points = report["points"].as_array().expect("points");
    let at = |series: &str, writers: u64| {
        points
            .iter()
            .any(|p| p["series"] == series && p["writers"] == writers && p["write_mean_ms"].as_f64() > Some(0.0))
    };
    for writers in [1, 3] {
        assert!(at("the other build", writers), "{report}");
        assert!(at("pgcache (full)", writers), "{report}");
    }
    assert_eq!(points.len(), 4, "{report}");
    if Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists() {
        let svg = std::fs::read_to_string(out.join("write_latency_vs_writers.svg")).expect("the figure");
        assert!(svg.starts_with("<svg") && svg.contains("the other build"), "{svg:.300}");
        let png = std::fs::read(out.join("write_latency_vs_writers.png")).expect("the png");
        assert!(png.starts_with(b"\x89PNG"));
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn python_backends_without_an_interpreter_get_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_pgcache-harness"))
        .args(["compare", "--dsn", "postgresql://nobody@127.0.0.1:1/x", "--backends", "python-full"])
        .env_remove("PGCACHE_COMPARE_PYTHON")
        .output()
        .expect("run pgcache-harness");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("need --python") && stderr.contains("compare-python.sh"), "{stderr}");
}

/// The Python library's rows, when `PGCACHE_COMPARE_PYTHON` names an interpreter with `postgres-cache`
/// installed (harness/scripts/compare-python.sh runs it with one; CI has none and says so).
#[test]
fn the_python_library_runs_in_the_same_run_when_an_interpreter_is_given() {
    let Ok(python) = std::env::var("PGCACHE_COMPARE_PYTHON") else {
        eprintln!("notice: PGCACHE_COMPARE_PYTHON is not set: the Python library's rows are not tested here");
        return;
    };
    let out = out_dir("python");
    let report = compare(
        &["--instance-per-client", "--writers", "2", "--readers", "2", "--write-iterations", "5"]
            .into_iter()
            .chain(["--read-iterations", "5", "--backends", "python-full,python-no-notify", "--python", &python])
            .collect::<Vec<_>>(),
        &out,
        "compare.json",
    );
    for row in rows(&report) {
        assert_eq!(row["instances"], 4, "{row}");
        assert_eq!(row["write"]["count"], 10, "{row}");
        assert_eq!(row["read"]["count"], 10, "{row}");
        assert!(row["library_version"].as_str().is_some(), "{row}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
