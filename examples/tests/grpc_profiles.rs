//! The tonic example: start the server process, run the client process, check that the second answer
//! came from the cache (`scripts/with-postgres cargo test -p pgcache-examples --test grpc_profiles`).

mod support;

use anyhow::Result;
use support::{fresh_database, Example};

const BIN: &str = env!("CARGO_BIN_EXE_grpc_profiles");

async fn run_client(addr: &str, id: &str) -> Result<(bool, String)> {
    let output = tokio::process::Command::new(BIN)
        .args(["--client", "--addr", addr, "--id", id])
        .env("RUST_LOG", "warn")
        .output()
        .await?;
    Ok((output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned()))
}

#[tokio::test]
async fn the_second_call_is_answered_from_the_cache() -> Result<()> {
    let db = fresh_database("grpc").await?;
    let server = Example::start(BIN, &db.dsn, &[]).await?;

    let (ok, stdout) = run_client(&server.url, "1").await?;
    assert!(ok, "client failed:\n{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with("call 1: Profile { id: 1, name: \"Ava\""), "{stdout}");
    // The response cache (PgCacheLayer) missed, the service ran and the response was stored...
    assert!(
        lines[0].ends_with("(cache-status: pgcache-http; fwd=uri-miss; fwd-status=200; stored; ttl=30)"),
        "{stdout}"
    );
    // ...and the second call was answered by it, trailers replayed (tonic would fail the call otherwise).
    assert!(lines[1].starts_with("call 2: Profile { id: 1, name: \"Ava\""), "{stdout}");
    assert!(lines[1].contains("(cache-status: pgcache-http; hit; ttl="), "{stdout}");
    assert_eq!(lines[2], "the second answer came from the cache");

    // A missing profile is NOT_FOUND: the client fails before printing anything.
    let (ok, stdout) = run_client(&server.url, "999").await?;
    assert!(!ok, "{stdout}");
    assert!(stdout.is_empty(), "{stdout}");

    let (status, _) = server.terminate().await?;
    assert!(status.success(), "{status:?}");
    db.drop_now().await
}
