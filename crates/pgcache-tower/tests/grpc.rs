//! tonic: an allow-listed unary RPC is served from the cache with its trailers replayed
//! exactly; a failed RPC is never stored; streaming RPCs pass through.
//!
//! The service and its messages are written by hand (prost derives + tonic's server/client helpers),
//! so no `protoc` is needed.

// tonic's `Status` is what the streaming API yields; its size is not ours to change.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Full};
use pgcache_tests::settings_for;
use pgcache_tower::PgCacheLayer;
use prost::Message;
use tonic::body::BoxBody;
use tonic::codec::ProstCodec;
use tonic::server::NamedService;
use tonic::{Code, Status};

#[derive(Clone, PartialEq, prost::Message)]
struct GetRequest {
    #[prost(uint32, tag = "1")]
    id: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Product {
    #[prost(uint32, tag = "1")]
    id: u32,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(uint64, tag = "3")]
    served: u64,
}

const GET: &str = "/test.Catalog/Get";
const LIST: &str = "/test.Catalog/List";

/// `Get` answers `NotFound` for id 0; `List` streams three products.
#[derive(Clone, Default)]
struct Catalog {
    hits: Arc<AtomicUsize>,
}

impl NamedService for Catalog {
    const NAME: &'static str = "test.Catalog";
}

impl tower::Service<http::Request<BoxBody>> for Catalog {
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<BoxBody>) -> Self::Future {
        let hits = Arc::clone(&self.hits);
        Box::pin(async move {
            let served = hits.fetch_add(1, Ordering::SeqCst) as u64 + 1;
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Product, GetRequest>::default());
            let resp = match req.uri().path() {
                GET => {
                    let get = tower::service_fn(move |req: tonic::Request<GetRequest>| async move {
                        let id = req.into_inner().id;
                        if id == 0 {
                            return Err(Status::not_found("no such product"));
                        }
                        Ok(tonic::Response::new(Product { id, name: format!("product {id}"), served }))
                    });
                    grpc.unary(get, req).await
                }
                LIST => {
                    let list = tower::service_fn(move |_req: tonic::Request<GetRequest>| async move {
                        let items = (1..=3).map(move |id| Ok(Product { id, name: format!("item {id}"), served }));
                        Ok::<_, Status>(tonic::Response::new(futures_util::stream::iter(items)))
                    });
                    grpc.server_streaming(list, req).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(resp)
        })
    }
}

async fn serve(catalog: Catalog, layer: PgCacheLayer) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder().layer(layer).add_service(catalog).serve_with_incoming(incoming).await
    });
    addr
}

async fn client(addr: std::net::SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    tonic::client::Grpc::new(channel)
}

async fn get(grpc: &mut tonic::client::Grpc<tonic::transport::Channel>, id: u32) -> Result<(Product, String), Status> {
    grpc.ready().await.unwrap();
    let resp = grpc
        .unary(tonic::Request::new(GetRequest { id }), PathAndQuery::from_static(GET), ProstCodec::default())
        .await?;
    let status = resp.metadata().get("cache-status").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    Ok((resp.into_inner(), status))
}

async fn layer(name: &str) -> PgCacheLayer {
    let cache = pgcache_tests::connect(&settings_for(name)).await.unwrap();
    PgCacheLayer::new(cache).grpc_method(GET).default_ttl(Duration::from_secs(60))
}

#[tokio::test]
async fn allow_listed_unary_calls_are_cached_per_message() {
    let catalog = Catalog::default();
    let addr = serve(catalog.clone(), layer("grpc_unary").await).await;
    let mut grpc = client(addr).await;
    let (first, miss) = get(&mut grpc, 7).await.unwrap();
    assert!(miss.contains("stored"), "{miss}");
    let (second, hit) = get(&mut grpc, 7).await.unwrap();
    assert!(hit.contains("hit"), "{hit}");
    assert_eq!(first, second);
    let (other, _) = get(&mut grpc, 8).await.unwrap();
    assert_eq!(other.id, 8);
    assert_eq!(catalog.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn failed_calls_are_never_stored() {
    let catalog = Catalog::default();
    let addr = serve(catalog.clone(), layer("grpc_fail").await).await;
    let mut grpc = client(addr).await;
    for _ in 0..2 {
        let err = get(&mut grpc, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), "no such product");
    }
    assert_eq!(catalog.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn streaming_calls_pass_through() {
    let catalog = Catalog::default();
    let addr = serve(catalog.clone(), layer("grpc_stream").await).await;
    let mut grpc = client(addr).await;
    for _ in 0..2 {
        grpc.ready().await.unwrap();
        let resp = grpc
            .server_streaming(
                tonic::Request::new(GetRequest { id: 1 }),
                PathAndQuery::from_static(LIST),
                ProstCodec::<GetRequest, Product>::default(),
            )
            .await
            .unwrap();
        let status = resp.metadata().get("cache-status").unwrap().to_str().unwrap().to_owned();
        assert!(status.contains("fwd=bypass") && status.contains("detail=grpc"), "{status}");
        let items: Vec<Product> = resp.into_inner().map(|r| r.unwrap()).collect().await;
        assert_eq!(items.len(), 3);
    }
    assert_eq!(catalog.hits.load(Ordering::SeqCst), 2);
}

/// The raw HTTP/2 exchange: the hit's trailers are the miss's trailers, byte for byte.
#[tokio::test]
async fn trailers_are_replayed_exactly() {
    let catalog = Catalog::default();
    let addr = serve(catalog.clone(), layer("grpc_raw").await).await;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let message = GetRequest { id: 42 }.encode_to_vec();
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);
    let frame = frame.freeze();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let req = http::Request::post(format!("http://{addr}{GET}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(frame.clone()))
            .unwrap();
        let resp = http.request(req).await.unwrap();
        let status = resp.headers().get("cache-status").unwrap().to_str().unwrap().to_owned();
        let content_type = resp.headers().get("content-type").cloned();
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        seen.push((status, content_type, trailers, collected.to_bytes()));
    }
    let (miss, hit) = (&seen[0], &seen[1]);
    assert!(miss.0.contains("stored") && hit.0.contains("hit"), "{} / {}", miss.0, hit.0);
    assert_eq!(hit.1, miss.1);
    assert_eq!(hit.2, miss.2, "trailers differ");
    assert_eq!(hit.2.get("grpc-status").unwrap(), "0");
    assert_eq!(hit.3, miss.3);
    assert_eq!(catalog.hits.load(Ordering::SeqCst), 1);
}
