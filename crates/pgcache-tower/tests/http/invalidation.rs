//! Unsafe methods, programmatic purges and tags invalidate on every node.

use std::time::Duration;

use pgcache_tests::{eventually, settings_for};

use crate::support::{get, got, node, request, scripted, Origin};

#[tokio::test]
async fn successful_unsafe_requests_invalidate_the_uri_on_every_node() {
    let origin = Origin::new();
    let settings = settings_for("inval");
    let a = node(&settings, origin.router(), |l| l).await;
    let b = node(&settings, origin.router(), |l| l).await;
    let path = scripted("/items/1", &["cache-control: max-age=600"]);
    let other = scripted("/items/2", &["cache-control: max-age=600"]);
    let v1 = get(&a.url(&path), &[]).await;
    assert!(get(&b.url(&path), &[]).await.hit());
    get(&b.url(&other), &[]).await;
    // A failed POST invalidates nothing.
    let failed = got(request(reqwest::Method::POST, a.url("/items/1?status=400")).send().await.unwrap()).await;
    assert!(failed.cache.contains("fwd=method; fwd-status=400"), "{}", failed.cache);
    assert!(get(&b.url(&path), &[]).await.hit());
    // A successful one (any query) invalidates the URI on both nodes.
    let ok = got(request(reqwest::Method::PUT, a.url("/items/1?x=1")).send().await.unwrap()).await;
    assert!(ok.cache.contains("detail=invalidated"), "{}", ok.cache);
    eventually(Duration::from_secs(5), || {
        let url = b.url(&path);
        let old = v1.body.clone();
        async move { get(&url, &[]).await.body != old }
    })
    .await
    .unwrap();
    assert!(get(&b.url(&other), &[]).await.hit(), "other URIs stay cached");
}

#[tokio::test]
async fn programmatic_purges() {
    let origin = Origin::new();
    let settings = settings_for("purge");
    let a = node(&settings, origin.router(), |l| l).await;
    let b = node(&settings, origin.router(), |l| l).await;
    let by_uri = scripted("/p/1", &["cache-control: max-age=600"]);
    let by_key = scripted("/p/2", &["cache-control: max-age=600", "surrogate-key: product-2 catalog"]);
    let by_group = scripted("/p/3", &["cache-control: max-age=600", "cache-groups: \"product-3\", \"catalog\""]);
    for p in [&by_uri, &by_key, &by_group] {
        get(&a.url(p), &[]).await;
        assert!(get(&b.url(p), &[]).await.hit());
    }
    let uri = format!("http://{}/p/1", crate::support::HOST).parse().unwrap();
    assert!(a.http.purge_uri(&uri).await.unwrap() >= 1);
    assert!(a.http.purge_tags(&["product-2"]).await.unwrap() >= 1);
    assert!(a.http.purge_tags(&["product-3"]).await.unwrap() >= 1);
    for p in [&by_uri, &by_key, &by_group] {
        let url = b.url(p);
        eventually(Duration::from_secs(5), || {
            let url = url.clone();
            async move { !get(&url, &[]).await.hit() }
        })
        .await
        .unwrap();
    }
    // purge_all empties this layer's namespace.
    assert!(get(&b.url(&by_uri), &[]).await.hit());
    assert!(a.http.purge_all().await.unwrap() >= 1);
    eventually(Duration::from_secs(5), || {
        let url = b.url(&by_uri);
        async move { !get(&url, &[]).await.hit() }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn cache_group_invalidation_on_unsafe_responses() {
    let origin = Origin::new();
    let settings = settings_for("groups");
    let a = node(&settings, origin.router(), |l| l).await;
    let b = node(&settings, origin.router(), |l| l).await;
    let grouped = scripted("/list", &["cache-control: max-age=600", "cache-groups: \"products\""]);
    let ungrouped = scripted("/about", &["cache-control: max-age=600"]);
    get(&a.url(&grouped), &[]).await;
    get(&a.url(&ungrouped), &[]).await;
    assert!(get(&b.url(&grouped), &[]).await.hit());
    // POST elsewhere whose response names the group (RFC 9875 §3), plus a same-origin Location.
    let post = scripted("/products", &["cache-group-invalidation: \"products\"", "location: /about"]);
    let r = got(request(reqwest::Method::POST, b.url(&post)).send().await.unwrap()).await;
    assert!(r.cache.contains("invalidated"), "{}", r.cache);
    for p in [&grouped, &ungrouped] {
        let url = a.url(p);
        eventually(Duration::from_secs(5), || {
            let url = url.clone();
            async move { !get(&url, &[]).await.hit() }
        })
        .await
        .unwrap();
    }
}
