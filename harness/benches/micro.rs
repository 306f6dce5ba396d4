//! Criterion micro-benchmarks: an L1 hit through pgcache next to a raw moka `get` of the same key and value
//! types, and the same for `get_or_load` answered from L1.
//!
//! Needs PostgreSQL (the cache connects to it even when it answers from L1):
//! `scripts/with-postgres cargo bench -p pgcache-harness --bench micro`. Without `PGCACHE_DSN` it prints a
//! notice and measures only the moka baseline.

// criterion_group!/criterion_main! generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use pgcache_core::{CacheSettings, CacheStore, Fill, PostgresCache, Ttl};

fn l1_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let value = Bytes::from(vec![b'v'; 100]);
    let key = "bench:7";
    let mut group = c.benchmark_group("l1_hit");

    let moka: moka::future::Cache<Arc<str>, Arc<(Bytes, i64)>> =
        moka::future::Cache::builder().max_capacity(10_000).build();
    rt.block_on(moka.insert(Arc::from(key), Arc::new((value.clone(), 1))));
    group.bench_function("raw_moka_get", |b| {
        b.to_async(&rt).iter(|| async { black_box(moka.get(black_box(key)).await) })
    });

    let Ok(dsn) = std::env::var("PGCACHE_DSN") else {
        eprintln!(
            "notice: PGCACHE_DSN is not set: measuring only the moka baseline (run through scripts/with-postgres)"
        );
        return;
    };
    let id = std::process::id();
    let settings = CacheSettings::new(dsn).schema_prefix(format!("micro_{id}_")).notify_channel(format!("micro_{id}"));
    let cache = rt.block_on(async {
        PostgresCache::init_db(&settings).await.expect("init_db");
        let cache = PostgresCache::connect(settings.clone()).await.expect("connect");
        cache.set_bytes(key, value.clone(), Ttl::Never).await.expect("set");
        cache
    });
    group.bench_function("pgcache_get_bytes", |b| {
        b.to_async(&rt).iter(|| async { black_box(cache.get_bytes(black_box(key)).await.expect("get")) })
    });
    group.bench_function("pgcache_get_entry", |b| {
        b.to_async(&rt).iter(|| async { black_box(cache.get_entry(black_box(key)).await.expect("get")) })
    });
    group.bench_function("pgcache_get_or_load", |b| {
        b.to_async(&rt).iter(|| async {
            let v = value.clone();
            let loaded = cache
                .get_or_load(key, move || async move { Ok::<_, std::convert::Infallible>(Fill::new(v, Ttl::Never)) })
                .await
                .expect("get_or_load");
            black_box(loaded)
        })
    });
    group.finish();
    rt.block_on(cache.close());
}

criterion_group!(benches, l1_hit);
criterion_main!(benches);
