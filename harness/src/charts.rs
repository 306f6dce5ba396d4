//! The charts of a `load` run, drawn with plotters as PNG and SVG: latency percentiles over time per
//! operation, throughput over time, the invalidation lag distribution and the L1 hit ratio over time.
//! Every chart's caption carries the run's parameters; every axis is titled with its unit.
//!
//! Text needs a font: the first of [`FONTS`] found on the machine is used. Without one the charts are
//! skipped with a message (a run's figures are in `results.json` either way).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::load::events::{Event, Op, Via};
use crate::stats::Latency;

/// Fonts tried in order (DejaVu ships with most Linux distributions).
pub(crate) const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];
/// Width of a time bucket.
const BUCKET_NS: u64 = 1_000_000_000;
const SIZE: (u32, u32) = (1100, 620);

/// Per-second figures of a run, gathered one event at a time.
pub(crate) struct Timeline {
    origin: u64,
    /// The latest operation end seen (ns since the epoch): where the last, partial second ends.
    last_end: u64,
    latency: BTreeMap<&'static str, Vec<Latency>>,
    ops: Vec<u64>,
    /// get_or_set calls and those served from L1, per second.
    get_or_set: Vec<(u64, u64)>,
    /// Probe writes (sequence → acknowledged at) and their sightings (sequence, seen at).
    probe_writes: BTreeMap<u64, u64>,
    probe_seen: Vec<(u64, u64)>,
}

impl Timeline {
    /// A timeline whose second 0 starts at `origin` (ns since the epoch).
    pub(crate) fn new(origin: u64) -> Self {
        Self {
            origin,
            last_end: origin,
            latency: BTreeMap::new(),
            ops: Vec::new(),
            get_or_set: Vec::new(),
            probe_writes: BTreeMap::new(),
            probe_seen: Vec::new(),
        }
    }

    /// The invalidation lag: each probe write's acknowledgement to each sighting on another process.
    fn lag(&self) -> Latency {
        let mut lag = Latency::new();
        for (seq, at) in &self.probe_seen {
            if let Some(acked) = self.probe_writes.get(seq) {
                lag.record(at.saturating_sub(*acked));
            }
        }
        lag
    }

    fn bucket(&self, end: u64) -> usize {
        usize::try_from(end.saturating_sub(self.origin) / BUCKET_NS).unwrap_or(usize::MAX).min(100_000)
    }

    /// Counts one event.
    pub(crate) fn add(&mut self, event: &Event) {
        let (op, start, end) = match *event {
            Event::Read { start, end, .. } => (Op::Get, start, end),
            Event::GetOrSet { start, end, via, .. } => {
                let b = self.bucket(end);
                grow(&mut self.get_or_set, b);
                self.get_or_set[b].0 += 1;
                self.get_or_set[b].1 += u64::from(via == Via::Local);
                (Op::GetOrSet, start, end)
            }
            Event::Write { start, end, .. } => (Op::Set, start, end),
            Event::Delete { start, end, .. } => (Op::Delete, start, end),
            Event::ProbeWrite { seq, end, .. } => {
                self.probe_writes.insert(seq, end);
                return;
            }
            Event::ProbeSeen { seq, at, .. } => {
                self.probe_seen.push((seq, at));
                return;
            }
            Event::Error { .. } | Event::LoaderRun { .. } => return,
        };
        self.last_end = self.last_end.max(end);
        let b = self.bucket(end);
        grow(&mut self.ops, b);
        self.ops[b] += 1;
        let series = self.latency.entry(op.name()).or_default();
        grow(series, b);
        series[b].record(end.saturating_sub(start));
    }
}

impl Timeline {
    /// Operations per second in each bucket, each plotted at its middle: the last bucket is only as wide
    /// as the run lasted into it, so its rate is counted over that part (not a drop at the right edge).
    fn rates(&self) -> Vec<(f64, f64)> {
        let covered = self.last_end.saturating_sub(self.origin) as f64 / BUCKET_NS as f64;
        let last = self.ops.len().saturating_sub(1);
        self.ops
            .iter()
            .enumerate()
            .map(|(s, &n)| {
                let width = if s == last { (covered - s as f64).clamp(0.05, 1.0) } else { 1.0 };
                (s as f64 + width / 2.0, n as f64 / width)
            })
            .collect()
    }
}

fn grow<T: Default>(v: &mut Vec<T>, index: usize) {
    if v.len() <= index {
        v.resize_with(index + 1, T::default);
    }
}

/// Writes the four charts (PNG and SVG each) into `out`; returns the files written (none without a font).
pub(crate) fn write(out: &Path, params: &str, timeline: &Timeline) -> Result<Vec<PathBuf>> {
    let lag = &timeline.lag();
    let Some(font) = FONTS.iter().find_map(|path| std::fs::read(path).ok()) else {
        eprintln!("charts: no font found (tried {FONTS:?}); install fonts-dejavu-core for charts");
        return Ok(Vec::new());
    };
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("the font could not be read"))?;
    let mut written = Vec::new();
    for name in ["latency", "throughput", "invalidation_lag", "l1_hit_ratio"] {
        for ext in ["png", "svg"] {
            let path = out.join(format!("{name}.{ext}"));
            let result = if ext == "png" {
                let area = BitMapBackend::new(&path, SIZE).into_drawing_area();
                draw(name, &area, params, timeline, lag).and_then(|()| area.present().map_err(plot_error))
            } else {
                let area = SVGBackend::new(&path, SIZE).into_drawing_area();
                draw(name, &area, params, timeline, lag).and_then(|()| area.present().map_err(plot_error))
            };
            result.with_context(|| format!("drawing {}", path.display()))?;
            written.push(path);
        }
    }
    Ok(written)
}

fn plot_error<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn draw<DB: DrawingBackend>(
    name: &str,
    area: &DrawingArea<DB, Shift>,
    params: &str,
    timeline: &Timeline,
    lag: &Latency,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE).map_err(plot_error)?;
    match name {
        "latency" => latency_chart(area, params, timeline),
        "throughput" => throughput_chart(area, params, timeline),
        "invalidation_lag" => lag_chart(area, params, lag),
        _ => hit_ratio_chart(area, params, timeline),
    }
}

fn caption(what: &str, params: &str) -> String {
    format!("{what} — {params}")
}

fn latency_chart<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, params: &str, t: &Timeline) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let seconds = t.ops.len().max(1) as f64;
    let mut series = Vec::new();
    for (op, buckets) in &t.latency {
        for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
            let points: Vec<(f64, f64)> = buckets
                .iter()
                .enumerate()
                .filter(|(_, h)| h.len() > 0)
                .map(|(s, h)| (s as f64 + 0.5, (h.quantile_ns(q) as f64 / 1e6).max(0.001)))
                .collect();
            series.push((format!("{op} {label}"), points));
        }
    }
    let top = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.1)).fold(1.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption(caption("Latency percentiles over time", params), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..seconds, (0.001f64..top).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .y_desc("latency (ms, log scale)")
        .draw()
        .map_err(plot_error)?;
    for (i, (label, points)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(plot_error)?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(plot_error)?;
    Ok(())
}

fn throughput_chart<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, params: &str, t: &Timeline) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let seconds = t.ops.len().max(1) as f64;
    let rates = t.rates();
    let top = rates.iter().map(|&(_, rate)| rate).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(caption("Throughput over time", params), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..seconds, 0f64..top)
        .map_err(plot_error)?;
    chart.configure_mesh().x_desc("time since start (s)").y_desc("operations per second").draw().map_err(plot_error)?;
    chart.draw_series(LineSeries::new(rates, BLUE.stroke_width(2))).map_err(plot_error)?;
    Ok(())
}

fn lag_chart<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, params: &str, lag: &Latency) -> Result<()>
where
    DB::ErrorType: 'static,
{
    // x: the percentile in "nines" (0 = p0, 1 = p90, 2 = p99, 3 = p99.9), y: the lag at that percentile.
    let points: Vec<(f64, f64)> = (0..=60)
        .map(|i| {
            let nines = 3.0 * f64::from(i) / 60.0;
            (nines, lag.quantile_ns(1.0 - 10f64.powf(-nines)) as f64 / 1e6)
        })
        .collect();
    let top = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(caption(&format!("Invalidation lag distribution ({} samples)", lag.len()), params), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..3f64, 0f64..top)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "p0".to_owned(),
            1 => "p90".to_owned(),
            2 => "p99".to_owned(),
            _ => "p99.9".to_owned(),
        })
        .x_labels(4)
        .y_desc("probe write acknowledged to seen on another process (ms)")
        .draw()
        .map_err(plot_error)?;
    chart.draw_series(LineSeries::new(points, RED.stroke_width(2))).map_err(plot_error)?;
    Ok(())
}

fn hit_ratio_chart<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, params: &str, t: &Timeline) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let seconds = t.ops.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(caption("L1 hit ratio of get_or_set over time", params), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..seconds, 0f64..100f64)
        .map_err(plot_error)?;
    chart.configure_mesh().x_desc("time since start (s)").y_desc("served from L1 (%)").draw().map_err(plot_error)?;
    let points = t
        .get_or_set
        .iter()
        .enumerate()
        .filter(|(_, (n, _))| *n > 0)
        .map(|(s, &(n, local))| (s as f64 + 0.5, 100.0 * local as f64 / n as f64));
    chart.draw_series(LineSeries::new(points, GREEN.stroke_width(2))).map_err(plot_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_partial_second_is_a_rate_over_the_part_run_not_a_drop() {
        let mut t = Timeline::new(1_000);
        t.ops = vec![100, 100, 25];
        t.last_end = 1_000 + 2 * BUCKET_NS + BUCKET_NS / 4;
        let rates = t.rates();
        assert_eq!(rates[0], (0.5, 100.0));
        assert_eq!(rates[1], (1.5, 100.0));
        assert_eq!(rates[2], (2.125, 100.0));
    }
}
