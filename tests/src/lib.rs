//! Shared helpers for the integration tests: a PostgreSQL to test against, and one isolated
//! `schema_prefix`/`notify_channel` pair per test so tests run in parallel.
//!
//! The server is the one named by `PGCACHE_TEST_DSN` (set by `scripts/with-postgres`). Without it, the
//! first test of a process starts a throw-away cluster from the installed PostgreSQL ([`TestCluster`]).
//! When neither is possible the test fails with a message naming what to install: a suite that passes
//! without a database proves nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgcache_core::{CacheSettings, PostgresCache};

/// The DSN of the shared test server (starting a private cluster for this process if needed).
pub fn test_dsn() -> String {
    static DSN: OnceLock<String> = OnceLock::new();
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    DSN.get_or_init(|| {
        if let Ok(dsn) = std::env::var("PGCACHE_TEST_DSN") {
            return dsn;
        }
        let cluster = TestCluster::start().unwrap_or_else(|e| {
            panic!("no PGCACHE_TEST_DSN and no PostgreSQL to start ({e:#}); run the tests through scripts/test or install the `postgresql` package")
        });
        let dsn = cluster.dsn();
        // Leaked on purpose: the cluster lives as long as the test process (stopped by its Drop at exit is
        // not guaranteed for statics, so the cluster runs with a short idle shutdown instead).
        let _ = CLUSTER.set(cluster);
        dsn
    })
    .clone()
}

/// A unique, valid identifier fragment for `name` (lowercase, digits, `_`), unique per process and run.
pub fn unique_name(name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).take(16).collect();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let salt = std::process::id() % 100_000;
    format!("t{salt}_{n}_{clean}_")
}

/// Settings for one test: the test server, a fresh prefix and channel, short timers so tests are quick.
pub fn settings_for(name: &str) -> CacheSettings {
    let prefix = unique_name(name);
    let channel = format!("{prefix}events");
    CacheSettings::new(test_dsn())
        .schema_prefix(prefix)
        .notify_channel(channel)
        .heartbeat_interval(Duration::from_millis(250))
        .lock_wait_timeout(Duration::from_secs(10))
}

/// `init_db` then `connect` (one "node").
pub async fn connect(settings: &CacheSettings) -> Result<PostgresCache> {
    PostgresCache::init_db(settings).await?;
    Ok(PostgresCache::connect(settings.clone()).await?)
}

/// A plain tokio-postgres client on `dsn`, for SQL by hand.
pub async fn sql_client(dsn: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Polls `check` every 5 ms until it returns true or `deadline` passes; returns the time it took.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Ok(start.elapsed());
        }
        if start.elapsed() > deadline {
            bail!("condition not met within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A throw-away PostgreSQL cluster of this test process (a temp dir, a free port), stopped and removed on
/// drop. Used when no `PGCACHE_TEST_DSN` is given, and by tests that stop and restart a server.
pub struct TestCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl TestCluster {
    /// initdb + start. Blocking (runs `initdb`/`pg_ctl`); call it from `spawn_blocking` in async tests.
    ///
    /// # Errors
    /// No PostgreSQL server binaries found, or they failed.
    pub fn start() -> Result<Self> {
        let bin = find_pg_bin()?;
        let dir = std::env::temp_dir().join(format!("pgcache-test-{}-{}", std::process::id(), unique_name("c")));
        std::fs::create_dir_all(&dir)?;
        let cluster = Self { dir, bin, port: free_port()? };
        cluster
            .run("initdb", &["-D", &cluster.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale"])?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// The DSN of this cluster's `postgres` database.
    pub fn dsn(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: open connections are closed).
    ///
    /// # Errors
    /// `pg_ctl` failed.
    pub fn stop(&self) -> Result<()> {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
    }

    /// Starts the server again on the same port.
    ///
    /// # Errors
    /// `pg_ctl` failed.
    pub fn start_server(&self) -> Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-l", &log.display().to_string(), "-o", &opts, "-w", "-t", "60", "start"],
        )
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let program = self.bin.join(tool);
        let output = if is_root() {
            ensure_owner_user()?;
            let status = Command::new("chown").args(["-R", "pgcache"]).arg(&self.dir).status()?;
            if !status.success() {
                bail!("chown of {} failed", self.dir.display());
            }
            Command::new("runuser").args(["-u", "pgcache", "--"]).arg(&program).args(args).output()
        } else {
            Command::new(&program).args(args).output()
        }
        .with_context(|| format!("running {}", program.display()))?;
        if !output.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

fn ensure_owner_user() -> Result<()> {
    if Command::new("id").arg("pgcache").output().map(|o| o.status.success()).unwrap_or(false) {
        return Ok(());
    }
    let status = Command::new("useradd")
        .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "pgcache"])
        .status()?;
    // Another test process may have created it at the same moment.
    if !status.success() && !Command::new("id").arg("pgcache").status().map(|s| s.success()).unwrap_or(false) {
        bail!("could not create the 'pgcache' user to run PostgreSQL as");
    }
    Ok(())
}

fn find_pg_bin() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("PGCACHE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.exists() && dir.join("pg_ctl").exists() {
                let real = std::fs::canonicalize(&initdb)?;
                return Ok(real.parent().map(Path::to_path_buf).unwrap_or(dir));
            }
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect()
        })
        .unwrap_or_default();
    candidates.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    candidates.pop().context("PostgreSQL server binaries not found (install the `postgresql` package)")
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
