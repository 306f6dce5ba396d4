#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

mod cache;
mod extract;
mod rejection;

pub use cache::Cache;
pub use extract::{CacheResource, Cached, Lookup, RejectionFor};
pub use rejection::{CacheMisconfigured, CacheUnavailable, CachedRejection, InvalidCacheKey};
