//! Metrics and spans after real operations against PostgreSQL, read through a test recorder
//! (`metrics-util`'s `DebuggingRecorder`) and a test `tracing` subscriber.
//!
//! The recorder is global to this test binary and its snapshots drain what they read, so every read
//! goes through [`Recorded`], which accumulates them; each test filters by its own `cache.name` (its
//! schema prefix).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, Result};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use pgcache_core::telemetry::{self, key_hash};
use pgcache_core::{CacheStore, Fill, PostgresCache, Source, Ttl, TypedCache};
use pgcache_tests::{
    advisory_lock_holder, blocking, connect, entries_table, eventually, make_local, node, settings_for, settings_on,
    sql_client, test_dsn, tried_advisory_lock, TestCluster,
};
use tokio::sync::oneshot;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

type Labels = Vec<(String, String)>;

/// Everything recorded so far in this binary, accumulated across snapshots.
#[derive(Default)]
struct Recorded {
    counters: HashMap<(String, Labels), u64>,
    histograms: HashMap<(String, Labels), Vec<f64>>,
    gauges: HashMap<(String, Labels), f64>,
}

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        // Only this function installs one.
        let _ = recorder.install();
        snapshotter
    })
}

/// Installs the recorder (before any cache is created: caches register their handles when created).
fn install_recorder() {
    snapshotter();
}

fn recorded() -> std::sync::MutexGuard<'static, Recorded> {
    static RECORDED: OnceLock<Mutex<Recorded>> = OnceLock::new();
    let mut all = RECORDED.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner());
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let (_, key) = key.into_parts();
        let mut labels: Labels = key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
        labels.sort();
        let id = (key.name().to_owned(), labels);
        match value {
            DebugValue::Counter(n) => *all.counters.entry(id).or_default() += n,
            DebugValue::Gauge(g) => {
                all.gauges.insert(id, g.into_inner());
            }
            DebugValue::Histogram(xs) => {
                all.histograms.entry(id).or_default().extend(xs.iter().map(|x| x.into_inner()))
            }
        }
    }
    all
}

fn matches(labels: &Labels, wanted: &[(&str, &str)]) -> bool {
    wanted.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
}

/// The sum of a counter over every label set that has `wanted`.
fn counter(name: &str, wanted: &[(&str, &str)]) -> u64 {
    recorded().counters.iter().filter(|((n, l), _)| n == name && matches(l, wanted)).map(|(_, v)| v).sum()
}

/// Every value of a histogram over the label sets that have `wanted`.
fn histogram(name: &str, wanted: &[(&str, &str)]) -> Vec<f64> {
    recorded()
        .histograms
        .iter()
        .filter(|((n, l), _)| n == name && matches(l, wanted))
        .flat_map(|(_, v)| v.iter().copied())
        .collect()
}

fn gauge(name: &str, wanted: &[(&str, &str)]) -> Option<f64> {
    recorded().gauges.iter().find(|((n, l), _)| n == name && matches(l, wanted)).map(|(_, v)| *v)
}

fn requests(prefix: &str, operation: &str, outcome: &str) -> u64 {
    counter(
        telemetry::REQUESTS,
        &[(telemetry::CACHE_NAME, prefix), ("cache.operation", operation), ("cache.outcome", outcome)],
    )
}

#[tokio::test]
async fn reads_are_counted_by_outcome_and_loads_and_lock_waits_are_timed() -> Result<()> {
    install_recorder();
    let settings = settings_for("m_reads");
    let prefix = settings.schema_prefix.clone();
    let a = connect(&settings).await?;
    let b = connect(&node(&settings, "b")).await?;

    a.set("k", &"v", None).await?;
    make_local(&a, "k").await?;
    assert_eq!(a.get::<String>("k").await?.as_deref(), Some("v"));
    assert_eq!(b.get::<String>("k").await?.as_deref(), Some("v"), "b reads the table");
    assert_eq!(a.get::<String>("absent").await?, None);
    assert!(requests(&prefix, "get", "l1_hit") >= 1);
    assert!(requests(&prefix, "get", "l2_hit") >= 1);
    assert_eq!(requests(&prefix, "get", "miss"), 1);
    assert!(requests(&prefix, "get_or_load", "l1_hit") >= 1, "make_local's local hit is counted");
    let many = a.get_many::<String>(&["k", "absent", "absent2"]).await?;
    assert_eq!(many, vec![Some("v".to_owned()), None, None]);
    assert_eq!(requests(&prefix, "get_many", "l1_hit"), 1);
    assert_eq!(requests(&prefix, "get_many", "miss"), 2);

    // A collapsed wait: a's loader holds the key's lock until b is polling for it.
    let admin = sql_client(&test_dsn()).await?;
    let (release, released) = oneshot::channel::<()>();
    let leader = {
        let a = a.clone();
        tokio::spawn(async move {
            a.get_or_load("cold", move || async move {
                let _ = released.await;
                Ok::<_, std::io::Error>(Fill::new("loaded", Ttl::Default))
            })
            .await
        })
    };
    let lock = a.lock_key("cold");
    eventually(Duration::from_secs(5), || async {
        advisory_lock_holder(&admin, lock).await.is_ok_and(|p| p.is_some())
    })
    .await?;
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.get_or_load("cold", || async { Ok::<_, std::io::Error>(Fill::new("second", Ttl::Default)) }).await
        })
    };
    let b_app = node(&settings, "b").application_name;
    eventually(Duration::from_secs(5), || async { tried_advisory_lock(&admin, &b_app).await.unwrap_or(false) }).await?;
    let _ = release.send(());
    let led = leader.await??;
    let waited = waiter.await??;
    assert_eq!((led.source, waited.source), (Source::Loaded, Source::Collapsed));
    assert_eq!(requests(&prefix, "get_or_load", "loaded"), 1);
    assert_eq!(requests(&prefix, "get_or_load", "collapsed"), 1);
    let name = [(telemetry::CACHE_NAME, prefix.as_str())];
    let loads = histogram(telemetry::LOADER_DURATION, &[name[0], ("cache.outcome", "ok")]);
    assert_eq!(loads.len(), 1, "one loader run: {loads:?}");
    assert!(!histogram(telemetry::LOCK_WAIT_DURATION, &[name[0], ("cache.outcome", "filled")]).is_empty());
    assert!(!histogram(telemetry::STATEMENT_DURATION, &[("db.operation", "upsert")]).is_empty());
    assert!(!histogram(telemetry::STATEMENT_DURATION, &[("db.operation", "get")]).is_empty());

    // A loader error is an error outcome, timed too.
    let failed = a.get_or_load("bad", || async { Err::<Fill, _>(std::io::Error::other("boom")) }).await;
    assert!(failed.is_err());
    assert_eq!(requests(&prefix, "get_or_load", "error"), 1);
    assert_eq!(histogram(telemetry::LOADER_DURATION, &[name[0], ("cache.outcome", "error")]).len(), 1);

    // The pool and local gauges are sampled every second (a and b publish under one name).
    eventually(Duration::from_secs(5), || async {
        gauge(telemetry::POOL_MAX_SIZE, &name) == Some(settings.max_pool_size as f64)
            && gauge(telemetry::POOL_WAITERS, &name) == Some(0.0)
            && gauge(telemetry::LOCAL_ENTRIES, &name).is_some()
    })
    .await
    .context("pool gauges")?;
    // The sampler runs the local cache's maintenance, so status() counts what is served locally.
    eventually(Duration::from_secs(5), || async { a.status().local_entries >= 1 }).await.context("local_entries")?;
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn invalidations_are_counted_with_their_lag() -> Result<()> {
    install_recorder();
    let settings = settings_for("m_lag");
    let prefix = settings.schema_prefix.clone();
    let name = (telemetry::CACHE_NAME, prefix.as_str());
    let a = connect(&settings).await?;
    a.set("k", &"v1", None).await?;
    make_local(&a, "k").await?;

    // A write by hand, as any SQL writer: the listener evicts and records the lag.
    let admin = sql_client(&test_dsn()).await?;
    let table = entries_table(&settings);
    admin.execute(&format!("UPDATE {table} SET value = $1 WHERE key = 'k'"), &[&b"\"v2\"".to_vec()]).await?;
    eventually(Duration::from_secs(5), || async {
        a.get::<String>("k").await.is_ok_and(|v| v.as_deref() == Some("v2"))
    })
    .await?;
    // The set's own insert notification and the update's, each with its lag.
    assert!(counter(telemetry::INVALIDATIONS, &[name, ("cache.invalidation.kind", "keys")]) >= 2);
    assert!(histogram(telemetry::INVALIDATION_LAG, &[name]).len() >= 2);
    let lags = histogram(telemetry::INVALIDATION_LAG, &[name]);
    // Database and cache share this host's clock here: the lag is real and small.
    assert!(lags.iter().all(|&s| (0.0..5.0).contains(&s)), "{lags:?}");

    admin.execute(&format!("TRUNCATE {table}"), &[]).await?;
    eventually(Duration::from_secs(5), || async {
        counter(telemetry::INVALIDATIONS, &[name, ("cache.invalidation.kind", "flush")]) >= 1
    })
    .await?;
    assert!(histogram(telemetry::INVALIDATION_LAG, &[name]).len() >= 3, "a flush carries its instant too");
    a.close().await;
    Ok(())
}

#[tokio::test]
async fn a_stopped_server_counts_fail_open_reads_and_a_listener_reconnect() -> Result<()> {
    install_recorder();
    let cluster = Arc::new(blocking(TestCluster::start).await?);
    let settings = settings_on(&cluster.dsn(), "m_down")
        .pool_timeout(Duration::from_secs(1))
        .statement_timeout(Duration::from_secs(2));
    let prefix = settings.schema_prefix.clone();
    let cache = connect(&settings).await?;
    cache.set("k", &"v", None).await?;

    let stop = Arc::clone(&cluster);
    blocking(move || stop.stop()).await?;
    assert_eq!(cache.get::<String>("never-seen").await?, None);
    assert!(requests(&prefix, "get", "fail_open") >= 1);
    let loaded = cache.get_or_load("fresh", || async { Ok::<_, std::io::Error>(Fill::new("x", Ttl::Default)) }).await?;
    assert!(loaded.unavailable);
    assert_eq!(requests(&prefix, "get_or_load", "fail_open"), 1);

    let start = Arc::clone(&cluster);
    blocking(move || start.start_server()).await?;
    let name = [(telemetry::CACHE_NAME, prefix.as_str())];
    eventually(Duration::from_secs(30), || async { counter(telemetry::LISTENER_RECONNECTS, &name) >= 1 }).await?;
    // The first connection's wait and the outage: two untrusted periods.
    assert!(histogram(telemetry::LISTENER_UNTRUSTED_DURATION, &name).len() >= 2);
    cache.close().await;
    Ok(())
}

/// Every request through the HTTP layer has a `pgcache.http.lookup` span with the method, the primary
/// key's hash and the final Cache-Status outcome, and never the URI.
#[tokio::test]
async fn every_http_lookup_has_a_span_with_its_outcome_and_a_key_hash_never_the_uri() -> Result<()> {
    let spans = Spans::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let settings = settings_for("m_http_spans");
    let cache: PostgresCache = connect(&settings).await?;
    let app = axum::Router::new()
        .route(
            "/users/ava@example.com",
            axum::routing::get(|| async { ([("cache-control", "max-age=60")], "profile") }),
        )
        .layer(pgcache_tower::PgCacheLayer::new(cache.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/users/ava@example.com", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let response = client.get(&url).send().await?;
        anyhow::ensure!(response.status() == 200, "{response:?}");
        response.bytes().await?;
    }
    server.abort();
    cache.close().await;

    let spans = spans.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let lookups: Vec<_> = spans.iter().filter(|s| s.name == "pgcache.http.lookup").collect();
    let outcomes: Vec<_> = lookups.iter().filter_map(|s| s.fields.get("cache.outcome").map(String::as_str)).collect();
    assert_eq!(outcomes, ["uri-miss", "hit"], "{lookups:?}");
    for span in &lookups {
        assert_eq!(span.fields.get("http.request.method").map(String::as_str), Some("GET"));
        assert_eq!(span.fields.get("cache.key_hash").map(String::len), Some(16), "{span:?}");
    }
    for span in &spans {
        for value in span.fields.values() {
            assert!(!value.contains("ava@example.com") && !value.contains("profile"), "{span:?} leaks the URI or body");
        }
    }
    Ok(())
}

/// A finished span: its name and its fields as text.
#[derive(Clone, Debug)]
struct SpanRecord {
    name: String,
    fields: HashMap<String, String>,
}

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// Keeps every closed span.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<SpanRecord>>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            let fields = span.extensions_mut().remove::<Fields>().unwrap_or_default().0;
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(SpanRecord { name: span.name().to_owned(), fields });
        }
    }
}

#[tokio::test]
async fn every_operation_has_a_span_with_its_outcome_and_a_key_hash_never_the_key() -> Result<()> {
    let spans = Spans::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let settings = settings_for("m_spans");
    let cache: PostgresCache = connect(&settings).await?;
    let key = "user:ava@example.com";
    cache.set(key, &"secret value", None).await?;
    make_local(&cache, key).await?;
    cache.get::<String>(key).await?;
    cache.get::<String>("nobody").await?;
    cache.get_or_load("loaded", || async { Ok::<_, std::io::Error>(Fill::new("x", Ttl::Default)) }).await?;
    cache.delete(key).await?;
    cache.close().await;

    let spans = spans.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let find = |name: &str, outcome: &str| {
        spans.iter().find(|s| s.name == name && s.fields.get("cache.outcome").map(String::as_str) == Some(outcome))
    };
    let hit = find("pgcache.get", "l1_hit").ok_or_else(|| anyhow::anyhow!("no l1_hit get span in {spans:?}"))?;
    assert_eq!(hit.fields.get("cache.key_hash"), Some(&key_hash(key)));
    assert_eq!(hit.fields.get("cache.operation").map(String::as_str), Some("get"));
    assert_eq!(hit.fields.get("db.system").map(String::as_str), Some("postgresql"));
    assert!(find("pgcache.get", "miss").is_some(), "{spans:?}");
    assert!(find("pgcache.get_or_load", "loaded").is_some(), "{spans:?}");
    assert!(spans.iter().any(|s| s.name == "pgcache.set"), "{spans:?}");
    assert!(spans.iter().any(|s| s.name == "pgcache.delete"), "{spans:?}");
    for span in &spans {
        for value in span.fields.values() {
            assert!(!value.contains("ava@example.com") && !value.contains("secret"), "{span:?} leaks the key or value");
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_capabilities_probed_at_connect_are_recorded_as_gauges() -> Result<()> {
    install_recorder();
    let settings = settings_for("m_capabilities").assume_without(pgcache_core::Capability::Notify);
    let prefix = settings.schema_prefix.clone();
    let cache = connect(&settings).await?;
    // Published at connect and again with every usage sample. A snapshot of this recorder zeroes every
    // gauge, so the four are read from one snapshot.
    let wanted = [("notify", 0.0), ("polling", 1.0), ("session_locks", 1.0), ("unlogged", 1.0)];
    eventually(Duration::from_secs(5), || async {
        let all = recorded();
        wanted.iter().all(|(name, value)| {
            let labels = [(telemetry::CACHE_NAME, prefix.as_str()), ("capability", *name)];
            all.gauges.iter().any(|((n, l), v)| n == telemetry::CAPABILITY && matches(l, &labels) && v == value)
        })
    })
    .await?;
    cache.close().await;
    Ok(())
}
