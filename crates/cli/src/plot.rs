//! `scalelong plot`: curves from `metrics.jsonl` files as a PNG.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use plotters::prelude::*;
use scalelong_train::stability::moving_average;

pub(crate) const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// metrics.jsonl files, each optionally followed by =LABEL (repeatable; one curve each).
    #[arg(long = "metrics", required = true)]
    metrics: Vec<String>,
    /// The field to plot against `step` (loss, grad_norm, lr, img_per_s, fid, kid, ...).
    #[arg(long, default_value = "loss")]
    key: String,
    /// Moving average over this many points (1 = raw).
    #[arg(long, default_value_t = 1)]
    smooth: usize,
    /// Logarithmic y axis.
    #[arg(long)]
    log_y: bool,
    /// Output PNG.
    #[arg(long, default_value = "plot.png")]
    out: PathBuf,
    /// Plot title (default: the key).
    #[arg(long)]
    title: Option<String>,
    /// Replace --out if it exists.
    #[arg(long)]
    overwrite: bool,
}

/// (label, points) read from one metrics file.
fn read_series(spec: &str, key: &str, smooth: usize) -> Result<(String, Vec<(f64, f64)>)> {
    let (path, label) = match spec.rsplit_once('=') {
        Some((p, l)) => (p.to_string(), l.to_string()),
        None => (spec.to_string(), spec.to_string()),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut points = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{path}:{}: not JSON", i + 1))?;
        let Some(step) = v["step"].as_f64() else { bail!("{path}:{}: no numeric `step`", i + 1) };
        // Some fields are on some lines only (diagnostics, evaluations); null is a non-finite value.
        if let Some(y) = v[key].as_f64().filter(|y| y.is_finite()) {
            points.push((step, y));
        }
    }
    if points.is_empty() {
        bail!("{path}: no `{key}` values");
    }
    let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    let smoothed = points.iter().zip(moving_average(&ys, smooth)).map(|(p, y)| (p.0, y)).collect();
    Ok((label, smoothed))
}

/// A tick label with three significant digits.
pub(crate) fn short(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e4 {
        format!("{v:.0}")
    } else if v == 0.0 || (1e-3..1e4).contains(&v.abs()) {
        let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{v:.2e}")
    }
}

pub fn run(args: &PlotArgs) -> Result<()> {
    crate::output::refuse_existing("--out", &args.out, args.overwrite)?;
    let series = args
        .metrics
        .iter()
        .map(|m| read_series(m, &args.key, args.smooth).map(|(label, points)| Curve { label, points, band: None }))
        .collect::<Result<Vec<_>>>()?;
    let title = args.title.clone().unwrap_or_else(|| args.key.clone());
    line_chart(&args.out, &title, &args.key, &series, args.log_y, SeriesLabelPosition::UpperRight)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

/// One line of a chart, optionally with a shaded band (e.g. min..max over seeds) around it.
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// (x, low, high).
    pub band: Option<Vec<(f64, f64, f64)>>,
}

/// Draws `curves` against `step` into a PNG.
pub fn line_chart(
    out: &Path,
    title: &str,
    y_desc: &str,
    curves: &[Curve],
    log_y: bool,
    legend: SeriesLabelPosition,
) -> Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("embedded font unreadable"))?;
    // A log axis is a linear axis over log10 values, labelled with the values themselves.
    let to_axis = |y: f64| if log_y { y.log10() } else { y };
    let values = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1).chain(c.band.iter().flatten().flat_map(|b| [b.1, b.2])));
    if log_y && values.clone().any(|y| y <= 0.0) {
        bail!("log y axis: `{y_desc}` has values <= 0");
    }
    let (y_min, y_max) = values
        .map(to_axis)
        .filter(|y| y.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| (lo.min(y), hi.max(y)));
    if !y_min.is_finite() {
        bail!("nothing to plot for `{y_desc}`");
    }
    let x_max = curves.iter().flat_map(|c| c.points.iter().map(|p| p.0)).fold(0f64, f64::max);
    let pad = (y_max - y_min).abs().max(1e-12) * 0.05;
    let (width, height) = (900u32, 560u32);
    let mut rgb = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max.max(1.0), (y_min - pad)..(y_max + pad))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(y_desc)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| short(if log_y { 10f64.powf(*y) } else { *y }))
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, c) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            if let Some(band) = &c.band {
                let outline: Vec<(f64, f64)> = band
                    .iter()
                    .map(|b| (b.0, to_axis(b.2)))
                    .chain(band.iter().rev().map(|b| (b.0, to_axis(b.1))))
                    .collect();
                chart.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.15).filled())))?;
            }
            chart
                .draw_series(LineSeries::new(c.points.iter().map(|&(x, y)| (x, to_axis(y))), color.stroke_width(2)))?
                .label(c.label.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(legend)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()?;
        root.present()?;
    }
    scalelong_data::write_png_rgb(out, width, height, rgb)?;
    Ok(())
}
