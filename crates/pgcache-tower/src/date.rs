//! HTTP dates (RFC 9110 §5.6.7), parsed leniently as a recipient should: the preferred IMF-fixdate
//! (`Sun, 06 Nov 1994 08:49:37 GMT`), the obsolete RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) and
//! asctime (`Sun Nov  6 08:49:37 1994`) formats, with names in any case and the weekday ignored.
//!
//! Hand-written because the `httpdate` crate rejects what RFC 9110 asks recipients to accept (lowercase
//! names, a wrong weekday, single-digit asctime days), and a strict parser turns a valid `Expires` into
//! "already expired".

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];

/// Parses an HTTP date in any of the three formats; `None` when it is not one. Dates before 1970 are
/// clamped to the epoch (they are all "long ago" to a cache).
pub(crate) fn parse(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    // Drop the weekday: everything up to the first space (IMF-fixdate and RFC 850 end it with a comma;
    // asctime does not, and its month follows).
    let (_, rest) = text.split_once(' ')?;
    let words: Vec<&str> = rest.split([' ', '-']).filter(|w| !w.is_empty()).collect();
    let (day, month, year, time) = match words.as_slice() {
        // IMF-fixdate: 06 Nov 1994 08:49:37 GMT; RFC 850: 06-Nov-94 08:49:37 GMT.
        [day, month, year, time, zone] if zone.eq_ignore_ascii_case("gmt") => (*day, *month, *year, *time),
        // asctime: Nov 6 08:49:37 1994.
        [month, day, time, year] => (*day, *month, *year, *time),
        _ => return None,
    };
    let day: u32 = digits(day, 1, 2)?;
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as u32 + 1;
    let year = match year.len() {
        // RFC 9110 §5.6.7: a two-digit year more than 50 years in the future is in the past century.
        2 => {
            let yy: i64 = digits(year, 2, 2)?.into();
            if yy >= 70 {
                1900 + yy
            } else {
                2000 + yy
            }
        }
        4 => i64::from(digits(year, 4, 4)?),
        _ => return None,
    };
    let mut hms = time.split(':');
    let (h, m, s) = (digits(hms.next()?, 2, 2)?, digits(hms.next()?, 2, 2)?, digits(hms.next()?, 2, 2)?);
    if hms.next().is_some() || day == 0 || day > 31 || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(h * 3600 + m * 60 + s);
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// `text` as a number of `min..=max` ASCII digits.
fn digits(text: &str, min: usize, max: usize) -> Option<u32> {
    let ok = (min..=max).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| text.parse().ok()).flatten()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn accepts_the_three_formats_of_rfc_9110() {
        let t = at(784_111_777);
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT"), t);
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT"), t);
        assert_eq!(parse("Sun Nov  6 08:49:37 1994"), t);
        assert_eq!(parse("Sun Nov 06 08:49:37 1994"), t);
    }

    #[test]
    fn is_lenient_where_the_rfc_asks_recipients_to_be() {
        let t = at(784_111_777);
        assert_eq!(parse("sun, 06 nov 1994 08:49:37 gmt"), t, "names in any case");
        assert_eq!(parse("Mon, 06 Nov 1994 08:49:37 GMT"), t, "a wrong weekday is ignored");
        assert_eq!(parse("  Sun, 06 NOV 1994 08:49:37 GMT "), t);
        assert_eq!(parse("Thu, 01 Jan 1970 00:00:00 GMT"), at(0));
        assert_eq!(parse("Fri, 31 Dec 9999 23:59:59 GMT"), at(253_402_300_799));
        assert_eq!(parse("Wednesday, 01-Jan-20 00:00:00 GMT"), at(1_577_836_800));
    }

    #[test]
    fn rejects_what_is_not_a_date() {
        for bad in [
            "0",
            "",
            "-1",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun, 06 Nov 19945 08:49:37 GMT",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
