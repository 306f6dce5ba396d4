#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod body;
mod config;
mod date;
mod decoded;
mod entry;
mod error;
mod flow;
mod future;
mod key;
mod layer;
mod policy;
mod purge;
mod range;
mod service;
mod status;

#[doc(inline)]
pub use body::{PgBody, ReplayBody};
#[doc(inline)]
pub use config::{DefaultKey, KeyScope, MakeKey};
#[doc(inline)]
pub use error::PurgeError;
#[doc(inline)]
pub use future::ResponseFuture;
#[doc(inline)]
pub use layer::PgCacheLayer;
pub use policy::PGCACHE_CONTROL;
#[doc(inline)]
pub use purge::HttpCache;
#[doc(inline)]
pub use service::PgCache;
#[doc(inline)]
pub use status::CacheStatusMember;
