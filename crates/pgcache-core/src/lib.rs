#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod cache_store;
mod codec;
mod error;
mod flight;
mod listener;
mod local;
mod lock;
mod null;
mod postgres;
mod settings;
mod store;
mod sweeper;
mod tls;
mod ttl;
mod typed;
mod validate;

pub use cache_store::{
    CacheStatus, CacheStore, Entry, Fill, ListenerState, LoadFuture, Loaded, Loader, SetOptions, Source,
};
pub use codec::{Codec, JsonCodec};
pub use error::{BoxError, Error, Result};
pub use lock::lock_key;
pub use null::NullCache;
pub use postgres::PostgresCache;
pub use settings::CacheSettings;
pub use ttl::{Expiry, Ttl};
pub use typed::TypedCache;

/// Everything a typical user imports: `use pgcache_core::prelude::*;`.
pub mod prelude {
    pub use crate::{CacheSettings, CacheStore, NullCache, PostgresCache, Ttl, TypedCache};
}

/// The workspace README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct WorkspaceReadme;
