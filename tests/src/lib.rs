//! Shared helpers for the integration tests: a PostgreSQL to test against, and one isolated
//! `schema_prefix`/`notify_channel` pair per test so tests run in parallel.
//!
//! The server is the one named by `PGCACHE_TEST_DSN` (set by `scripts/with-postgres`). Without it, the
//! first test of a process starts a throw-away cluster from the installed PostgreSQL ([`TestCluster`]).
//! When neither is possible the test fails with a message naming what to install: a suite that passes
//! without a database proves nothing.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

pub mod workers;
use pgcache_core::{CacheSettings, CacheStore, Fill, PostgresCache, Source};

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
///
/// The `application_name` is the prefix too, so the test can find this cache's backends in
/// `pg_stat_activity` ([`backends`], [`listener_pid`]).
pub fn settings_for(name: &str) -> CacheSettings {
    settings_on(&test_dsn(), name)
}

/// Like [`settings_for`], on another server (a private [`TestCluster`], another role's DSN).
pub fn settings_on(dsn: &str, name: &str) -> CacheSettings {
    let prefix = unique_name(name);
    let channel = format!("{prefix}events");
    CacheSettings::new(dsn)
        .schema_prefix(prefix.clone())
        .notify_channel(channel)
        .application_name(prefix)
        .heartbeat_interval(Duration::from_millis(250))
        .lock_wait_timeout(Duration::from_secs(10))
}

/// The same settings as another "node" would use, told apart in `pg_stat_activity` by `suffix`.
pub fn node(settings: &CacheSettings, suffix: &str) -> CacheSettings {
    settings.clone().application_name(format!("{}{suffix}", settings.application_name))
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

/// The quoted name of the entries table of `settings`' prefix, for SQL by hand.
pub fn entries_table(settings: &CacheSettings) -> String {
    format!("\"{}cache_entries\"", settings.schema_prefix)
}

/// Rows in the entries table of `settings`' prefix, expired ones included.
pub async fn row_count(client: &tokio_postgres::Client, settings: &CacheSettings) -> Result<i64> {
    let sql = format!("SELECT count(*) FROM {}", entries_table(settings));
    Ok(client.query_one(&sql, &[]).await?.try_get(0)?)
}

/// `(pid, query)` of every backend whose `application_name` is `app`.
pub async fn backends(client: &tokio_postgres::Client, app: &str) -> Result<Vec<(i32, String)>> {
    let rows = client
        .query(
            "SELECT pid, coalesce(query, '') FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
            &[&app],
        )
        .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

/// The backend of the cache's listener connection (application name `app`), if connected.
///
/// PostgreSQL does not show which session listens on what, so the listener is recognised by its
/// statements: it only ever runs `LISTEN "channel"`, its heartbeat (which reads the incarnation through
/// `pg_control_system()`), the reconcile read of versions, and the flusher's statements (tagged with a
/// leading `/* pgcache listener prefix */`), which the pooled connections never do.
pub async fn listener_pid(client: &tokio_postgres::Client, app: &str) -> Result<Option<i32>> {
    let pids: Vec<i32> = backends(client, app)
        .await?
        .into_iter()
        .filter(|(_, query)| {
            query.starts_with("LISTEN ")
                || query.contains("pg_control_system()")
                || query.starts_with("SELECT key, version FROM")
                || query.starts_with("/* pgcache listener ")
        })
        .map(|(pid, _)| pid)
        .collect();
    if pids.len() > 1 {
        bail!("several listener-like backends for {app}: {pids:?}");
    }
    Ok(pids.first().copied())
}

/// The backend holding the session advisory lock `key` (a bigint lock shows in `pg_locks` as
/// classid = high 32 bits, objid = low 32 bits, objsubid = 1).
pub async fn advisory_lock_holder(client: &tokio_postgres::Client, key: i64) -> Result<Option<i32>> {
    let high = i64::from((key >> 32) as u32);
    let low = i64::from(key as u32);
    let row = client
        .query_opt(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1",
            &[&high, &low],
        )
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Whether a backend of application `app` last ran `pg_try_advisory_lock`: the mark of a `get_or_load`
/// caller that tried the key's lock across processes and, while another session holds it, polls for it
/// (the last statement of an idle backend stays in `pg_stat_activity.query`).
pub async fn tried_advisory_lock(client: &tokio_postgres::Client, app: &str) -> Result<bool> {
    Ok(backends(client, app).await?.iter().any(|(_, query)| query.starts_with("SELECT pg_try_advisory_lock(")))
}

/// Counts the futures it tracks that are parked: each counts once, the first time it returns `Pending`,
/// that is once it has done all it can without waiting for something else (a lock, a query, a
/// notification). A test that needs callers to be waiting polls [`count`](Self::count) with a deadline
/// ([`eventually`]) instead of sleeping and hoping.
#[derive(Clone, Debug, Default)]
pub struct Parked(Arc<AtomicUsize>);

impl Parked {
    /// `future`, counted the first time it parks.
    pub fn track<F: Future>(&self, future: F) -> impl Future<Output = F::Output> {
        let parked = Arc::clone(&self.0);
        let mut counted = false;
        let mut future = Box::pin(future);
        std::future::poll_fn(move |cx| {
            let poll = future.as_mut().poll(cx);
            if poll.is_pending() && !counted {
                counted = true;
                parked.fetch_add(1, Ordering::SeqCst);
            }
            poll
        })
    }

    /// How many tracked futures have parked so far.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// `pg_terminate_backend(pid)`: true when the backend existed.
pub async fn terminate(client: &tokio_postgres::Client, pid: i32) -> Result<bool> {
    Ok(client.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await?.try_get(0)?)
}

/// Creates the login role `{prefix}{suffix}` (not a superuser, so `CONNECTION LIMIT` applies to it) allowed
/// to use every table, view and sequence of the `public` schema whose name starts with `prefix` (the test's
/// own objects), and returns a DSN for it on the server of `admin_dsn`. Run it after `init_db`. Roles are
/// cluster-wide: `prefix` should be a test's settings prefix.
///
/// Only the test's own objects: a `GRANT ... ON ALL TABLES IN SCHEMA public` rewrites the catalog row of every
/// table, and another test creating a trigger on its own table at that moment fails with "tuple concurrently
/// updated".
pub async fn login_role(admin_dsn: &str, prefix: &str, suffix: &str, connection_limit: i32) -> Result<String> {
    ensure!(
        prefix.bytes().chain(suffix.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "test role names are letters, digits and underscores: {prefix:?} {suffix:?}"
    );
    let admin = sql_client(admin_dsn).await?;
    let role = format!("{prefix}{suffix}");
    let role = role.trim_end_matches('_');
    let create = format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD 'pgcache_test' CONNECTION LIMIT {connection_limit}; \
         DO $grant$ DECLARE o record; BEGIN \
           FOR o IN SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'S') \
                       AND starts_with(c.relname, '{prefix}') LOOP \
             EXECUTE format(CASE o.relkind WHEN 'S' THEN 'GRANT ALL ON SEQUENCE %I TO %I' \
                                           ELSE 'GRANT ALL ON TABLE %I TO %I' END, o.relname, '{role}'); \
           END LOOP; END $grant$;"
    );
    // One implicit transaction: a GRANT racing a DDL on the same objects rolls it all back, so it is simply
    // tried again.
    let mut attempts = 0;
    while let Err(e) = admin.batch_execute(&create).await {
        attempts += 1;
        if attempts >= 5 {
            return Err(e.into());
        }
    }
    with_user(admin_dsn, role, "pgcache_test")
}

/// `dsn` with another user and password (URL or key=value form).
pub fn with_user(dsn: &str, user: &str, password: &str) -> Result<String> {
    for scheme in ["postgresql://", "postgres://"] {
        if let Some(rest) = dsn.strip_prefix(scheme) {
            let host_part = rest.split_once('@').map_or(rest, |(_, host)| host);
            return Ok(format!("{scheme}{user}:{password}@{host_part}"));
        }
    }
    if dsn.contains('=') {
        return Ok(format!("{dsn} user={user} password={password}"));
    }
    bail!("cannot rewrite the user of DSN {dsn:?}")
}

/// `dsn` with the server `options` set to `options` (e.g. `-c default_transaction_read_only=on`; spaces
/// and `=` only), in URL or key=value form.
pub fn with_options(dsn: &str, options: &str) -> String {
    if dsn.contains("://") {
        let separator = if dsn.contains('?') { '&' } else { '?' };
        format!("{dsn}{separator}options={}", options.replace(' ', "%20").replace('=', "%3D"))
    } else {
        format!("{dsn} options='{options}'")
    }
}

/// `dsn` naming another database, in URL or key=value form.
pub fn with_dbname(dsn: &str, dbname: &str) -> Result<String> {
    if !dsn.contains("://") {
        return Ok(format!("{dsn} dbname={dbname}"));
    }
    let (base, query) = dsn.split_once('?').map_or((dsn, None), |(b, q)| (b, Some(q)));
    let (scheme, rest) = base.split_once("://").context("DSN without a scheme")?;
    let authority = rest.split_once('/').map_or(rest, |(authority, _)| authority);
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    Ok(format!("{scheme}://{authority}/{dbname}{query}"))
}

/// Waits (up to 10 s) until the invalidation log of `settings`' prefix is empty: every invalidation
/// committed before the call has been sent by the flusher, so a [`NotifyTap::drain`] after it sees them.
///
/// # Errors
/// The log was not drained within 10 s (no node runs a flusher?), or the query failed.
pub async fn log_drained(client: &tokio_postgres::Client, settings: &CacheSettings) -> Result<()> {
    let sql = format!("SELECT NOT EXISTS (SELECT 1 FROM \"{}cache_invalidations\")", settings.schema_prefix);
    let empty = || async {
        client.query_one(&sql, &[]).await.ok().and_then(|row| row.try_get::<_, bool>(0).ok()) == Some(true)
    };
    eventually(Duration::from_secs(10), empty).await.map(drop)
}

/// A raw LISTEN on `channel` over its own connection, for tests that look at notifications themselves.
pub struct NotifyTap {
    client: tokio_postgres::Client,
    payloads: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl NotifyTap {
    /// Connects to `dsn` and listens on `channel`.
    ///
    /// # Errors
    /// Connection or LISTEN failed.
    pub async fn listen(dsn: &str, channel: &str) -> Result<Self> {
        let (client, mut connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
        let (tx, payloads) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                if let tokio_postgres::AsyncMessage::Notification(n) = message {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
            }
        });
        client.batch_execute(&format!("LISTEN \"{channel}\"")).await?;
        Ok(Self { client, payloads })
    }

    /// Every payload received until this tap's own `NOTIFY channel, marker` comes back (notifications
    /// are delivered in commit order, so everything committed before the marker is in the list). Writes
    /// reach the channel through the flusher: wait for [`log_drained`] first to see all of them.
    ///
    /// # Errors
    /// The marker did not come back within 10 s.
    pub async fn drain(&mut self, channel: &str) -> Result<Vec<String>> {
        // A well-formed event of a prefix nobody uses: caches on the channel ignore it (an unreadable
        // payload would make them flush their local cache).
        let marker = format!(r#"{{"p":"marker_{}","op":"marker","keys":[]}}"#, unique_name("m"));
        self.client.execute("SELECT pg_notify($1, $2)", &[&channel, &marker]).await?;
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.payloads.recv()).await {
                Ok(Some(payload)) if payload == marker => return Ok(seen),
                Ok(Some(payload)) => seen.push(payload),
                Ok(None) => bail!("notification connection closed"),
                Err(_) => bail!("own notification did not come back within 10 s"),
            }
        }
    }
}

/// Where `cache` serves `key` from right now ([`Source::Local`] proves a local copy is in use), without
/// changing anything: a missing key is an error, never a load.
pub async fn source_of<S: CacheStore>(cache: &S, key: &str) -> Result<Source> {
    let loaded = cache.get_or_load(key, || async { Err::<Fill, _>(anyhow::anyhow!("source_of: the key is missing")) });
    Ok(loaded.await.map_err(|e| anyhow::anyhow!("{e}"))?.source)
}

/// Reads `key` on `cache` until it is served from the local cache (a fill that races with an
/// invalidation, e.g. the notification of the write being read, is rightly not installed, so one read is
/// not always enough).
///
/// # Errors
/// The key is missing, or never became local within 5 s.
pub async fn make_local<S: CacheStore>(cache: &S, key: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        if source_of(cache, key).await? == Source::Local {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(5) {
            bail!("{key} never became local");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs blocking work (a [`TestCluster`] start or stop) off the async runtime.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
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

    /// Crashes the server (`pg_ctl stop -m immediate`: no shutdown checkpoint, so the next start runs crash
    /// recovery, which empties every `UNLOGGED` table).
    ///
    /// # Errors
    /// `pg_ctl` failed.
    pub fn crash(&self) -> Result<()> {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"])
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

    /// Makes the server check passwords on TCP connections (`scram-sha-256`) for every role but
    /// `postgres`, which stays trusted so the tests can still administer it; reloads the configuration.
    /// The reload is asynchronous: poll for its effect.
    ///
    /// # Errors
    /// `pg_hba.conf` could not be written, or `pg_ctl reload` failed.
    pub fn require_passwords(&self) -> Result<()> {
        let hba = self.dir.join("data").join("pg_hba.conf");
        std::fs::write(
            &hba,
            "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
        )
        .with_context(|| format!("writing {}", hba.display()))?;
        self.run("pg_ctl", &["-D", &self.data(), "reload"])
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

/// The workspace README's examples, compiled as doctests here: this crate sees every pgcache crate
/// (core, tower, axum), so each example compiles against the code it describes.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct WorkspaceReadme;
