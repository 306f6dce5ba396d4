//! What the layer stores as a core value: a compact, versioned binary encoding of a response, a Vary
//! index, or a "pass" marker. Decoding never panics: a value that does not parse is treated as a miss.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use crate::key;
use crate::policy::Freshness;

/// Version 2 added the revalidation window, version 3 the request line (for operators' SQL views);
/// records of an older version read as misses.
const MAGIC: &[u8; 4] = b"PGH3";

/// A stored value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// A complete response.
    Response(Box<Stored>),
    /// The primary key's response varies on these request headers; each variant has its own key.
    Variants(VariantIndex),
    /// Not storable (hit-for-pass): requests go straight to the handler until it expires.
    Pass(String),
}

/// The `Vary` index under a primary key: the request headers its responses vary on, and the variant
/// keys stored so far, oldest first (what bounds the variants kept per URI).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct VariantIndex {
    pub(crate) names: Vec<HeaderName>,
    pub(crate) keys: Vec<String>,
}

/// A stored response and its cache metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
    /// Wall-clock time of the fill (milliseconds since the epoch), used only when the store gives no expiry.
    pub(crate) stored_at_ms: u64,
    /// The TTL given to the store (`Freshness::keep_for`), to compute the age from the time left.
    pub(crate) keep_ms: u64,
    pub(crate) freshness: Freshness,
    /// The request header values this response was selected by (`Vary`), normalised; `None` = absent.
    pub(crate) vary: Vec<(HeaderName, Option<Bytes>)>,
    /// The request method the response answers (`GET` for a HEAD, which is filled with a GET).
    pub(crate) method: String,
    /// The request target as the layer keyed it: authority and path with query. Kept for operators
    /// (the `cache_http` SQL view), never used to select a response.
    pub(crate) target: String,
}

impl Stored {
    /// The current age (RFC 9111 §4.2.3): the initial age plus the time since the fill, measured by the
    /// store's clock when `remaining` (time left of the entry) is known, else by this node's clock.
    pub(crate) fn age(&self, remaining: Option<Duration>) -> Duration {
        let resident = match remaining {
            Some(left) => Duration::from_millis(self.keep_ms).saturating_sub(left),
            None => Duration::from_millis(now_ms().saturating_sub(self.stored_at_ms)),
        };
        crate::policy::add(self.freshness.initial_age, resident)
    }

    /// Whether a request with these headers selects this response (the values of its `Vary` fields).
    pub(crate) fn selected_by(&self, headers: &HeaderMap) -> bool {
        key::selected(&self.vary_names(), headers) == self.vary
    }

    /// The names of the request fields this response varies on.
    pub(crate) fn vary_names(&self) -> Vec<HeaderName> {
        self.vary.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// Milliseconds since the Unix epoch by this node's clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Record {
    /// Encodes the record.
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        out.put_slice(MAGIC);
        match self {
            Record::Response(s) => put_stored(&mut out, s),
            Record::Variants(index) => {
                out.put_u8(1);
                out.put_u32(len32(index.names.len()));
                for name in &index.names {
                    put_bytes(&mut out, name.as_str().as_bytes());
                }
                out.put_u32(len32(index.keys.len()));
                for key in &index.keys {
                    put_bytes(&mut out, key.as_bytes());
                }
            }
            Record::Pass(reason) => {
                out.put_u8(2);
                put_bytes(&mut out, reason.as_bytes());
            }
        }
        out.freeze()
    }

    /// Decodes a record; `None` for anything that is not a well-formed record of this version.
    pub(crate) fn decode(value: &Bytes) -> Option<Self> {
        let mut r = value.clone();
        if r.remaining() < 5 || !value.starts_with(MAGIC) {
            return None;
        }
        r.advance(4);
        match r.get_u8() {
            0 => {
                let status = StatusCode::from_u16(get_u16(&mut r)?).ok()?;
                let stored_at_ms = get_u64(&mut r)?;
                let keep_ms = get_u64(&mut r)?;
                let lifetime = Duration::from_millis(get_u64(&mut r)?);
                let initial_age = Duration::from_millis(get_u64(&mut r)?);
                let stale_while_revalidate = Duration::from_millis(get_u64(&mut r)?);
                let stale_if_error = Duration::from_millis(get_u64(&mut r)?);
                let no_cache = get_u8(&mut r)? == 1;
                let revalidate = Duration::from_millis(get_u64(&mut r)?);
                let n = get_u32(&mut r)?;
                let mut vary = Vec::new();
                for _ in 0..n {
                    let name = HeaderName::from_bytes(&get_bytes(&mut r)?).ok()?;
                    let value = match get_u8(&mut r)? {
                        1 => Some(get_bytes(&mut r)?),
                        _ => None,
                    };
                    vary.push((name, value));
                }
                let method = String::from_utf8(get_bytes(&mut r)?.to_vec()).ok()?;
                let target = String::from_utf8(get_bytes(&mut r)?.to_vec()).ok()?;
                let headers = get_headers(&mut r)?;
                let body = get_bytes(&mut r)?;
                let trailers = match get_u8(&mut r)? {
                    1 => Some(get_headers(&mut r)?),
                    _ => None,
                };
                let freshness =
                    Freshness { lifetime, initial_age, stale_while_revalidate, stale_if_error, no_cache, revalidate };
                Some(Record::Response(Box::new(Stored {
                    status,
                    headers,
                    body,
                    trailers,
                    stored_at_ms,
                    keep_ms,
                    freshness,
                    vary,
                    method,
                    target,
                })))
            }
            1 => {
                let n = get_u32(&mut r)?;
                let mut names = Vec::new();
                for _ in 0..n {
                    names.push(HeaderName::from_bytes(&get_bytes(&mut r)?).ok()?);
                }
                let n = get_u32(&mut r)?;
                let mut keys = Vec::new();
                for _ in 0..n {
                    keys.push(String::from_utf8(get_bytes(&mut r)?.to_vec()).ok()?);
                }
                Some(Record::Variants(VariantIndex { names, keys }))
            }
            2 => Some(Record::Pass(String::from_utf8(get_bytes(&mut r)?.to_vec()).ok()?)),
            _ => None,
        }
    }
}

/// Encodes a response record without cloning it.
pub(crate) fn encode_stored(s: &Stored) -> Bytes {
    let mut out = BytesMut::with_capacity(64 + s.body.len());
    out.put_slice(MAGIC);
    put_stored(&mut out, s);
    out.freeze()
}

fn put_stored(out: &mut BytesMut, s: &Stored) {
    out.put_u8(0);
    out.put_u16(s.status.as_u16());
    out.put_u64(s.stored_at_ms);
    out.put_u64(s.keep_ms);
    let f = &s.freshness;
    for d in [f.lifetime, f.initial_age, f.stale_while_revalidate, f.stale_if_error] {
        out.put_u64(millis(d));
    }
    out.put_u8(u8::from(f.no_cache));
    out.put_u64(millis(f.revalidate));
    out.put_u32(len32(s.vary.len()));
    for (name, value) in &s.vary {
        put_bytes(out, name.as_str().as_bytes());
        match value {
            Some(v) => {
                out.put_u8(1);
                put_bytes(out, v);
            }
            None => out.put_u8(0),
        }
    }
    put_bytes(out, s.method.as_bytes());
    put_bytes(out, s.target.as_bytes());
    put_headers(out, &s.headers);
    put_bytes(out, &s.body);
    match &s.trailers {
        Some(t) => {
            out.put_u8(1);
            put_headers(out, t);
        }
        None => out.put_u8(0),
    }
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(len32(b.len()));
    out.put_slice(b);
}

fn put_headers(out: &mut BytesMut, headers: &HeaderMap) {
    out.put_u32(len32(headers.len()));
    for (name, value) in headers {
        put_bytes(out, name.as_str().as_bytes());
        put_bytes(out, value.as_bytes());
    }
}

fn get_u8(r: &mut Bytes) -> Option<u8> {
    (r.remaining() >= 1).then(|| r.get_u8())
}
fn get_u16(r: &mut Bytes) -> Option<u16> {
    (r.remaining() >= 2).then(|| r.get_u16())
}
fn get_u32(r: &mut Bytes) -> Option<u32> {
    (r.remaining() >= 4).then(|| r.get_u32())
}
fn get_u64(r: &mut Bytes) -> Option<u64> {
    (r.remaining() >= 8).then(|| r.get_u64())
}

fn get_bytes(r: &mut Bytes) -> Option<Bytes> {
    let n = usize::try_from(get_u32(r)?).ok()?;
    (r.remaining() >= n).then(|| r.split_to(n))
}

fn get_headers(r: &mut Bytes) -> Option<HeaderMap> {
    let n = get_u32(r)?;
    let mut headers = HeaderMap::new();
    for _ in 0..n {
        let name = HeaderName::from_bytes(&get_bytes(r)?).ok()?;
        let value = HeaderValue::from_maybe_shared(get_bytes(r)?).ok()?;
        // `append` keeps repeated fields in order.
        headers.append(name, value);
    }
    Some(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stored {
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        headers.append("x-bin", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Stored {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"hello"),
            trailers: Some(trailers),
            stored_at_ms: 42,
            keep_ms: 60_000,
            freshness: Freshness {
                lifetime: Duration::from_secs(50),
                initial_age: Duration::from_secs(1),
                stale_while_revalidate: Duration::from_secs(10),
                stale_if_error: Duration::ZERO,
                no_cache: true,
                revalidate: Duration::from_secs(3600),
            },
            vary: vec![
                (HeaderName::from_static("accept"), Some(Bytes::from_static(b"a"))),
                (HeaderName::from_static("x-b"), None),
            ],
            method: "GET".to_owned(),
            target: "example.test/a?b=1".to_owned(),
        }
    }

    #[test]
    fn round_trips() {
        for record in [
            Record::Response(Box::new(sample())),
            Record::Variants(VariantIndex {
                names: vec![HeaderName::from_static("accept-language")],
                keys: vec!["p:v:1".into(), "p:v:2".into()],
            }),
            Record::Pass("private".into()),
        ] {
            assert_eq!(Record::decode(&record.encode()), Some(record));
        }
        // Repeated headers keep their order.
        let Some(Record::Response(s)) = Record::decode(&Record::Response(Box::new(sample())).encode()) else {
            panic!()
        };
        assert_eq!(s.headers.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
    }

    #[test]
    fn garbage_never_panics() {
        let full = Record::Response(Box::new(sample())).encode();
        for cut in 0..full.len() {
            assert_eq!(Record::decode(&full.slice(..cut)), None, "cut at {cut}");
        }
        assert_eq!(Record::decode(&Bytes::from_static(b"\"json\"")), None);
        assert_eq!(Record::decode(&Bytes::from_static(b"PGH1\x09")), None);
    }

    #[test]
    fn age_uses_store_clock() {
        let s = sample();
        assert_eq!(s.age(Some(Duration::from_secs(55))), Duration::from_secs(6));
        assert_eq!(s.age(Some(Duration::from_secs(70))), Duration::from_secs(1));
    }
}
