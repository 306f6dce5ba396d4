//! The operator views `init_db` installs (`sql/views.sql`), read after known writes.

use std::time::Duration;

use anyhow::Result;
use axum::body::Body;
use axum::http::{header, Request};
use axum::routing::get;
use axum::Router;
use pgcache_core::{CacheStore, SetOptions, SharedCache, Ttl, TypedCache};
use pgcache_tests::{connect, entries_table, settings_for, sql_client, test_dsn};
use pgcache_tower::PgCacheLayer;
use tower::ServiceExt;

#[tokio::test]
async fn views_answer_entries_bytes_expired_ages_largest_keys_and_tags() -> Result<()> {
    let settings = settings_for("v_stats");
    let cache = connect(&settings).await?;
    let p = &settings.schema_prefix;
    let tagged = |tags: &[&str]| SetOptions::ttl(Ttl::After(Duration::from_secs(300))).tags(tags.iter().copied());
    cache.set_entry("small", vec![1u8; 10].into(), &tagged(&["users"])).await?;
    cache.set_entry("big", vec![2u8; 5000].into(), &tagged(&["users", "reports"])).await?;
    cache.set_entry("forever", vec![3u8; 100].into(), &SetOptions::ttl(Ttl::Never)).await?;
    cache.set_entry("gone", vec![4u8; 7].into(), &SetOptions::ttl(Ttl::Never)).await?;
    let sql = sql_client(&test_dsn()).await?;
    // One row already expired (the sweeper has not run), one written a day ago.
    let table = entries_table(&settings);
    sql.execute(&format!("UPDATE {table} SET expires_at = now() - interval '1 minute' WHERE key = 'gone'"), &[])
        .await?;
    // The version trigger stamps updated_at on every update: backdate with triggers off (replica role).
    let backdate = format!(
        "SET session_replication_role = replica; \
         UPDATE {table} SET updated_at = now() - interval '2 days' WHERE key = 'forever'; \
         RESET session_replication_role"
    );
    sql.batch_execute(&backdate).await?;

    let stats = sql
        .query_one(
            &format!(
                "SELECT entries, live_entries, expired_unswept, without_ttl, value_bytes, age_max_s FROM \"{p}cache_stats\""
            ),
            &[],
        )
        .await?;
    assert_eq!(stats.get::<_, i64>(0), 4);
    assert_eq!(stats.get::<_, i64>(1), 3);
    assert_eq!(stats.get::<_, i64>(2), 1);
    assert_eq!(stats.get::<_, i64>(3), 1, "only 'forever' has no expiry");
    assert_eq!(stats.get::<_, i64>(4), 10 + 5000 + 100 + 7);
    assert!(stats.get::<_, f64>(5) >= 2.0 * 86400.0);

    let ages = sql.query(&format!("SELECT bucket, entries FROM \"{p}cache_ages\""), &[]).await?;
    let ages: Vec<(String, i64)> = ages.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(ages.len(), 5, "{ages:?}");
    assert_eq!(ages.first(), Some(&("< 1 min".to_owned(), 3)), "{ages:?}");
    assert_eq!(ages.last(), Some(&(">= 1 day".to_owned(), 1)), "{ages:?}");

    let largest =
        sql.query(&format!("SELECT key, value_bytes, expired FROM \"{p}cache_largest\" LIMIT 2"), &[]).await?;
    let largest: Vec<(String, i32, bool)> = largest.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(largest, vec![("big".to_owned(), 5000, false), ("forever".to_owned(), 100, false)]);

    let tags = sql.query(&format!("SELECT tag, entries, value_bytes FROM \"{p}cache_tags\" ORDER BY tag"), &[]).await?;
    let tags: Vec<(String, i64, i64)> = tags.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(tags, vec![("reports".to_owned(), 1, 5000), ("users".to_owned(), 2, 5010)]);
    cache.close().await;
    Ok(())
}

#[tokio::test]
async fn the_http_view_tells_method_uri_status_and_vary_of_layer_entries() -> Result<()> {
    let settings = settings_for("v_http");
    let cache = connect(&settings).await?;
    let p = settings.schema_prefix.clone();
    cache.set("plain", &"not an http entry", None).await?;
    let layer = PgCacheLayer::new(SharedCache::new(cache.clone()));
    let app = Router::new()
        .route(
            "/hello",
            get(|| async { ([(header::CACHE_CONTROL, "max-age=60"), (header::VARY, "accept-language")], "hello") }),
        )
        .route(
            "/missing",
            get(|| async { (axum::http::StatusCode::NOT_FOUND, [(header::CACHE_CONTROL, "max-age=60")], "no") }),
        )
        .layer(layer);
    for uri in ["/hello", "/missing"] {
        let request = Request::get(uri)
            .header(header::HOST, "example.test")
            .header("accept-language", "fr")
            .body(Body::empty())?;
        app.clone().oneshot(request).await?;
    }

    let sql = sql_client(&test_dsn()).await?;
    let rows =
        sql.query(&format!("SELECT kind, status, vary FROM \"{p}cache_http\" ORDER BY kind, status"), &[]).await?;
    let rows: Vec<(Option<String>, Option<i32>, Option<String>)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert!(rows.contains(&(Some("response".to_owned()), Some(200), Some("accept-language".to_owned()))), "{rows:?}");
    assert!(rows.contains(&(Some("response".to_owned()), Some(404), Some(String::new()))), "{rows:?}");
    assert!(rows.iter().any(|(kind, _, _)| kind.as_deref() == Some("vary_index")), "{rows:?}");
    assert!(rows.iter().all(|(kind, _, _)| kind.is_some()), "only layer records: {rows:?}");
    let lines = sql
        .query(&format!("SELECT method, uri, status FROM \"{p}cache_http\" WHERE kind = 'response' ORDER BY uri"), &[])
        .await?;
    let lines: Vec<(Option<String>, Option<String>, Option<i32>)> =
        lines.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        lines,
        [
            (Some("GET".to_owned()), Some("example.test/hello".to_owned()), Some(200)),
            (Some("GET".to_owned()), Some("example.test/missing".to_owned()), Some(404)),
        ],
        "the view tells what request each response answers"
    );
    cache.close().await;
    Ok(())
}
