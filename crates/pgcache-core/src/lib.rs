#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod cache;
mod cache_store;
mod capability;
mod codec;
mod coherence;
mod conn;
mod error;
mod flight;
mod flusher;
mod group_commit;
mod listener;
mod local;
mod lock;
mod lock_key;
mod null;
mod poller;
mod refresh;
mod replica;
mod row_triggers;
mod schema;
mod settings;
mod shard;
mod shared;
mod store;
mod sweeper;
pub mod telemetry;
mod transaction;
mod ttl;
mod typed;
mod validate;

pub use cache::PostgresCache;
pub use cache_store::{
    CacheStatus, CacheStore, DynLoader, DynOutput, Entry, Fill, ListenerState, LoadError, Loaded, SetOptions, Source,
};
pub use capability::{Capabilities, Capability, InvalidationMode};
pub use codec::{Codec, JsonCodec};
pub use error::{BoxError, Error, Result};
pub use lock_key::lock_key;
pub use null::NullCache;
pub use settings::CacheSettings;
pub use shard::ShardedCache;
pub use shared::SharedCache;
pub use transaction::{CacheTx, Pending};
pub use ttl::{Expiry, Ttl};
pub use typed::TypedCache;

/// Everything a typical user imports: `use pgcache_core::prelude::*;`.
pub mod prelude {
    pub use crate::{CacheSettings, CacheStore, NullCache, PostgresCache, SharedCache, Ttl, TypedCache};
}
