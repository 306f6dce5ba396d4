//! A throw-away `redis-server` on a free loopback port, for the Redis baselines.
//!
//! Uses `PGCACHE_REDIS_URL` when set. Otherwise it finds `redis-server` on PATH, installs it with
//! `apt-get install -y redis-server` when missing and allowed (`root`, apt present), and starts it
//! without persistence; the server is killed when the handle drops. When none of that works the caller
//! gets the reason, prints it, and skips the Redis rows.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// A running Redis (ours or the user's).
pub(crate) struct RedisServer {
    pub(crate) url: String,
    _child: Option<Child>,
}

impl RedisServer {
    /// Finds or starts a Redis server; see the module docs.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        if let Ok(url) = std::env::var("PGCACHE_REDIS_URL") {
            return Ok(Self { url, _child: None });
        }
        let binary = match which("redis-server") {
            Some(path) => path,
            None => {
                install().await?;
                which("redis-server").context("redis-server still not found after apt-get install")?
            }
        };
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server")?;
        let url = format!("redis://127.0.0.1:{port}/");
        let client = redis::Client::open(url.as_str())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("redis-server on port {port} did not answer PING within 10s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { url, _child: Some(child) })
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

async fn install() -> anyhow::Result<()> {
    if which("apt-get").is_none() {
        bail!("redis-server is not installed and apt-get is not available: install Redis or set PGCACHE_REDIS_URL");
    }
    eprintln!("redis-server not found: running `apt-get install -y redis-server`");
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "redis-server"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .context("running apt-get")?;
    if !status.success() {
        bail!("`apt-get install -y redis-server` failed ({status}): install Redis or set PGCACHE_REDIS_URL");
    }
    Ok(())
}
