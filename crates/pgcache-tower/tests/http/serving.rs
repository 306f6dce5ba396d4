//! Age, Cache-Status, 304 from the cache, client directives.

use pgcache_tests::settings_for;

use crate::support::{get, node, scripted, Origin};

#[tokio::test]
async fn hits_carry_age_and_cache_status() {
    let origin = Origin::new();
    let n = node(&settings_for("serve_age"), origin.router(), |l| l.status_name("edge")).await;
    let url = n.url(&scripted("/a", &["cache-control: max-age=60", "age: 7"]));
    let miss = get(&url, &[]).await;
    assert_eq!(miss.cache, "edge; fwd=uri-miss; fwd-status=200; stored; ttl=53");
    let hit = get(&url, &[]).await;
    assert!(hit.cache.starts_with("edge; hit; ttl=5"), "{}", hit.cache);
    assert!(hit.age.is_some_and(|a| (7..10).contains(&a)), "{:?}", hit.age);
}

#[tokio::test]
async fn conditional_requests_are_answered_from_the_cache() {
    let origin = Origin::new();
    let n = node(&settings_for("serve_304"), origin.router(), |l| l).await;
    let lm = "Wed, 21 Oct 2015 07:28:00 GMT";
    let url = n.url(&scripted("/c", &["cache-control: max-age=60", "etag: \"v1\"", &format!("last-modified: {lm}")]));
    // The first request is conditional too: the fill must not store the handler's 304.
    let first = get(&url, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(first.status, 304, "{}", first.cache);
    let weak = get(&url, &[("if-none-match", "\"x\", W/\"v1\"")]).await;
    assert_eq!(weak.status, 304);
    assert!(weak.hit());
    assert_eq!(weak.headers.get("etag").unwrap(), "\"v1\"");
    assert!(weak.headers.get("cache-control").is_some() && weak.age.is_some());
    let other = get(&url, &[("if-none-match", "\"v2\"")]).await;
    assert_eq!(other.status, 200);
    assert!(other.body.starts_with("n=1 "));
    assert_eq!(get(&url, &[("if-modified-since", lm)]).await.status, 304);
    assert_eq!(get(&url, &[("if-modified-since", "Tue, 20 Oct 2015 07:28:00 GMT")]).await.status, 200);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn client_no_cache_is_ignored_unless_configured() {
    let origin = Origin::new();
    let n = node(&settings_for("serve_cc"), origin.router(), |l| l).await;
    let url = n.url(&scripted("/r", &["cache-control: max-age=60"]));
    get(&url, &[]).await;
    for h in [("cache-control", "no-cache"), ("cache-control", "max-age=0"), ("pragma", "no-cache")] {
        assert!(get(&url, &[h]).await.hit());
    }
    assert_eq!(origin.hits(), 1);

    let honoring = Origin::new();
    let m = node(&settings_for("serve_cc2"), honoring.router(), |l| l.honor_client_no_cache(true)).await;
    let url = m.url(&scripted("/r", &["cache-control: max-age=60"]));
    get(&url, &[]).await;
    let reload = get(&url, &[("cache-control", "no-cache")]).await;
    assert!(reload.cache.contains("fwd=stale"), "{}", reload.cache);
    assert!(reload.body.starts_with("n=2 "));
    let no_store = get(&url, &[("cache-control", "no-store")]).await;
    assert!(no_store.cache.contains("fwd=bypass") && no_store.cache.contains("detail=no-store"));
    assert!(get(&url, &[]).await.body.starts_with("n=2 "));
}

#[tokio::test]
async fn only_if_cached_misses_with_504() {
    let origin = Origin::new();
    let n = node(&settings_for("serve_oic"), origin.router(), |l| l).await;
    let url = n.url(&scripted("/o", &["cache-control: max-age=60"]));
    assert_eq!(get(&url, &[("cache-control", "only-if-cached")]).await.status, 504);
    get(&url, &[]).await;
    assert!(get(&url, &[("cache-control", "only-if-cached")]).await.hit());
    assert_eq!(origin.hits(), 1);
    // A stored response that must be revalidated cannot be used either.
    let nc = n.url(&scripted("/o2", &["cache-control: no-cache, max-age=60"]));
    get(&nc, &[]).await;
    assert_eq!(get(&nc, &[("cache-control", "only-if-cached")]).await.status, 504);
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn no_cache_responses_are_stored_and_revalidated_every_time() {
    let origin = Origin::new();
    let n = node(&settings_for("serve_nc"), origin.router(), |l| l).await;
    let url = n.url(&scripted("/nc", &["cache-control: no-cache, max-age=60", "etag: \"e1\""]));
    let first = get(&url, &[]).await;
    assert!(first.cache.contains("stored"), "{}", first.cache);
    // The origin answers the revalidation with 304: the stored body is served, the origin asked each time.
    for i in 2..4 {
        let again = get(&url, &[]).await;
        assert_eq!(again.status, 200);
        assert!(again.cache.contains("fwd=stale; fwd-status=304; stored"), "{}", again.cache);
        assert_eq!(again.body, first.body);
        assert_eq!(origin.hits(), i);
    }
}

#[tokio::test]
async fn if_modified_since_is_compared_with_date_when_the_response_has_no_last_modified() {
    let origin = Origin::new();
    let n = node(&settings_for("serve_ims_date"), origin.router(), |l| l).await;
    let url = n.url(&scripted("/d", &["cache-control: max-age=600", "date: Sun, 06 Nov 1994 08:49:37 GMT"]));
    get(&url, &[]).await;
    // RFC 9111 §4.3.2: without Last-Modified, the Date the response was generated.
    let same = get(&url, &[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]).await;
    assert_eq!(same.status, 304, "{}", same.cache);
    assert!(same.hit(), "{}", same.cache);
    let earlier = get(&url, &[("if-modified-since", "Sun, 06 Nov 1994 08:49:36 GMT")]).await;
    assert_eq!(earlier.status, 200, "{}", earlier.cache);
    assert_eq!(origin.hits(), 1);
}
