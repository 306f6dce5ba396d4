//! The inner services and response bodies the flow works with, named once, and how it calls them.

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::PgBody;

/// The inner services the layer can wrap: the bounds every step of the flow needs, named once.
pub(crate) trait Inner<B, RB>:
    Service<Request<B>, Response = Response<RB>, Future: Send + 'static, Error: Send + 'static> + Clone + Send + 'static
{
}

impl<T, B, RB> Inner<B, RB> for T
where
    T: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    T::Future: Send + 'static,
    T::Error: Send + 'static,
{
}

/// The response bodies the layer can pass through or buffer.
pub(crate) trait ResBody: Body<Data = Bytes, Error: Send + 'static> + Send + 'static {}

impl<T> ResBody for T
where
    T: Body<Data = Bytes> + Send + 'static,
    T::Error: Send + 'static,
{
}

/// What the service answers with.
pub(crate) type Resp<RB> = Response<PgBody<RB>>;

/// Calls a service once it is ready.
pub(crate) async fn call<S, Req>(inner: &mut S, req: Req) -> Result<S::Response, S::Error>
where
    S: Service<Req>,
{
    std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
    inner.call(req).await
}
