//! TEMPORARY shim: the typed `get_or_load` of the coming core API, over today's type-erased one.
//! Deleted when `core: typed get_or_load` is merged.

use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pgcache_core::{CacheStore, Error, Expiry, SetOptions, Source};

pub(crate) struct Fill<T> {
    pub(crate) value: Bytes,
    pub(crate) options: SetOptions,
    pub(crate) output: T,
}

#[allow(dead_code)]
pub(crate) struct Loaded<T> {
    pub(crate) value: Bytes,
    pub(crate) source: Source,
    pub(crate) stored: bool,
    pub(crate) unavailable: bool,
    pub(crate) version: i64,
    pub(crate) expiry: Expiry,
    pub(crate) output: Option<T>,
}

pub(crate) enum LoadError<E> {
    Loader(E),
    Cache(Error),
}

pub(crate) async fn get_or_load<T, E, F, Fut>(
    store: &Arc<dyn CacheStore>,
    key: &str,
    loader: F,
) -> Result<Loaded<T>, LoadError<E>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Fill<T>, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let side: Arc<Mutex<Option<Result<T, E>>>> = Arc::new(Mutex::new(None));
    let put = Arc::clone(&side);
    let erased: pgcache_core::Loader = Box::new(move || {
        Box::pin(async move {
            let result = loader().await;
            let (fill, out) = match result {
                Ok(fill) => (Ok(pgcache_core::Fill { value: fill.value, options: fill.options }), Ok(fill.output)),
                Err(e) => (Err("loader failed".into()), Err(e)),
            };
            if let Ok(mut slot) = put.lock() {
                *slot = Some(out);
            }
            fill
        })
    });
    let result = store.get_or_load(key, erased).await;
    let out = side.lock().ok().and_then(|mut slot| slot.take());
    match (result, out) {
        (_, Some(Err(e))) => Err(LoadError::Loader(e)),
        (Ok(l), out) => Ok(Loaded {
            value: l.value,
            source: l.source,
            stored: l.stored,
            unavailable: l.unavailable,
            version: l.version,
            expiry: l.expiry,
            output: out.and_then(Result::ok),
        }),
        (Err(e), _) => Err(LoadError::Cache(e)),
    }
}
