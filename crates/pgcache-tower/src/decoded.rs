//! [`Decoded`]: the layer's in-process memo of decoded records, so that a hit from the core's local cache
//! (L1) does not parse the stored bytes and rebuild their `HeaderMap` on every request.
//!
//! A memo is keyed by the cache key and remembers the exact bytes it was decoded from: it is used only
//! when the core hands back the same allocation (its L1 shares one `Bytes` between reads), so it can never
//! serve anything the core would not: coherence stays the core's. It is bounded by entries and by the
//! bytes it keeps alive; past either bound it forgets arbitrary memos (the core's L1, bounded by its own
//! LRU budget, is the real cache; this only saves work).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;

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
    by_key: HashMap<String, Memo>,
    bytes: usize,
}

struct Memo {
    /// The stored value the record was decoded from.
    value: Bytes,
    record: Arc<Record>,
}

impl Decoded {
    /// The record stored as `value` under `key`: the memo when `value` is the very allocation it was
    /// decoded from, else decoded now (and remembered). `None` for a value that is not a record.
    pub(crate) fn record(&self, key: &str, value: &Bytes) -> Option<Arc<Record>> {
        {
            let memos = self.inner.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(memo) = memos.by_key.get(key) {
                if memo.value.as_ptr() == value.as_ptr() && memo.value.len() == value.len() {
                    return Some(Arc::clone(&memo.record));
                }
            }
        }
        let record = Arc::new(Record::decode(value)?);
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
        assert_eq!(*decoded.record("k", &b).unwrap(), Record::Pass("b".into()));
        assert_eq!(decoded.record("garbage", &Bytes::from_static(b"x")), None);
        for i in 0..MAX_ENTRIES + 10 {
            decoded.record(&i.to_string(), &Record::Pass(String::new()).encode());
        }
        let memos = decoded.inner.read().unwrap();
        assert!(memos.by_key.len() <= MAX_ENTRIES);
        assert_eq!(memos.bytes, memos.by_key.values().map(|m| m.value.len()).sum::<usize>());
    }
}
