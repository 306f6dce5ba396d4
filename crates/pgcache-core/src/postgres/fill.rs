//! The cross-process part of `get_or_set`: the advisory lock, the loader run under it, and the wait for
//! another process's fill.

use std::time::{Duration, Instant};

use super::PostgresCache;
use crate::cache_store::{Fill, Loaded, Loader, Source};
use crate::error::{Error, Result};
use crate::local::Snapshot;
use crate::lock::AdvisoryLock;
use crate::store;

impl<C> PostgresCache<C> {
    /// The cross-process part of `get_or_load`: take the key's advisory lock (re-check, load, write,
    /// unlock) or wait for the holder's fill, polling with back-off up to `lock_wait_timeout`.
    pub(super) async fn fill_across_processes(&self, key: &str, loader: Loader, snapshot: Snapshot) -> Result<Loaded> {
        let local = self.inner.local.as_ref().filter(|_| self.inner.settings.listener_enabled());
        let wait = local.map(|local| local.fills.subscribe(key));
        self.wait_or_fill(key, loader, snapshot, wait.as_ref().map(|w| &*w.signal)).await
    }

    async fn wait_or_fill(
        &self,
        key: &str,
        loader: Loader,
        snapshot: Snapshot,
        signal: Option<&tokio::sync::Notify>,
    ) -> Result<Loaded> {
        let lock = self.lock_key(key);
        let deadline = Instant::now() + self.inner.settings.lock_wait_timeout;
        let mut backoff = Duration::from_millis(2);
        loop {
            match AdvisoryLock::try_acquire(&self.inner.lock_pool, lock, self.op_timeout()).await {
                Ok(Some(guard)) => return self.fill_under_lock(key, loader, snapshot, guard).await,
                Ok(None) => {}
                // Every pooled connection is busy (e.g. other fills holding locks): keep waiting.
                Err(e) if e.is_pool_busy() => {}
                Err(e) => {
                    self.read_failed(e, ())?;
                    break;
                }
            }
            match &signal {
                // Woken by the listener as soon as another process writes the key; the poll is the fallback.
                Some(signal) => {
                    let _ = tokio::time::timeout(backoff, signal.notified()).await;
                }
                None => tokio::time::sleep(backoff).await,
            }
            backoff = (backoff * 2).min(Duration::from_millis(50));
            match self.read_shared(key).await {
                Ok(Some(row)) => return Ok(Loaded::found(row, Source::Collapsed)),
                Ok(None) => {}
                Err(e) => {
                    self.read_failed(e, ())?;
                    break;
                }
            }
            if Instant::now() >= deadline {
                tracing::warn!(target: "pgcache::cache", key, waited = ?self.inner.settings.lock_wait_timeout, "lock wait timed out; loading without the lock");
                break;
            }
        }
        // No lock (timeout or database unavailable): load anyway, try to store.
        let fill = run_loader(loader).await?;
        self.check_fill(key, &fill)?;
        let version =
            async { with_conn!(self, |c| self.write(c, key, &fill.value, &fill.options, snapshot)) }.await.ok();
        let unavailable = version.is_none();
        Ok(Loaded::by_loader(fill.value, version, self.expiry_of(fill.options.ttl), unavailable))
    }

    async fn fill_under_lock(
        &self,
        key: &str,
        loader: Loader,
        snapshot: Snapshot,
        guard: AdvisoryLock,
    ) -> Result<Loaded> {
        let bound = self.op_timeout();
        // Another process may have filled the key between our read and our lock.
        if let Some(client) = guard.client() {
            if let Ok(Ok(Some(row))) = tokio::time::timeout(bound, store::get(client, &self.inner.sql, key)).await {
                guard.release().await;
                self.install(key, &row, snapshot).await;
                return Ok(Loaded::found(row, Source::Collapsed));
            }
        }
        let fill = match run_loader(loader).await.and_then(|fill| self.check_fill(key, &fill).map(|()| fill)) {
            Ok(fill) => fill,
            Err(e) => {
                guard.release().await;
                return Err(e);
            }
        };
        let mut version = None;
        if let Some(client) = guard.client() {
            match tokio::time::timeout(bound, self.write(client, key, &fill.value, &fill.options, snapshot)).await {
                Ok(Ok(v)) => version = Some(v),
                Ok(Err(e)) => tracing::warn!(target: "pgcache::cache", error = %e, "could not store the loaded value"),
                Err(_) => {
                    tracing::warn!(target: "pgcache::cache", after = ?bound, "storing the loaded value timed out")
                }
            }
        }
        guard.release().await;
        if version.is_none() {
            // The lock connection broke (e.g. terminated): try once through the pool.
            version =
                async { with_conn!(self, |c| self.write(c, key, &fill.value, &fill.options, snapshot)) }.await.ok();
        }
        let unavailable = version.is_none();
        Ok(Loaded::by_loader(fill.value, version, self.expiry_of(fill.options.ttl), unavailable))
    }
}

pub(super) async fn run_loader(loader: Loader) -> Result<Fill> {
    loader().await.map_err(Error::Loader)
}
