//! [`ShardedCache`]: one [`PostgresCache`] per primary, keys spread over them by rendezvous hashing.
//!
//! Each shard is a complete cache of its own (pool, listener, lock session, sweeper, local cache), so
//! everything a single cache guarantees holds per key; this module only routes. Batch operations split
//! per shard and run concurrently; `clear`, `delete_tags` and `cleanup_expired` fan out to every shard.
//! A shard that is down fails open for its own keys (reads are misses, `get_or_load` runs the loader),
//! and the other shards do not notice.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::join_all;
use tokio_postgres::config::Host;

use crate::cache::PostgresCache;
use crate::cache_store::{
    CacheStatus, CacheStore, DynLoader, DynOutput, Entry, ListenerState, LoadError, Loaded, SetOptions,
};
use crate::codec::{Codec, JsonCodec};
use crate::error::{Error, Result};
use crate::settings::{parse_dsn, CacheSettings};
use crate::ttl::{Expiry, Ttl};
use crate::typed::TypedCache;

/// A cache spread over several PostgreSQL primaries (shards), each key living on exactly one of them.
///
/// A key's shard is the one with the highest rendezvous score `xxh3_64_with_seed(key, xxh3_64(label))`,
/// where a shard's label is `host:port/dbname` from its DSN (never the user or password). Adding a shard
/// therefore moves about `1/N` of the keys (only onto the new shard), removing one moves only its own
/// keys, and the order of the DSNs does not matter. Cheap to clone; implements [`CacheStore`] and
/// [`TypedCache`], so `PgCacheLayer`, `Cached<T>` and [`SharedCache`](crate::SharedCache) take it as is.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use pgcache_core::prelude::*;
/// use pgcache_core::ShardedCache;
///
/// let settings = CacheSettings::new("postgresql://cache@db1/cache")
///     .shard_dsns(["postgresql://cache@db1/cache", "postgresql://cache@db2/cache"]);
/// ShardedCache::init_db(&settings).await?;
/// let cache = ShardedCache::connect(settings).await?;
/// cache.set("user:1", &"Ava", None).await?;
/// assert_eq!(cache.get::<String>("user:1").await?, Some("Ava".to_owned()));
/// # Ok(()) }
/// ```
pub struct ShardedCache<C = JsonCodec> {
    shards: Arc<[Shard<C>]>,
    codec: C,
}

struct Shard<C> {
    label: String,
    seed: u64,
    cache: PostgresCache<C>,
}

impl<C: Clone> Clone for ShardedCache<C> {
    fn clone(&self) -> Self {
        Self { shards: Arc::clone(&self.shards), codec: self.codec.clone() }
    }
}

impl<C> std::fmt::Debug for ShardedCache<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedCache").field("shards", &self.labels().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

/// One settings value per shard: `settings` with `dsn` set to each of `shard_dsns` (or `dsn` alone when
/// there are none). `listen_dsn` names one server, so it cannot go with several shards: build per-shard
/// settings and use [`ShardedCache::connect_shards`] for that.
fn per_shard(settings: &CacheSettings) -> Result<Vec<CacheSettings>> {
    if settings.shard_dsns.is_empty() {
        return Ok(vec![settings.clone()]);
    }
    if settings.listen_dsn.is_some() && settings.shard_dsns.len() > 1 {
        return Err(Error::InvalidSetting {
            name: "listen_dsn",
            reason: "one listen_dsn cannot serve several shards: use ShardedCache::connect_shards with one \
                     settings value per shard"
                .to_owned(),
        });
    }
    if !settings.read_dsns.is_empty() && settings.shard_dsns.len() > 1 {
        return Err(Error::InvalidSetting {
            name: "read_dsns",
            reason: "read replicas belong to one primary: use ShardedCache::connect_shards with one settings \
                     value per shard"
                .to_owned(),
        });
    }
    Ok(settings
        .shard_dsns
        .iter()
        .map(|dsn| {
            let mut one = settings.clone();
            one.dsn = dsn.clone();
            one.shard_dsns = Vec::new();
            one
        })
        .collect())
}

/// A shard's identity in the hash: `host:port/dbname` (every host and port of a multi-host DSN), never
/// the credentials, so rotating a password moves no key.
fn shard_label(settings: &CacheSettings) -> Result<String> {
    let config = parse_dsn("shard_dsns", &settings.dsn)?;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            let port = config.get_ports().get(i).or_else(|| config.get_ports().first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let user = config.get_user().unwrap_or_default();
    Ok(format!("{}/{}", hosts.join(","), config.get_dbname().unwrap_or(user)))
}

/// The rendezvous score of `key` on the shard whose label hashes to `seed`.
fn score(seed: u64, key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), seed)
}

/// The index of `key`'s shard among shards seeded with `seeds` (highest score; ties, which need equal
/// 64-bit hashes, go to the lower index).
fn pick(seeds: impl Iterator<Item = u64>, key: &str) -> usize {
    let mut best = (0, 0u64);
    for (i, seed) in seeds.enumerate() {
        let s = score(seed, key);
        if i == 0 || s > best.1 {
            best = (i, s);
        }
    }
    best.0
}

fn seed_of(label: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(label.as_bytes())
}

impl ShardedCache<JsonCodec> {
    /// Creates or upgrades the cache table on every shard (as [`PostgresCache::init_db`], concurrently).
    ///
    /// # Errors
    /// The first shard's error, after every shard was tried.
    pub async fn init_db(settings: &CacheSettings) -> Result<()> {
        let all = per_shard(settings)?;
        first_error(join_all(all.iter().map(PostgresCache::init_db)).await).map(drop)
    }

    /// Connects to every shard in `settings.shard_dsns` (or to `dsn` alone), concurrently. A shard that
    /// is unreachable now (an outage: [`Error::is_unavailable`]) is connected lazily instead, with a
    /// warning: its keys fail open until it is back, and the other shards serve as usual. Any other
    /// error (bad settings, schema not initialised) fails the connect.
    ///
    /// # Errors
    /// As [`PostgresCache::connect`]; [`Error::InvalidSetting`] for duplicate shards or a `listen_dsn`
    /// with several shards.
    pub async fn connect(settings: CacheSettings) -> Result<Self> {
        settings.validate()?;
        Self::connect_shards(per_shard(&settings)?).await
    }

    /// Like [`connect`](Self::connect) with no I/O now: every shard connects on first use.
    ///
    /// # Errors
    /// As [`PostgresCache::connect_lazy`].
    pub fn connect_lazy(settings: CacheSettings) -> Result<Self> {
        settings.validate()?;
        let caches = per_shard(&settings)?.into_iter().map(PostgresCache::connect_lazy).collect::<Result<Vec<_>>>()?;
        Self::from_caches(caches)
    }

    /// Connects one shard per settings value (each with its own `dsn`, `listen_dsn`, pool sizes...), as
    /// [`connect`](Self::connect) does.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_shards(shards: Vec<CacheSettings>) -> Result<Self> {
        let connected = join_all(shards.into_iter().map(|settings| async move {
            match PostgresCache::connect(settings.clone()).await {
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(target: "pgcache::shard", error = %e, "a shard is unreachable; its keys fail open until it is back");
                    PostgresCache::connect_lazy(settings)
                }
                other => other,
            }
        }))
        .await;
        let caches = connected.into_iter().collect::<Result<Vec<_>>>()?;
        Self::from_caches(caches)
    }

    /// A sharded cache over caches built elsewhere (their settings name one server each).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] (`shard_dsns`) for no cache or two caches on the same server.
    pub fn from_caches(caches: Vec<PostgresCache>) -> Result<Self> {
        if caches.is_empty() {
            return Err(Error::InvalidSetting { name: "shard_dsns", reason: "no shard given".to_owned() });
        }
        let mut shards = Vec::with_capacity(caches.len());
        for cache in caches {
            let label = shard_label(cache.settings())?;
            if shards.iter().any(|s: &Shard<JsonCodec>| s.label == label) {
                return Err(Error::InvalidSetting {
                    name: "shard_dsns",
                    reason: format!("two shards name the same server and database ({label})"),
                });
            }
            shards.push(Shard { seed: seed_of(&label), label, cache });
        }
        Ok(Self { shards: shards.into(), codec: JsonCodec })
    }
}

impl<C: Clone> ShardedCache<C> {
    /// The same cache with another codec for typed values.
    pub fn with_codec<D: Codec + Clone>(self, codec: D) -> ShardedCache<D> {
        let shards: Vec<Shard<D>> = self
            .shards
            .iter()
            .map(|s| Shard { label: s.label.clone(), seed: s.seed, cache: s.cache.clone().with_codec(codec.clone()) })
            .collect();
        ShardedCache { shards: shards.into(), codec }
    }
}

impl<C> ShardedCache<C> {
    /// How many shards there are.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The index (into [`shards`](Self::shards)) of the shard holding `key`.
    pub fn shard_of(&self, key: &str) -> usize {
        pick(self.shards.iter().map(|s| s.seed), key)
    }

    /// Each shard's label (`host:port/dbname`, its identity in the hash), in order.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.shards.iter().map(|s| s.label.as_str())
    }

    /// The shards' caches, in order (for per-shard status, metrics or maintenance).
    pub fn shards(&self) -> impl Iterator<Item = &PostgresCache<C>> {
        self.shards.iter().map(|s| &s.cache)
    }

    /// Closes every shard. Later calls return [`Error::Closed`].
    pub async fn close(&self) {
        join_all(self.shards.iter().map(|s| s.cache.close())).await;
    }

    fn shard(&self, key: &str) -> &PostgresCache<C> {
        // `shard_of` returns an index below the (non-zero) shard count.
        &self.shards[self.shard_of(key)].cache
    }

    /// The positions in `keys` of each shard's keys (empty for a shard with none).
    fn split<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Vec<Vec<usize>> {
        let mut groups = vec![Vec::new(); self.shards.len()];
        for (i, key) in keys.enumerate() {
            if let Some(group) = groups.get_mut(self.shard_of(key)) {
                group.push(i);
            }
        }
        groups
    }
}

/// Sums the counts of a fan-out; the first error wins (every shard has run by then).
fn sum(results: Vec<Result<u64>>) -> Result<u64> {
    first_error(results).map(|counts| counts.into_iter().sum())
}

fn first_error<T>(results: Vec<Result<T>>) -> Result<Vec<T>> {
    results.into_iter().collect()
}

#[async_trait]
impl<C: Send + Sync + 'static> CacheStore for ShardedCache<C> {
    async fn get_entry(&self, key: &str) -> Result<Option<Entry>> {
        self.shard(key).get_entry(key).await
    }

    fn peek_local(&self, key: &str) -> Option<Entry> {
        self.shard(key).peek_local(key)
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        PostgresCache::get_bytes(self.shard(key), key).await
    }

    async fn get_many_bytes(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        let groups = self.split(keys.iter().copied());
        let reads = self.shards.iter().zip(&groups).filter(|(_, g)| !g.is_empty()).map(|(shard, group)| async move {
            let mine: Vec<&str> = group.iter().filter_map(|&i| keys.get(i).copied()).collect();
            (group, shard.cache.get_many_bytes(&mine).await)
        });
        let mut out = vec![None; keys.len()];
        for (group, values) in join_all(reads).await {
            for (&i, value) in group.iter().zip(values?) {
                if let Some(slot) = out.get_mut(i) {
                    *slot = value;
                }
            }
        }
        Ok(out)
    }

    async fn set_entry(&self, key: &str, value: Bytes, options: &SetOptions) -> Result<i64> {
        self.shard(key).set_entry(key, value, options).await
    }

    async fn set_many_bytes(&self, items: &[(&str, Bytes)], ttl: Ttl) -> Result<()> {
        let groups = self.split(items.iter().map(|(k, _)| *k));
        let writes = self.shards.iter().zip(&groups).filter(|(_, g)| !g.is_empty()).map(|(shard, group)| async move {
            let mine: Vec<(&str, Bytes)> = group.iter().filter_map(|&i| items.get(i).cloned()).collect();
            shard.cache.set_many_bytes(&mine, ttl).await
        });
        first_error(join_all(writes).await).map(drop)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.shard(key).delete(key).await
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        let groups = self.split(keys.iter().copied());
        let deletes = self.shards.iter().zip(&groups).filter(|(_, g)| !g.is_empty()).map(|(shard, group)| async move {
            let mine: Vec<&str> = group.iter().filter_map(|&i| keys.get(i).copied()).collect();
            shard.cache.delete_many(&mine).await
        });
        sum(join_all(deletes).await)
    }

    async fn delete_tags(&self, tags: &[&str]) -> Result<u64> {
        sum(join_all(self.shards.iter().map(|s| s.cache.delete_tags(tags))).await)
    }

    async fn clear(&self) -> Result<u64> {
        sum(join_all(self.shards.iter().map(|s| s.cache.clear())).await)
    }

    async fn ttl(&self, key: &str) -> Result<Option<Expiry>> {
        self.shard(key).ttl(key).await
    }

    async fn touch(&self, key: &str, ttl: Ttl) -> Result<bool> {
        self.shard(key).touch(key, ttl).await
    }

    async fn cleanup_expired(&self) -> Result<u64> {
        sum(join_all(self.shards.iter().map(|s| s.cache.cleanup_expired())).await)
    }

    async fn get_or_load_dyn(
        &self,
        key: &str,
        loader: DynLoader,
    ) -> std::result::Result<Loaded<DynOutput>, LoadError<DynOutput>> {
        self.shard(key).get_or_load_dyn(key, loader).await
    }

    /// Every shard's status summed; the listener is `Listening` only when every shard's is (or
    /// `Disabled` when every shard's is); `closed` when every shard is closed.
    fn status(&self) -> CacheStatus {
        let all: Vec<CacheStatus> = self.shards.iter().map(|s| s.cache.status()).collect();
        let listener = if all.iter().all(|s| s.listener == ListenerState::Disabled) {
            ListenerState::Disabled
        } else if all.iter().all(|s| s.listener == ListenerState::Listening) {
            ListenerState::Listening
        } else {
            ListenerState::Reconnecting
        };
        let total = |f: fn(&CacheStatus) -> usize| all.iter().map(f).sum();
        CacheStatus {
            listener,
            pool_size: total(|s| s.pool_size),
            pool_available: total(|s| s.pool_available),
            pool_max_size: total(|s| s.pool_max_size),
            pool_waiting: total(|s| s.pool_waiting),
            local_entries: all.iter().map(|s| s.local_entries).sum(),
            local_bytes: all.iter().map(|s| s.local_bytes).sum(),
            closed: all.iter().all(|s| s.closed),
            replica_reads: all.iter().map(|s| s.replica_reads).sum(),
            replica_fallbacks: all.iter().map(|s| s.replica_fallbacks).sum(),
        }
    }

    fn default_ttl(&self) -> Duration {
        self.shards.first().map_or(Duration::ZERO, |s| s.cache.default_ttl())
    }
}

impl<C: Codec + Clone> TypedCache for ShardedCache<C> {
    type Codec = C;

    fn codec(&self) -> &C {
        &self.codec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds(n: usize) -> Vec<u64> {
        (0..n).map(|i| seed_of(&format!("db{i}.internal:5432/cache"))).collect()
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("user:{i}:profile")).collect()
    }

    #[test]
    fn adding_a_shard_moves_about_one_key_in_n_and_only_onto_the_new_shard() {
        let keys = keys(100_000);
        for n in 1..8 {
            let before = seeds(n);
            let after = seeds(n + 1);
            let mut moved = 0usize;
            for key in &keys {
                let (old, new) = (pick(before.iter().copied(), key), pick(after.iter().copied(), key));
                if old != new {
                    assert_eq!(new, n, "a key moved between two old shards");
                    moved += 1;
                }
            }
            let share = moved as f64 / keys.len() as f64;
            let ideal = 1.0 / (n + 1) as f64;
            println!("{n} -> {} shards: {:.2} % of keys moved (ideal {:.2} %)", n + 1, share * 100.0, ideal * 100.0);
            assert!((share - ideal).abs() < 0.01, "{n} -> {}: moved {share}, ideal {ideal}", n + 1);
        }
    }

    #[test]
    fn removing_a_shard_moves_only_its_keys() {
        let keys = keys(20_000);
        let all = seeds(4);
        let without: Vec<u64> = all.iter().copied().enumerate().filter(|(i, _)| *i != 1).map(|(_, s)| s).collect();
        for key in &keys {
            let old = pick(all.iter().copied(), key);
            let new = pick(without.iter().copied(), key);
            let new_in_old_numbering = if new >= 1 { new + 1 } else { new };
            if old != 1 {
                assert_eq!(old, new_in_old_numbering, "{key} moved though its shard stayed");
            }
        }
    }

    #[test]
    fn keys_spread_evenly() {
        let keys = keys(60_000);
        let seeds = seeds(3);
        let mut counts = [0usize; 3];
        for key in &keys {
            counts[pick(seeds.iter().copied(), key)] += 1;
        }
        for c in counts {
            assert!((19_000..21_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn the_label_is_the_server_and_database_never_the_password() {
        let s = CacheSettings::new("postgresql://u:secret@db1:6432/cache");
        assert_eq!(shard_label(&s).unwrap(), "db1:6432/cache");
        let s = CacheSettings::new("host=db1,db2 port=5433 user=u password=secret dbname=c");
        assert_eq!(shard_label(&s).unwrap(), "db1:5433,db2:5433/c");
    }

    #[test]
    fn listen_dsn_cannot_serve_several_shards() {
        let s = CacheSettings::new("postgresql://u@db1/c").shard_dsns(["postgresql://u@db1/c", "postgresql://u@db2/c"]);
        assert_eq!(per_shard(&s).unwrap().len(), 2);
        let s = s.listen_dsn("postgresql://u@db1/c");
        assert!(matches!(per_shard(&s), Err(Error::InvalidSetting { name: "listen_dsn", .. })));
    }

    #[test]
    fn duplicate_shards_are_refused() {
        let a = PostgresCache::connect_lazy(CacheSettings::new("postgresql://u:a@db1/c")).unwrap();
        let b = PostgresCache::connect_lazy(CacheSettings::new("postgresql://other:b@db1:5432/c")).unwrap();
        assert!(matches!(ShardedCache::from_caches(vec![a, b]), Err(Error::InvalidSetting { name: "shard_dsns", .. })));
    }
}
