//! A loopback TCP proxy that delays every chunk by half the emulated round trip (plus jitter), in order,
//! in both directions: `--network-latency-ms` for PostgreSQL and Redis alike, while L1 hits stay local.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Emulated network: round-trip latency and jitter (each one-way leg gets half, ± half the jitter).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Netem {
    pub(crate) rtt: Duration,
    pub(crate) jitter: Duration,
}

impl Netem {
    fn one_way(&self) -> Duration {
        let half = self.rtt / 2;
        let j = self.jitter.as_secs_f64() / 2.0;
        if j == 0.0 {
            return half;
        }
        let delta = rand::thread_rng().gen_range(-j..=j);
        Duration::from_secs_f64((half.as_secs_f64() + delta).max(0.0))
    }
}

/// Starts a proxy on 127.0.0.1:0 forwarding to `target`; returns its address. It runs until the process ends.
pub(crate) async fn proxy(target: SocketAddr, netem: Netem) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the latency proxy")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(server) = TcpStream::connect(target).await {
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pipe(cr, sw, netem));
                    tokio::spawn(pipe(sr, cw, netem));
                }
            });
        }
    });
    Ok(addr)
}

async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, netem: Netem) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = Instant::now();
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                // Never reorder: a chunk is due no earlier than the one before it.
                let due = (Instant::now() + netem.one_way()).max(last);
                last = due;
                if tx.send((due, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Rewrites `dsn`'s host and port to `addr` (URL form `postgresql://user@host:port/db` or key=value form).
pub(crate) fn rewrite_dsn(dsn: &str, addr: SocketAddr) -> anyhow::Result<String> {
    if let Some(rest) = dsn.strip_prefix("postgresql://").or_else(|| dsn.strip_prefix("postgres://")) {
        let (auth_host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let auth = auth_host.rsplit_once('@').map(|(a, _)| format!("{a}@")).unwrap_or_default();
        return Ok(format!("postgresql://{auth}{addr}{path}"));
    }
    let kept: Vec<&str> =
        dsn.split_whitespace().filter(|kv| !kv.starts_with("host=") && !kv.starts_with("port=")).collect();
    Ok(format!("{} host={} port={}", kept.join(" "), addr.ip(), addr.port()))
}

/// The host:port a DSN points at (for the proxy target).
pub(crate) async fn dsn_target(dsn: &str) -> anyhow::Result<SocketAddr> {
    let config: tokio_postgres::Config = dsn.parse().context("parsing the DSN")?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => anyhow::bail!("network emulation needs a TCP host in the DSN"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let mut addrs = tokio::net::lookup_host((host.as_str(), port)).await?;
    addrs.next().context("the DSN's host does not resolve")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsns_are_rewritten_to_the_proxy() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(
            rewrite_dsn("postgresql://postgres@127.0.0.1:5432/postgres", addr).unwrap(),
            "postgresql://postgres@127.0.0.1:4000/postgres"
        );
        assert_eq!(rewrite_dsn("host=localhost port=5 user=u", addr).unwrap(), "user=u host=127.0.0.1 port=4000");
    }

    #[tokio::test]
    async fn proxy_adds_the_round_trip() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut b = [0u8; 4];
            while s.read_exact(&mut b).await.is_ok() {
                s.write_all(&b).await.unwrap();
            }
        });
        let addr = proxy(target, Netem { rtt: Duration::from_millis(20), jitter: Duration::ZERO }).await.unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        assert!(started.elapsed() >= Duration::from_millis(19), "{:?}", started.elapsed());
    }
}
