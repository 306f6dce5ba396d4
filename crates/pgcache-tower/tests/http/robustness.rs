//! No header value a handler sends can panic the layer or make the store reject an entry: every
//! duration is clamped to 2^31 seconds (RFC 9111 §1.2.2).

use pgcache_tests::settings_for;

use crate::support::{get, node, scripted, Origin};

#[tokio::test]
async fn overflowing_durations_are_clamped_not_a_panic() {
    let origin = Origin::new();
    let n = node(&settings_for("http_overflow"), origin.router(), |l| l).await;
    for (i, headers) in [
        &["cache-control: max-age=1, stale-while-revalidate=18446744073709551615"][..],
        &["cache-control: max-age=18446744073709551616, stale-if-error=99999999999999999999"][..],
        &["cache-control: s-maxage=9223372036854775807", "age: 18446744073709551615"][..],
        &["expires: Fri, 31 Dec 9999 23:59:59 GMT", "date: Thu, 01 Jan 1970 00:00:00 GMT"][..],
    ]
    .into_iter()
    .enumerate()
    {
        let url = n.url(&scripted(&format!("/overflow{i}"), headers));
        let first = get(&url, &[]).await;
        assert_eq!(first.status, 200, "{headers:?}: {}", first.cache);
        assert!(!first.cache.contains("cache-unavailable"), "{headers:?}: {}", first.cache);
        let again = get(&url, &[]).await;
        // The third case's Age is beyond any lifetime: stored never, served fine.
        if i != 2 {
            assert!(again.hit(), "{headers:?}: {}", again.cache);
            assert_eq!(again.body, first.body);
        }
    }
}
