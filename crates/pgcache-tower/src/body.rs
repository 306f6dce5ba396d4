//! Bodies: [`PgBody`], the response body of the layer (the handler's own body passed through untouched,
//! or a stored one replayed with its trailers), bounded buffering of responses that may be stored, and
//! [`ReplayBody`], how the layer rebuilds request bodies it had to read (cacheable POST) or to make
//! (background refresh).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// The response body of [`PgCache`](crate::PgCache).
///
/// Either the inner service's body, passed through frame by frame without buffering (uncacheable and
/// streaming responses), or a response replayed from the cache: its data, then its trailers (so gRPC's
/// `grpc-status` arrives exactly as the handler sent it). Errors are the inner body's own.
pub struct PgBody<B: Body> {
    frames: VecDeque<Frame<Bytes>>,
    error: Option<B::Error>,
    rest: Option<Pin<Box<B>>>,
}

// Nothing is pinned in place (the inner body is boxed), so the body moves freely.
impl<B: Body> Unpin for PgBody<B> {}

impl<B: Body> std::fmt::Debug for PgBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBody")
            .field("buffered_frames", &self.frames.len())
            .field("streaming", &self.rest.is_some())
            .finish()
    }
}

impl<B: Body> PgBody<B> {
    /// The inner service's body, untouched.
    pub(crate) fn passthrough(body: B) -> Self {
        Self { frames: VecDeque::new(), error: None, rest: Some(Box::pin(body)) }
    }

    /// A stored body and its trailers.
    pub(crate) fn replay(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        let mut frames = VecDeque::with_capacity(2);
        if !data.is_empty() {
            frames.push_back(Frame::data(data));
        }
        if let Some(t) = trailers {
            frames.push_back(Frame::trailers(t));
        }
        Self { frames, error: None, rest: None }
    }

    /// No body (HEAD, 304).
    pub(crate) fn empty() -> Self {
        Self { frames: VecDeque::new(), error: None, rest: None }
    }
}

impl<B> Body for PgBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(err) = this.error.take() {
            this.rest = None;
            return Poll::Ready(Some(Err(err)));
        }
        match this.rest.as_mut() {
            Some(rest) => rest.as_mut().poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.error.is_none() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.frames.iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
        match &self.rest {
            None => SizeHint::with_exact(buffered),
            Some(rest) => {
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(buffered));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(buffered));
                }
                hint
            }
        }
    }
}

/// What [`buffer`] made of a response body.
pub(crate) enum Buffered<B: Body> {
    /// The whole body and its trailers, within the limit.
    Complete { data: Bytes, trailers: Option<HeaderMap> },
    /// Over the limit: what was read, then the rest of the body, streamed (not stored).
    TooLarge(PgBody<B>),
    /// The body failed: what was read, then the error (never stored).
    Failed(PgBody<B>),
}

/// Reads `body` into memory up to `limit` bytes (trailers kept). Stops copying at the limit and hands
/// back a body that streams the rest; a body error is replayed to the client after the frames read.
pub(crate) async fn buffer<B>(body: B, limit: usize) -> Buffered<B>
where
    B: Body<Data = Bytes>,
{
    if body.size_hint().lower() > limit as u64 {
        return Buffered::TooLarge(PgBody::passthrough(body));
    }
    let mut body = Box::pin(body);
    let mut frames = VecDeque::new();
    let mut len = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    len = len.saturating_add(data.len());
                }
                frames.push_back(frame);
                if len > limit {
                    return Buffered::TooLarge(PgBody { frames, error: None, rest: Some(body) });
                }
            }
            Some(Err(e)) => return Buffered::Failed(PgBody { frames, error: Some(e), rest: None }),
        }
    }
    let mut data = BytesMut::with_capacity(len);
    let mut trailers: Option<HeaderMap> = None;
    for frame in frames {
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    match trailers.as_mut() {
                        Some(all) => all.extend(t),
                        None => trailers = Some(t),
                    }
                }
            }
        }
    }
    Buffered::Complete { data: data.freeze(), trailers }
}

/// A request body type the layer can rebuild.
///
/// The layer reads the body of a cacheable POST (to key it by a digest of its bytes) and must then hand
/// the inner service an equivalent body; background refreshes need an empty one. Implemented for
/// axum's [`Body`](axum_core::body::Body) (what an axum `Router` sees) and for
/// [`UnsyncBoxBody`](http_body_util::combinators::UnsyncBoxBody) /
/// [`BoxBody`](http_body_util::combinators::BoxBody) over [`Bytes`] (tonic 0.12's `BoxBody` is one).
/// For a plain hyper service, map `hyper::body::Incoming` into one of these first:
///
/// ```
/// use axum_core::body::Body;
/// use pgcache_tower::ReplayBody;
///
/// let body = Body::from_bytes(bytes::Bytes::from_static(b"query"));
/// # let _ = body;
/// ```
pub trait ReplayBody: Body<Data = bytes::Bytes> + Unpin + Send + Sized + 'static {
    /// A body of exactly these bytes.
    fn from_bytes(bytes: Bytes) -> Self;
    /// `prefix`, then the rest of `rest`.
    fn chain(prefix: Bytes, rest: Self) -> Self;
    /// `prefix`, then `error`: a request body that failed while the layer read it, handed on to the
    /// inner service as it failed (never as a shorter, complete body).
    fn failed(prefix: Bytes, error: Self::Error) -> Self;
}

/// `prefix` then `rest`.
struct Chain<B> {
    prefix: Option<Bytes>,
    rest: B,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Chain<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }
}

/// `prefix`, then an error.
struct Failed<E> {
    prefix: Option<Bytes>,
    error: Option<E>,
}

impl<E> Body for Failed<E> {
    type Data = Bytes;
    type Error = E;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        let this = &mut *self;
        if let Some(prefix) = this.prefix.take().filter(|p| !p.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Poll::Ready(this.error.take().map(Err))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.as_ref().is_none_or(Bytes::is_empty) && self.error.is_none()
    }
}

// `Failed` holds no pinned data.
impl<E> Unpin for Failed<E> {}

impl ReplayBody for axum_core::body::Body {
    fn from_bytes(bytes: Bytes) -> Self {
        Self::from(bytes)
    }

    fn chain(prefix: Bytes, rest: Self) -> Self {
        Self::new(Chain { prefix: Some(prefix), rest })
    }

    fn failed(prefix: Bytes, error: axum_core::Error) -> Self {
        Self::new(Failed { prefix: Some(prefix), error: Some(error) })
    }
}

impl<E: Send + 'static> ReplayBody for http_body_util::combinators::UnsyncBoxBody<Bytes, E> {
    fn from_bytes(bytes: Bytes) -> Self {
        http_body_util::Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
    }

    fn chain(prefix: Bytes, rest: Self) -> Self {
        Chain { prefix: Some(prefix), rest }.boxed_unsync()
    }

    fn failed(prefix: Bytes, error: E) -> Self {
        Failed { prefix: Some(prefix), error: Some(error) }.boxed_unsync()
    }
}

impl<E: Send + Sync + 'static> ReplayBody for http_body_util::combinators::BoxBody<Bytes, E> {
    fn from_bytes(bytes: Bytes) -> Self {
        http_body_util::Full::new(bytes).map_err(|never| match never {}).boxed()
    }

    fn chain(prefix: Bytes, rest: Self) -> Self {
        Chain { prefix: Some(prefix), rest }.boxed()
    }

    fn failed(prefix: Bytes, error: E) -> Self {
        Failed { prefix: Some(prefix), error: Some(error) }.boxed()
    }
}

/// What [`read_request`] made of a request body.
pub(crate) enum RequestBody<B> {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// Over the limit: rebuilt to replay what was read, then the rest.
    TooLarge(B),
    /// The body failed while it was read: rebuilt to replay what was read, then the same error.
    Failed(B),
}

/// Reads a request body up to `limit` bytes. A body over the limit or one that fails is handed back
/// rebuilt, so the inner service sees exactly what it would have seen without the layer (for a failed
/// body: the bytes read, then the error; never a silently truncated body).
pub(crate) async fn read_request<B: ReplayBody>(mut body: B, limit: usize) -> RequestBody<B> {
    if body.size_hint().lower() > limit as u64 {
        return RequestBody::TooLarge(body);
    }
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => return RequestBody::Complete(buf.freeze()),
            Some(Ok(frame)) => {
                // Request trailers are not part of the key and are dropped on replay (rare outside gRPC).
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
                if buf.len() > limit {
                    return RequestBody::TooLarge(B::chain(buf.freeze(), body));
                }
            }
            Some(Err(error)) => return RequestBody::Failed(B::failed(buf.freeze(), error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Stream = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>>;

    fn stream(frames: Vec<Result<Frame<Bytes>, std::io::Error>>) -> Stream {
        StreamBody::new(futures_util::stream::iter(frames))
    }

    fn trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        t
    }

    #[tokio::test]
    async fn buffers_with_trailers_and_replays() {
        let body = stream(vec![
            Ok(Frame::data(Bytes::from("ab"))),
            Ok(Frame::data(Bytes::from("c"))),
            Ok(Frame::trailers(trailers())),
        ]);
        let Buffered::Complete { data, trailers: t } = buffer(body, 10).await else { panic!("not complete") };
        assert_eq!(data, "abc");
        assert_eq!(t, Some(trailers()));
        let collected = PgBody::<Stream>::replay(data, t).collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers()));
        assert_eq!(collected.to_bytes(), "abc");
    }

    #[tokio::test]
    async fn over_limit_streams_everything() {
        let body = stream(vec![
            Ok(Frame::data(Bytes::from("abcd"))),
            Ok(Frame::data(Bytes::from("efgh"))),
            Ok(Frame::data(Bytes::from("ij"))),
        ]);
        let Buffered::TooLarge(rest) = buffer(body, 5).await else { panic!("not too large") };
        assert_eq!(rest.collect().await.unwrap().to_bytes(), "abcdefghij");
    }

    #[tokio::test]
    async fn errors_are_replayed_not_swallowed() {
        let body = stream(vec![Ok(Frame::data(Bytes::from("ab"))), Err(std::io::Error::other("boom"))]);
        let Buffered::Failed(mut rest) = buffer(body, 10).await else { panic!("not failed") };
        assert!(rest.frame().await.unwrap().is_ok());
        assert!(rest.frame().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn request_bodies_are_rebuilt() {
        let body = axum_core::body::Body::from("0123456789");
        let RequestBody::TooLarge(rebuilt) = read_request(body, 4).await else { panic!("not too large") };
        assert_eq!(rebuilt.collect().await.unwrap().to_bytes(), "0123456789");
        let RequestBody::Complete(ok) = read_request(axum_core::body::Body::from("012"), 4).await else {
            panic!("not complete")
        };
        assert_eq!(ok, "012");
    }

    #[tokio::test]
    async fn failed_request_bodies_replay_the_prefix_then_the_error() {
        let frames = vec![Ok(Frame::data(Bytes::from("ab"))), Err(std::io::Error::other("reset"))];
        let body = axum_core::body::Body::new(stream(frames));
        let RequestBody::Failed(mut rebuilt) = read_request(body, 100).await else { panic!("not failed") };
        let first = rebuilt.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "ab");
        let err = rebuilt.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("reset"), "{err}");
    }
}
