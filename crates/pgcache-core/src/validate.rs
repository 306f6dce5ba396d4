//! Input checks shared by every cache: keys, values, tags. Bad input never reaches the database.

use crate::error::{excerpt, Error, Result};

/// Longest tag in bytes.
pub(crate) const MAX_TAG_BYTES: usize = 512;

/// A key must be non-empty, free of NUL (PostgreSQL `text` cannot hold it) and at most `max` bytes.
pub(crate) fn key(key: &str, max: usize) -> Result<()> {
    if key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if key.len() > max {
        return Err(Error::KeyTooLong { len: key.len(), max });
    }
    if key.contains('\0') {
        return Err(Error::KeyContainsNul);
    }
    Ok(())
}

/// A value must be at most `max` bytes.
pub(crate) fn value(key: &str, len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(Error::ValueTooLarge { key: excerpt(key), len, max });
    }
    Ok(())
}

/// Tags must be non-empty, NUL-free and at most [`MAX_TAG_BYTES`].
pub(crate) fn tags<S: AsRef<str>>(tags: &[S]) -> Result<()> {
    for tag in tags {
        let tag = tag.as_ref();
        let reason = if tag.is_empty() {
            "tags must not be empty"
        } else if tag.len() > MAX_TAG_BYTES {
            "tags must be at most 512 bytes"
        } else if tag.contains('\0') {
            "tags must not contain NUL"
        } else {
            continue;
        };
        return Err(Error::InvalidTag { tag: excerpt(tag), reason });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(matches!(key("", 10), Err(Error::EmptyKey)));
        assert!(matches!(key("abcdefghijk", 10), Err(Error::KeyTooLong { len: 11, max: 10 })));
        assert!(matches!(key("a\0b", 10), Err(Error::KeyContainsNul)));
        assert!(key("profile:1", 10).is_ok());
        // Multi-byte keys are measured in bytes, as PostgreSQL stores them.
        assert!(key(&"é".repeat(6), 10).is_err());
    }

    #[test]
    fn values_and_tags() {
        assert!(matches!(value("k", 11, 10), Err(Error::ValueTooLarge { len: 11, max: 10, .. })));
        assert!(value("k", 10, 10).is_ok());
        assert!(tags(&["a", "b"]).is_ok());
        assert!(tags(&[""]).is_err());
        assert!(tags(&["x".repeat(513)]).is_err());
    }
}
