//! End-to-end tests of `PgCacheLayer` with real servers on 127.0.0.1, real clients and a real
//! PostgreSQL (`scripts/with-postgres cargo test -p pgcache-tower`). One module per behaviour, named
//! after what it guarantees; see the crate README for the map.

mod support;

mod bodies;
mod dogpile;
mod failure;
mod invalidation;
mod keys;
mod ranges;
mod revalidation;
mod robustness;
mod security;
mod serving;
mod stale;
mod storability;
