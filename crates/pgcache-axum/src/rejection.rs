//! Rejections of [`Cached<T>`](crate::Cached): one type per failure, each with a fixed status and body,
//! wrapped by [`CachedRejection`].

use std::fmt;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pgcache_core::Error;

macro_rules! rejection {
    (
        $(#[$meta:meta])*
        $name:ident, $status:expr, $body:literal
    ) => {
        $(#[$meta])*
        #[derive(Debug)]
        pub struct $name(pub(crate) Error);

        impl $name {
            /// The status code of this rejection's response.
            pub fn status(&self) -> StatusCode {
                $status
            }

            /// The body of this rejection's response (the cause is logged, not sent).
            pub fn body_text(&self) -> String {
                $body.to_owned()
            }

            /// The cache error behind the rejection.
            pub fn error(&self) -> &Error {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}: {}", $body, self.0)
            }
        }

        impl std::error::Error for $name {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }

        impl IntoResponse for $name {
            fn into_response(self) -> Response {
                tracing::trace!(
                    target: "pgcache::axum::rejection",
                    status = %self.status(),
                    error = %self.0,
                    concat!("rejecting request: ", stringify!($name)),
                );
                (self.status(), self.body_text()).into_response()
            }
        }
    };
}

rejection! {
    /// The key built from the request is not a valid cache key (empty, containing NUL, or longer than
    /// `max_key_bytes`): the client sent input the resource cannot be cached under. `400 Bad Request`.
    InvalidCacheKey, StatusCode::BAD_REQUEST, "Invalid cache key built from the request"
}

rejection! {
    /// The database could not be reached and the cache is configured to fail closed
    /// (`fail_open = false`); with the default `fail_open = true` the loader runs instead and this never
    /// happens. `503 Service Unavailable`.
    CacheUnavailable, StatusCode::SERVICE_UNAVAILABLE, "Cache unavailable"
}

rejection! {
    /// The cache is misused or misconfigured: it was closed, a stored value does not decode as the
    /// requested type (two resources sharing a key), a value could not be encoded, a tag is invalid, the
    /// schema is missing. A server bug, not the client's: `500 Internal Server Error`.
    CacheMisconfigured, StatusCode::INTERNAL_SERVER_ERROR, "Cache misconfigured"
}

/// Why [`Cached<T>`](crate::Cached) (or [`Lookup<T>`](crate::Lookup)) rejected a request.
///
/// `I` is the rejection of the resource's [`Input`](crate::CacheResource::Input) extractor and `L` the
/// resource's own [`Rejection`](crate::CacheResource::Rejection) (what its loader fails with); both are
/// answered with their own response. The other variants have a fixed status: see [`status`](Self::status).
///
/// A handler that wants to answer differently takes `Result<Cached<T>, CachedRejection<I, L>>`.
#[derive(Debug)]
#[non_exhaustive]
pub enum CachedRejection<I, L> {
    /// The input extractor rejected the request (e.g. a `Path` that does not parse): its own response,
    /// usually a 4xx.
    Input(I),
    /// The key built from the input is not a valid cache key: `400`.
    InvalidKey(InvalidCacheKey),
    /// The loader failed: the resource's own response (e.g. `404` for a missing row). Nothing was cached;
    /// the next request loads again.
    Load(L),
    /// The database is down and the cache fails closed: `503`.
    Unavailable(CacheUnavailable),
    /// The cache is closed or misconfigured: `500`.
    Misconfigured(CacheMisconfigured),
}

impl<I, L> CachedRejection<I, L> {
    /// Sorts a cache error (other than the loader's own rejection) into its variant.
    pub(crate) fn from_cache_error(err: Error) -> Self {
        match err {
            Error::EmptyKey | Error::KeyContainsNul | Error::KeyTooLong { .. } => {
                Self::InvalidKey(InvalidCacheKey(err))
            }
            err if err.is_unavailable() => Self::Unavailable(CacheUnavailable(err)),
            err => Self::Misconfigured(CacheMisconfigured(err)),
        }
    }

    /// The fixed status of the cache's own rejections; `None` for [`Input`](Self::Input) and
    /// [`Load`](Self::Load), whose status is whatever their own response says.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Input(_) | Self::Load(_) => None,
            Self::InvalidKey(r) => Some(r.status()),
            Self::Unavailable(r) => Some(r.status()),
            Self::Misconfigured(r) => Some(r.status()),
        }
    }

    /// The fixed body of the cache's own rejections; `None` for [`Input`](Self::Input) and
    /// [`Load`](Self::Load).
    pub fn body_text(&self) -> Option<String> {
        match self {
            Self::Input(_) | Self::Load(_) => None,
            Self::InvalidKey(r) => Some(r.body_text()),
            Self::Unavailable(r) => Some(r.body_text()),
            Self::Misconfigured(r) => Some(r.body_text()),
        }
    }
}

impl<I: IntoResponse, L: IntoResponse> IntoResponse for CachedRejection<I, L> {
    fn into_response(self) -> Response {
        match self {
            Self::Input(r) => r.into_response(),
            Self::InvalidKey(r) => r.into_response(),
            Self::Load(r) => r.into_response(),
            Self::Unavailable(r) => r.into_response(),
            Self::Misconfigured(r) => r.into_response(),
        }
    }
}

impl<I: fmt::Display, L: fmt::Display> fmt::Display for CachedRejection<I, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Input(r) => write!(f, "cache key input rejected: {r}"),
            Self::InvalidKey(r) => r.fmt(f),
            Self::Load(r) => write!(f, "loader failed: {r}"),
            Self::Unavailable(r) => r.fmt(f),
            Self::Misconfigured(r) => r.fmt(f),
        }
    }
}

impl<I, L> std::error::Error for CachedRejection<I, L>
where
    I: std::error::Error + 'static,
    L: std::error::Error + 'static,
{
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Input(r) => Some(r),
            Self::InvalidKey(r) => Some(r),
            Self::Load(r) => Some(r),
            Self::Unavailable(r) => Some(r),
            Self::Misconfigured(r) => Some(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Stands in for an input or loader rejection that is both an error and a response.
    #[derive(Debug)]
    struct Teapot;

    impl fmt::Display for Teapot {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("teapot")
        }
    }

    impl std::error::Error for Teapot {}

    impl IntoResponse for Teapot {
        fn into_response(self) -> Response {
            StatusCode::IM_A_TEAPOT.into_response()
        }
    }

    type Rejection = CachedRejection<Teapot, Teapot>;

    #[test]
    fn cache_errors_map_to_fixed_statuses() {
        let cases: [(Error, StatusCode); 5] = [
            (Error::EmptyKey, StatusCode::BAD_REQUEST),
            (Error::KeyTooLong { len: 2000, max: 1024 }, StatusCode::BAD_REQUEST),
            (Error::KeyContainsNul, StatusCode::BAD_REQUEST),
            (Error::Timeout { what: "query", after: Duration::from_secs(1) }, StatusCode::SERVICE_UNAVAILABLE),
            (Error::Closed, StatusCode::INTERNAL_SERVER_ERROR),
        ];
        for (err, status) in cases {
            let rejection = Rejection::from_cache_error(err);
            assert_eq!(rejection.status(), Some(status), "{rejection}");
            assert_eq!(rejection.into_response().status(), status);
        }
    }

    #[test]
    fn body_hides_the_cause_and_display_names_it() {
        let rejection = Rejection::from_cache_error(Error::KeyTooLong { len: 2000, max: 1024 });
        let body = rejection.body_text().unwrap_or_default();
        assert_eq!(body, "Invalid cache key built from the request");
        let shown = rejection.to_string();
        assert!(shown.contains("2000 bytes"), "{shown}");
        let source = std::error::Error::source(&rejection).map(ToString::to_string).unwrap_or_default();
        assert!(source.contains("max_key_bytes"), "{source}");
    }

    #[test]
    fn input_and_load_keep_their_own_response() {
        for rejection in [Rejection::Load(Teapot), Rejection::Input(Teapot)] {
            assert_eq!(rejection.status(), None);
            assert_eq!(rejection.body_text(), None);
            assert!(std::error::Error::source(&rejection).is_some_and(|s| s.to_string() == "teapot"));
            assert_eq!(rejection.into_response().status(), StatusCode::IM_A_TEAPOT);
        }
    }
}
