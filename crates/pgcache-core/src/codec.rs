//! Codecs turn typed values into the bytes stored in the cache and back.
//!
//! The cache itself stores opaque bytes (`bytea`); [`JsonCodec`] is the default. Implement [`Codec`] to
//! use another format (MessagePack, bincode, protobuf...).

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::BoxError;

/// Encodes and decodes typed values.
///
/// ```
/// use pgcache_core::{Codec, JsonCodec};
///
/// let bytes = JsonCodec.encode(&vec![1, 2, 3]).unwrap();
/// assert_eq!(&bytes[..], b"[1,2,3]");
/// let back: Vec<i32> = JsonCodec.decode(&bytes).unwrap();
/// assert_eq!(back, [1, 2, 3]);
/// ```
pub trait Codec: Send + Sync + 'static {
    /// Serialises a value.
    ///
    /// # Errors
    /// When the value cannot be represented in this format.
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, BoxError>;

    /// Deserialises a value.
    ///
    /// # Errors
    /// When the bytes are not a valid `T` in this format.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, BoxError>;
}

/// JSON through `serde_json`: readable in `psql` (`convert_from(value, 'UTF8')`), the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, BoxError> {
        Ok(Bytes::from(serde_json::to_vec(value)?))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_error() {
        let v = serde_json::json!({"name": "Ava", "n": [1, 2]});
        let b = JsonCodec.encode(&v).expect("encodes");
        assert_eq!(JsonCodec.decode::<serde_json::Value>(&b).expect("decodes"), v);
        assert!(JsonCodec.decode::<u32>(b"\xff not json").is_err());
        assert!(JsonCodec.decode::<u32>(b"\"text\"").is_err());
    }
}
