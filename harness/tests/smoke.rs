//! Smoke test: `load` runs for ~3 s with 2 processes x 4 tasks against the test database, exits 0, and
//! writes a results.json that parses and counts work (checked reads, operations, probe sightings).

use std::process::Command;
use std::time::{Duration, Instant};

/// A probe-only run (`--tasks 0`, how `bench` measures invalidation propagation) probes for its whole
/// duration and sees the invalidations.
#[test]
fn a_probe_only_run_measures_propagation_for_its_whole_duration() {
    let dsn = pgcache_tests::test_dsn();
    let out = std::env::temp_dir().join(format!("pgcache-harness-probe-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_pgcache-harness"))
        .args(["load", "--processes", "2", "--tasks", "0", "--duration", "2s", "--quiet"])
        .args(["--probe-interval", "20ms", "--out"])
        .arg(&out)
        .env("PGCACHE_DSN", &dsn)
        .status()
        .expect("run pgcache-harness");
    assert!(status.success(), "load exited with {status}");
    let json = std::fs::read_to_string(out.join("results.json")).expect("results.json written");
    let report: serde_json::Value = serde_json::from_str(&json).expect("results.json parses");
    assert!(report["invalidation"]["samples"].as_u64().unwrap_or(0) > 10, "too few invalidations seen: {json}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn load_runs_clean_and_writes_parsable_json() {
    let dsn = pgcache_tests::test_dsn();
    let out = std::env::temp_dir().join(format!("pgcache-harness-smoke-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_pgcache-harness"))
        .args(["load", "--processes", "2", "--tasks", "4", "--duration", "3s", "--keys", "200", "--quiet"])
        .args(["--probe-interval", "50ms", "--out"])
        .arg(&out)
        .env("PGCACHE_DSN", &dsn)
        .status()
        .expect("run pgcache-harness");
    assert!(status.success(), "load exited with {status}");

    let json = std::fs::read_to_string(out.join("results.json")).expect("results.json written");
    let report: serde_json::Value = serde_json::from_str(&json).expect("results.json parses");
    assert_eq!(report["check"]["violations_total"], 0, "{json}");
    assert!(report["check"]["reads_checked"].as_u64().unwrap_or(0) > 0, "{json}");
    assert!(report["ops_total"].as_u64().unwrap_or(0) > 0, "{json}");
    assert!(report["invalidation"]["samples"].as_u64().unwrap_or(0) > 0, "no invalidation was seen: {json}");
    assert!(report["paths"]["set"]["p99_us"].as_f64().is_some(), "{json}");
    // The charts need a font (fonts-dejavu-core); without one they are left out, never half-drawn.
    let font = std::path::Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists();
    for chart in ["latency", "throughput", "invalidation_lag", "l1_hit_ratio"] {
        let svg = std::fs::read_to_string(out.join(format!("{chart}.svg")));
        let png = std::fs::read(out.join(format!("{chart}.png")));
        if font {
            let svg = svg.unwrap_or_else(|e| panic!("{chart}.svg: {e}"));
            assert!(svg.starts_with("<svg") && svg.contains("<text"), "{chart}: {svg:.200}");
            assert!(png.is_ok_and(|png| png.starts_with(b"\x89PNG")), "{chart}.png");
        } else {
            assert!(svg.is_err() && png.is_err(), "{chart} drawn without a font");
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// `--ops` with two processes (so the invalidation probe runs) ends once the operations are done; the check
/// runs a key range at a time and finds nothing.
#[test]
fn ops_run_with_two_processes_ends() {
    let dsn = pgcache_tests::test_dsn();
    let out = std::env::temp_dir().join(format!("pgcache-harness-ops-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgcache-harness"))
        .args(["load", "--processes", "2", "--tasks", "2", "--ops", "400", "--keys", "50", "--quiet"])
        // A small check budget makes the checker split the keys into ranges (scratch files).
        .args(["--probe-interval", "20ms", "--check-budget", "100", "--out"])
        .arg(&out)
        .env("PGCACHE_DSN", &dsn)
        .spawn()
        .expect("run pgcache-harness");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the load process") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("load --processes 2 --ops 400 did not end within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "load exited with {status}");
    let json = std::fs::read_to_string(out.join("results.json")).expect("results.json written");
    let report: serde_json::Value = serde_json::from_str(&json).expect("results.json parses");
    assert_eq!(report["check"]["violations_total"], 0, "{json}");
    assert_eq!(report["ops_total"].as_u64(), Some(400), "{json}");
    assert!(report["check"]["reads_checked"].as_u64().unwrap_or(0) > 0, "{json}");
    let left: Vec<_> = std::fs::read_dir(&out).expect("read --out").flatten().map(|e| e.file_name()).collect();
    let kept = |name: &str| name == "results.json" || name.ends_with(".png") || name.ends_with(".svg");
    assert!(left.iter().all(|n| kept(&n.to_string_lossy())), "only results.json and the charts stay: {left:?}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bad_options_get_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_pgcache-harness"))
        .args(["load", "--dsn", "postgresql://nobody@127.0.0.1:1/x", "--reads", "0", "--get-or-set", "0"])
        .args(["--writes", "0", "--deletes", "0"])
        .output()
        .expect("run pgcache-harness");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("operation mix is empty"), "{stderr}");
}
