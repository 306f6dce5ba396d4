//! Read replicas: shared-table reads on hot standbys, fenced so that a replica never answers with a
//! row older than an invalidation this node already applied.
//!
//! The fence is a WAL position of the primary taken *after* the node's latest invalidation (any change
//! of the invalidation epochs: a notification, a local write or delete, a flush). Every commit whose
//! notification the node has heard lies before it. A replica answers a read only when it has replayed
//! up to the fence; otherwise the primary answers. The fence does not depend on what a notification
//! carries: it only needs to know that one arrived.
//!
//! What a replica has replayed is learnt from the replica itself, before the read's snapshot: the read
//! statement also returns the replay position, which only ever grows, so it vouches for later reads. A
//! read whose fence is newer than that position first asks the replica again (one more round trip).
//! The fence is taken again at least every `max_replica_lag`, so a replica further behind than that
//! answers nothing even when no invalidation arrives (notifications off).

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::Mutex;

use crate::cache_store::Entry;
use crate::conn::{build_pool, Conn, Db};
use crate::error::Result;
use crate::settings::CacheSettings;
use crate::store::{self, LoadRow, Statements};
use crate::telemetry;

/// The read replicas of one cache instance, and its fence.
pub(crate) struct Replicas {
    replicas: Vec<Replica>,
    next: AtomicUsize,
    fence: Mutex<Fence>,
    max_lag: Duration,
    statement_bound: Duration,
    name: String,
    /// Reads a replica answered, and reads sent to the primary instead.
    answered: AtomicU64,
    fell_back: AtomicU64,
}

struct Replica {
    pool: Pool,
    /// The replica has replayed at least this far (bytes of WAL; 0: unknown).
    replayed: AtomicU64,
    /// After a failure, the replica is skipped until then (one warning per outage, no connect per read).
    retry_at: std::sync::Mutex<Option<Instant>>,
}

/// How long a failed replica is skipped before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl Replica {
    fn skipped(&self) -> bool {
        let retry_at = self.retry_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        retry_at.is_some_and(|at| Instant::now() < at)
    }

    /// Records a failure; true when it starts an outage (the replica was not already failing).
    fn failed(&self) -> bool {
        let mut retry_at = self.retry_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = retry_at.is_none();
        *retry_at = Some(Instant::now() + RETRY_AFTER);
        first
    }

    fn answered(&self) {
        let mut retry_at = self.retry_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if retry_at.take().is_some() {
            tracing::info!(target: "pgcache::replica", "replica answers again");
        }
    }
}

/// A primary WAL position taken after every invalidation up to `generation`.
#[derive(Clone, Copy)]
struct Fence {
    lsn: u64,
    generation: u64,
    taken: Option<Instant>,
}

/// Where a fenced read was answered.
pub(crate) enum Answer<T> {
    /// By a replica that had replayed the fence.
    Replica(T),
    /// Not by a replica: the caller reads the primary.
    Primary,
}

impl Replicas {
    /// The replicas of `settings.read_dsns` (`None` without any); no connection is opened yet.
    pub(crate) fn new(settings: &CacheSettings) -> Result<Option<Self>> {
        if settings.read_dsns.is_empty() {
            return Ok(None);
        }
        let size = settings.max_pool_size.max(1);
        let replicas = settings
            .read_dsns
            .iter()
            .map(|dsn| {
                Ok(Replica {
                    pool: build_pool(settings, "read_dsns", dsn, size)?,
                    replayed: AtomicU64::new(0),
                    retry_at: std::sync::Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Self {
            replicas,
            next: AtomicUsize::new(0),
            fence: Mutex::new(Fence { lsn: 0, generation: 0, taken: None }),
            max_lag: settings.max_replica_lag,
            statement_bound: crate::conn::statement_bound(settings),
            name: settings.schema_prefix.clone(),
            answered: AtomicU64::new(0),
            fell_back: AtomicU64::new(0),
        }))
    }

    /// Reads `key` on a replica if one has replayed past every invalidation up to `generation` (the
    /// invalidation epochs' counter, read *after* the caller's snapshot: an invalidation is then either
    /// fenced or refused at install), else [`Answer::Primary`]. The row comes with `get_or_load`'s
    /// columns.
    pub(crate) async fn get(
        &self,
        primary: &Db,
        sql: &Statements,
        key: &str,
        generation: u64,
    ) -> Answer<Option<LoadRow>> {
        self.fenced(primary, generation, |conn| async move {
            conn.bounded(store::get_on_replica(conn.client()?, sql, key)).await
        })
        .await
    }

    /// [`get`](Self::get) for many keys in one statement: the live rows found, under the same fence.
    pub(crate) async fn get_many(
        &self,
        primary: &Db,
        sql: &Statements,
        keys: &[&str],
        generation: u64,
    ) -> Answer<Vec<(String, Entry)>> {
        self.fenced(primary, generation, |conn| async move {
            conn.bounded(store::get_many_on_replica(conn.client()?, sql, keys)).await
        })
        .await
    }

    /// Counts a read sent to the primary because the listener is not trusted.
    pub(crate) fn not_trusted(&self) {
        self.fell_back.fetch_add(1, Ordering::Relaxed);
        telemetry::shared_read(&self.name, "primary", "unavailable");
    }

    /// Reads a replica answered, and reads that went to the primary instead.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.answered.load(Ordering::Relaxed), self.fell_back.load(Ordering::Relaxed))
    }

    /// Runs `read` (which returns its rows and the replay position it saw) on a replica that has
    /// replayed the fence for `generation`, else [`Answer::Primary`]; counts where the read went.
    async fn fenced<T, F, Fut>(&self, primary: &Db, generation: u64, read: F) -> Answer<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<(T, u64)>>,
    {
        let answer = self.try_fenced(primary, generation, read).await;
        let counter = if matches!(answer, Answer::Replica(_)) { &self.answered } else { &self.fell_back };
        counter.fetch_add(1, Ordering::Relaxed);
        answer
    }

    async fn try_fenced<T, F, Fut>(&self, primary: &Db, generation: u64, read: F) -> Answer<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<(T, u64)>>,
    {
        let fence = match self.fence(primary, generation).await {
            Ok(fence) => fence,
            Err(e) => {
                tracing::warn!(target: "pgcache::replica", error = %e, "cannot read the primary's WAL position; reading the primary");
                telemetry::shared_read(&self.name, "primary", "unavailable");
                return Answer::Primary;
            }
        };
        let Some(replica) = self.pick() else {
            telemetry::shared_read(&self.name, "primary", "unavailable");
            return Answer::Primary;
        };
        match self.read(replica, fence, read).await {
            Ok(Some(rows)) => {
                replica.answered();
                telemetry::shared_read(&self.name, "replica", "fenced");
                Answer::Replica(rows)
            }
            Ok(None) => {
                tracing::debug!(target: "pgcache::replica", "replica behind the fence; reading the primary");
                telemetry::shared_read(&self.name, "primary", "lagging");
                Answer::Primary
            }
            Err(e) => {
                if replica.failed() {
                    tracing::warn!(target: "pgcache::replica", error = %e, "replica read failed; reading the primary until it answers");
                }
                telemetry::shared_read(&self.name, "primary", "unavailable");
                Answer::Primary
            }
        }
    }

    /// The next replica in turn that is not sitting out a failure.
    fn pick(&self) -> Option<&Replica> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.replicas.len();
        (0..n).filter_map(|i| self.replicas.get(start.wrapping_add(i) % n)).find(|r| !r.skipped())
    }

    /// The fence for reads after invalidations up to `generation`: the current one if it covers them
    /// and is younger than `max_replica_lag`, else a new one from the primary (one refresh at a time;
    /// callers waiting meanwhile share it).
    async fn fence(&self, primary: &Db, generation: u64) -> Result<u64> {
        let mut fence = self.fence.lock().await;
        let fresh = fence.taken.is_some_and(|t| t.elapsed() < self.max_lag);
        if fresh && fence.generation >= generation {
            return Ok(fence.lsn);
        }
        let taken = Instant::now();
        let conn = primary.conn().await?;
        let lsn = conn.bounded(store::current_wal_lsn(conn.client()?)).await?;
        *fence = Fence { lsn, generation, taken: Some(taken) };
        Ok(lsn)
    }

    /// What `read` returns on `replica` when it has replayed `fence`: `Ok(None)` when it has not.
    async fn read<T, F, Fut>(&self, replica: &Replica, fence: u64, read: F) -> Result<Option<T>>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<(T, u64)>>,
    {
        let object = replica.pool.get().await.map_err(crate::error::Error::from_pool)?;
        let conn = Conn::new(object, self.statement_bound);
        if replica.replayed.load(Ordering::SeqCst) < fence {
            // Asked before the read's snapshot is taken: what it says holds for the read.
            let replayed = conn.bounded(store::replayed_wal_lsn(conn.client()?)).await?;
            replica.replayed.fetch_max(replayed, Ordering::SeqCst);
            if replayed < fence {
                return Ok(None);
            }
        }
        let (rows, replayed) = read(conn).await?;
        // Read during the statement, so after its snapshot: it vouches for later reads only.
        replica.replayed.fetch_max(replayed, Ordering::SeqCst);
        Ok(Some(rows))
    }

    pub(crate) fn close(&self) {
        for replica in &self.replicas {
            replica.pool.close();
        }
    }
}
