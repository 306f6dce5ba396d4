//! What the key is made of.

use axum::http::request::Parts;
use pgcache_tests::{row_count, settings_for, sql_client, test_dsn};
use pgcache_tower::KeyScope;

use crate::support::{get, node, scripted, Origin};

#[tokio::test]
async fn method_host_path_and_query_are_keyed() {
    let origin = Origin::new();
    let n = node(&settings_for("keys"), origin.router(), |l| l).await;
    let url = n.url(&scripted("/a", &["cache-control: max-age=60"]));
    let first = get(&url, &[]).await;
    assert!(first.cache.contains("fwd=uri-miss") && first.cache.contains("stored"), "{}", first.cache);
    let second = get(&url, &[]).await;
    assert!(second.hit(), "{}", second.cache);
    assert_eq!(second.body, first.body);
    // Another query, another host: other entries.
    let other_query = get(&format!("{url}&x=1"), &[]).await;
    assert!(!other_query.hit());
    let other_host = get(&url, &[("host", "tenant-b.example")]).await;
    assert!(!other_host.hit(), "{}", other_host.cache);
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn query_normalisation_is_opt_in() {
    let origin = Origin::new();
    let n = node(&settings_for("keys_q"), origin.router(), |l| l.sort_query(true).ignore_query_params(["utm_*"])).await;
    let base = scripted("/q", &["cache-control: max-age=60"]);
    let a = get(&n.url(&format!("{base}&b=2&a=1&utm_source=mail")), &[]).await;
    let b = get(&n.url(&format!("{base}&a=1&b=2")), &[]).await;
    assert!(b.hit(), "{}", b.cache);
    assert_eq!(a.body, b.body);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn vary_variants_are_stored_separately() {
    let origin = Origin::new();
    let n = node(&settings_for("keys_vary"), origin.router(), |l| l).await;
    let url = n.url(&scripted("/v", &["cache-control: max-age=60", "vary: Accept-Language"]));
    let en = get(&url, &[("accept-language", "en")]).await;
    let fr = get(&url, &[("accept-language", "fr")]).await;
    assert!(fr.cache.contains("fwd=vary-miss"), "{}", fr.cache);
    let none = get(&url, &[]).await;
    assert!(!none.hit());
    assert_eq!(origin.hits(), 3);
    let en2 = get(&url, &[("accept-language", "en")]).await;
    let fr2 = get(&url, &[("accept-language", "fr")]).await;
    let none2 = get(&url, &[]).await;
    assert!(en2.hit() && fr2.hit() && none2.hit(), "{} / {} / {}", en2.cache, fr2.cache, none2.cache);
    assert!(en2.body.contains("lang=en") && fr2.body.contains("lang=fr") && none2.body.contains("lang=-"));
    assert_eq!((en.body, fr.body, none.body), (en2.body, fr2.body, none2.body));
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn vary_star_is_never_stored() {
    let origin = Origin::new();
    let n = node(&settings_for("keys_star"), origin.router(), |l| l).await;
    let url = n.url(&scripted("/s", &["cache-control: max-age=60", "vary: *"]));
    let first = get(&url, &[]).await;
    assert!(first.cache.contains("detail=vary-star"), "{}", first.cache);
    let second = get(&url, &[]).await;
    assert!(!second.hit());
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn custom_key_function_extends_the_key() {
    let origin = Origin::new();
    let tenant = |parts: &Parts| Some(parts.headers.get("x-tenant")?.to_str().ok()?.to_owned());
    let n = node(&settings_for("keys_fn"), origin.router(), |l| l.make_key(KeyScope::Extend, tenant)).await;
    let url = n.url(&scripted("/t", &["cache-control: max-age=60"]));
    get(&url, &[("x-tenant", "a")]).await;
    assert!(!get(&url, &[("x-tenant", "b")]).await.hit());
    assert!(get(&url, &[("x-tenant", "a")]).await.hit());
    // No tenant: the function declines, the cache is bypassed.
    let none = get(&url, &[]).await;
    assert!(none.cache.contains("fwd=bypass; fwd-status=200; detail=key"), "{}", none.cache);
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn head_is_answered_from_the_get_entry() {
    let origin = Origin::new();
    let n = node(&settings_for("keys_head"), origin.router(), |l| l).await;
    // HEAD first: the cache fills with a GET (never stores a bodiless HEAD answer as the GET entry).
    let url = n.url(&scripted("/h", &["cache-control: max-age=60"]));
    let head = crate::support::got(crate::support::request(reqwest::Method::HEAD, &url).send().await.unwrap()).await;
    assert_eq!(head.body, "");
    let full = get(&url, &[]).await;
    assert!(full.hit(), "{}", full.cache);
    assert!(full.body.contains("method=GET"), "{}", full.body);
    let head2 = crate::support::got(crate::support::request(reqwest::Method::HEAD, &url).send().await.unwrap()).await;
    assert!(head2.hit());
    assert_eq!(head2.headers.get("content-length").unwrap(), &full.body.len().to_string());
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn variants_per_uri_are_bounded() {
    let origin = Origin::new();
    let settings = settings_for("keys_vary_bound");
    let n = node(&settings, origin.router(), |l| l.max_variants(4)).await;
    let url = n.url(&scripted("/lang", &["cache-control: max-age=60", "vary: Accept-Language"]));
    for i in 0..12 {
        let lang = format!("l{i}");
        assert!(get(&url, &[("accept-language", &lang)]).await.cache.contains("stored"));
    }
    // The 4 newest variants and the Vary index remain; the oldest were removed.
    let client = sql_client(&test_dsn()).await.expect("sql");
    assert_eq!(row_count(&client, &settings).await.expect("count"), 5);
    assert!(get(&url, &[("accept-language", "l11")]).await.hit());
    assert!(!get(&url, &[("accept-language", "l0")]).await.hit());
}

#[tokio::test]
async fn accept_language_and_accept_encoding_variants_ignore_member_order_case_and_spaces() {
    let origin = Origin::new();
    let n = node(&settings_for("keys_vary_norm"), origin.router(), |l| l).await;
    let url = n.url(&scripted("/l", &["cache-control: max-age=60", "vary: accept-language, accept-encoding"]));
    let first = get(&url, &[("accept-language", "en, de;q=0.5"), ("accept-encoding", "gzip, br")]).await;
    assert!(first.cache.contains("stored"), "{}", first.cache);
    // RFC 9110 §12.5.3/§12.5.4: codings and language ranges are case-insensitive, preference is by weight.
    let same = get(&url, &[("accept-language", "DE; q=0.5,EN"), ("accept-encoding", "br,GZIP")]).await;
    assert!(same.hit(), "{}", same.cache);
    assert_eq!(same.body, first.body);
    let other = get(&url, &[("accept-language", "en, de;q=0.4"), ("accept-encoding", "gzip, br")]).await;
    assert!(other.cache.contains("fwd=vary-miss"), "another weight is another variant: {}", other.cache);
    assert_eq!(origin.hits(), 2);
}
