//! What each worker records, one line per operation, and the value format that makes reads checkable.
//!
//! Times are nanoseconds since the Unix epoch from `SystemTime`: every process runs on one machine, so one
//! clock orders them all. A value starts with `key|writer|seq|written_at|` and is padded to the value size,
//! so a reader can tell exactly which write it observed.

use std::fmt::Write as _;
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
}

impl Via {
    fn code(self) -> char {
        match self {
            Via::Local => 'l',
            Via::Shared => 's',
            Via::Collapsed => 'c',
            Via::Loaded => 'f',
        }
    }

    fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "l" => Via::Local,
            "s" => Via::Shared,
            "c" => Via::Collapsed,
            "f" => Via::Loaded,
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
            Some("P") => Event::ProbeWrite { seq: num(1)?, start: num(2)?, end: num(3)? },
            Some("Q") => Event::ProbeSeen { process: u32::try_from(num(1)?)?, seq: num(2)?, at: num(3)? },
            _ => bail!("unknown event line {line:?}"),
        })
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
