//! Streams per day as an SVG area chart, drawn with plotters' SVG backend and its built-in
//! text metrics (no system fonts are read).

use plotters::prelude::*;

use super::PerDay;
use crate::error::{Error, Result};
use crate::progress::thousands;

/// The chart as an `<svg>` element; `None` when there is no day to draw.
pub fn svg(run_id: &str, per_day: &PerDay) -> Result<Option<String>> {
    let (Some(first), Some(_)) = (per_day.days.first(), per_day.days.last()) else {
        return Ok(None);
    };
    let first_day = first.0;
    let points: Vec<(i64, i64)> = per_day
        .days
        .iter()
        .map(|(day, n)| ((*day - first_day).num_days(), *n))
        .collect();
    let last_x = points.last().map_or(1, |p| p.0.max(1));
    let top = points.iter().map(|p| p.1).max().unwrap_or(1).max(1);
    let fail = |e: String| Error::Report {
        run_id: run_id.to_string(),
        message: format!("drawing the streams-per-day chart: {e}"),
    };
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (960, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(64)
            .build_cartesian_2d(0i64..last_x, 0i64..top + top / 10)
            .map_err(|e| fail(e.to_string()))?;
        let day_label = |x: &i64| (first_day + chrono::Days::new(*x as u64)).to_string();
        let count_label = |y: &i64| thousands(*y as u64);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(8)
            .y_labels(5)
            .x_label_formatter(&day_label)
            .y_label_formatter(&count_label)
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(0xe8, 0xea, 0xed))
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        let blue = RGBColor(0x1a, 0x73, 0xe8);
        chart
            .draw_series(AreaSeries::new(points, 0, blue.mix(0.25)).border_style(blue))
            .map_err(|e| fail(e.to_string()))?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    Ok(Some(out))
}
