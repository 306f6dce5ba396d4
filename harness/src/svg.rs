//! A small hand-written SVG chart: latency by percentile, one line per series, log-scaled on both axes
//! (x: 0%, 90%, 99%, 99.9%, 99.99%; y: microseconds).

use std::fmt::Write as _;

use crate::stats::Latency;

const W: f64 = 900.0;
const H: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 10] =
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
/// x axis: "nines", log10(1 / (1 - q)), from q = 0 to q = 0.9999.
const MAX_NINES: f64 = 4.0;

/// Renders the percentile curves of `series` as an SVG document.
pub(crate) fn percentile_chart(title: &str, series: &[(String, Latency)]) -> String {
    let series: Vec<&(String, Latency)> = series.iter().filter(|(_, h)| h.len() > 0).collect();
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, h)| {
            (0..=80)
                .map(|i| {
                    let nines = MAX_NINES * f64::from(i) / 80.0;
                    let q = 1.0 - 10f64.powf(-nines);
                    (nines, (h.quantile_ns(q) as f64 / 1000.0).max(0.1))
                })
                .collect()
        })
        .collect();
    let max_us = points.iter().flatten().map(|p| p.1).fold(1.0, f64::max);
    let min_us = points.iter().flatten().map(|p| p.1).fold(max_us, f64::min);
    let (lo, hi) = (min_us.log10().floor(), max_us.log10().ceil().max(min_us.log10().floor() + 1.0));
    let x = |nines: f64| LEFT + (W - LEFT - RIGHT) * nines / MAX_NINES;
    let y = |us: f64| TOP + (H - TOP - BOTTOM) * (1.0 - (us.log10() - lo) / (hi - lo));

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{LEFT}" y="24" font-size="16">{}</text>"#, escape(title));
    for (nines, label) in [(0.0, "0%"), (1.0, "90%"), (2.0, "99%"), (3.0, "99.9%"), (4.0, "99.99%")] {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="#ddd"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{label}</text>"##,
            x(nines),
            H - BOTTOM,
            H - BOTTOM + 18.0
        );
    }
    let mut decade = lo;
    while decade <= hi {
        let us = 10f64.powf(decade);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(us),
            W - RIGHT,
            LEFT - 6.0,
            y(us) + 4.0,
            crate::stats::fmt_us(us)
        );
        decade += 1.0;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 10.0
    );
    for (i, ((name, h), pts)) in series.iter().zip(&points).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts.iter().map(|(n, us)| format!("{:.1},{:.1}", x(*n), y(*us))).collect();
        let _ =
            writeln!(svg, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, path.join(" "));
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{0:.1}" y1="{ly:.1}" x2="{1:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{2:.1}" y="{3:.1}">{4} (n={5})</text>"#,
            W - RIGHT + 10.0,
            W - RIGHT + 30.0,
            W - RIGHT + 36.0,
            ly + 4.0,
            escape(name),
            h.len()
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_an_svg_with_one_line_per_series() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for i in 1..1000 {
            a.record(i * 1000);
            b.record(i * 10);
        }
        let svg = percentile_chart("t <1>", &[("a".into(), a), ("b".into(), b), ("empty".into(), Latency::new())]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;1&gt;"));
    }
}
