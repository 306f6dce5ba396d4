//! Latency histograms (HDR, nanosecond resolution) and their summaries.

use hdrhistogram::Histogram;

/// A latency histogram of nanosecond samples.
#[derive(Clone)]
pub(crate) struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub(crate) fn new() -> Self {
        // Auto-resizing; `new` only fails for more than 5 significant digits.
        let mut hist = Histogram::new(3).expect("3 significant digits is a valid precision");
        hist.auto(true);
        Self { hist }
    }

    /// Records one sample in nanoseconds (0 is recorded as 1).
    pub(crate) fn record(&mut self, ns: u64) {
        let _ = self.hist.record(ns.max(1));
    }

    pub(crate) fn len(&self) -> u64 {
        self.hist.len()
    }

    pub(crate) fn merge(&mut self, other: &Latency) {
        let _ = self.hist.add(&other.hist);
    }

    /// Value at quantile `q` (0..=1), in nanoseconds.
    pub(crate) fn quantile_ns(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }

    pub(crate) fn summary(&self) -> Summary {
        let us = |ns: u64| ns as f64 / 1000.0;
        Summary {
            count: self.hist.len(),
            mean_us: self.hist.mean() / 1000.0,
            p50_us: us(self.hist.value_at_quantile(0.50)),
            p95_us: us(self.hist.value_at_quantile(0.95)),
            p99_us: us(self.hist.value_at_quantile(0.99)),
            max_us: us(self.hist.max()),
        }
    }
}

/// count, mean and percentiles of a histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub(crate) struct Summary {
    pub(crate) count: u64,
    pub(crate) mean_us: f64,
    pub(crate) p50_us: f64,
    pub(crate) p95_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) max_us: f64,
}

/// Formats microseconds with a unit that keeps 3-4 significant digits.
pub(crate) fn fmt_us(us: f64) -> String {
    if us < 10.0 {
        format!("{us:.2}µs")
    } else if us < 1000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reports_percentiles_in_microseconds() {
        let mut h = Latency::new();
        for i in 1..=100u64 {
            h.record(i * 1000);
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_us - 50.0).abs() < 0.5, "{s:?}");
        assert!((s.p99_us - 99.0).abs() < 0.5, "{s:?}");
        assert!((s.max_us - 100.0).abs() < 0.5, "{s:?}");
        assert_eq!(fmt_us(1.234), "1.23µs");
        assert_eq!(fmt_us(2500.0), "2.50ms");
    }
}
