//! TEMPORARY until core's `SharedCache` lands: what the layer and `HttpCache` accept.

use std::sync::Arc;

use pgcache_core::{CacheStore, NullCache, PostgresCache};

/// Anything the layer can cache into.
pub trait IntoStore {
    /// The store as a shared trait object.
    fn into_store(self) -> Arc<dyn CacheStore>;
}

impl<C: Clone + Send + Sync + 'static> IntoStore for PostgresCache<C> {
    fn into_store(self) -> Arc<dyn CacheStore> {
        Arc::new(self)
    }
}

impl<C: Send + Sync + 'static> IntoStore for NullCache<C> {
    fn into_store(self) -> Arc<dyn CacheStore> {
        Arc::new(self)
    }
}

impl IntoStore for Arc<dyn CacheStore> {
    fn into_store(self) -> Arc<dyn CacheStore> {
        self
    }
}
