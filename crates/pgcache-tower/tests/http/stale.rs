//! Stale-while-revalidate and stale-if-error (RFC 5861), refresh once across nodes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pgcache_tests::{eventually, settings_for};

use crate::support::{get, node, scripted, Origin};

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_across_nodes() {
    let origin = Origin::new();
    let settings = settings_for("swr");
    let a = node(&settings, origin.router(), |l| l).await;
    let b = node(&settings, origin.router(), |l| l).await;
    let path = scripted("/swr", &["cache-control: max-age=1, stale-while-revalidate=30"]);
    let first = get(&a.url(&path), &[]).await;
    assert!(first.body.starts_with("n=1 "));
    assert!(get(&b.url(&path), &[]).await.hit());
    // Let it go stale (freshness is one second: waiting is the behaviour under test).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    origin.delay_ms.store(300, Ordering::SeqCst);
    let mut stale = Vec::new();
    for i in 0..20 {
        let url = if i % 2 == 0 { a.url(&path) } else { b.url(&path) };
        stale.push(tokio::spawn(async move { get(&url, &[]).await }));
    }
    for r in stale {
        let r = r.await.unwrap();
        assert!(r.body.starts_with("n=1 "), "stale copy expected: {} / {}", r.body, r.cache);
        assert!(r.cache.contains("detail=stale-while-revalidate"), "{}", r.cache);
    }
    eventually(Duration::from_secs(10), || {
        let (a, b) = (a.url(&path), b.url(&path));
        async move {
            let (ra, rb) = (get(&a, &[]).await, get(&b, &[]).await);
            ra.body.starts_with("n=2 ") && rb.body.starts_with("n=2 ") && ra.hit() && rb.hit()
        }
    })
    .await
    .unwrap();
    assert_eq!(origin.hits(), 2, "one background refresh for both nodes");
}

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_handler_fails() {
    let origin = Origin::new();
    let n = node(&settings_for("sie"), origin.router(), |l| l).await;
    let url = n.url(&scripted("/sie", &["cache-control: max-age=1, stale-if-error=60"]));
    let first = get(&url, &[]).await;
    origin.fail.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = get(&url, &[]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, first.body);
    assert!(
        stale.cache.contains("fwd=stale; fwd-status=500") && stale.cache.contains("detail=stale-if-error"),
        "{}",
        stale.cache
    );
    // Recovery: the next request refreshes.
    origin.fail.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(5), || {
        let (url, old) = (url.clone(), first.body.clone());
        async move { get(&url, &[]).await.body != old }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn without_stale_if_error_errors_pass_through() {
    let origin = Origin::new();
    let n = node(&settings_for("sie_none"), origin.router(), |l| l).await;
    let url = n.url(&scripted("/nosie", &["cache-control: max-age=1, must-revalidate, stale-if-error=60"]));
    get(&url, &[]).await;
    origin.fail.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get(&url, &[]).await;
    assert_eq!(r.status, 500, "must-revalidate forbids serving stale: {}", r.cache);
}

#[tokio::test]
async fn layer_default_stale_if_error_applies() {
    let origin = Origin::new();
    let n = node(&settings_for("sie_default"), origin.router(), |l| l.stale_if_error(Duration::from_secs(60))).await;
    let url = n.url(&scripted("/d", &["cache-control: max-age=1"]));
    let first = get(&url, &[]).await;
    origin.fail.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get(&url, &[]).await;
    assert_eq!((r.status, r.body), (200, first.body));
}
