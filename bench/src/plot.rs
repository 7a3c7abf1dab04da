//! PNG bar charts for the benchmark reports (plotters, pure Rust: the bitmap backend and
//! ab_glyph with Debian's DejaVu Sans, from `fonts-dejavu-core`).
//!
//! One chart: a group of bars per category (a target), one bar per series at its median,
//! a whisker from the minimum to the maximum, and the median written above the bar.

use crate::e2e_report::Spread;
use anyhow::{anyhow, bail, Context, Result};
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};
use std::{path::Path, sync::OnceLock};

const FONT_FILE: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (1100, 560);
const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

/// One bar per category.
pub struct Series {
    pub name: String,
    pub values: Vec<Spread>,
}

/// Registers DejaVu Sans as plotters' `sans-serif`, once.
fn font() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT_FILE).map_err(|e| {
            format!(
                "reading {FONT_FILE}: {e} (install fonts-dejavu-core: `cargo xtask setup --bench`)"
            )
        })?;
        // plotters keeps the font for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FONT, FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT_FILE} is not a font plotters can read"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// A number for a bar's label: three significant digits or so.
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws `series` over `categories` into the PNG `path`.
pub fn bars(
    path: &Path,
    title: &str,
    unit: &str,
    categories: &[String],
    series: &[Series],
) -> Result<()> {
    font()?;
    if series.is_empty() || series.iter().any(|s| s.values.len() != categories.len()) {
        bail!("a chart needs one value per category in every series");
    }
    let finite = series
        .iter()
        .flat_map(|s| &s.values)
        .flat_map(|v| [v.min, v.median, v.max])
        .filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let top = if hi > 0.0 { hi * 1.15 } else { 1.0 };
    let bottom = if lo < 0.0 { lo * 1.15 } else { 0.0 };
    let n = categories.len() as f64;

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    let draw = |e: &dyn std::fmt::Debug| anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..n, bottom..top)
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(unit)
        .y_label_formatter(&|v| short(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(|e| draw(&e))?;

    let group = 0.8;
    let width = group / series.len() as f64;
    for (si, s) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        let x0 = |ci: usize| ci as f64 + (1.0 - group) / 2.0 + si as f64 * width;
        let bars = s
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.median.is_finite());
        let drawn = chart
            .draw_series(bars.clone().map(|(ci, v)| {
                Rectangle::new(
                    [
                        (x0(ci) + width * 0.05, 0.0),
                        (x0(ci) + width * 0.95, v.median),
                    ],
                    color.filled(),
                )
            }))
            .map_err(|e| draw(&e))?;
        if series.len() > 1 {
            drawn.label(s.name.as_str()).legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
            });
        }
        // Whiskers: min to max, with caps.
        for (ci, v) in bars.clone() {
            let mid = x0(ci) + width / 2.0;
            let cap = width * 0.2;
            let lines = [
                vec![(mid, v.min), (mid, v.max)],
                vec![(mid - cap, v.min), (mid + cap, v.min)],
                vec![(mid - cap, v.max), (mid + cap, v.max)],
            ];
            chart
                .draw_series(
                    lines
                        .into_iter()
                        .map(|l| PathElement::new(l, BLACK.stroke_width(1))),
                )
                .map_err(|e| draw(&e))?;
        }
        chart
            .draw_series(bars.map(|(ci, v)| {
                Text::new(
                    short(v.median),
                    (x0(ci) + width / 2.0, v.max.max(v.median)),
                    (FONT, 13)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
            }))
            .map_err(|e| draw(&e))?;
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw(&e))?;
    }
    // Category names under the axis, centred on each group.
    for (ci, name) in categories.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(ci as f64 + 0.5, bottom));
        root.draw(&Text::new(
            name.clone(),
            (x, y + 10),
            (FONT, 15)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(|e| draw(&e))?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
