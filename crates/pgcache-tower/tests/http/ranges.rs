//! Range requests (RFC 9110 §14) answered from a fresh stored complete response: one byte range gets a
//! 206 with its bytes, an unsatisfiable one a 416; several ranges, another unit or a failed `If-Range`
//! get the whole stored response. Without a fresh stored response the request goes to the origin as it
//! is, and nothing is stored.

use pgcache_tests::settings_for;

use crate::support::{get, node, scripted, Origin};

#[tokio::test]
async fn a_byte_range_of_a_fresh_stored_200_is_answered_206_from_the_cache() {
    let origin = Origin::new();
    let n = node(&settings_for("range_206"), origin.router(), |l| l).await;
    let url = n.url(&scripted("/r", &["cache-control: max-age=60", "x-kept: yes"]));
    let full = get(&url, &[]).await;
    assert!(full.cache.contains("stored"), "{}", full.cache);
    let len = full.body.len();
    for (range, bytes) in
        [("bytes=0-1", 0..2), ("bytes=2-", 2..len), ("bytes=-3", len - 3..len), ("bytes=4-9999", 4..len)]
    {
        let part = get(&url, &[("range", range)]).await;
        assert_eq!(part.status, 206, "{range}");
        assert!(part.hit(), "{range}: {}", part.cache);
        assert_eq!(part.body, full.body[bytes.clone()], "{range}");
        let content_range = format!("bytes {}-{}/{len}", bytes.start, bytes.end - 1);
        assert_eq!(part.headers["content-range"], content_range.as_str(), "{range}");
        assert_eq!(part.headers["content-length"], bytes.len().to_string().as_str(), "{range}");
        // The stored representation's fields come along (§15.3.7).
        assert_eq!(part.headers["x-kept"], "yes");
    }
    assert_eq!(origin.hits(), 1, "every range came from the stored response");
}

#[tokio::test]
async fn an_unsatisfiable_range_is_416_with_the_stored_length() {
    let origin = Origin::new();
    let n = node(&settings_for("range_416"), origin.router(), |l| l).await;
    let url = n.url(&scripted("/r", &["cache-control: max-age=60"]));
    let full = get(&url, &[]).await;
    let none = get(&url, &[("range", "bytes=100000-")]).await;
    assert_eq!(none.status, 416);
    assert_eq!(none.headers["content-range"], format!("bytes */{}", full.body.len()).as_str());
    assert!(none.body.is_empty());
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn several_ranges_another_unit_or_a_failed_if_range_get_the_whole_stored_response() {
    let origin = Origin::new();
    let n = node(&settings_for("range_full"), origin.router(), |l| l).await;
    let url = n.url(&scripted("/r", &["cache-control: max-age=60", "etag: \"v1\""]));
    let full = get(&url, &[]).await;
    for headers in [
        vec![("range", "bytes=0-1,4-5")],
        vec![("range", "items=0-1")],
        vec![("range", "bytes=3-1")],
        vec![("range", "bytes=0-1"), ("if-range", "\"v2\"")],
        vec![("range", "bytes=0-1"), ("if-range", "W/\"v1\"")],
    ] {
        let whole = get(&url, &headers).await;
        assert_eq!((whole.status, whole.body.as_str()), (200, full.body.as_str()), "{headers:?}");
        assert!(whole.hit(), "{headers:?}: {}", whole.cache);
    }
    let matching = get(&url, &[("range", "bytes=0-1"), ("if-range", "\"v1\"")]).await;
    assert_eq!((matching.status, matching.body.as_str()), (206, &full.body[..2]));
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn a_range_without_a_fresh_stored_response_goes_to_the_origin_and_stores_nothing() {
    let origin = Origin::new();
    let n = node(&settings_for("range_miss"), origin.router(), |l| l).await;
    let url = n.url(&scripted("/r", &["cache-control: max-age=60"]));
    let forwarded = get(&url, &[("range", "bytes=0-1")]).await;
    assert!(forwarded.cache.contains("fwd=uri-miss; fwd-status=200; detail=range"), "{}", forwarded.cache);
    let plain = get(&url, &[]).await;
    assert!(plain.cache.contains("fwd=uri-miss") && plain.cache.contains("stored"), "{}", plain.cache);
    // Stale (max-age=0, kept for its validator): not revalidated for a range, forwarded as it is.
    let stale_url = n.url(&scripted("/s", &["cache-control: max-age=0", "etag: \"a\""]));
    assert!(get(&stale_url, &[]).await.cache.contains("stored"));
    let stale = get(&stale_url, &[("range", "bytes=0-1")]).await;
    assert!(stale.cache.contains("fwd=stale; fwd-status=200; detail=range"), "{}", stale.cache);
    assert_eq!(origin.hits(), 4);
}
