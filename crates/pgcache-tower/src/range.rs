//! Range requests answered from a stored complete response (RFC 9110 §14): one byte range of a stored
//! 200 becomes a 206, an unsatisfiable one a 416, and anything else (several ranges, another unit, an
//! invalid field, a failed `If-Range`) the whole stored response, as §14.2 lets a server do.
//!
//! Hand-written: a single `bytes` range is a few lines, and a crate such as `http-range-header` would
//! validate multi-range sets that this cache answers with the full response anyway.

use std::ops::Range;
use std::time::Duration;

use http::header::{self, HeaderMap};
use http::StatusCode;

use crate::date;

/// What a stored response answers to a request's `Range`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RangeAnswer {
    /// The whole stored response (no `Range`, or one the cache ignores).
    Full,
    /// A 206 with these bytes of the stored body.
    Partial(Range<usize>),
    /// A 416: no byte of the requested range exists.
    Unsatisfiable,
}

/// The answer to `request`'s `Range` (a GET's) from a stored response with `status`, `stored`
/// headers and a body of `len` bytes.
pub(crate) fn select(request: &HeaderMap, status: StatusCode, stored: &HeaderMap, len: usize) -> RangeAnswer {
    let mut ranges = request.get_all(header::RANGE).iter();
    let (Some(range), None) = (ranges.next(), ranges.next()) else {
        return RangeAnswer::Full;
    };
    // §14.2: only a 200 has ranges to select from; §13.1.5: `If-Range` must match strongly.
    if status != StatusCode::OK || !if_range_holds(request, stored) {
        return RangeAnswer::Full;
    }
    range.to_str().ok().map_or(RangeAnswer::Full, |text| byte_range(text, len))
}

/// One `bytes` range-spec (§14.1.2) against a body of `len` bytes.
fn byte_range(text: &str, len: usize) -> RangeAnswer {
    let Some((unit, set)) = text.split_once('=') else { return RangeAnswer::Full };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeAnswer::Full;
    }
    let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        // No range, or several (a multipart answer this cache does not build): the whole response.
        return RangeAnswer::Full;
    };
    let Some((first, last)) = spec.split_once('-') else { return RangeAnswer::Full };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // suffix-range: the last N bytes.
        return match number(last) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if len == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Partial(len.saturating_sub(n)..len),
            None => RangeAnswer::Full,
        };
    }
    let Some(first) = number(first) else { return RangeAnswer::Full };
    let end = if last.is_empty() {
        len
    } else {
        match number(last) {
            Some(last) if last >= first => last.saturating_add(1).min(len),
            // last < first, or not a number: an invalid range, ignored.
            _ => return RangeAnswer::Full,
        }
    };
    if first >= len {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Partial(first..end)
}

/// `1*DIGIT`, saturating (a position past any body is as good as `usize::MAX`).
fn number(text: &str) -> Option<usize> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().unwrap_or(usize::MAX))
}

/// `If-Range` (RFC 9110 §13.1.5): absent, or it names the stored representation by a strong entity tag
/// or by its `Last-Modified` date when that date is a strong validator (at least a second before `Date`).
fn if_range_holds(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(condition) = request.get(header::IF_RANGE) else { return true };
    let Ok(condition) = condition.to_str() else { return false };
    let condition = condition.trim();
    let text = |name| stored.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok()).map(str::trim);
    if condition.starts_with('"') || condition.starts_with("W/") {
        return text(header::ETAG).is_some_and(|etag| !etag.starts_with("W/") && etag == condition);
    }
    let (Some(since), Some(modified)) = (date::parse(condition), text(header::LAST_MODIFIED).and_then(date::parse))
    else {
        return false;
    };
    let strong = text(header::DATE)
        .and_then(date::parse)
        .is_some_and(|d| d.duration_since(modified).is_ok_and(|gap| gap >= Duration::from_secs(1)));
    since == modified && strong
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn req(range: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(range).unwrap());
        h
    }

    fn answer(range: &str, len: usize) -> RangeAnswer {
        select(&req(range), StatusCode::OK, &HeaderMap::new(), len)
    }

    #[test]
    fn one_byte_range_selects_its_bytes_clamped_to_the_body() {
        assert_eq!(answer("bytes=0-1", 11), RangeAnswer::Partial(0..2));
        assert_eq!(answer("bytes=1-", 11), RangeAnswer::Partial(1..11));
        assert_eq!(answer("bytes=-1", 11), RangeAnswer::Partial(10..11));
        assert_eq!(answer("bytes=-100", 11), RangeAnswer::Partial(0..11));
        assert_eq!(answer("bytes=5-99999999999999999999999", 11), RangeAnswer::Partial(5..11));
        assert_eq!(answer("BYTES = 2-3 ", 11), RangeAnswer::Partial(2..4));
    }

    #[test]
    fn unsatisfiable_ranges_are_416() {
        assert_eq!(answer("bytes=11-", 11), RangeAnswer::Unsatisfiable);
        assert_eq!(answer("bytes=20-30", 11), RangeAnswer::Unsatisfiable);
        assert_eq!(answer("bytes=-0", 11), RangeAnswer::Unsatisfiable);
        assert_eq!(answer("bytes=-5", 0), RangeAnswer::Unsatisfiable);
    }

    #[test]
    fn invalid_multiple_or_foreign_ranges_get_the_whole_response() {
        for range in ["bytes=3-1", "bytes=a-", "bytes=0-1,3-4", "items=0-1", "bytes", "bytes=", "bytes=-"] {
            assert_eq!(answer(range, 11), RangeAnswer::Full, "{range}");
        }
        assert_eq!(select(&req("bytes=0-1"), StatusCode::NOT_FOUND, &HeaderMap::new(), 11), RangeAnswer::Full);
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let mut stored = HeaderMap::new();
        stored.insert(header::ETAG, HeaderValue::from_static("\"a\""));
        stored.insert(header::LAST_MODIFIED, HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"));
        stored.insert(header::DATE, HeaderValue::from_static("Sun, 06 Nov 1994 09:00:00 GMT"));
        let with_stored = |stored: &HeaderMap, cond: &str| {
            let mut r = req("bytes=0-1");
            r.insert(header::IF_RANGE, HeaderValue::from_str(cond).unwrap());
            select(&r, StatusCode::OK, stored, 11)
        };
        let with = |cond: &str| with_stored(&stored, cond);
        assert_eq!(with("\"a\""), RangeAnswer::Partial(0..2));
        assert_eq!(with("W/\"a\""), RangeAnswer::Full);
        assert_eq!(with("\"b\""), RangeAnswer::Full);
        assert_eq!(with("Sun, 06 Nov 1994 08:49:37 GMT"), RangeAnswer::Partial(0..2));
        assert_eq!(with("Sun, 06 Nov 1994 08:49:38 GMT"), RangeAnswer::Full);
        let mut same_second = stored.clone();
        same_second.insert(header::DATE, HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"));
        let weak = with_stored(&same_second, "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(weak, RangeAnswer::Full, "a weak Last-Modified");
    }
}
