//! The figure of a writer sweep: write latency (mean, log scale) against concurrent writers (log scale),
//! one line per series, as PNG and SVG. Without a font it is skipped with a message, as `load`'s charts are.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::sweep::Point;
use crate::charts::FONTS;

const SIZE: (u32, u32) = (1100, 620);
const NAME: &str = "write_latency_vs_writers";

/// Writes `write_latency_vs_writers.png` and `.svg` into `out`; returns the files written.
pub(crate) fn write_latency_vs_writers(out: &Path, params: &str, points: &[Point]) -> Result<Vec<PathBuf>> {
    let Some(font) = FONTS.iter().find_map(|path| std::fs::read(path).ok()) else {
        eprintln!("figure: no font found (tried {FONTS:?}); install fonts-dejavu-core for the figure");
        return Ok(Vec::new());
    };
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("the font could not be read"))?;
    let png = out.join(format!("{NAME}.png"));
    let svg = out.join(format!("{NAME}.svg"));
    {
        let area = BitMapBackend::new(&png, SIZE).into_drawing_area();
        draw(&area, params, points).and_then(|()| area.present().map_err(plot_error))
    }
    .with_context(|| format!("drawing {}", png.display()))?;
    {
        let area = SVGBackend::new(&svg, SIZE).into_drawing_area();
        draw(&area, params, points).and_then(|()| area.present().map_err(plot_error))
    }
    .with_context(|| format!("drawing {}", svg.display()))?;
    Ok(vec![png, svg])
}

fn plot_error<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn draw<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, params: &str, points: &[Point]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE).map_err(plot_error)?;
    let mut series: Vec<&str> = Vec::new();
    for p in points {
        if !series.contains(&p.series.as_str()) {
            series.push(&p.series);
        }
    }
    let max_writers = points.iter().map(|p| p.writers).max().unwrap_or(1).max(2);
    let top = points.iter().map(|p| p.write_mean_ms).fold(0.1, f64::max) * 2.0;
    let bottom = points.iter().map(|p| p.write_mean_ms).filter(|v| *v > 0.0).fold(top, f64::min) / 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("Write latency against concurrent writers ({})", durability(params)), ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(60)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..f64::from(max_writers)).log_scale(), (bottom.max(0.001)..top).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(format!("concurrent writers (log scale) — {}", short(params)))
        .y_desc("write mean (ms, log scale)")
        .x_label_formatter(&|x| format!("{}", x.round()))
        .draw()
        .map_err(plot_error)?;
    for (i, name) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.series == *name && p.write_mean_ms > 0.0)
            .map(|p| (f64::from(p.writers), p.write_mean_ms))
            .collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(name.to_string())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(line.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// The durability part of the header (fsync=… synchronous_commit=…).
fn durability(params: &str) -> &str {
    params.split(" durability: ").nth(1).map_or("", |d| d.split(" full_page_writes").next().unwrap_or(d))
}

/// The parameters that matter for the figure (the header without the swept writer count).
fn short(params: &str) -> String {
    params.replace("writers=swept ", "").split(" durability: ").next().unwrap_or(params).to_owned()
}
