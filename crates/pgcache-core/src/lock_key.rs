//! The advisory lock key of a cache key: a fixed, documented hash, so other clients can take the same
//! lock. A leaf module: it depends on nothing else in the crate.

/// The 64-bit advisory lock key of a cache key: `xxh3_64(schema_prefix ‖ 0x00 ‖ key)` (XXH3, seed 0),
/// its bits read as a signed `bigint`. `get_or_set` takes `pg_advisory_lock` on it. Fixed and
/// documented so other clients can take the same lock (PostgreSQL's `hashtext` is 32-bit and not a
/// stable interface).
///
/// ```
/// let a = pgcache_core::lock_key("app_", "user:1");
/// assert_eq!(a, pgcache_core::lock_key("app_", "user:1"));
/// assert_ne!(a, pgcache_core::lock_key("other_", "user:1"));
/// ```
pub fn lock_key(schema_prefix: &str, key: &str) -> i64 {
    let mut input = Vec::with_capacity(schema_prefix.len() + 1 + key.len());
    input.extend_from_slice(schema_prefix.as_bytes());
    input.push(0);
    input.extend_from_slice(key.as_bytes());
    i64::from_ne_bytes(xxhash_rust::xxh3::xxh3_64(&input).to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_pinned() {
        // Pinned values: changing the hash would let old and new processes take different locks.
        assert_eq!(lock_key("", ""), -4_302_098_779_834_749_733);
        assert_eq!(lock_key("pgcache_", "user:1"), -3_224_427_462_030_615_399);
    }

    #[test]
    fn prefix_and_key_are_separated() {
        assert_ne!(lock_key("a", "b"), lock_key("ab", ""));
        assert_ne!(lock_key("p_", "k1"), lock_key("p_", "k2"));
    }
}
