//! [`CacheStore`] and [`TypedCache`] for [`PostgresCache`]: each operation on the local cache and the
//! shared table.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::fill::run_loader;
use super::PostgresCache;
use crate::cache_store::{CacheStatus, CacheStore, Entry, ListenerState, Loaded, Loader, SetOptions, Source};
use crate::codec::Codec;
use crate::error::Result;
use crate::local::Snapshot;
use crate::store;
use crate::sweeper;
use crate::ttl::{Expiry, Ttl};
use crate::typed::TypedCache;
use crate::validate;

#[async_trait]
impl<C: Send + Sync + 'static> CacheStore for PostgresCache<C> {
    async fn get_entry(&self, key: &str) -> Result<Option<Entry>> {
        self.check_key(key)?;
        if let Some(hit) = self.local_hit(key).await {
            return Ok(Some(hit));
        }
        // Boxed so that the (small) hit path does not carry the miss path's state.
        Box::pin(self.get_shared(key)).await
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        PostgresCache::get_bytes(self, key).await
    }

    async fn get_many_bytes(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        for key in keys {
            self.check_key(key)?;
        }
        let mut out = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let hit = self.local_hit(key).await.map(|e| e.value);
            if hit.is_none() {
                missing.push(i);
            }
            out.push(hit);
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let wanted: Vec<&str> = missing.iter().filter_map(|&i| keys.get(i).copied()).collect();
        let snapshots: Vec<Snapshot> = wanted.iter().map(|k| self.snapshot(k)).collect();
        let rows = match async { with_conn!(self, |c| store::get_many(c, &self.inner.sql, &wanted)) }.await {
            Ok(rows) => rows,
            Err(e) => return self.read_failed(e, out),
        };
        let found: HashMap<String, Entry> = rows.into_iter().collect();
        for (slot, (key, snapshot)) in missing.iter().zip(wanted.iter().zip(snapshots)) {
            if let (Some(row), Some(out)) = (found.get(*key), out.get_mut(*slot)) {
                self.install(key, row, snapshot).await;
                *out = Some(row.value.clone());
            }
        }
        Ok(out)
    }

    async fn set_entry(&self, key: &str, value: Bytes, options: &SetOptions) -> Result<i64> {
        self.check_key(key)?;
        validate::value(key, value.len(), self.inner.settings.max_value_bytes)?;
        validate::tags(&options.tags)?;
        let snapshot = self.snapshot(key);
        with_conn!(self, |c| self.write(c, key, &value, options, snapshot))
    }

    async fn set_many_bytes(&self, items: &[(&str, Bytes)], ttl: Ttl) -> Result<()> {
        let mut latest: Vec<(&str, &[u8])> = Vec::with_capacity(items.len());
        let mut seen = HashMap::with_capacity(items.len());
        for (key, value) in items {
            self.check_key(key)?;
            validate::value(key, value.len(), self.inner.settings.max_value_bytes)?;
            // The last write of a key in the batch wins (one statement cannot update a row twice).
            match seen.get(key) {
                Some(&i) => latest[i] = (*key, &value[..]),
                None => {
                    seen.insert(*key, latest.len());
                    latest.push((*key, &value[..]));
                }
            }
        }
        if latest.is_empty() {
            return Ok(());
        }
        let (keys, values): (Vec<&str>, Vec<&[u8]>) = latest.into_iter().unzip();
        let result =
            async { with_conn!(self, |c| store::upsert_many(c, &self.inner.sql, &keys, &values, self.ttl_ms(ttl))) }
                .await;
        for key in &keys {
            self.evict_local(key).await;
        }
        result.map(drop)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.check_key(key)?;
        let result = async { with_conn!(self, |c| store::delete(c, &self.inner.sql, key)) }.await;
        self.evict_local(key).await;
        result
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        for key in keys {
            self.check_key(key)?;
        }
        let result = async { with_conn!(self, |c| store::delete_many(c, &self.inner.sql, keys)) }.await;
        for key in keys {
            self.evict_local(key).await;
        }
        result
    }

    async fn delete_tags(&self, tags: &[&str]) -> Result<u64> {
        self.check_open()?;
        validate::tags(tags)?;
        let result = async { with_conn!(self, |c| store::delete_tags(c, &self.inner.sql, tags)) }.await;
        // Which keys carried the tags is only known to the database; the trigger tells the other nodes.
        if result.as_ref().is_ok_and(|n| *n > 0) {
            self.evict_local_all();
        }
        result
    }

    async fn clear(&self) -> Result<u64> {
        self.check_open()?;
        let result = async { with_conn!(self, |c| store::clear(c, &self.inner.sql)) }.await;
        self.evict_local_all();
        result
    }

    async fn ttl(&self, key: &str) -> Result<Option<Expiry>> {
        self.check_key(key)?;
        with_conn!(self, |c| store::ttl(c, &self.inner.sql, key))
    }

    async fn touch(&self, key: &str, ttl: Ttl) -> Result<bool> {
        self.check_key(key)?;
        let result = async { with_conn!(self, |c| store::touch(c, &self.inner.sql, key, self.ttl_ms(ttl))) }.await;
        self.evict_local(key).await;
        result
    }

    async fn cleanup_expired(&self) -> Result<u64> {
        self.check_open()?;
        sweeper::sweep(
            &self.inner.pool,
            &self.inner.sql,
            &self.inner.settings.schema_prefix,
            self.inner.settings.cleanup_batch_size,
            self.op_timeout(),
        )
        .await
    }

    async fn get_or_load(&self, key: &str, loader: Loader) -> Result<Loaded> {
        self.check_key(key)?;
        if let Some(hit) = self.local_hit(key).await {
            return Ok(Loaded::found(hit, Source::Local));
        }
        let mut flight = self.inner.flights.join(key).await;
        if flight.waited {
            if let Some(entry) = flight.landed() {
                return Ok(Loaded::found(entry, Source::Collapsed));
            }
            if let Some(hit) = self.local_hit(key).await {
                return Ok(Loaded::found(hit, Source::Collapsed));
            }
        }
        let snapshot = self.snapshot(key);
        let shared_source = if flight.waited { Source::Collapsed } else { Source::Shared };
        let loaded = match self.read_shared(key).await {
            Ok(Some(row)) => Loaded::found(row, shared_source),
            Ok(None) => self.fill_across_processes(key, loader, snapshot).await?,
            Err(e) => {
                self.read_failed(e, ())?;
                let fill = run_loader(loader).await?;
                self.check_fill(key, &fill)?;
                Loaded::by_loader(fill.value, None, self.expiry_of(fill.options.ttl), true)
            }
        };
        flight.land(loaded.entry(), snapshot);
        Ok(loaded)
    }

    fn status(&self) -> CacheStatus {
        let pool = self.inner.pool.status();
        let (local_entries, local_bytes) = self.inner.local.as_ref().map_or((0, 0), |l| l.usage_now());
        let listener = if !self.inner.settings.listener_enabled() {
            ListenerState::Disabled
        } else if self.inner.trust.trusted() {
            ListenerState::Listening
        } else {
            ListenerState::Reconnecting
        };
        CacheStatus {
            listener,
            pool_size: pool.size,
            pool_available: pool.available,
            pool_max_size: pool.max_size,
            local_entries,
            local_bytes,
            closed: self.inner.closed.load(Ordering::SeqCst),
        }
    }

    fn default_ttl(&self) -> Duration {
        self.inner.settings.default_ttl
    }
}

impl<C: Codec + Clone> TypedCache for PostgresCache<C> {
    type Codec = C;

    fn codec(&self) -> &C {
        &self.codec
    }
}
