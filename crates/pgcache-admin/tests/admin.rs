//! The `pgcache` binary against a real PostgreSQL, next to a running cache
//! (`scripts/with-postgres cargo test -p pgcache-admin`).

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use pgcache_core::{CacheSettings, CacheStore, SetOptions, Ttl, TypedCache};
use pgcache_tests::{blocking, connect, entries_table, eventually, settings_for, sql_client, test_dsn};

const BIN: &str = env!("CARGO_BIN_EXE_pgcache");

/// Runs `pgcache` for the settings' cache: (exit code, stdout, stderr).
async fn pgcache(settings: &CacheSettings, args: &[&str]) -> Result<(i32, String, String)> {
    let mut command = Command::new(BIN);
    command
        .env("PGCACHE_DSN", &settings.dsn)
        .env("PGCACHE_SCHEMA_PREFIX", &settings.schema_prefix)
        .env("PGCACHE_NOTIFY_CHANNEL", &settings.notify_channel)
        .args(args);
    let output = blocking(move || command.output()).await?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr)))
}

#[tokio::test]
async fn admin_commands_read_and_purge_what_a_cache_wrote() -> Result<()> {
    let settings = settings_for("adm");
    let cache = connect(&settings).await?;
    let users = SetOptions::ttl(Ttl::After(Duration::from_secs(300))).tags(["users"]);
    cache.set_entry("user:1", "\"Ava\"".into(), &users).await?;
    cache.set_entry("user:2", "\"Nova\"".into(), &users).await?;
    cache.set_entry("bin", vec![0xff, 0x00, 0x10].into(), &SetOptions::ttl(Ttl::Never)).await?;
    cache.set_entry("old", "x".into(), &SetOptions::ttl(Ttl::Never)).await?;
    let sql = sql_client(&test_dsn()).await?;
    let table = entries_table(&settings);
    sql.execute(&format!("UPDATE {table} SET expires_at = now() - interval '1 s' WHERE key = 'old'"), &[]).await?;

    let (code, out, err) = pgcache(&settings, &["stats"]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.split_whitespace().eq(["entries", "4"])), "{out}");
    assert!(out.lines().any(|l| l.split_whitespace().eq(["expired_unswept", "1"])), "{out}");

    let (code, out, _) = pgcache(&settings, &["keys", "--pattern", "user:%"]).await?;
    assert_eq!(code, 0);
    let keys: Vec<&str> = out.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(keys, ["user:1", "user:2"], "{out}");
    assert!(out.contains("users"), "{out}");

    let (code, out, _) = pgcache(&settings, &["get", "user:1"]).await?;
    assert_eq!(code, 0);
    assert!(out.contains("value    \"Ava\""), "{out}");
    let (_, out, _) = pgcache(&settings, &["get", "bin"]).await?;
    assert!(out.contains("value    (hex) ff0010"), "{out}");
    let (code, _, err) = pgcache(&settings, &["get", "nobody"]).await?;
    assert_eq!(code, 2, "{err}");

    // Purges go through the library: the running cache's local copy goes too.
    assert_eq!(cache.get::<String>("user:1").await?.as_deref(), Some("Ava"));
    let (code, out, err) = pgcache(&settings, &["purge", "--key", "user:1"]).await?;
    assert_eq!((code, out.trim()), (0, "purged 1 entries"), "{err}");
    eventually(Duration::from_secs(5), || async { cache.get::<String>("user:1").await.is_ok_and(|v| v.is_none()) })
        .await?;
    let (_, out, _) = pgcache(&settings, &["purge", "--tag", "users", "--uri", "https://example.test/x"]).await?;
    assert_eq!(out.trim(), "purged 1 entries");
    let (code, _, err) = pgcache(&settings, &["purge"]).await?;
    assert_eq!(code, 2);
    assert!(err.contains("--key"), "{err}");

    let (code, out, _) = pgcache(&settings, &["sweep"]).await?;
    assert_eq!(code, 0);
    assert!(out.starts_with("swept "), "{out}");
    let (_, out, _) = pgcache(&settings, &["keys"]).await?;
    assert_eq!(out.lines().count(), 1, "only 'bin' is left: {out}");

    let (code, _, _) = pgcache(&settings, &["clear"]).await?;
    assert_eq!(code, 2, "clear needs --yes");
    let (_, out, _) = pgcache(&settings, &["clear", "--yes"]).await?;
    assert_eq!(out.trim(), "cleared 1 entries");
    cache.close().await;
    Ok(())
}

#[tokio::test]
async fn doctor_passes_a_healthy_cache_and_fails_a_wrong_channel() -> Result<()> {
    let settings = settings_for("adm_doc");
    let cache = connect(&settings).await?;
    let (code, out, err) = pgcache(&settings, &["doctor"]).await?;
    assert_eq!(code, 0, "{out}{err}");
    let line = |name: &str| out.lines().find(|l| l.split_whitespace().nth(1) == Some(name)).unwrap_or("").to_owned();
    assert!(line("schema").starts_with("ok"), "{out}");
    assert!(line("channel").starts_with("ok"), "{out}");
    assert!(line("listeners").starts_with("ok"), "the running cache's listener is seen: {out}");
    assert!(line("notify").starts_with("ok"), "{out}");
    assert!(line("table").starts_with("ok") && line("table").contains("last vacuum"), "{out}");
    assert!(line("connections").contains("max_connections"), "{out}");

    // Configured for another channel than the installed function notifies: caches would hear nothing.
    let wrong = settings.clone().notify_channel(format!("{}other", settings.notify_channel));
    let (code, out, _) = pgcache(&wrong, &["doctor"]).await?;
    assert_eq!(code, 1, "{out}");
    assert!(out.lines().any(|l| l.starts_with("FAIL channel")), "{out}");
    cache.close().await;

    // No schema at all.
    let empty = settings_for("adm_none");
    let (code, out, _) = pgcache(&empty, &["doctor"]).await?;
    assert_eq!(code, 1, "{out}");
    assert!(out.lines().any(|l| l.starts_with("FAIL schema")), "{out}");
    Ok(())
}
