//! Concurrent misses on two layer instances sharing one database run the handler once.

use std::sync::atomic::Ordering;

use pgcache_tests::settings_for;

use crate::support::{get, node, scripted, Origin};

#[tokio::test]
async fn concurrent_misses_on_two_nodes_run_the_handler_once() {
    let origin = Origin::new();
    origin.delay_ms.store(300, Ordering::SeqCst);
    let settings = settings_for("dogpile");
    let a = node(&settings, origin.router(), |l| l).await;
    let b = node(&settings, origin.router(), |l| l).await;
    let path = scripted("/hot", &["cache-control: max-age=60"]);
    let mut tasks = Vec::new();
    for i in 0..80 {
        let url = if i % 2 == 0 { a.url(&path) } else { b.url(&path) };
        tasks.push(tokio::spawn(async move { get(&url, &[]).await }));
    }
    let mut bodies = std::collections::HashSet::new();
    let mut collapsed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        collapsed += usize::from(r.cache.contains("collapsed"));
        bodies.insert(r.body);
    }
    assert_eq!(origin.hits(), 1, "the handler ran once for 80 requests on 2 nodes");
    assert_eq!(bodies.len(), 1);
    assert!(collapsed > 0);
}

#[tokio::test]
async fn uncacheable_urls_do_not_queue_behind_each_other() {
    let origin = Origin::new();
    let settings = settings_for("dogpile_pass");
    let a = node(&settings, origin.router(), |l| l).await;
    let path = scripted("/private", &["cache-control: private"]);
    // The first request leaves a hit-for-pass marker…
    let first = get(&a.url(&path), &[]).await;
    assert!(first.cache.contains("detail=private"), "{}", first.cache);
    // …so the next ones go straight to the handler, each with its own answer.
    origin.delay_ms.store(200, Ordering::SeqCst);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn({
                let url = a.url(&path);
                async move { get(&url, &[]).await }
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.cache.contains("detail=pass"), "{}", r.cache);
        bodies.insert(r.body);
    }
    assert_eq!(bodies.len(), 20);
    assert_eq!(origin.hits(), 21);
    // Serialised they would take 20 x 200 ms; this only guards against that pathology.
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}
