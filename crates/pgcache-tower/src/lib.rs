#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod body;
mod entry;
mod flow;
mod key;
mod layer;
mod lazy;
mod policy;
mod service;
mod status;

#[doc(inline)]
pub use body::{PgBody, ReplayBody};
#[doc(inline)]
pub use layer::{IntoStore, PgCacheLayer};
pub use policy::PGCACHE_CONTROL;
#[doc(inline)]
pub use service::{PgCache, ResponseFuture};
