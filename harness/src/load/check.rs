//! The consistency check, run by the coordinator over every process's events after the run.
//!
//! Rules (all times from the one machine clock; an operation's effect lies somewhere within its
//! `start..end` window, so only orders that are certain count):
//! - **stale read**: a read starting at `t` returned write `w`, yet some write or delete `x` of that key
//!   ended before `t - bound` and certainly came after `w` (`x.start > w.end`).
//! - **missing value**: a read returned nothing although a write `x` ended before `t - bound`, no delete
//!   could have come after it, and its TTL cannot have run out (`x.start + ttl > read end`).
//! - **expired value**: a read returned a write whose TTL had certainly run out (`w.end + ttl + slack < t`).
//! - **unknown / future value**: a read returned a value nobody wrote, or one written after the read ended.
//! - **duplicate load**: two stored `get_or_set` loader runs for one key with no delete or expiry that
//!   could have emptied it between them (expected: exactly one loader run per fill).
//! - **concurrent loads**: two loader runs of one key (fills or background refreshes, any process)
//!   overlapped in time: the key's lock admits one loader at a time across the cluster.
//! - **stale past its window** / **stale before expiry**: a fail-safe answer (`via: Stale`) returned a
//!   write whose TTL plus stale window had certainly run out, or whose TTL had certainly not run out.
//!
//! A loader run in the background (early refresh, or a fill that went on past the soft timeout) writes
//! a value nobody's `set` recorded: it counts as a write from its loader's start to the end of the
//! first read that returned it (the latest it can have committed; never, when nobody saw it).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::events::{Event, Via, WriteId};

/// What the check needs besides the events.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Params {
    /// The staleness bound, in nanoseconds.
    pub(crate) bound: u64,
    /// TTL of every write and fill, in nanoseconds (`None`: never expires).
    pub(crate) ttl: Option<u64>,
    /// Fail-safe window of fills past their TTL, in nanoseconds (`None`: no window).
    pub(crate) stale: Option<u64>,
    /// Keys `0..prefill` were written before the run, as write `(0, 0)` without TTL.
    pub(crate) prefill: u64,
    /// Allowance for timer and clock granularity, in nanoseconds.
    pub(crate) slack: u64,
    /// Run start, to print times relative to it.
    pub(crate) origin: u64,
}

/// One consistency violation.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Violation {
    pub(crate) key: u64,
    pub(crate) kind: &'static str,
    pub(crate) detail: String,
    pub(crate) timeline: Vec<String>,
}

/// The result of the check.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Outcome {
    pub(crate) reads_checked: u64,
    pub(crate) loader_runs: u64,
    pub(crate) keys_loaded: u64,
    pub(crate) duplicate_loads: u64,
    /// Loader runs in the background (early refreshes, fills past the soft timeout).
    pub(crate) background_loads: u64,
    /// `get_or_set` answers from a fail-safe (stale) value.
    pub(crate) stale_answers: u64,
    pub(crate) violations_total: u64,
    /// The first violations, with timelines (all are counted in `violations_total`).
    pub(crate) violations: Vec<Violation>,
}

const KEEP: usize = 20;

#[derive(Clone, Copy, Debug)]
struct Mutation {
    id: WriteId,
    start: u64,
    end: u64,
    delete: bool,
}

#[derive(Clone, Copy, Debug)]
struct Observation {
    start: u64,
    end: u64,
    seen: Option<WriteId>,
    what: &'static str,
}

#[derive(Clone, Copy, Debug)]
struct LoadRun {
    id: WriteId,
    start: u64,
    end: u64,
    stored: bool,
}

/// A loader run as the loader recorded it.
#[derive(Clone, Copy, Debug)]
struct Run {
    id: WriteId,
    start: u64,
    end: u64,
    ok: bool,
}

#[derive(Default)]
struct KeyLog {
    mutations: Vec<Mutation>,
    observations: Vec<Observation>,
    loads: Vec<LoadRun>,
    runs: Vec<Run>,
}

/// Checks every read and loader run of `events`; see the module docs for the rules.
#[cfg(test)]
pub(crate) fn check<'a>(events: impl IntoIterator<Item = &'a Event>, params: Params) -> Outcome {
    let mut checker = Checker::new(params);
    for event in events {
        checker.add(event);
    }
    checker.finish()
}

/// The check, fed one event at a time (in any order); [`finish`](Self::finish) runs the rules.
pub(crate) struct Checker {
    params: Params,
    keys: HashMap<u64, KeyLog>,
}

impl Checker {
    pub(crate) fn new(params: Params) -> Self {
        Self { params, keys: HashMap::new() }
    }

    /// Records what the rules need of `event` (other events are ignored).
    pub(crate) fn add(&mut self, event: &Event) {
        let keys = &mut self.keys;
        match *event {
            Event::Write { key, id, start, end } => {
                keys.entry(key).or_default().mutations.push(Mutation { id, start, end, delete: false });
            }
            Event::Delete { key, id, start, end } => {
                keys.entry(key).or_default().mutations.push(Mutation { id, start, end, delete: true });
            }
            Event::Read { key, start, end, seen } => {
                keys.entry(key).or_default().observations.push(Observation { start, end, seen, what: "get" });
            }
            Event::GetOrSet { key, start, end, seen, via, stored } => {
                let log = keys.entry(key).or_default();
                if via == Via::Loaded {
                    // The lookup found nothing: that is an observation of absence.
                    log.observations.push(Observation { start, end, seen: None, what: "get_or_set (loaded)" });
                    log.loads.push(LoadRun { id: seen, start, end, stored });
                    if stored {
                        log.mutations.push(Mutation { id: seen, start, end, delete: false });
                    }
                } else {
                    let what = match via {
                        Via::Local => "get_or_set (L1)",
                        Via::Shared => "get_or_set (L2)",
                        Via::Stale => STALE,
                        _ => "get_or_set (collapsed)",
                    };
                    log.observations.push(Observation { start, end, seen: Some(seen), what });
                }
            }
            Event::LoaderRun { key, id, start, end, ok } => {
                keys.entry(key).or_default().runs.push(Run { id, start, end, ok });
            }
            _ => {}
        }
    }

    /// Runs the rules over everything recorded, key by key in key order.
    pub(crate) fn finish(self) -> Outcome {
        let Self { params, keys } = self;
        let mut outcome = Outcome::default();
        let mut sorted: Vec<_> = keys.into_iter().collect();
        sorted.sort_unstable_by_key(|(k, _)| *k);
        for (key, mut log) in sorted {
            if key < params.prefill {
                log.mutations.push(Mutation { id: (0, 0), start: 0, end: 0, delete: false });
            }
            check_key(key, &mut log, &params, &mut outcome);
        }
        outcome
    }
}

/// The key an event counts for in the check (`None`: the check ignores it).
fn checked_key(event: &Event) -> Option<u64> {
    match *event {
        Event::Write { key, .. }
        | Event::Delete { key, .. }
        | Event::Read { key, .. }
        | Event::GetOrSet { key, .. }
        | Event::LoaderRun { key, .. } => Some(key),
        _ => None,
    }
}

/// Events per key, counted in a first pass over the files so the check can split the keys into ranges.
#[derive(Default)]
pub(crate) struct KeyCounts(BTreeMap<u64, u64>);

impl KeyCounts {
    pub(crate) fn add(&mut self, event: &Event) {
        if let Some(key) = checked_key(event) {
            *self.0.entry(key).or_default() += 1;
        }
    }

    /// First keys of contiguous key ranges holding at most `budget` events each (a key above the budget
    /// gets a range of its own).
    fn ranges(&self, budget: u64) -> Vec<u64> {
        let mut starts = Vec::new();
        let mut held = 0u64;
        for (&key, &n) in &self.0 {
            if starts.is_empty() || held + n > budget {
                starts.push(key);
                held = 0;
            }
            held += n;
        }
        starts
    }
}

/// Checks the events in `files` keeping at most about `budget` events in memory (or one key's, if more):
/// the keys are split into contiguous ranges by `counts`; with more than one range the events are first
/// sorted into one scratch file per range in the directory `scratch` (removed afterwards), and the ranges are checked in key
/// order, so the outcome is the same as checking everything at once.
pub(crate) fn check_files(
    files: &[PathBuf],
    counts: &KeyCounts,
    params: Params,
    scratch: &Path,
    budget: u64,
) -> anyhow::Result<Outcome> {
    let starts = counts.ranges(budget.max(1));
    if starts.len() <= 1 {
        let mut checker = Checker::new(params);
        for path in files {
            super::events::read_file(path, |e| checker.add(e))?;
        }
        return Ok(checker.finish());
    }
    std::fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let parts: Vec<PathBuf> = (0..starts.len()).map(|i| scratch.join(format!("check-part-{i}.log"))).collect();
    let result = check_parts(files, &starts, &parts, params);
    for part in &parts {
        let _ = std::fs::remove_file(part);
    }
    // Only if it is empty now (it may be a directory of the caller's).
    let _ = std::fs::remove_dir(scratch);
    result
}

fn check_parts(files: &[PathBuf], starts: &[u64], parts: &[PathBuf], params: Params) -> anyhow::Result<Outcome> {
    let mut writers = Vec::with_capacity(parts.len());
    for part in parts {
        let file = std::fs::File::create(part).with_context(|| format!("creating {}", part.display()))?;
        writers.push(std::io::BufWriter::with_capacity(64 * 1024, file));
    }
    let mut line = String::new();
    let mut failed = None;
    for path in files {
        super::events::read_file(path, |event| {
            let Some(key) = checked_key(event) else { return };
            let range = starts.partition_point(|&s| s <= key).saturating_sub(1);
            line.clear();
            event.write_line(&mut line);
            if let Some(out) = writers.get_mut(range) {
                if let Err(e) = out.write_all(line.as_bytes()) {
                    failed.get_or_insert(e);
                }
            }
        })?;
    }
    if let Some(e) = failed {
        return Err(e).context("writing the check's scratch files");
    }
    for (out, part) in writers.iter_mut().zip(parts) {
        out.flush().with_context(|| format!("writing {}", part.display()))?;
    }
    drop(writers);
    let mut outcome = Outcome::default();
    for part in parts {
        let mut checker = Checker::new(params);
        super::events::read_file(part, |e| checker.add(e))?;
        outcome.absorb(checker.finish());
    }
    Ok(outcome)
}

impl Outcome {
    /// Adds the outcome of later keys.
    fn absorb(&mut self, later: Outcome) {
        self.reads_checked += later.reads_checked;
        self.loader_runs += later.loader_runs;
        self.keys_loaded += later.keys_loaded;
        self.duplicate_loads += later.duplicate_loads;
        self.background_loads += later.background_loads;
        self.stale_answers += later.stale_answers;
        self.violations_total += later.violations_total;
        let room = KEEP.saturating_sub(self.violations.len());
        self.violations.extend(later.violations.into_iter().take(room));
    }
}

/// Per key: mutations sorted by end with the running "latest start", for "what must a read see" queries.
struct Index {
    by_end: Vec<Mutation>,
    /// `best_any[i]`: index in `by_end` of the mutation with the greatest start among `0..=i`.
    best_any: Vec<usize>,
    /// Same, writes only (`None` while no write yet).
    best_write: Vec<Option<usize>>,
    /// Deletes sorted by start, and the running maximum of their ends.
    delete_starts: Vec<u64>,
    delete_max_end: Vec<u64>,
    by_id: HashMap<WriteId, Mutation>,
}

impl Index {
    fn new(mutations: &[Mutation]) -> Self {
        let mut by_end = mutations.to_vec();
        by_end.sort_unstable_by_key(|m| (m.end, m.start));
        let mut best_any = Vec::with_capacity(by_end.len());
        let mut best_write = Vec::with_capacity(by_end.len());
        let (mut any, mut write): (Option<usize>, Option<usize>) = (None, None);
        for (i, m) in by_end.iter().enumerate() {
            if any.is_none_or(|j| by_end[j].start < m.start) {
                any = Some(i);
            }
            if !m.delete && write.is_none_or(|j| by_end[j].start < m.start) {
                write = Some(i);
            }
            best_any.push(any.unwrap_or(i));
            best_write.push(write);
        }
        let mut deletes: Vec<Mutation> = mutations.iter().copied().filter(|m| m.delete).collect();
        deletes.sort_unstable_by_key(|m| m.start);
        let delete_starts = deletes.iter().map(|m| m.start).collect();
        let mut max_end = 0;
        let delete_max_end = deletes
            .iter()
            .map(|m| {
                max_end = max_end.max(m.end);
                max_end
            })
            .collect();
        let by_id = mutations.iter().filter(|m| !m.delete).map(|m| (m.id, *m)).collect();
        Self { by_end, best_any, best_write, delete_starts, delete_max_end, by_id }
    }

    /// How many mutations ended before `cutoff`.
    fn ended_before(&self, cutoff: u64) -> usize {
        self.by_end.partition_point(|m| m.end < cutoff)
    }

    /// The latest end of a delete that started no later than `t`.
    fn delete_end_started_by(&self, t: u64) -> Option<u64> {
        let n = self.delete_starts.partition_point(|&s| s <= t);
        n.checked_sub(1).map(|i| self.delete_max_end[i])
    }
}

/// What a fail-safe answer is called in observations.
const STALE: &str = "get_or_set (stale)";

fn check_key(key: u64, log: &mut KeyLog, p: &Params, outcome: &mut Outcome) {
    check_runs(key, log, p, outcome);
    let index = Index::new(&log.mutations);
    for obs in &log.observations {
        outcome.reads_checked += 1;
        let cutoff = obs.start.saturating_sub(p.bound);
        let n = index.ended_before(cutoff);
        let problem = match obs.seen {
            Some(id) => match index.by_id.get(&id) {
                None => Some(("unknown value", format!("{} returned write {id:?}, which nobody made", obs.what))),
                Some(w) if w.start > obs.end => {
                    Some(("future value", format!("{} returned write {id:?}, started after the read ended", obs.what)))
                }
                Some(w) => {
                    let newer = n.checked_sub(1).map(|i| index.by_end[index.best_any[i]]).filter(|x| x.start > w.end);
                    let stale = obs.what == STALE;
                    // A fail-safe answer may be past the TTL, up to the stale window.
                    let allowed = p.ttl.map(|ttl| if stale { ttl.saturating_add(p.stale.unwrap_or(0)) } else { ttl });
                    let expired = allowed
                        .filter(|_| w.id != (0, 0))
                        .is_some_and(|ttl| obs.start > w.end.saturating_add(ttl).saturating_add(p.slack));
                    let early = stale && p.ttl.is_none_or(|ttl| w.start.saturating_add(ttl) > obs.end + p.slack);
                    if let Some(x) = newer {
                        Some((
                            "stale read",
                            format!(
                                "{} returned write {id:?}, but {} {:?} had committed {} before the read began (bound {})",
                                obs.what,
                                if x.delete { "delete" } else { "write" },
                                x.id,
                                ms(obs.start.saturating_sub(x.end)),
                                ms(p.bound),
                            ),
                        ))
                    } else if early {
                        Some((
                            "stale before expiry",
                            format!(
                                "{} returned write {id:?} (written {}..{}) as a fail-safe value before its TTL could have run out",
                                obs.what,
                                ms(w.start.saturating_sub(p.origin)),
                                ms(w.end.saturating_sub(p.origin)),
                            ),
                        ))
                    } else if expired {
                        let deadline = w.end.saturating_add(allowed.unwrap_or(0));
                        Some((
                            if stale { "stale past its window" } else { "expired value" },
                            format!(
                                "{} returned write {id:?} (written {}..{}) {} after its TTL had certainly run out",
                                obs.what,
                                ms(w.start.saturating_sub(p.origin)),
                                ms(w.end.saturating_sub(p.origin)),
                                ms(obs.start.saturating_sub(deadline)),
                            ),
                        ))
                    } else {
                        None
                    }
                }
            },
            None => n.checked_sub(1).and_then(|i| index.best_write[i]).map(|j| index.by_end[j]).and_then(|x| {
                let expired = x.id != (0, 0) && p.ttl.is_some_and(|ttl| x.start + ttl <= obs.end + p.slack);
                let deleted = index.delete_end_started_by(obs.end).is_some_and(|end| end >= x.start);
                (!expired && !deleted).then(|| {
                    (
                        "missing value",
                        format!(
                            "{} found nothing, but write {:?} had committed {} before the read began and nothing deleted it",
                            obs.what,
                            x.id,
                            ms(obs.start.saturating_sub(x.end))
                        ),
                    )
                })
            }),
        };
        if let Some((kind, detail)) = problem {
            report(outcome, key, kind, detail, timeline(log, obs.start, obs.end, p, Some(obs)));
        }
    }

    log.loads.sort_unstable_by_key(|l| l.start);
    outcome.loader_runs += log.loads.len() as u64;
    outcome.keys_loaded += u64::from(!log.loads.is_empty());
    for pair in log.loads.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if !(a.stored && b.stored) {
            continue;
        }
        // Either store may have come first (a long wait for the lock reorders them), so any delete that
        // overlaps the span of both calls may have emptied the key between the two fills.
        let (from, to) = (a.start.min(b.start), a.end.max(b.end));
        let deleted = index.delete_end_started_by(to).is_some_and(|end| end >= from);
        let expired = p.ttl.is_some_and(|ttl| from + ttl <= to + p.slack);
        if !deleted && !expired {
            outcome.duplicate_loads += 1;
            let detail = format!(
                "loader ran again (write {:?}, {}..{}, stored: {}) although the fill {:?} ({}..{}) was stored and not deleted or expired",
                b.id,
                ms(b.start.saturating_sub(p.origin)),
                ms(b.end.saturating_sub(p.origin)),
                b.stored,
                a.id,
                ms(a.start.saturating_sub(p.origin)),
                ms(a.end.saturating_sub(p.origin)),
            );
            report(outcome, key, "duplicate load", detail, timeline(log, a.start, b.end, p, None));
        }
    }
}

/// Turns background loader runs into writes, and checks that no two loader runs of the key overlapped.
fn check_runs(key: u64, log: &mut KeyLog, p: &Params, outcome: &mut Outcome) {
    outcome.stale_answers += log.observations.iter().filter(|o| o.what == STALE).count() as u64;
    if log.runs.is_empty() {
        return;
    }
    let inline: std::collections::HashSet<WriteId> = log.loads.iter().map(|l| l.id).collect();
    for run in log.runs.iter().filter(|r| r.ok && !inline.contains(&r.id)) {
        outcome.background_loads += 1;
        // Committed at the latest when the first read that returned it ended.
        let end = log.observations.iter().filter(|o| o.seen == Some(run.id)).map(|o| o.end).min().unwrap_or(u64::MAX);
        log.mutations.push(Mutation { id: run.id, start: run.start, end, delete: false });
    }
    log.runs.sort_unstable_by_key(|r| r.start);
    let mut latest: Option<Run> = None;
    for run in log.runs.clone() {
        if let Some(before) = latest.filter(|b| run.start < b.end) {
            let detail = format!(
                "loader run {:?} ({}..{}) started while run {:?} ({}..{}) was still going",
                run.id,
                ms(run.start.saturating_sub(p.origin)),
                ms(run.end.saturating_sub(p.origin)),
                before.id,
                ms(before.start.saturating_sub(p.origin)),
                ms(before.end.saturating_sub(p.origin)),
            );
            report(outcome, key, "concurrent loads", detail, timeline(log, before.start, run.end, p, None));
        }
        if latest.is_none_or(|b| run.end > b.end) {
            latest = Some(run);
        }
    }
}

fn report(outcome: &mut Outcome, key: u64, kind: &'static str, detail: String, timeline: Vec<String>) {
    outcome.violations_total += 1;
    if outcome.violations.len() < KEEP {
        outcome.violations.push(Violation { key, kind, detail, timeline });
    }
}

/// The key's mutations around `from..to` (plus the read itself), times in ms since the run start.
fn timeline(log: &KeyLog, from: u64, to: u64, p: &Params, read: Option<&Observation>) -> Vec<String> {
    let lo = from.saturating_sub(p.bound + 2_000_000_000);
    let hi = to + 100_000_000;
    let mut rows: Vec<(u64, String)> = log
        .mutations
        .iter()
        .filter(|m| m.end >= lo && m.start <= hi)
        .map(|m| {
            let what = if m.delete { "delete" } else { "write " };
            (m.start, format!("{what} {:?}", m.id))
        })
        .collect();
    if let Some(r) = read {
        rows.push((r.start, format!("READ   {} -> {:?}", r.what, r.seen)));
    }
    rows.sort_by_key(|(start, _)| *start);
    // Keep the rows around the read (or the end of the window): 30 before, 10 after.
    let at = rows.iter().position(|(_, what)| what.starts_with("READ")).unwrap_or(rows.len());
    let rows: Vec<(u64, String)> = rows.into_iter().skip(at.saturating_sub(30)).take(40).collect();
    rows.into_iter()
        .map(|(start, what)| {
            let end = log
                .mutations
                .iter()
                .find(|m| m.start == start && what.contains(&format!("{:?}", m.id)))
                .map_or(read.map_or(start, |r| r.end), |m| m.end);
            let mut line = String::new();
            let _ = write!(
                line,
                "{:>12} .. {:>12}  {what}",
                ms(start.saturating_sub(p.origin)),
                ms(end.saturating_sub(p.origin))
            );
            line
        })
        .collect()
}

fn ms(ns: u64) -> String {
    format!("{:.3}ms", ns as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn params() -> Params {
        Params {
            bound: 100 * MS,
            ttl: Some(5_000 * MS),
            stale: Some(10_000 * MS),
            prefill: 0,
            slack: 5 * MS,
            origin: 0,
        }
    }

    fn w(key: u64, seq: u64, start: u64, end: u64) -> Event {
        Event::Write { key, id: (1, seq), start: start * MS, end: end * MS }
    }

    fn d(key: u64, seq: u64, start: u64, end: u64) -> Event {
        Event::Delete { key, id: (1, seq), start: start * MS, end: end * MS }
    }

    fn r(key: u64, start: u64, seen: Option<u64>) -> Event {
        Event::Read { key, start: start * MS, end: (start + 1) * MS, seen: seen.map(|s| (1, s)) }
    }

    fn kinds(events: &[Event]) -> Vec<&'static str> {
        check(events, params()).violations.iter().map(|v| v.kind).collect()
    }

    #[test]
    fn fresh_reads_pass() {
        assert!(kinds(&[w(1, 1, 0, 1), r(1, 2, Some(1)), w(1, 2, 10, 11), r(1, 500, Some(2))]).is_empty());
    }

    #[test]
    fn stale_within_bound_passes_beyond_bound_fails() {
        assert!(kinds(&[w(1, 1, 0, 1), w(1, 2, 10, 11), r(1, 50, Some(1))]).is_empty());
        assert_eq!(kinds(&[w(1, 1, 0, 1), w(1, 2, 10, 11), r(1, 500, Some(1))]), ["stale read"]);
    }

    #[test]
    fn concurrent_writes_allow_either_value() {
        // Write 2 overlaps write 1: either may have committed last.
        assert!(kinds(&[w(1, 1, 0, 10), w(1, 2, 5, 8), r(1, 500, Some(1)), r(1, 501, Some(2))]).is_empty());
    }

    #[test]
    fn reading_a_deleted_key_fails_after_the_bound() {
        assert_eq!(kinds(&[w(1, 1, 0, 1), d(1, 2, 10, 11), r(1, 500, Some(1))]), ["stale read"]);
        assert!(kinds(&[w(1, 1, 0, 1), d(1, 2, 10, 11), r(1, 500, None)]).is_empty());
    }

    #[test]
    fn missing_value_fails_unless_deleted_or_expired() {
        assert_eq!(kinds(&[w(1, 1, 0, 1), r(1, 500, None)]), ["missing value"]);
        assert!(kinds(&[w(1, 1, 0, 1), r(1, 6_000, None)]).is_empty());
        assert_eq!(kinds(&[d(1, 2, 0, 1), w(1, 1, 5, 6), r(1, 500, None)]), ["missing value"]);
    }

    #[test]
    fn expired_and_unknown_values_fail() {
        assert_eq!(kinds(&[w(1, 1, 0, 1), r(1, 6_000, Some(1))]), ["expired value"]);
        assert_eq!(kinds(&[r(1, 10, Some(9))]), ["unknown value"]);
        assert_eq!(kinds(&[w(1, 1, 100, 101), r(1, 10, Some(1))]), ["future value"]);
    }

    fn g(key: u64, seq: u64, start: u64, via: Via) -> Event {
        Event::GetOrSet { key, start: start * MS, end: (start + 1) * MS, seen: (1, seq), via, stored: true }
    }

    fn run(key: u64, seq: u64, start: u64, end: u64) -> Event {
        Event::LoaderRun { key, id: (1, seq), start: start * MS, end: end * MS, ok: true }
    }

    #[test]
    fn background_refreshes_count_as_writes_and_must_not_overlap() {
        // Inline fill 1, then a background refresh 2 that a later read returns: no unknown value.
        let fill = [run(1, 1, 0, 1), g(1, 1, 0, Via::Loaded), run(1, 2, 100, 101), g(1, 2, 200, Via::Local)];
        assert!(kinds(&fill).is_empty(), "{:?}", kinds(&fill));
        let outcome = check(&fill, params());
        assert_eq!((outcome.background_loads, outcome.loader_runs), (1, 1));
        // Once seen, older values are stale reads past the bound.
        let stale = [&fill[..], &[g(1, 1, 400, Via::Local)]].concat();
        assert_eq!(kinds(&stale), ["stale read"]);
        // Two loader runs of one key at once.
        assert_eq!(kinds(&[run(1, 1, 0, 50), run(1, 2, 10, 20)]), ["concurrent loads"]);
        assert!(kinds(&[run(1, 1, 0, 50), run(1, 2, 50, 60), run(2, 3, 10, 20)]).is_empty());
    }

    #[test]
    fn fail_safe_answers_stay_within_the_window() {
        // TTL 5 s, window 10 s: stale between 5 s and 15 s after the write.
        let written = [w(1, 1, 0, 1)];
        assert!(kinds(&[&written[..], &[g(1, 1, 6_000, Via::Stale)]].concat()).is_empty());
        assert_eq!(kinds(&[&written[..], &[g(1, 1, 16_000, Via::Stale)]].concat()), ["stale past its window"]);
        assert_eq!(kinds(&[&written[..], &[g(1, 1, 3_000, Via::Stale)]].concat()), ["stale before expiry"]);
        // A plain answer past the TTL is still an expired value.
        assert_eq!(kinds(&[&written[..], &[g(1, 1, 6_000, Via::Local)]].concat()), ["expired value"]);
        assert_eq!(check(&[&written[..], &[g(1, 1, 6_000, Via::Stale)]].concat(), params()).stale_answers, 1);
    }

    #[test]
    fn duplicate_loads_are_caught() {
        let load = |seq, start: u64, end: u64| Event::GetOrSet {
            key: 1,
            start: start * MS,
            end: end * MS,
            seen: (2, seq),
            via: Via::Loaded,
            stored: true,
        };
        let outcome = check(&[load(1, 0, 5), load(2, 20, 25)], params());
        assert_eq!(outcome.duplicate_loads, 1);
        let outcome = check(&[load(1, 0, 5), d(1, 9, 10, 11), load(2, 20, 25)], params());
        assert_eq!(outcome.duplicate_loads, 0);
        // The first caller waited long and stored last, after a delete that followed the second's store.
        let outcome = check(&[load(1, 0, 500), load(2, 10, 200), d(1, 9, 300, 400)], params());
        assert_eq!(outcome.duplicate_loads, 0);
        assert_eq!(outcome.loader_runs, 2);
        assert_eq!(outcome.violations_total, 0);
    }

    #[test]
    fn split_check_matches_the_whole() -> anyhow::Result<()> {
        let mut events = Vec::new();
        for key in 0..6 {
            events.extend([w(key, 1, 0, 1), r(key, 2, Some(1)), w(key, 2, 10, 11), r(key, 500, Some(1))]);
            events.extend([r(key, 600, None), d(key, 3, 700, 701), r(key, 800, Some(9))]);
        }
        let dir = std::env::temp_dir().join(format!("pgcache-check-split-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("events.log");
        let mut text = String::new();
        let mut counts = KeyCounts::default();
        for e in &events {
            e.write_line(&mut text);
            counts.add(e);
        }
        std::fs::write(&file, text)?;
        let whole = check(&events, params());
        for budget in [1, 7, 15, 1_000] {
            let split = check_files(std::slice::from_ref(&file), &counts, params(), &dir, budget)?;
            assert_eq!(split.violations_total, whole.violations_total, "budget {budget}");
            assert_eq!(split.reads_checked, whole.reads_checked);
            let summary =
                |o: &Outcome| o.violations.iter().map(|v| (v.key, v.kind, v.detail.clone())).collect::<Vec<_>>();
            assert_eq!(summary(&split), summary(&whole), "budget {budget}");
        }
        assert!(whole.violations_total >= 18);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn prefill_counts_as_a_write() {
        let p = Params { prefill: 10, ..params() };
        let read = Event::Read { key: 3, start: 5 * MS, end: 6 * MS, seen: Some((0, 0)) };
        assert_eq!(check(&[read], p).violations_total, 0);
        let miss = Event::Read { key: 3, start: 500 * MS, end: 501 * MS, seen: None };
        assert_eq!(check(&[miss], p).violations_total, 1);
    }
}
