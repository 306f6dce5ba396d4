//! What each worker records, one line per operation (streamed to a file as the run goes), and the value format that makes reads checkable.
//!
//! Times are nanoseconds since the Unix epoch from `SystemTime`: every process runs on one machine, so one
//! clock orders them all. A value starts with `key|writer|seq|written_at|` and is padded to the value size,
//! so a reader can tell exactly which write it observed.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

/// Identity of one write: (writer id, sequence number of that writer). `(0, 0)` is the prefill.
pub(crate) type WriteId = (u32, u64);

/// Nanoseconds since the Unix epoch.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The cache key of key number `index`.
pub(crate) fn key_name(index: u64) -> String {
    format!("k:{index}")
}

/// Builds the value of a write: header, then padding up to `size` bytes.
pub(crate) fn encode_value(key: u64, id: WriteId, written_at: u64, size: usize) -> Vec<u8> {
    let mut v = format!("k:{key}|{}|{}|{written_at}|", id.0, id.1).into_bytes();
    if v.len() < size {
        v.resize(size, b'.');
    }
    v
}

/// Parses a value's header: the key number and the write it came from.
pub(crate) fn decode_value(value: &[u8]) -> Option<(u64, WriteId)> {
    let head = value.get(..value.len().min(96))?;
    let mut fields = head.split(|&b| b == b'|');
    let key = std::str::from_utf8(fields.next()?).ok()?.strip_prefix("k:")?.parse().ok()?;
    let writer = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let seq = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    Some((key, (writer, seq)))
}

/// How a `get_or_set` was answered (pgcache's `Source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Via {
    /// From this process's local cache.
    Local,
    /// From PostgreSQL.
    Shared,
    /// Waited for another caller's fill (same or other process).
    Collapsed,
    /// This caller ran the loader.
    Loaded,
    /// An expired value within its fail-safe window (the loader failed or was slow, or another caller
    /// was refreshing it).
    Stale,
}

impl Via {
    fn code(self) -> char {
        match self {
            Via::Local => 'l',
            Via::Shared => 's',
            Via::Collapsed => 'c',
            Via::Loaded => 'f',
            Via::Stale => 't',
        }
    }

    fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "l" => Via::Local,
            "s" => Via::Shared,
            "c" => Via::Collapsed,
            "f" => Via::Loaded,
            "t" => Via::Stale,
            _ => return None,
        })
    }
}

/// The operations of the mix (also the kinds of error events).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Op {
    /// `get_entry`.
    Get,
    /// `get_or_load`.
    GetOrSet,
    /// `set_entry`.
    Set,
    /// `delete`.
    Delete,
}

impl Op {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::GetOrSet => "get_or_set",
            Op::Set => "set",
            Op::Delete => "delete",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "get" => Op::Get,
            "get_or_set" => Op::GetOrSet,
            "set" => Op::Set,
            "delete" => Op::Delete,
            _ => return None,
        })
    }
}

/// One recorded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A `set` that returned Ok (its commit lies within `start..end`).
    Write { key: u64, id: WriteId, start: u64, end: u64 },
    /// A `delete` that returned Ok.
    Delete { key: u64, id: WriteId, start: u64, end: u64 },
    /// A `get`: `seen` is the write it returned, or `None` for a miss.
    Read { key: u64, start: u64, end: u64, seen: Option<WriteId> },
    /// A `get_or_set`: what it returned and how; `loaded`/`stored` tell whether this call ran the loader and
    /// stored its value (then `seen` is the loader's write).
    GetOrSet { key: u64, start: u64, end: u64, seen: WriteId, via: Via, stored: bool },
    /// An operation that returned an error.
    Error { op: Op, start: u64, end: u64 },
    /// A loader ran from `start` to `end`, recorded by the loader itself: in its caller (then a
    /// `GetOrSet` with `via: Loaded` carries the same `id`) or in the background (an early refresh, or a
    /// fill that went on past the soft timeout). `ok`: it returned a value (write `id`) rather than failing.
    LoaderRun { key: u64, id: WriteId, start: u64, end: u64, ok: bool },
    /// The invalidation probe wrote sequence `seq`.
    ProbeWrite { seq: u64, start: u64, end: u64 },
    /// Process `process` first saw probe sequence `seq` at `at`.
    ProbeSeen { process: u32, seq: u64, at: u64 },
}

fn id_text(id: Option<WriteId>) -> String {
    id.map_or_else(|| "-".to_owned(), |(w, s)| format!("{w}:{s}"))
}

fn parse_id(text: &str) -> anyhow::Result<Option<WriteId>> {
    if text == "-" {
        return Ok(None);
    }
    let (w, s) = text.split_once(':').context("write id without ':'")?;
    Ok(Some((w.parse()?, s.parse()?)))
}

impl Event {
    /// Appends the event as one line.
    pub(crate) fn write_line(&self, out: &mut String) {
        let _ = match self {
            Event::Write { key, id, start, end } => writeln!(out, "W {key} {} {start} {end}", id_text(Some(*id))),
            Event::Delete { key, id, start, end } => writeln!(out, "D {key} {} {start} {end}", id_text(Some(*id))),
            Event::Read { key, start, end, seen } => writeln!(out, "R {key} {} {start} {end}", id_text(*seen)),
            Event::GetOrSet { key, start, end, seen, via, stored } => {
                writeln!(out, "G {key} {} {start} {end} {} {}", id_text(Some(*seen)), via.code(), u8::from(*stored))
            }
            Event::Error { op, start, end } => writeln!(out, "E {} {start} {end}", op.name()),
            Event::LoaderRun { key, id, start, end, ok } => {
                writeln!(out, "L {key} {} {start} {end} {}", id_text(Some(*id)), u8::from(*ok))
            }
            Event::ProbeWrite { seq, start, end } => writeln!(out, "P {seq} {start} {end}"),
            Event::ProbeSeen { process, seq, at } => writeln!(out, "Q {process} {seq} {at}"),
        };
    }

    /// Parses one line written by [`write_line`](Self::write_line).
    pub(crate) fn parse(line: &str) -> anyhow::Result<Self> {
        let f: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| -> anyhow::Result<u64> {
            f.get(i).with_context(|| format!("missing field {i}"))?.parse::<u64>().context("bad number")
        };
        let id = |i: usize| -> anyhow::Result<Option<WriteId>> {
            parse_id(f.get(i).with_context(|| format!("missing field {i}"))?)
        };
        let some_id = |i: usize| -> anyhow::Result<WriteId> { id(i)?.context("expected a write id") };
        Ok(match f.first().copied() {
            Some("W") => Event::Write { key: num(1)?, id: some_id(2)?, start: num(3)?, end: num(4)? },
            Some("D") => Event::Delete { key: num(1)?, id: some_id(2)?, start: num(3)?, end: num(4)? },
            Some("R") => Event::Read { key: num(1)?, seen: id(2)?, start: num(3)?, end: num(4)? },
            Some("G") => Event::GetOrSet {
                key: num(1)?,
                seen: some_id(2)?,
                start: num(3)?,
                end: num(4)?,
                via: f.get(5).and_then(|c| Via::from_code(c)).context("bad source")?,
                stored: num(6)? == 1,
            },
            Some("E") => Event::Error {
                op: f.get(1).and_then(|n| Op::from_name(n)).context("bad op")?,
                start: num(2)?,
                end: num(3)?,
            },
            Some("L") => {
                Event::LoaderRun { key: num(1)?, id: some_id(2)?, start: num(3)?, end: num(4)?, ok: num(5)? == 1 }
            }
            Some("P") => Event::ProbeWrite { seq: num(1)?, start: num(2)?, end: num(3)? },
            Some("Q") => Event::ProbeSeen { process: u32::try_from(num(1)?)?, seq: num(2)?, at: num(3)? },
            _ => bail!("unknown event line {line:?}"),
        })
    }
}

/// Bytes of event lines a task gathers before handing them to the writer thread.
const CHUNK: usize = 16 * 1024;

/// One task's events on their way to the process's event file: lines gather in a small buffer, and full
/// buffers go over a bounded channel to the writer thread, so a worker's memory does not grow with the run.
pub(crate) struct EventSink {
    buf: String,
    tx: tokio::sync::mpsc::Sender<String>,
}

impl EventSink {
    /// Records one event.
    pub(crate) async fn push(&mut self, event: &Event) {
        event.write_line(&mut self.buf);
        if self.buf.len() >= CHUNK {
            self.flush().await;
        }
    }

    /// Hands the buffered lines to the writer (a writer that failed reports its error when joined).
    pub(crate) async fn flush(&mut self) {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, String::with_capacity(CHUNK + 256));
            let _ = self.tx.send(chunk).await;
        }
    }
}

/// The writer thread of one worker's event file.
pub(crate) struct EventFile {
    tx: tokio::sync::mpsc::Sender<String>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl EventFile {
    /// Creates `path` and starts its writer thread.
    pub(crate) fn create(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(32);
        let thread = std::thread::Builder::new().name("events".into()).spawn(move || {
            let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
            while let Some(chunk) = rx.blocking_recv() {
                out.write_all(chunk.as_bytes())?;
            }
            out.flush()
        })?;
        Ok(Self { tx, thread })
    }

    /// A sink for one task.
    pub(crate) fn sink(&self) -> EventSink {
        EventSink { buf: String::with_capacity(CHUNK + 256), tx: self.tx.clone() }
    }

    /// Waits until every sink is dropped and all lines are written; fails on a write error.
    pub(crate) async fn finish(self, path: &Path) -> anyhow::Result<()> {
        let Self { tx, thread } = self;
        drop(tx);
        let written = tokio::task::spawn_blocking(move || thread.join()).await?;
        match written {
            Ok(result) => result.with_context(|| format!("writing {}", path.display())),
            Err(_) => bail!("the writer thread of {} panicked", path.display()),
        }
    }
}

/// Reads an event file one line at a time, handing each event to `each`.
pub(crate) fn read_file(path: &Path, mut each: impl FnMut(&Event)) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, file);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).with_context(|| format!("reading {}", path.display()))? == 0 {
            return Ok(());
        }
        let text = line.trim_end_matches('\n');
        if !text.is_empty() {
            let event = Event::parse(text).with_context(|| format!("{}: bad line {text:?}", path.display()))?;
            each(&event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_pad() {
        let v = encode_value(17, (3, 99), 123, 100);
        assert_eq!(v.len(), 100);
        assert_eq!(decode_value(&v), Some((17, (3, 99))));
        let short = encode_value(1, (1, 1), 1, 1);
        assert_eq!(decode_value(&short), Some((1, (1, 1))));
        assert_eq!(decode_value(b"garbage"), None);
    }

    #[test]
    fn events_round_trip() {
        let events = [
            Event::Write { key: 1, id: (2, 3), start: 4, end: 5 },
            Event::Delete { key: 1, id: (2, 4), start: 6, end: 7 },
            Event::Read { key: 1, start: 8, end: 9, seen: None },
            Event::Read { key: 1, start: 8, end: 9, seen: Some((2, 3)) },
            Event::GetOrSet { key: 1, start: 1, end: 2, seen: (5, 6), via: Via::Collapsed, stored: true },
            Event::Error { op: Op::Delete, start: 1, end: 2 },
            Event::LoaderRun { key: 3, id: (2, 9), start: 4, end: 5, ok: true },
            Event::GetOrSet { key: 3, start: 1, end: 2, seen: (2, 8), via: Via::Stale, stored: true },
            Event::ProbeWrite { seq: 1, start: 2, end: 3 },
            Event::ProbeSeen { process: 2, seq: 1, at: 4 },
        ];
        let mut text = String::new();
        for e in &events {
            e.write_line(&mut text);
        }
        let parsed: Vec<Event> = text.lines().map(|l| Event::parse(l).unwrap()).collect();
        assert_eq!(parsed, events);
    }
}
