//! With `tls_root_cert` (a private CA) every connection of a cache (schema, pool, listener) is encrypted
//! and verifies the server; without the CA, `sslmode=require` rejects the server's chain with a typed
//! error instead of falling back to plain text.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};
use pgcache_core::prelude::*;
use pgcache_core::{Error, ListenerState};
use pgcache_tests::{blocking, settings_on, sql_client, TestCluster};

/// Makes a CA and a server certificate for 127.0.0.1/localhost with openssl; returns the CA path.
fn make_certificates(dir: &Path) -> Result<()> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl").args(args).current_dir(dir).output()?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=pgcache test CA",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ])?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ])?;
    // PostgreSQL insists that its key is readable by the server user only.
    let is_root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false);
    if is_root {
        Command::new("chown").args(["pgcache", "server.key", "server.crt"]).current_dir(dir).status()?;
    }
    Command::new("chmod").args(["600", "server.key"]).current_dir(dir).status()?;
    Ok(())
}

#[tokio::test]
async fn tls_connections_verify_the_server_and_carry_every_connection() -> Result<()> {
    if Command::new("openssl").arg("version").output().is_err() {
        bail!("openssl is needed to make test certificates (apt-get install openssl)");
    }
    let cluster = blocking(TestCluster::start).await?;
    let dir = std::env::temp_dir().join(pgcache_tests::unique_name("tls"));
    std::fs::create_dir_all(&dir)?;
    let dir_for_certs = dir.clone();
    blocking(move || make_certificates(&dir_for_certs)).await?;
    let admin = sql_client(&cluster.dsn()).await?;
    admin.batch_execute(&format!("ALTER SYSTEM SET ssl_cert_file = '{}'", dir.join("server.crt").display())).await?;
    admin.batch_execute(&format!("ALTER SYSTEM SET ssl_key_file = '{}'", dir.join("server.key").display())).await?;
    admin.batch_execute("ALTER SYSTEM SET ssl = on").await?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;

    // Trusting the private CA: every connection (schema, pool, listener) is encrypted.
    let settings = settings_on(&cluster.dsn(), "tls").tls_root_cert(dir.join("ca.pem")).application_name("pgcache_tls");
    let mut ssl_on = false;
    for _ in 0..200 {
        // The reload is asynchronous: retry init_db until the server speaks TLS.
        match PostgresCache::init_db(&settings).await {
            Ok(()) => {
                ssl_on = true;
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(25)).await,
        }
    }
    assert!(ssl_on, "server never accepted a verified TLS connection");
    let cache = PostgresCache::connect(settings.clone()).await?;
    cache.set("k", &"secret", None).await?;
    assert_eq!(cache.get::<String>("k").await?, Some("secret".to_owned()));
    assert_eq!(cache.status().listener, ListenerState::Listening);
    let rows = admin
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'pgcache_tls'",
            &[],
        )
        .await?;
    assert!(rows.len() >= 2, "expected pool and listener connections, saw {}", rows.len());
    assert!(rows.iter().all(|r| r.get::<_, bool>(0)), "a pgcache connection is not encrypted");
    cache.close().await;

    // Without the CA, the self-signed chain is rejected: a typed error, not a plain-text fallback.
    let untrusted = settings_on(&format!("{}?sslmode=require", cluster.dsn()), "tls_untrusted");
    let err = PostgresCache::init_db(&untrusted).await.err();
    assert!(matches!(err, Some(Error::Postgres(_))), "expected a TLS verification error, got {err:?}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
