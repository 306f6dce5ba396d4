//! Bodies are buffered only when they may be stored and fit; streams pass through;
//! trailers are kept.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue};
use axum::routing::get as route;
use axum::Router;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use pgcache_tests::settings_for;

use crate::support::{get, node, request};

fn counted(hits: &std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

#[tokio::test]
async fn event_streams_pass_through_unbuffered() {
    let app = Router::new().route(
        "/sse",
        route(|| async {
            let first = futures_util::stream::iter([Ok::<_, Infallible>(Bytes::from("data: one\n\n"))]);
            // The stream never ends: a layer that buffered it would never answer.
            let body = Body::from_stream(first.chain(futures_util::stream::pending()));
            ([("content-type", "text/event-stream"), ("cache-control", "max-age=60")], body)
        }),
    );
    let n = node(&settings_for("sse"), app, |l| l).await;
    let mut resp = request(reqwest::Method::GET, n.url("/sse")).send().await.unwrap();
    let status = resp.headers().get("cache-status").unwrap().to_str().unwrap().to_owned();
    assert!(status.contains("detail=streaming"), "{status}");
    let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await.expect("first event in time");
    assert_eq!(chunk.unwrap().unwrap(), "data: one\n\n");
}

#[tokio::test]
async fn bodies_over_the_limit_stream_and_are_not_stored() {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (open, gate) = tokio::sync::watch::channel(false);
    let app = Router::new()
        .route(
            "/big",
            route({
                let hits = hits.clone();
                move || {
                    counted(&hits);
                    let mut gate = gate.clone();
                    async move {
                        let head = futures_util::stream::iter([Ok::<_, Infallible>(Bytes::from(vec![b'a'; 1100]))]);
                        let tail = futures_util::stream::once(async move {
                            let _ = gate.wait_for(|open| *open).await;
                            Ok(Bytes::from_static(b"end"))
                        });
                        ([("cache-control", "max-age=60")], Body::from_stream(head.chain(tail)))
                    }
                }
            }),
        )
        .route(
            "/small",
            route({
                let hits = hits.clone();
                move || {
                    counted(&hits);
                    async {
                        let chunks = ["ab", "cd"].map(|c| Ok::<_, Infallible>(Bytes::from_static(c.as_bytes())));
                        ([("cache-control", "max-age=60")], Body::from_stream(futures_util::stream::iter(chunks)))
                    }
                }
            }),
        );
    let n = node(&settings_for("bodies"), app, |l| l.max_body_bytes(1000)).await;
    let mut resp = request(reqwest::Method::GET, n.url("/big")).send().await.unwrap();
    assert!(resp.headers().get("cache-status").unwrap().to_str().unwrap().contains("detail=too-large"));
    // The client gets the first 1100 bytes while the handler is still producing.
    let mut received = 0;
    while received < 1100 {
        let chunk =
            tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await.expect("streamed").unwrap().unwrap();
        received += chunk.len();
    }
    open.send(true).unwrap();
    let mut rest = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"end");
    assert!(!get(&n.url("/big"), &[]).await.hit());
    // Within the limit, unknown length: stored and replayed byte for byte.
    let small = get(&n.url("/small"), &[]).await;
    let again = get(&n.url("/small"), &[]).await;
    assert!(again.hit());
    assert_eq!((small.body.as_str(), again.body.as_str()), ("abcd", "abcd"));
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn trailers_are_stored_and_replayed_over_http2() {
    let app = Router::new().route(
        "/trailers",
        route(|| async {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
            let frames = vec![Ok::<_, Infallible>(Frame::data(Bytes::from("payload"))), Ok(Frame::trailers(trailers))];
            ([("cache-control", "max-age=60")], Body::new(StreamBody::new(futures_util::stream::iter(frames))))
        }),
    );
    let n = node(&settings_for("trailers"), app, |l| l).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let resp = client.get(n.url("/trailers").parse().unwrap()).await.unwrap();
        let status = resp.headers().get("cache-status").unwrap().to_str().unwrap().to_owned();
        let collected = resp.into_body().collect().await.unwrap();
        let trailer = collected.trailers().and_then(|t| t.get("x-checksum")).cloned();
        seen.push((status, trailer, collected.to_bytes()));
    }
    assert!(seen[0].0.contains("stored") && seen[1].0.contains("hit"), "{seen:?}");
    for (_, trailer, body) in &seen {
        assert_eq!(trailer.as_ref().unwrap(), "abc123");
        assert_eq!(body, "payload");
    }
}
