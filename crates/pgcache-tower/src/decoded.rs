//! [`Decoded`]: the layer's in-process memo of decoded records, so that a hit from the core's local cache
//! (L1) does not parse the stored bytes and rebuild their `HeaderMap` on every request.
//!
//! A memo is keyed by the cache key and remembers the exact bytes it was decoded from: it is used only
//! when the core hands back the same allocation (its L1 shares one `Bytes` between reads), so it can never
//! serve anything the core would not: coherence stays the core's. It is bounded by entries and by the
//! bytes it keeps alive; past either bound it forgets arbitrary memos (the core's L1, bounded by its own
//! LRU budget, is the real cache; this only saves work).
//!
//! Each memo also keeps the finished head of its latest plain hit ([`HitHead`]): the answers to plain
//! fresh GETs within one second of age are identical but for nothing, so they clone one `HeaderMap`
//! instead of copying the stored one, adding `Age`, removing the targeted field and rendering
//! `Cache-Status` again.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::entry::Record;

/// The most memos kept.
const MAX_ENTRIES: usize = 4096;
/// The most stored bytes the memos keep alive.
const MAX_BYTES: usize = 64 * 1024 * 1024;

/// Decoded records by cache key (see the module docs).
#[derive(Default)]
pub(crate) struct Decoded {
    inner: RwLock<Memos>,
}

#[derive(Default)]
struct Memos {
    by_key: HashMap<String, Memo, foldhash::fast::RandomState>,
    bytes: usize,
}

struct Memo {
    /// The stored value the record was decoded from.
    value: Bytes,
    record: Arc<DecodedRecord>,
}

/// A decoded record and the head of its latest plain hit.
pub(crate) struct DecodedRecord {
    pub(crate) record: Record,
    hit_head: RwLock<Option<HitHead>>,
}

/// The finished head (status and headers, `Age` and `Cache-Status` included) of a plain fresh hit at
/// one age and remaining freshness, both in whole seconds: every plain hit with the same two numbers
/// gets the same head.
pub(crate) struct HitHead {
    pub(crate) age: u64,
    pub(crate) ttl: i64,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
}

impl DecodedRecord {
    fn new(record: Record) -> Self {
        Self { record, hit_head: RwLock::new(None) }
    }

    /// The status and headers of the remembered hit head when it was made for this `age` and `ttl`.
    pub(crate) fn hit_head(&self, age: u64, ttl: i64) -> Option<(StatusCode, HeaderMap)> {
        let head = self.hit_head.read().unwrap_or_else(PoisonError::into_inner);
        head.as_ref().filter(|h| h.age == age && h.ttl == ttl).map(|h| (h.status, h.headers.clone()))
    }

    /// Remembers `head` (skipped when another request is remembering one right now: it only saves work).
    pub(crate) fn remember_hit_head(&self, head: HitHead) {
        if let Ok(mut slot) = self.hit_head.try_write() {
            *slot = Some(head);
        }
    }
}

impl Decoded {
    /// The record stored as `value` under `key`: the memo when `value` is the very allocation it was
    /// decoded from, else decoded now (and remembered). `None` for a value that is not a record.
    pub(crate) fn record(&self, key: &str, value: &Bytes) -> Option<Arc<DecodedRecord>> {
        {
            let memos = self.inner.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(memo) = memos.by_key.get(key) {
                if memo.value.as_ptr() == value.as_ptr() && memo.value.len() == value.len() {
                    return Some(Arc::clone(&memo.record));
                }
            }
        }
        let record = Arc::new(DecodedRecord::new(Record::decode(value)?));
        if value.len() <= MAX_BYTES / 16 {
            let mut memos = self.inner.write().unwrap_or_else(PoisonError::into_inner);
            memos.insert(key, Memo { value: value.clone(), record: Arc::clone(&record) });
        }
        Some(record)
    }
}

impl Memos {
    fn insert(&mut self, key: &str, memo: Memo) {
        let size = memo.value.len();
        if let Some(old) = self.by_key.insert(key.to_owned(), memo) {
            self.bytes -= old.value.len();
        }
        self.bytes += size;
        while self.by_key.len() > MAX_ENTRIES || self.bytes > MAX_BYTES {
            let Some(victim) = self.by_key.keys().find(|k| k.as_str() != key).cloned() else { break };
            if let Some(old) = self.by_key.remove(&victim) {
                self.bytes -= old.value.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memos_are_used_only_for_the_same_allocation_and_stay_bounded() {
        let decoded = Decoded::default();
        let a = Record::Pass("a".into()).encode();
        let first = decoded.record("k", &a).unwrap();
        assert!(Arc::ptr_eq(&first, &decoded.record("k", &a.clone()).unwrap()), "same bytes: the memo");
        // Equal content in another allocation (a new write, another node) is decoded again.
        let b = Bytes::copy_from_slice(&Record::Pass("b".into()).encode());
        assert_eq!(decoded.record("k", &b).unwrap().record, Record::Pass("b".into()));
        assert!(decoded.record("garbage", &Bytes::from_static(b"x")).is_none());
        for i in 0..MAX_ENTRIES + 10 {
            decoded.record(&i.to_string(), &Record::Pass(String::new()).encode());
        }
        let memos = decoded.inner.read().unwrap();
        assert!(memos.by_key.len() <= MAX_ENTRIES);
        assert_eq!(memos.bytes, memos.by_key.values().map(|m| m.value.len()).sum::<usize>());
    }

    #[test]
    fn a_hit_head_is_reused_only_at_the_same_age_and_ttl() {
        let decoded = DecodedRecord::new(Record::Pass(String::new()));
        assert!(decoded.hit_head(3, 57).is_none());
        let mut headers = HeaderMap::new();
        headers.insert("age", http::HeaderValue::from_static("3"));
        decoded.remember_hit_head(HitHead { age: 3, ttl: 57, status: StatusCode::OK, headers });
        let (status, headers) = decoded.hit_head(3, 57).unwrap();
        assert_eq!((status, &headers["age"]), (StatusCode::OK, &http::HeaderValue::from_static("3")));
        assert!(decoded.hit_head(4, 57).is_none(), "a second later: another Age");
        assert!(decoded.hit_head(3, 56).is_none(), "another ttl");
    }
}
