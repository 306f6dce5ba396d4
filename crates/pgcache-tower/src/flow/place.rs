//! Storing a handler's response: the storage rules and bounded buffering ([`prepare`]), then where the
//! record goes ([`place`]: its own key, or a variant key plus a `Vary` index under the primary key)
//! with its tags, and the hit-for-pass markers of responses that may not be stored.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body::Body;
use pgcache_core::{CacheStore, SetOptions, Ttl};

use crate::body::{buffer, Buffered, PgBody};
use crate::entry::{encode_stored, now_ms, Record, Stored, VariantIndex};
use crate::key::{self, Keys};
use crate::policy::{self, Decision, RequestFacts, Rules};

/// What [`prepare`] made of a handler's response.
pub(crate) enum Prepared<B: Body> {
    /// Storable, buffered, ready to place.
    Store(Box<Stored>),
    /// Not stored, for this reason (the `Cache-Status` detail); the response streams on.
    Pass(Response<PgBody<B>>, &'static str),
    /// The body failed while it was buffered: the bytes read, then the error (never stored).
    Failed(Response<PgBody<B>>),
}

/// What [`prepare`] needs to know about the layer and the request.
pub(crate) struct Rulebook<'a> {
    pub(crate) rules: &'a Rules,
    pub(crate) facts: RequestFacts,
    pub(crate) max_body_bytes: usize,
    /// The request's headers, for the `Vary` selection the response is stored under.
    pub(crate) request: &'a HeaderMap,
    /// The request line stored with the response, for operators: method and target.
    pub(crate) method: &'a str,
    pub(crate) target: String,
}

/// Applies the storage rules, and buffers the body only when the response may be stored and fits.
pub(crate) async fn prepare<B>(book: &Rulebook<'_>, resp: Response<B>) -> Prepared<B>
where
    B: Body<Data = Bytes>,
{
    let (parts, body) = resp.into_parts();
    let (freshness, vary) = match policy::decide(book.rules, book.facts, parts.status, &parts.headers) {
        Decision::Store { freshness, vary } => (freshness, vary),
        Decision::Pass(reason) => {
            return Prepared::Pass(Response::from_parts(parts, PgBody::passthrough(body)), reason)
        }
    };
    let max = book.max_body_bytes;
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Prepared::Pass(Response::from_parts(parts, PgBody::passthrough(body)), "too-large");
    }
    let (data, trailers) = match buffer(body, max).await {
        Buffered::Complete { data, trailers } => (data, trailers),
        Buffered::TooLarge(body) => return Prepared::Pass(Response::from_parts(parts, body), "too-large"),
        Buffered::Failed(body) => return Prepared::Failed(Response::from_parts(parts, body)),
    };
    if book.facts.grpc && !grpc_ok(&parts.headers, trailers.as_ref()) {
        return Prepared::Pass(Response::from_parts(parts, PgBody::replay(data, trailers)), "grpc-status");
    }
    let listed = policy::connection_listed(&parts.headers);
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        if !policy::is_unstored_header(name, &listed) {
            headers.append(name.clone(), value.clone());
        }
    }
    let bodiless = matches!(parts.status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    if !book.facts.grpc && !bodiless && !headers.contains_key(header::CONTENT_LENGTH) {
        // So that HEAD answers from the entry announce the GET's length.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
    }
    Prepared::Store(Box::new(Stored {
        status: parts.status,
        headers,
        body: data,
        trailers,
        stored_at_ms: now_ms(),
        keep_ms: u64::try_from(freshness.keep_for().as_millis()).unwrap_or(u64::MAX),
        freshness,
        vary: key::selected(&vary, book.request),
        method: book.method.to_owned(),
        target: book.target.clone(),
    }))
}

/// A gRPC response succeeded: `grpc-status: 0` in the trailers (or the headers of a trailers-only one).
fn grpc_ok(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> bool {
    let status = trailers.and_then(|t| t.get("grpc-status")).or_else(|| headers.get("grpc-status"));
    status.is_some_and(|s| s.as_bytes() == b"0")
}

/// Where the responses of one request's keys go, and with which tags.
pub(crate) struct Placement<'a> {
    pub(crate) store: &'a dyn CacheStore,
    pub(crate) namespace: &'a str,
    pub(crate) keys: &'a Keys,
    /// The most variant keys the `Vary` index keeps (at least 1).
    pub(crate) max_variants: usize,
}

impl Placement<'_> {
    /// Places a stored response that is to end up under `key`: under its own key when it does not
    /// vary, else under a variant key with a `Vary` index under the primary key. Writes what does not
    /// belong to `key` itself and returns the value (and options) for `key`.
    pub(crate) async fn place(&self, key: &str, stored: &Stored) -> (Bytes, SetOptions) {
        let tags = key::response_tags(self.namespace, self.keys, &stored.headers);
        let options = SetOptions::ttl(Ttl::After(stored.freshness.keep_for())).tags(tags);
        let record = encode_stored(stored);
        let primary = self.keys.primary.as_str();
        if stored.vary.is_empty() {
            if key != primary {
                self.write(primary, record.clone(), &options).await;
            }
            return (record, options);
        }
        let vkey = key::variant(primary, &stored.vary);
        if key == primary {
            self.write(&vkey, record, &options).await;
            let index = VariantIndex { names: stored.vary_names(), keys: vec![vkey] };
            let index_options = SetOptions::ttl(options.ttl).tags(self.keys.base_tags());
            return (Record::Variants(index).encode(), index_options);
        }
        self.index_variant(&vkey, stored).await;
        if key != vkey {
            self.write(&vkey, record.clone(), &options).await;
        }
        (record, options)
    }

    /// Adds `vkey` to the `Vary` index under the primary key, removing the oldest variants beyond
    /// `max_variants`. A read-modify-write: two nodes adding variants at once can each miss the other's
    /// key, so the bound holds per writer and a missed variant simply expires with its TTL.
    async fn index_variant(&self, vkey: &str, stored: &Stored) {
        let primary = self.keys.primary.as_str();
        let names = stored.vary_names();
        let current = match self.store.get_entry(primary).await {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(target: "pgcache::tower", error = %e, "could not read the Vary index");
                return;
            }
        };
        let (mut index, left) = match current {
            Some(entry) => match Record::decode(&entry.value) {
                Some(Record::Variants(index)) if index.names == names => (index, entry.expiry.remaining()),
                _ => (VariantIndex { names, keys: Vec::new() }, None),
            },
            None => (VariantIndex { names, keys: Vec::new() }, None),
        };
        if index.keys.iter().any(|k| k == vkey) {
            return;
        }
        index.keys.push(vkey.to_owned());
        let excess = index.keys.len().saturating_sub(self.max_variants);
        let evicted: Vec<String> = index.keys.drain(..excess).collect();
        if !evicted.is_empty() {
            let refs: Vec<&str> = evicted.iter().map(String::as_str).collect();
            if let Err(e) = self.store.delete_many(&refs).await {
                tracing::warn!(target: "pgcache::tower", error = %e, "could not remove the oldest variants");
            }
        }
        // The index outlives every variant it lists.
        let keep = stored.freshness.keep_for().max(left.unwrap_or(Duration::ZERO));
        let options = SetOptions::ttl(Ttl::After(keep)).tags(self.keys.base_tags());
        self.write(primary, Record::Variants(index).encode(), &options).await;
    }

    /// A hit-for-pass marker for `ttl`: requests go straight to the handler, in parallel, until it
    /// expires. `reason` is kept for the waiters' `Cache-Status`.
    pub(crate) fn pass_marker(&self, reason: &str, ttl: Duration) -> (Bytes, SetOptions) {
        let options = SetOptions::ttl(Ttl::After(ttl)).tags(self.keys.base_tags());
        (Record::Pass(reason.to_owned()).encode(), options)
    }

    /// Writes an entry; a failure is logged (the response is served anyway).
    pub(crate) async fn write(&self, key: &str, value: Bytes, options: &SetOptions) {
        if let Err(e) = self.store.set_entry(key, value, options).await {
            tracing::warn!(target: "pgcache::tower", error = %e, "could not store a cache entry");
        }
    }
}
