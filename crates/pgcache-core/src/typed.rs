//! [`TypedCache`]: serde-typed access on top of [`CacheStore`], written once for every cache.

use std::future::Future;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::cache_store::{CacheStore, Fill, LoadError};
use crate::codec::Codec;
use crate::error::{excerpt, BoxError, Error, Result};
use crate::ttl::Ttl;

/// Typed values through a [`Codec`] (JSON by default). Import it (or `pgcache_core::prelude::*`) to call
/// `get`, `set` and `get_or_set` on a [`PostgresCache`](crate::PostgresCache) or [`NullCache`](crate::NullCache).
///
/// ```no_run
/// # async fn demo() -> Result<(), pgcache_core::Error> {
/// use std::time::Duration;
/// use pgcache_core::prelude::*;
/// use serde_json::{json, Value};
///
/// let cache = NullCache::new();
/// cache.set("profile:123", &json!({"name": "Ava"}), Some(Duration::from_secs(300))).await?;
/// let user: Value = cache
///     .get_or_set("profile:456", || async { Ok::<_, std::io::Error>(json!({"name": "Nova"})) }, None)
///     .await?;
/// assert_eq!(user["name"], "Nova");
/// # Ok(()) }
/// ```
pub trait TypedCache: CacheStore + Sized {
    /// The codec used for typed values.
    type Codec: Codec + Clone;

    /// The codec instance.
    fn codec(&self) -> &Self::Codec;

    /// Reads and decodes a value; an expired entry is a miss.
    ///
    /// # Errors
    /// Bad key; [`Error::Codec`] when the stored bytes are not a `T`; database errors when failing closed.
    fn get<T: DeserializeOwned>(&self, key: &str) -> impl Future<Output = Result<Option<T>>> + Send {
        async move {
            match self.get_bytes(key).await? {
                Some(bytes) => decode(self.codec(), key, &bytes).map(Some),
                None => Ok(None),
            }
        }
    }

    /// Encodes and writes a value. `ttl`: `None`/[`Ttl::Default`] = `default_ttl`, or a duration, or [`Ttl::Never`].
    ///
    /// # Errors
    /// Bad key, [`Error::Codec`], value too large, any database error.
    fn set<T: Serialize + ?Sized + Sync>(
        &self,
        key: &str,
        value: &T,
        ttl: impl Into<Ttl> + Send,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            let bytes = encode(self.codec(), key, value)?;
            self.set_bytes(key, bytes, ttl.into()).await
        }
    }

    /// Reads many keys in one round trip, in order.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    fn get_many<T: DeserializeOwned + Send>(
        &self,
        keys: &[&str],
    ) -> impl Future<Output = Result<Vec<Option<T>>>> + Send {
        async move {
            let raw = self.get_many_bytes(keys).await?;
            keys.iter().zip(raw).map(|(key, bytes)| bytes.map(|b| decode(self.codec(), key, &b)).transpose()).collect()
        }
    }

    /// Writes many values with one TTL in one statement.
    ///
    /// # Errors
    /// As [`set`](Self::set); nothing is written when any item is invalid.
    fn set_many<T: Serialize + Sync>(
        &self,
        items: &[(&str, T)],
        ttl: impl Into<Ttl> + Send,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            let encoded = items
                .iter()
                .map(|(key, value)| Ok((*key, encode(self.codec(), key, value)?)))
                .collect::<Result<Vec<(&str, Bytes)>>>()?;
            self.set_many_bytes(&encoded, ttl.into()).await
        }
    }

    /// Returns the cached value, or runs `loader` once across all processes, stores and returns its value.
    /// See [`CacheStore::get_or_load`] for the guarantees.
    ///
    /// # Errors
    /// [`Error::Loader`] with the loader's error (nothing cached, next call retries); bad key;
    /// [`Error::Codec`]; database errors only when failing closed.
    ///
    /// # Cancel safety
    /// Dropping the future never strands other callers: they load or read the value themselves.
    fn get_or_set<T, F, Fut, E>(
        &self,
        key: &str,
        loader: F,
        ttl: impl Into<Ttl> + Send,
    ) -> impl Future<Output = Result<T>> + Send
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let ttl = ttl.into();
        let codec = self.codec().clone();
        let owned_key = key.to_owned();
        async move {
            let mut loaded = self
                .get_or_load(key, move || async move {
                    let value = loader().await.map_err(|e| Error::Loader(e.into()))?;
                    let bytes = encode(&codec, &owned_key, &value)?;
                    // The value goes back to this caller as it is, so it is not decoded again.
                    Ok::<_, Error>(Fill::new(bytes, ttl).with_output(value))
                })
                .await
                .map_err(|e| match e {
                    LoadError::Loader(e) | LoadError::Cache(e) => e,
                })?;
            // Strict, as `set` is: a value the server refused or that is over `max_value_bytes` is an error
            // here; one that could not be stored because the database is out of reach is served (fail open).
            if let Some(e) = loaded.store_error.take() {
                if !e.is_unavailable() {
                    return Err(e);
                }
            }
            match loaded.output {
                Some(value) => Ok(value),
                None => decode(self.codec(), key, &loaded.value),
            }
        }
    }
}

pub(crate) fn encode<C: Codec, T: Serialize + ?Sized>(codec: &C, key: &str, value: &T) -> Result<Bytes> {
    codec.encode(value).map_err(|source| Error::Codec { key: excerpt(key), source })
}

fn decode<C: Codec, T: DeserializeOwned>(codec: &C, key: &str, bytes: &[u8]) -> Result<T> {
    codec.decode(bytes).map_err(|source| Error::Codec { key: excerpt(key), source })
}
