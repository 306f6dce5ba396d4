//! [`ResponseFuture`], the response future of [`PgCache`](crate::PgCache).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::Response;
use http_body::Body;

use crate::body::PgBody;

/// Response future of [`PgCache`](crate::PgCache).
///
/// A fresh hit from the local cache is answered before the future exists: the future is then ready.
/// Anything else runs the flow (look up, wait for another node's fill, store, revalidate), an `async`
/// state machine with a dozen await points across the cache and the inner service; writing it as a
/// hand-rolled `poll` state machine would obscure the RFC rules it follows. So the flow is boxed once
/// per request, inside this named future: one allocation, next to the PostgreSQL or local cache work
/// such a request does anyway. Polling never panics: it hands out the answer, or polls the boxed flow
/// (a ready future polled again after its answer stays pending, as futures may).
pub struct ResponseFuture<B: Body, E> {
    state: State<B, E>,
}

enum State<B: Body, E> {
    Ready(Option<Response<PgBody<B>>>),
    Flow(BoxFuture<'static, Result<Response<PgBody<B>>, E>>),
}

impl<B: Body, E> ResponseFuture<B, E> {
    pub(crate) fn new(flow: BoxFuture<'static, Result<Response<PgBody<B>>, E>>) -> Self {
        Self { state: State::Flow(flow) }
    }

    pub(crate) fn ready(resp: Response<PgBody<B>>) -> Self {
        Self { state: State::Ready(Some(resp)) }
    }
}

impl<B: Body, E> std::fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<B: Body, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<PgBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Unpin: the answer is moved out, the flow is boxed.
        match &mut self.get_mut().state {
            State::Ready(resp) => resp.take().map_or(Poll::Pending, |resp| Poll::Ready(Ok(resp))),
            State::Flow(flow) => flow.as_mut().poll(cx),
        }
    }
}
