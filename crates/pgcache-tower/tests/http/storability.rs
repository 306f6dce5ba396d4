//! What may be stored (RFC 9111 §3 for a shared cache, with safer defaults).

use std::time::Duration;

use pgcache_tests::settings_for;

use crate::support::{get, got, node, request, scripted, Origin};

struct Case {
    response: &'static [&'static str],
    request: &'static [(&'static str, &'static str)],
    status: Option<u16>,
    stored: bool,
    /// Expected in the first response's `Cache-Status`.
    says: &'static str,
}

const CASES: &[Case] = &[
    Case { response: &["cache-control: max-age=60"], request: &[], status: None, stored: true, says: "stored; ttl=60" },
    Case {
        response: &["cache-control: max-age=600, s-maxage=30"],
        request: &[],
        status: None,
        stored: true,
        says: "ttl=30",
    },
    Case { response: &["expires: 0"], request: &[], status: None, stored: false, says: "detail=no-ttl" },
    Case { response: &[], request: &[], status: None, stored: false, says: "detail=no-ttl" },
    Case {
        response: &["cache-control: no-store, max-age=60"],
        request: &[],
        status: None,
        stored: false,
        says: "detail=no-store",
    },
    Case {
        response: &["cache-control: private, max-age=60"],
        request: &[],
        status: None,
        stored: false,
        says: "detail=private",
    },
    Case {
        response: &["cache-control: max-age=60", "set-cookie: sid=1"],
        request: &[],
        status: None,
        stored: false,
        says: "detail=set-cookie",
    },
    Case {
        response: &["cache-control: max-age=60"],
        request: &[("authorization", "Bearer a")],
        status: None,
        stored: false,
        says: "detail=authorization",
    },
    Case {
        response: &["cache-control: public, max-age=60"],
        request: &[("authorization", "Bearer a")],
        status: None,
        stored: true,
        says: "stored",
    },
    Case {
        response: &["cache-control: max-age=60"],
        request: &[("cookie", "sid=1")],
        status: None,
        stored: false,
        says: "fwd=bypass; fwd-status=200; detail=cookie",
    },
    Case {
        response: &["cache-control: max-age=60"],
        request: &[],
        status: Some(404),
        stored: true,
        says: "fwd-status=404; stored",
    },
    // RFC 9111 §3: any final status the cache understands is stored with explicit freshness.
    Case {
        response: &["cache-control: max-age=60"],
        request: &[],
        status: Some(500),
        stored: true,
        says: "fwd-status=500; stored",
    },
    Case { response: &["etag: \"e\""], request: &[], status: Some(500), stored: false, says: "detail=status" },
    Case {
        response: &["cache-control: max-age=60"],
        request: &[],
        status: Some(599),
        stored: true,
        says: "fwd-status=599; stored",
    },
    Case {
        response: &["cache-control: max-age=60, must-understand, no-store"],
        request: &[],
        status: Some(599),
        stored: false,
        says: "detail=must-understand",
    },
    Case {
        response: &["cache-control: max-age=60, must-understand, no-store"],
        request: &[],
        status: None,
        stored: true,
        says: "stored; ttl=60",
    },
    Case {
        response: &["cache-control: max-age=60"],
        request: &[],
        status: Some(206),
        stored: false,
        says: "detail=status",
    },
    Case {
        response: &["cache-control: max-age=60"],
        request: &[],
        status: Some(201),
        stored: true,
        says: "fwd-status=201; stored",
    },
    Case {
        response: &["cache-control: max-age=60", "content-type: text/event-stream"],
        request: &[],
        status: None,
        stored: false,
        says: "detail=streaming",
    },
    Case {
        response: &["pgcache-control: max-age=60", "cache-control: no-store"],
        request: &[],
        status: None,
        stored: true,
        says: "stored; ttl=60",
    },
    // RFC 9213: CDN-Cache-Control governs ahead of Cache-Control, in both directions.
    Case {
        response: &["cdn-cache-control: max-age=60", "cache-control: no-store"],
        request: &[],
        status: None,
        stored: true,
        says: "stored; ttl=60",
    },
    Case {
        response: &["cdn-cache-control: no-store", "cache-control: max-age=60"],
        request: &[],
        status: None,
        stored: false,
        says: "detail=no-store",
    },
    // RFC 9110 §5.6.7: all three date formats, leniently (names in any case).
    Case {
        response: &["expires: fri, 31 dec 2099 23:59:59 gmt"],
        request: &[],
        status: None,
        stored: true,
        says: "stored",
    },
    Case { response: &["expires: Fri Dec 31 23:59:59 2099"], request: &[], status: None, stored: true, says: "stored" },
    Case {
        response: &["expires: Friday, 31-Dec-99 23:59:59 GMT"],
        request: &[],
        status: None,
        stored: false,
        says: "detail=no-ttl",
    },
    // RFC 9111 §5.1: a list-valued Age counts by its first member.
    Case {
        response: &["cache-control: max-age=3600", "age: 7200, 0"],
        request: &[],
        status: None,
        stored: false,
        says: "detail=no-ttl",
    },
    // An invalid targeted field is ignored.
    Case {
        response: &["cdn-cache-control: max-age=60, Bad", "cache-control: no-store"],
        request: &[],
        status: None,
        stored: false,
        says: "detail=no-store",
    },
];

#[tokio::test]
async fn storability_matrix() {
    let origin = Origin::new();
    let n = node(&settings_for("store"), origin.router(), |l| l).await;
    for (i, case) in CASES.iter().enumerate() {
        let mut path = scripted(&format!("/case{i}"), case.response);
        if let Some(status) = case.status {
            path.push_str(&format!("&status={status}"));
        }
        let url = n.url(&path);
        let before = origin.hits();
        let first = get(&url, case.request).await;
        assert!(first.cache.contains(case.says), "case {i}: {:?} said {:?}", case.response, first.cache);
        let second = get(&url, case.request).await;
        assert_eq!(second.hit(), case.stored, "case {i}: {:?} second said {:?}", case.response, second.cache);
        assert_eq!(origin.hits() - before, if case.stored { 1 } else { 2 }, "case {i}");
        // The targeted field never reaches the client.
        assert!(second.headers.get("pgcache-control").is_none() && first.headers.get("pgcache-control").is_none());
    }
}

#[tokio::test]
async fn hop_by_hop_fields_are_not_stored() {
    let origin = Origin::new();
    let n = node(&settings_for("store_hop"), origin.router(), |l| l).await;
    let url = n.url(&scripted(
        "/hop",
        &["cache-control: max-age=60", "x-keep: 1", "x-keep: 2", "connection: x-hop", "x-hop: secret"],
    ));
    get(&url, &[]).await;
    let hit = get(&url, &[]).await;
    assert!(hit.hit());
    assert!(hit.headers.get("x-hop").is_none());
    let kept: Vec<_> = hit.headers.get_all("x-keep").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert_eq!(kept, ["1", "2"]);
}

#[tokio::test]
async fn default_ttl_and_clamps() {
    let origin = Origin::new();
    let n = node(&settings_for("store_ttl"), origin.router(), |l| {
        l.default_ttl(Duration::from_secs(30)).max_ttl(Duration::from_secs(100)).min_ttl(Duration::from_secs(5))
    })
    .await;
    let plain = get(&n.url("/plain"), &[]).await;
    assert!(plain.cache.contains("stored; ttl=30"), "{}", plain.cache);
    let long = get(&n.url(&scripted("/long", &["cache-control: max-age=100000"])), &[]).await;
    assert!(long.cache.contains("ttl=100"), "{}", long.cache);
    let short = get(&n.url(&scripted("/short", &["cache-control: max-age=1"])), &[]).await;
    assert!(short.cache.contains("ttl=5"), "{}", short.cache);
    // Private stays private whatever the defaults.
    let private = get(&n.url(&scripted("/private", &["cache-control: private"])), &[]).await;
    assert!(private.cache.contains("detail=private"));
}

#[tokio::test]
async fn post_is_cached_only_when_opted_in_and_keyed_by_body() {
    let origin = Origin::new();
    let opted = node(&settings_for("store_post"), origin.router(), |l| l.cache_post(true)).await;
    let url = opted.url(&scripted("/graphql", &["cache-control: max-age=60"]));
    let post = |body: &'static str| {
        let url = url.clone();
        async move { got(request(reqwest::Method::POST, &url).body(body).send().await.unwrap()).await }
    };
    let a1 = post("{q:1}").await;
    let a2 = post("{q:1}").await;
    let b = post("{q:2}").await;
    assert!(a2.hit(), "{}", a2.cache);
    assert!(a1.body.contains("body={q:1}") && a2.body == a1.body);
    assert!(!b.hit() && b.body.contains("body={q:2}"));
    assert_eq!(origin.hits(), 2);

    let plain_origin = Origin::new();
    let plain = node(&settings_for("store_post2"), plain_origin.router(), |l| l).await;
    let url = plain.url(&scripted("/graphql", &["cache-control: max-age=60"]));
    for _ in 0..2 {
        let r = got(request(reqwest::Method::POST, &url).body("{q:1}").send().await.unwrap()).await;
        assert!(r.cache.contains("fwd=method"), "{}", r.cache);
    }
    assert_eq!(plain_origin.hits(), 2);
}

#[tokio::test]
async fn heuristic_freshness_is_opt_in_and_a_tenth_of_the_time_since_last_modified() {
    let origin = Origin::new();
    let guessing = node(&settings_for("store_heur"), origin.router(), |l| l.heuristic_freshness(true)).await;
    let plain = node(&settings_for("store_heur_off"), origin.router(), |l| l).await;
    // Modified ten hours before the response's Date: RFC 9111 §4.2.2's 10 % is one hour.
    let dated = ["date: Sun, 06 Nov 1994 10:00:00 GMT", "last-modified: Sun, 06 Nov 1994 00:00:00 GMT"];
    let path = scripted("/h", &dated);
    let first = get(&guessing.url(&path), &[]).await;
    assert!(first.cache.contains("stored; ttl=3600"), "{}", first.cache);
    assert!(get(&guessing.url(&path), &[]).await.hit());
    // 501 is heuristically cacheable too (RFC 9110 §15.1); 500 is not.
    let not_implemented = get(&guessing.url(&format!("{path}&status=501")), &[]).await;
    assert!(not_implemented.cache.contains("stored; ttl=3600"), "{}", not_implemented.cache);
    let error = get(&guessing.url(&format!("{path}&status=500")), &[]).await;
    assert!(error.cache.contains("detail=status"), "{}", error.cache);
    // Off (the default): stored stale, to be revalidated with its Last-Modified.
    let off = get(&plain.url(&path), &[]).await;
    assert!(off.cache.contains("stored; ttl=0"), "{}", off.cache);
    assert!(!get(&plain.url(&path), &[]).await.hit());
}
