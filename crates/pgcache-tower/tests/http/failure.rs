//! With PostgreSQL unreachable the layer fails open, and says so.

use pgcache_core::{NullCache, PostgresCache};
use pgcache_tests::{settings_for, TestCluster};
use pgcache_tower::PgCacheLayer;

use crate::support::{get, node, scripted, serve, Origin};

#[tokio::test]
async fn a_dead_database_is_served_by_the_handler() {
    let cluster = tokio::task::spawn_blocking(TestCluster::start).await.unwrap().expect("cluster");
    let mut settings = settings_for("failure");
    settings.dsn = cluster.dsn();
    let origin = Origin::new();
    let open = node(&settings, origin.router(), |l| l).await;
    let closed = node(&settings.clone().fail_open(false), origin.router(), |l| l).await;
    let path = scripted("/f", &["cache-control: max-age=60"]);
    get(&open.url(&path), &[]).await;
    assert!(get(&closed.url(&path), &[]).await.hit());

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop().expect("stop");
        cluster
    })
    .await
    .unwrap();
    for n in [&open, &closed] {
        for p in [&path, &scripted("/g", &["cache-control: max-age=60"])] {
            let r = get(&n.url(p), &[]).await;
            assert_eq!(r.status, 200, "{}", r.cache);
            assert!(r.body.starts_with("n="), "{}", r.body);
            assert!(r.hit() || r.cache.contains("detail=cache-unavailable"), "{}", r.cache);
        }
        let fresh = get(&n.url(&scripted("/h", &["cache-control: max-age=60"])), &[]).await;
        assert!(fresh.cache.contains("detail=cache-unavailable"), "{}", fresh.cache);
    }
    drop(cluster);
}

#[tokio::test]
async fn a_lazy_cache_that_cannot_connect_fails_open() {
    let origin = Origin::new();
    let mut settings = settings_for("lazy");
    settings.dsn = "postgresql://nobody@127.0.0.1:1/none".to_owned();
    let cache = PostgresCache::connect_lazy(settings).expect("valid settings");
    let addr = serve(origin.router().layer(PgCacheLayer::new(cache))).await;
    for _ in 0..2 {
        let r = get(&format!("http://{addr}{}", scripted("/l", &["cache-control: max-age=60"])), &[]).await;
        assert_eq!(r.status, 200);
        assert!(r.cache.contains("detail=cache-unavailable"), "{}", r.cache);
    }
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn a_lazy_cache_connects_on_first_use() {
    let origin = Origin::new();
    let settings = settings_for("lazy_ok");
    // A lazy cache never runs migrations: the schema is the deployment's job.
    PostgresCache::init_db(&settings).await.expect("init_db");
    let cache = PostgresCache::connect_lazy(settings).expect("valid settings");
    let addr = serve(origin.router().layer(PgCacheLayer::new(cache))).await;
    let url = format!("http://{addr}{}", scripted("/l", &["cache-control: max-age=60"]));
    assert!(get(&url, &[]).await.cache.contains("stored"));
    assert!(get(&url, &[]).await.hit());
}

#[tokio::test]
async fn null_cache_never_stores() {
    let origin = Origin::new();
    let addr = serve(origin.router().layer(PgCacheLayer::new(NullCache::new()))).await;
    let url = format!("http://{addr}{}", scripted("/n", &["cache-control: max-age=60"]));
    for _ in 0..2 {
        let r = get(&url, &[]).await;
        assert_eq!(r.status, 200);
        assert!(!r.hit());
    }
    assert_eq!(origin.hits(), 2);
}
