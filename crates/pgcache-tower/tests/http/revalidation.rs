//! Stale responses with a validator are kept and revalidated with a conditional request (RFC 9111
//! §4.3); a 304 freshens the stored headers (§4.3.4) and the stored body is served. Responses that forbid
//! serving stale never are, even when the origin fails (§4.2.4, §5.2.2.2, §5.2.2.8, §5.2.2.10).

use std::sync::atomic::Ordering;
use std::time::Duration;

use pgcache_tests::settings_for;

use crate::support::{get, node, scripted, Origin};

#[tokio::test]
async fn stale_responses_with_a_validator_are_revalidated_and_the_stored_body_served() {
    let origin = Origin::new();
    let n = node(&settings_for("reval"), origin.router(), |l| l).await;
    // max-age=0: stale at once, so every use revalidates (no waiting for expiry).
    let url = n.url(&scripted("/r", &["cache-control: max-age=0", "etag: \"v1\"", "x-seen: {n}"]));
    let first = get(&url, &[]).await;
    assert!(first.cache.contains("stored"), "{}", first.cache);
    let second = get(&url, &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body, first.body, "the stored body is served after a 304");
    assert!(second.cache.contains("fwd=stale; fwd-status=304"), "{}", second.cache);
    // The origin answered 304 (it only does for a matching If-None-Match), and its fields replaced the
    // stored ones.
    assert_eq!(second.headers["x-seen"], "2");
    assert_eq!(origin.hits(), 2);
    let third = get(&url, &[]).await;
    assert_eq!((third.body, third.headers["x-seen"].to_str().unwrap()), (first.body, "3"));
}

#[tokio::test]
async fn last_modified_is_a_validator_too() {
    let origin = Origin::new();
    let n = node(&settings_for("reval_lm"), origin.router(), |l| l).await;
    let url = n.url(&scripted("/lm", &["last-modified: sun, 06 nov 1994 08:49:37 gmt"]));
    let first = get(&url, &[]).await;
    // No freshness at all: stored stale, only to be revalidated.
    assert!(first.cache.contains("stored; ttl=0"), "{}", first.cache);
    let second = get(&url, &[]).await;
    // This origin ignores If-Modified-Since: a full 200 replaces the stored response.
    assert!(second.cache.contains("fwd=stale; fwd-status=200; stored"), "{}", second.cache);
    assert_ne!(second.body, first.body);
}

#[tokio::test]
async fn no_cache_without_max_age_is_stored_and_revalidated_on_every_use() {
    let origin = Origin::new();
    let n = node(&settings_for("reval_nc"), origin.router(), |l| l).await;
    let url = n.url(&scripted("/nc", &["cache-control: no-cache", "etag: \"a\""]));
    let first = get(&url, &[]).await;
    assert!(first.cache.contains("stored"), "{}", first.cache);
    for i in 2..=3 {
        let again = get(&url, &[]).await;
        assert!(!again.hit(), "{}", again.cache);
        assert!(again.cache.contains("fwd-status=304"), "{}", again.cache);
        assert_eq!(again.body, first.body);
        assert_eq!(origin.hits(), i);
    }
}

#[tokio::test]
async fn without_a_validator_stale_responses_are_not_kept() {
    let origin = Origin::new();
    let n = node(&settings_for("reval_none"), origin.router(), |l| l).await;
    let url = n.url(&scripted("/none", &["cache-control: max-age=0"]));
    assert!(get(&url, &[]).await.cache.contains("detail=no-ttl"));
}

#[tokio::test]
async fn responses_that_forbid_stale_are_never_served_stale_when_the_origin_fails() {
    let origin = Origin::new();
    let n = node(&settings_for("reval_ms"), origin.router(), |l| l.stale_if_error(Duration::from_secs(60))).await;
    let forbidding = [
        "cache-control: max-age=0, must-revalidate",
        "cache-control: max-age=0, proxy-revalidate",
        "cache-control: s-maxage=0, stale-if-error=60",
        "cache-control: no-cache, stale-if-error=60",
    ];
    let urls: Vec<String> = forbidding
        .iter()
        .enumerate()
        .map(|(i, cc)| n.url(&scripted(&format!("/ms{i}"), &[cc, "etag: \"e\""])))
        .collect();
    for url in &urls {
        assert!(get(url, &[]).await.cache.contains("stored"));
    }
    origin.fail.store(true, Ordering::SeqCst);
    for (url, cc) in urls.iter().zip(forbidding) {
        let r = get(url, &[]).await;
        assert_eq!(r.status, 500, "{cc}: {}", r.cache);
        assert!(r.body.starts_with("failure"), "{cc}: {}", r.body);
    }
    // The control: a plain stale response is served stale within the layer's stale-if-error.
    origin.fail.store(false, Ordering::SeqCst);
    let plain = n.url(&scripted("/plain", &["cache-control: max-age=0", "etag: \"e\""]));
    let first = get(&plain, &[]).await;
    origin.fail.store(true, Ordering::SeqCst);
    let r = get(&plain, &[]).await;
    assert_eq!((r.status, r.body), (200, first.body), "{}", r.cache);
}

#[tokio::test]
async fn a_304_that_names_another_validator_updates_nothing_and_the_stored_response_is_served() {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get as route;

    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    // An origin whose 304 carries another strong ETag (and a long freshness) than the stored one.
    let app = axum::Router::new().route(
        "/v",
        route(move |headers: HeaderMap| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let n = n.to_string();
                if headers.contains_key("if-none-match") {
                    let fields =
                        [("etag", "\"other\"".to_owned()), ("x-v", n), ("cache-control", "max-age=3600".into())];
                    (StatusCode::NOT_MODIFIED, fields).into_response()
                } else {
                    let fields =
                        [("etag", "\"a\"".to_owned()), ("x-v", n.clone()), ("cache-control", "max-age=0".into())];
                    (fields, format!("body {n}")).into_response()
                }
            }
        }),
    );
    let n = node(&settings_for("reval_select"), app, |l| l).await;
    let url = n.url("/v");
    let first = get(&url, &[]).await;
    assert!(first.cache.contains("stored"), "{}", first.cache);
    for expected_hits in [2, 3] {
        let again = get(&url, &[]).await;
        assert_eq!((again.status, again.body.as_str()), (200, "body 1"), "{}", again.cache);
        assert!(again.cache.contains("fwd=stale; fwd-status=304"), "{}", again.cache);
        // RFC 9111 §4.3.4: nothing of the 304 was taken (ETag, fields, freshness), so the next use
        // revalidates again.
        assert_eq!(again.headers["etag"], "\"a\"");
        assert_eq!(again.headers["x-v"], "1");
        assert_eq!(hits.load(Ordering::SeqCst), expected_hits);
    }
}
