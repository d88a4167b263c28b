//! The storm's two figures, as SVG or PNG (by the file's extension). The text
//! is measured, and drawn in PNGs, with DejaVu Sans built into the binary: the
//! figures look the same on a machine without fonts.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{LogFit, StormResult};

const COLORS: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
    RGBColor(100, 100, 255),
];

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

/// The figures' size in pixels.
const SIZE: (u32, u32) = (960, 600);

/// The image formats the figures can be drawn in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Svg,
    Png,
}

/// The format `path`'s extension names, or an error saying which ones work.
fn format_of(path: &Path) -> Result<Format> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("svg") => Ok(Format::Svg),
        Some("png") => Ok(Format::Png),
        _ => bail!(
            "--plot {}: the file must end in .svg or .png",
            path.display()
        ),
    }
}

/// Checks `--plot FILE` before a sweep starts (the extension, and that its
/// folder exists), so a long sweep does not end in an error.
pub(crate) fn check_path(path: &Path) -> Result<()> {
    format_of(path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("--plot {}: no folder {}", path.display(), dir.display());
    }
    Ok(())
}

/// `FILE-scaling.svg` next to `FILE.svg` (`.png` next to `.png`).
pub(crate) fn scaling_path(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "storm".into());
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "svg".into());
    path.with_file_name(format!("{stem}-scaling.{ext}"))
}

/// Registers the built-in font as "sans-serif", once (every later call
/// answers as the first did).
fn register_font() -> Result<()> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .is_ok()
    });
    if !loaded {
        bail!("drawing the plot: the built-in font did not load");
    }
    Ok(())
}

/// Draws RPCs per second per node over time to `path`, and RPCs per node and
/// hops against n to [`scaling_path`], as SVG or PNG by `path`'s extension.
pub(crate) fn draw(
    path: &Path,
    runs: &[StormResult],
    rpcs_fit: Option<&LogFit>,
    hops_fit: Option<&LogFit>,
) -> Result<()> {
    register_font()?;
    let scaling_to = scaling_path(path);
    let fits = (rpcs_fit, hops_fit);
    match format_of(path)? {
        Format::Svg => both(
            SVGBackend::new(path, SIZE),
            SVGBackend::new(&scaling_to, SIZE),
            runs,
            fits,
            2,
        ),
        // Lines one pixel wide: plotters draws wider ones as polygons whose
        // sharp corners (a near-vertical drop on a long time axis) spike far
        // past the line, out of the chart.
        Format::Png => both(
            BitMapBackend::new(path, SIZE),
            BitMapBackend::new(&scaling_to, SIZE),
            runs,
            fits,
            1,
        ),
    }
}

/// Both figures, on two backends of one kind; `line`: the curves' width.
fn both<DB: DrawingBackend>(
    rate: DB,
    scaling_to: DB,
    runs: &[StormResult],
    (rpcs_fit, hops_fit): (Option<&LogFit>, Option<&LogFit>),
    line: u32,
) -> Result<()> {
    rate_over_time(rate.into_drawing_area(), runs, line)?;
    scaling(scaling_to.into_drawing_area(), runs, rpcs_fit, hops_fit)
}

/// `line`: the curves' width in pixels.
fn rate_over_time<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    runs: &[StormResult],
    line: u32,
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let t_max = runs
        .iter()
        .flat_map(|r| r.rpc_rate.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let y_max = runs.iter().map(|r| r.rpc_rate_peak).fold(1.0, f64::max) * 1.05;
    let mode = runs.first().map(|r| r.mode.as_str()).unwrap_or("real");
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Registration storm: RPCs per second per node ({mode})"),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first login")
        .y_desc("RPCs sent per second per node")
        .draw()
        .map_err(err)?;
    for (j, r) in runs.iter().enumerate() {
        let color = COLORS[j % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                r.rpc_rate.iter().copied(),
                color.stroke_width(line),
            ))
            .map_err(err)?
            .label(format!("n = {}", r.n))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn scaling<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    runs: &[StormResult],
    rpcs_fit: Option<&LogFit>,
    hops_fit: Option<&LogFit>,
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let n_min = runs.iter().map(|r| r.n).min().unwrap_or(10).max(1) as f64;
    let n_max = runs.iter().map(|r| r.n).max().unwrap_or(10).max(2) as f64;
    let rpc_max = runs.iter().map(|r| r.rpcs_per_node).fold(1.0, f64::max) * 1.15;
    let hop_max = runs
        .iter()
        .filter_map(|r| r.hops_p99)
        .fold(1.0, f64::max)
        .max(4.0)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "RPCs per user and lookup hops against n (log scale)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d((n_min * 0.8..n_max * 1.25).log_scale(), 0f64..rpc_max)
        .map_err(err)?
        .set_secondary_coord((n_min * 0.8..n_max * 1.25).log_scale(), 0f64..hop_max);
    chart
        .configure_mesh()
        .x_desc("users n")
        .y_desc("RPCs sent per user")
        .draw()
        .map_err(err)?;
    chart
        .configure_secondary_axes()
        .y_desc("lookup hops")
        .draw()
        .map_err(err)?;
    let blue = COLORS[0];
    let orange = COLORS[1];
    let xs: Vec<f64> = {
        let steps = 60;
        (0..=steps)
            .map(|s| n_min * (n_max / n_min).powf(s as f64 / steps as f64))
            .collect()
    };
    chart
        .draw_series(
            runs.iter()
                .map(|r| Circle::new((r.n as f64, r.rpcs_per_node), 5, blue.filled())),
        )
        .map_err(err)?
        .label("RPCs per user")
        .legend(move |(x, y)| Circle::new((x + 9, y), 5, blue.filled()));
    if let Some(f) = rpcs_fit {
        chart
            .draw_series(LineSeries::new(
                xs.iter().map(|&n| (n, f.a + f.b * n.log2())),
                blue.stroke_width(1),
            ))
            .map_err(err)?
            .label(format!("{:.1} + {:.2}·log2(n), R² = {:.3}", f.a, f.b, f.r2))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], blue));
    }
    chart
        .draw_secondary_series(runs.iter().filter_map(|r| {
            Some(TriangleMarker::new(
                (r.n as f64, r.hops_p50?),
                6,
                orange.filled(),
            ))
        }))
        .map_err(err)?
        .label("lookup hops p50 (right axis)")
        .legend(move |(x, y)| TriangleMarker::new((x + 9, y), 6, orange.filled()));
    chart
        .draw_secondary_series(runs.iter().filter_map(|r| {
            Some(Cross::new(
                (r.n as f64, r.hops_p99?),
                5,
                orange.stroke_width(2),
            ))
        }))
        .map_err(err)?
        .label("lookup hops p99 (right axis)")
        .legend(move |(x, y)| Cross::new((x + 9, y), 5, orange.stroke_width(2)));
    if let Some(f) = hops_fit {
        chart
            .draw_secondary_series(LineSeries::new(
                xs.iter().map(|&n| (n, f.a + f.b * n.log2())),
                orange.stroke_width(1),
            ))
            .map_err(err)?
            .label(format!(
                "hops p50 {:.2} + {:.2}·log2(n), R² = {:.3}",
                f.a, f.b, f.r2
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], orange));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
