//! End-to-end tests of `PgCacheLayer` with real servers on 127.0.0.1, real clients and a real
//! PostgreSQL (`scripts/with-postgres cargo test -p pgcache-tower`). One module per behaviour of the
//! issue; see the crate README for the map.

mod support;

mod b01_keys;
mod b02_storability;
mod b03_serving;
mod b04_stale;
mod b05_dogpile;
mod b06_invalidation;
mod b07_bodies;
mod b09_failure;
mod b10_security;
