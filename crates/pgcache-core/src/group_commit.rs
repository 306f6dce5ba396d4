//! Group commit: the writes of one cache instance that arrive while other writes are in flight share one
//! statement, one commit, and so one run of the notify trigger (one invalidation).
//!
//! There is no timer. When nothing is queued and fewer than `write_batches_in_flight` writes or batches
//! are in flight, a write's caller sends it itself, as one single-row statement: a lone write costs what
//! it did without group commit. Otherwise the write joins a queue, and a runner task (at most
//! `write_batches_in_flight` in all) takes a pooled connection, then everything queued that may go
//! together (up to `write_batch_max_rows` rows and `write_batch_max_bytes` bytes), sends it as one
//! statement, answers every caller, and goes on while the queue is not empty. So batches grow only
//! while others are in flight.
//!
//! The contract:
//! - **One kind per batch**: upserts, deletes, TTL changes or tag deletes. A batch takes queued writes of
//!   its kind in queue order, passing over the others; a key passed over (or in another batch in flight)
//!   is not taken again until that write went first, so the writes of one key apply in submission
//!   order. A tag delete reaches keys nobody named: it waits for every batch in flight and every write
//!   queued before it, and nothing starts while it runs.
//! - **Collapse**: several upserts of one key in a batch store the last (each caller gets the version
//!   stored, and learns its value was replaced); several deletes of one key count the row once, for the
//!   first; several TTL changes keep the last.
//! - **Errors are per caller**: values and keys are checked before they are queued. When the batch
//!   statement fails with an error the server gave about the request (say a constraint a row breaks),
//!   its writes are re-run one by one, so only the culprit fails. When the connection breaks or the
//!   statement overruns, every caller of the batch gets [`Error::BatchFailed`] (the batch may or may not
//!   have been applied, as for a single write that loses its connection).
//! - **Cancellation**: a caller that goes away before its write was taken into a batch withdraws it (it
//!   never lands); once taken, the write lands (or fails) with its batch, which runs in its own task, and
//!   no other caller is affected either way. A write its caller sent itself is alone in its statement:
//!   dropped mid-statement, it lands or not, as without group commit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::conn::{Conn, Db};
use crate::error::{excerpt, Error, Result};
use crate::settings::CacheSettings;
use crate::store::{self, Statements, UpsertRow};

/// One caller's write.
#[derive(Debug)]
pub(crate) enum Write {
    /// `set` (one row), `set_many` (several distinct keys) or a `get_or_set` fill.
    Upsert(Vec<UpsertRow>),
    /// `delete` (one key) or `delete_many`.
    Delete(Vec<String>),
    /// `touch`: a new TTL (`None`: never expires) for a live key.
    Touch {
        /// The key.
        key: String,
        /// The new TTL in milliseconds.
        ttl_ms: Option<i64>,
    },
    /// `delete_tags`.
    DeleteTags(Vec<String>),
}

/// What one caller's write did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Written {
    /// Per row of the write: the version stored for the key, and whether it is this write's value
    /// (`false`: a later write of the key in the same batch replaced it in the same statement).
    Upserted(Vec<(i64, bool)>),
    /// How many live rows this write deleted.
    Deleted(u64),
    /// Whether the key was live (and got its new TTL).
    Touched(bool),
    /// How many live rows carrying the tags were deleted.
    TagsDeleted(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Upsert,
    Delete,
    Touch,
    DeleteTags,
}

impl Write {
    fn kind(&self) -> Kind {
        match self {
            Write::Upsert(_) => Kind::Upsert,
            Write::Delete(_) => Kind::Delete,
            Write::Touch { .. } => Kind::Touch,
            Write::DeleteTags(_) => Kind::DeleteTags,
        }
    }

    /// The keys the write names (none for a tag delete).
    fn keys(&self) -> Vec<&str> {
        match self {
            Write::Upsert(rows) => rows.iter().map(|r| r.key.as_str()).collect(),
            Write::Delete(keys) => keys.iter().map(String::as_str).collect(),
            Write::Touch { key, .. } => vec![key.as_str()],
            Write::DeleteTags(_) => Vec::new(),
        }
    }

    fn rows(&self) -> usize {
        match self {
            Write::Upsert(rows) => rows.len(),
            Write::Delete(keys) => keys.len(),
            Write::Touch { .. } => 1,
            Write::DeleteTags(tags) => tags.len(),
        }
    }

    fn bytes(&self) -> usize {
        let text = |items: &[String]| items.iter().map(String::len).sum::<usize>();
        match self {
            Write::Upsert(rows) => rows.iter().map(|r| r.key.len() + r.value.len() + text(&r.tags)).sum(),
            Write::Delete(keys) => text(keys),
            Write::Touch { key, .. } => key.len(),
            Write::DeleteTags(tags) => text(tags),
        }
    }
}

/// A queued write and where its answer goes.
struct Job {
    write: Write,
    reply: oneshot::Sender<Result<Written>>,
}

/// Bounds of one batch and of the batches in flight.
#[derive(Clone, Copy, Debug)]
struct Limits {
    rows: usize,
    bytes: usize,
    in_flight: usize,
}

/// The queue and what is in flight, behind one mutex (held for bookkeeping only, never across I/O).
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Runner tasks alive.
    runners: usize,
    /// Batches sent and not yet answered.
    batches: usize,
    /// Keys of the batches in flight (with how many batches name them).
    keys: HashMap<String, usize>,
    /// A tag delete is in flight: nothing else starts.
    tags: bool,
}

impl Queue {
    /// The next batch, marked in flight; `None` when nothing queued may go now.
    fn take(&mut self, limits: Limits) -> Option<Vec<Job>> {
        // A caller that went away before its write was taken withdraws it.
        self.jobs.retain(|job| !job.reply.is_closed());
        if self.tags {
            return None;
        }
        let mut batch: Vec<Job> = Vec::new();
        let mut kind = None;
        let (mut rows, mut bytes) = (0usize, 0usize);
        // Keys of writes passed over: later writes of them must wait for those.
        let mut passed: HashSet<String> = HashSet::new();
        let mut i = 0;
        while let Some(job) = self.jobs.get(i) {
            let this = job.write.kind();
            if this == Kind::DeleteTags || kind == Some(Kind::DeleteTags) {
                // A tag delete goes only with tag deletes, after everything queued or in flight before it.
                let alone = kind.is_none() && passed.is_empty() && self.batches == 0;
                if this != Kind::DeleteTags || !(kind == Some(Kind::DeleteTags) || alone) {
                    break;
                }
            }
            let keys = job.write.keys();
            let waits = kind.is_some_and(|k| k != this)
                || keys.iter().any(|key| passed.contains(*key) || self.keys.contains_key(*key));
            if waits {
                passed.extend(keys.into_iter().map(str::to_owned));
                i += 1;
                continue;
            }
            let (r, b) = (job.write.rows(), job.write.bytes());
            if !batch.is_empty() && (rows.saturating_add(r) > limits.rows || bytes.saturating_add(b) > limits.bytes) {
                break;
            }
            let Some(job) = self.jobs.remove(i) else { break };
            rows = rows.saturating_add(r);
            bytes = bytes.saturating_add(b);
            kind = Some(this);
            batch.push(job);
        }
        let kind = kind?;
        let keys: Vec<&str> = batch.iter().flat_map(|job| job.write.keys()).collect();
        self.started(kind, &keys);
        Some(batch)
    }

    /// A batch (or a lone write) of `kind` naming `keys` is in flight.
    fn started(&mut self, kind: Kind, keys: &[&str]) {
        self.batches += 1;
        self.tags = kind == Kind::DeleteTags;
        for key in keys {
            *self.keys.entry((*key).to_owned()).or_default() += 1;
        }
    }

    /// A batch was answered: its keys are free again.
    fn finished(&mut self, keys: &[String]) {
        self.batches = self.batches.saturating_sub(1);
        self.tags = false;
        for key in keys {
            if let Some(n) = self.keys.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    self.keys.remove(key);
                }
            }
        }
    }
}

/// The runner slot of a write its caller sends itself. Dropped (answered, failed, or cancelled), it frees
/// the write's keys and hands over to a runner when writes queued meanwhile.
struct Slot {
    commit: Arc<GroupCommit>,
    keys: Vec<String>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut queue = self.commit.queue();
        queue.finished(&self.keys);
        let handover = !queue.jobs.is_empty();
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(runtime) if handover => {
                drop(queue);
                runtime.spawn(Arc::clone(&self.commit).run());
            }
            // Without a runtime (shutting down) the queued writes wait for the next write's runner.
            _ => queue.runners -= 1,
        }
    }
}

/// The group-commit queue of one cache instance.
pub(crate) struct GroupCommit {
    queue: Mutex<Queue>,
    db: Arc<Db>,
    sql: Arc<Statements>,
    limits: Limits,
    enabled: bool,
}

impl GroupCommit {
    pub(crate) fn new(db: Arc<Db>, sql: Arc<Statements>, settings: &CacheSettings) -> Arc<Self> {
        let limits = Limits {
            rows: settings.write_batch_max_rows.max(1),
            bytes: settings.write_batch_max_bytes.max(1),
            in_flight: settings.write_batches_in_flight.clamp(1, settings.max_pool_size.max(1)),
        };
        Arc::new(Self { queue: Mutex::new(Queue::default()), db, sql, limits, enabled: settings.group_commit })
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `write`: with the writes of other callers when group commit is on, else alone on a
    /// pooled connection.
    pub(crate) async fn submit(self: &Arc<Self>, write: Write) -> Result<Written> {
        if !self.enabled {
            return self.alone(&write).await;
        }
        if let Some(_slot) = self.slot_for(&write) {
            // Nothing queued or in the way: this caller sends its write itself, as without group commit.
            // Writes arriving meanwhile queue behind it; the slot hands over to a runner when dropped.
            return self.alone(&write).await;
        }
        let (reply, answer) = oneshot::channel();
        let start_runner = {
            let mut queue = self.queue();
            queue.jobs.push_back(Job { write, reply });
            let start = queue.runners < self.limits.in_flight;
            if start {
                queue.runners += 1;
            }
            start
        };
        if start_runner {
            tokio::spawn(Arc::clone(self).run());
        }
        // The runner answers every job it takes; a dropped sender means the runtime is shutting down.
        answer.await.unwrap_or(Err(Error::Closed))
    }

    /// A write sent alone on a pooled connection.
    async fn alone(&self, write: &Write) -> Result<Written> {
        let conn = self.db.conn().await?;
        let answers = self.apply(&conn, &[write]).await;
        if answers.as_ref().is_err_and(Error::is_unavailable) {
            conn.discard();
        }
        one(answers?)
    }

    /// A runner slot for `write` to go at once, when nothing is queued, a slot is free and nothing in
    /// flight is in its way.
    fn slot_for(self: &Arc<Self>, write: &Write) -> Option<Slot> {
        let mut queue = self.queue();
        let kind = write.kind();
        let keys = write.keys();
        let free = queue.jobs.is_empty()
            && queue.runners < self.limits.in_flight
            && !queue.tags
            && (kind != Kind::DeleteTags || queue.batches == 0)
            && keys.iter().all(|key| !queue.keys.contains_key(*key));
        if !free {
            return None;
        }
        queue.runners += 1;
        queue.started(kind, &keys);
        Some(Slot { commit: Arc::clone(self), keys: keys.into_iter().map(str::to_owned).collect() })
    }

    /// A runner: takes batches and sends them until nothing queued may go.
    async fn run(self: Arc<Self>) {
        loop {
            let has_work = !self.queue().jobs.is_empty();
            // A connection first: the batch grows while the runner waits for it.
            let conn = if has_work { Some(self.db.conn().await) } else { None };
            let batch = {
                let mut queue = self.queue();
                match conn.is_some().then(|| queue.take(self.limits)).flatten() {
                    Some(batch) => batch,
                    None => {
                        queue.runners -= 1;
                        return;
                    }
                }
            };
            let keys: Vec<String> =
                batch.iter().flat_map(|job| job.write.keys().into_iter().map(str::to_owned)).collect();
            match conn {
                Some(Ok(conn)) => {
                    let broken = self.send(&conn, batch).await;
                    if broken {
                        // Broken or wedged: never handed to the next caller.
                        conn.discard();
                    }
                }
                Some(Err(e)) => fail_all(batch, e),
                None => {}
            }
            self.queue().finished(&keys);
        }
    }

    /// Sends one batch and answers its callers: a failure tied to the request is narrowed down by
    /// re-running the writes one by one; a broken connection fails them all. Returns whether the
    /// connection broke.
    async fn send(&self, conn: &Conn, batch: Vec<Job>) -> bool {
        let writes: Vec<&Write> = batch.iter().map(|job| &job.write).collect();
        match self.apply(conn, &writes).await {
            Ok(answers) => {
                for (job, answer) in batch.into_iter().zip(answers) {
                    let _ = job.reply.send(answer);
                }
                false
            }
            Err(e) if batch.len() > 1 && !e.is_unavailable() => {
                tracing::debug!(target: "pgcache::group_commit", error = %e, writes = batch.len(), "batch refused; re-running its writes one by one");
                let mut broken = false;
                for job in batch {
                    let answer = match self.apply(conn, &[&job.write]).await {
                        Ok(answers) => one(answers),
                        Err(e) => {
                            broken |= e.is_unavailable();
                            Err(e)
                        }
                    };
                    let _ = job.reply.send(answer);
                }
                broken
            }
            Err(e) => {
                let broken = e.is_unavailable();
                fail_all(batch, e);
                broken
            }
        }
    }

    /// Runs `writes` (all of one kind, keys in flight nowhere else) as one statement; one answer per write.
    async fn apply(&self, conn: &Conn, writes: &[&Write]) -> Result<Vec<Result<Written>>> {
        let (client, sql) = (conn.client()?, &*self.sql);
        match writes {
            [Write::Upsert(rows)] if rows.len() == 1 => {
                let Some(row) = rows.first() else { return Ok(Vec::new()) };
                let upsert = store::upsert(client, sql, &row.key, &row.value, row.ttl_ms, &row.tags, row.meta);
                Ok(vec![Ok(Written::Upserted(vec![(conn.bounded(upsert).await?, true)]))])
            }
            [Write::Delete(keys)] if keys.len() == 1 => {
                let Some(key) = keys.first() else { return Ok(Vec::new()) };
                let live = conn.bounded(store::delete(client, sql, key)).await?;
                Ok(vec![Ok(Written::Deleted(u64::from(live)))])
            }
            [Write::Touch { key, ttl_ms }] => {
                Ok(vec![Ok(Written::Touched(conn.bounded(store::touch(client, sql, key, *ttl_ms)).await?))])
            }
            [Write::DeleteTags(tags)] => {
                let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
                Ok(vec![Ok(Written::TagsDeleted(conn.bounded(store::delete_tags(client, sql, &tags)).await?))])
            }
            _ => match writes.first().map(|w| w.kind()) {
                None => Ok(Vec::new()),
                Some(Kind::Upsert) => self.upserts(conn, writes).await,
                Some(Kind::Delete) => self.deletes(conn, writes).await,
                Some(Kind::Touch) => self.touches(conn, writes).await,
                Some(Kind::DeleteTags) => self.tag_deletes(conn, writes).await,
            },
        }
    }

    async fn upserts(&self, conn: &Conn, writes: &[&Write]) -> Result<Vec<Result<Written>>> {
        // The row stored for each key: the last one written.
        let mut slot_of: HashMap<&str, usize> = HashMap::new();
        let mut stored: Vec<&UpsertRow> = Vec::new();
        for write in writes {
            let Write::Upsert(rows) = write else { continue };
            for row in rows {
                match slot_of.get(row.key.as_str()) {
                    Some(&slot) => {
                        if let Some(s) = stored.get_mut(slot) {
                            *s = row;
                        }
                    }
                    None => {
                        slot_of.insert(&row.key, stored.len());
                        stored.push(row);
                    }
                }
            }
        }
        let versions: HashMap<String, i64> =
            conn.bounded(store::upsert_batch(conn.client()?, &self.sql, &stored)).await?.into_iter().collect();
        let answers = writes.iter().map(|write| {
            let Write::Upsert(rows) = write else { return Err(Error::Closed) };
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                // A row the statement did not write (a user trigger on the table dropped it) is not stored.
                let version = *versions.get(&row.key).ok_or_else(|| Error::Superseded { key: excerpt(&row.key) })?;
                let mine = slot_of.get(row.key.as_str()).and_then(|&slot| stored.get(slot));
                out.push((version, mine.is_some_and(|&stored| std::ptr::eq(stored, row))));
            }
            Ok(Written::Upserted(out))
        });
        Ok(answers.collect())
    }

    async fn deletes(&self, conn: &Conn, writes: &[&Write]) -> Result<Vec<Result<Written>>> {
        let mut keys: Vec<&str> = writes.iter().flat_map(|w| w.keys()).collect();
        keys.sort_unstable();
        keys.dedup();
        let live: HashMap<String, bool> =
            conn.bounded(store::delete_batch(conn.client()?, &self.sql, &keys)).await?.into_iter().collect();
        // A row deleted by several writes of the batch counts for the first, as if they ran in turn.
        let mut counted: HashSet<&str> = HashSet::new();
        let answers = writes.iter().map(|write| {
            let n = write.keys().into_iter().filter(|key| counted.insert(key) && live.get(*key) == Some(&true)).count();
            Ok(Written::Deleted(n as u64))
        });
        Ok(answers.collect())
    }

    async fn touches(&self, conn: &Conn, writes: &[&Write]) -> Result<Vec<Result<Written>>> {
        // The last TTL asked for a key is the one it keeps.
        let mut ttl_of: HashMap<&str, Option<i64>> = HashMap::new();
        let mut order: Vec<&str> = Vec::new();
        for write in writes {
            if let Write::Touch { key, ttl_ms } = write {
                if ttl_of.insert(key, *ttl_ms).is_none() {
                    order.push(key);
                }
            }
        }
        let ttls: Vec<Option<i64>> = order.iter().map(|key| ttl_of.get(key).copied().flatten()).collect();
        let live: HashSet<String> =
            conn.bounded(store::touch_batch(conn.client()?, &self.sql, &order, &ttls)).await?.into_iter().collect();
        let answers = writes.iter().map(|write| match write {
            Write::Touch { key, .. } => Ok(Written::Touched(live.contains(key))),
            _ => Err(Error::Closed),
        });
        Ok(answers.collect())
    }

    async fn tag_deletes(&self, conn: &Conn, writes: &[&Write]) -> Result<Vec<Result<Written>>> {
        let mut tags: Vec<&str> = Vec::new();
        for write in writes {
            if let Write::DeleteTags(asked) = write {
                tags.extend(asked.iter().map(String::as_str));
            }
        }
        tags.sort_unstable();
        tags.dedup();
        let deleted = conn.bounded(store::delete_tags_batch(conn.client()?, &self.sql, &tags)).await?;
        // A live row counts for the first caller with one of its tags, as if the deletes ran in turn.
        let mut counts = vec![0u64; writes.len()];
        for row in &deleted {
            let first = writes
                .iter()
                .position(|w| matches!(w, Write::DeleteTags(asked) if row.iter().any(|t| asked.contains(t))));
            if let Some(n) = first.and_then(|i| counts.get_mut(i)) {
                *n += 1;
            }
        }
        Ok(counts.into_iter().map(|n| Ok(Written::TagsDeleted(n))).collect())
    }
}

/// The answer of a lone write.
fn one(answers: Vec<Result<Written>>) -> Result<Written> {
    answers.into_iter().next().unwrap_or(Err(Error::Closed))
}

/// Answers every caller of a batch with the error that sank it: a lone caller gets it as it is.
fn fail_all(batch: Vec<Job>, error: Error) {
    let writes = batch.len();
    tracing::warn!(target: "pgcache::group_commit", error = %error, writes, "group-commit batch failed");
    if writes == 1 {
        if let Some(job) = batch.into_iter().next() {
            let _ = job.reply.send(Err(error));
        }
        return;
    }
    let source = Arc::new(error);
    for job in batch {
        let _ = job.reply.send(Err(Error::BatchFailed { writes, source: Arc::clone(&source) }));
    }
}
