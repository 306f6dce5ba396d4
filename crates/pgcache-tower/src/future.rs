//! [`ResponseFuture`], the response future of [`PgCache`](crate::PgCache).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use crate::body::PgBody;

pin_project! {
    /// Response future of [`PgCache`](crate::PgCache).
    ///
    /// The flow it runs (look up, wait for another node's fill, store, revalidate) is an `async`
    /// state machine with a dozen await points across the cache and the inner service; writing it as a
    /// hand-rolled `poll` state machine would obscure the RFC rules it follows. So the flow is boxed
    /// once per request, inside this named future: one allocation, next to the PostgreSQL or local
    /// cache work each request does anyway. Polling never panics: it only polls the boxed flow.
    pub struct ResponseFuture<B: Body, E> {
        inner: BoxFuture<'static, Result<Response<PgBody<B>>, E>>,
    }
}

impl<B: Body, E> ResponseFuture<B, E> {
    pub(crate) fn new(inner: BoxFuture<'static, Result<Response<PgBody<B>>, E>>) -> Self {
        Self { inner }
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
        self.project().inner.as_mut().poll(cx)
    }
}
