//! Heat maps: one panel per group (a scaling mode), a value per cell of a two-axis grid, drawn
//! with one colour scale for all panels and the value written in each cell.

use std::path::Path;

use anyhow::{bail, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::plot::{short, FONT};

/// One panel: `values[row][col]` (`None` draws a grey cell), with `notes[row][col]` written under
/// the value (e.g. "diverged"; a cell with neither value nor note had no run).
pub struct Panel {
    pub title: String,
    pub values: Vec<Vec<Option<f64>>>,
    pub notes: Vec<Vec<String>>,
}

/// The grid's axes: names and the labels of the columns (x) and rows (y, first row at the bottom).
pub struct Axes<'a> {
    pub x_desc: &'a str,
    pub x_labels: &'a [String],
    pub y_desc: &'a str,
    pub y_labels: &'a [String],
}

/// Draws `panels` side by side into a PNG; the colour runs from the smallest to the largest finite
/// value of all panels (on a log scale with `log`), dark (viridis purple) to light (yellow).
pub fn heat_map(out: &Path, title: &str, axes: &Axes, panels: &[Panel], log: bool) -> Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("embedded font unreadable"))?;
    let (cols, rows) = (axes.x_labels.len(), axes.y_labels.len());
    if panels.is_empty() || cols == 0 || rows == 0 {
        bail!("heat map {title}: nothing to draw");
    }
    let scale = |v: f64| if log { v.log10() } else { v };
    let finite: Vec<f64> = panels
        .iter()
        .flat_map(|p| p.values.iter().flatten().flatten())
        .map(|v| scale(*v))
        .filter(|v| v.is_finite())
        .collect();
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (panel_w, height) = (120 + 110 * cols as u32, 130 + 70 * rows as u32);
    let width = panel_w * panels.len() as u32;
    let mut rgb = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 22))?;
        for (panel, area) in panels.iter().zip(root.split_evenly((1, panels.len()))) {
            let mut chart = ChartBuilder::on(&area)
                .caption(&panel.title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(45)
                .y_label_area_size(60)
                // Cell k spans [2k, 2k + 2] with its tick at 2k + 1: plotters' segmented axis maps
                // a one-value range (a single row or column) to one pixel.
                .build_cartesian_2d(
                    (0..2 * cols as i32).with_key_points(centres(cols)),
                    (0..2 * rows as i32).with_key_points(centres(rows)),
                )?;
            let label = |labels: &[String], v: &i32| labels.get((v / 2) as usize).cloned().unwrap_or_default();
            chart
                .configure_mesh()
                .disable_mesh()
                .x_desc(axes.x_desc)
                .y_desc(axes.y_desc)
                .x_label_formatter(&|v| label(axes.x_labels, v))
                .y_label_formatter(&|v| label(axes.y_labels, v))
                .label_style(("sans-serif", 14))
                .draw()?;
            for r in 0..rows {
                for c in 0..cols {
                    let v = panel
                        .values
                        .get(r)
                        .and_then(|row| row.get(c))
                        .copied()
                        .flatten()
                        .filter(|v| scale(*v).is_finite());
                    let h = v.map(|v| if hi > lo { (scale(v) - lo) / (hi - lo) } else { 0.5 });
                    let fill = h.map_or(RGBColor(200, 200, 200), |h| ViridisRGB.get_color(h as f32));
                    let (x, y) = (2 * c as i32, 2 * r as i32);
                    chart.draw_series(std::iter::once(Rectangle::new([(x, y), (x + 2, y + 2)], fill.filled())))?;
                    let ink = if h.is_some_and(|h| h > 0.6) { BLACK } else { WHITE };
                    let note = panel.notes.get(r).and_then(|row| row.get(c)).cloned().unwrap_or_default();
                    // The value, and the note on a second line below it.
                    let lines: Vec<String> =
                        v.map(short).into_iter().chain((!note.is_empty()).then_some(note)).collect();
                    let style = ("sans-serif", 14).into_font().color(&ink).pos(Pos::new(HPos::Center, VPos::Center));
                    let top = -8 * (lines.len() as i32 - 1);
                    for (k, line) in lines.into_iter().enumerate() {
                        let text =
                            EmptyElement::at((x + 1, y + 1)) + Text::new(line, (0, top + 16 * k as i32), style.clone());
                        chart.draw_series(std::iter::once(text))?;
                    }
                }
            }
        }
        root.present()?;
    }
    scalelong_data::write_png_rgb(out, width, height, rgb)?;
    Ok(())
}

/// The centres of `n` cells two units wide from 0: where each cell's tick and label go.
fn centres(n: usize) -> Vec<i32> {
    (0..n as i32).map(|k| 2 * k + 1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Share of the image's pixels in a saturated colour (the cells; text, axes and the grey of
    /// missing cells are not).
    fn coloured_share(path: &Path) -> f64 {
        let img = image::open(path).unwrap().to_rgb8();
        let coloured = img.pixels().filter(|p| p.0.iter().max().unwrap() - p.0.iter().min().unwrap() > 60).count();
        coloured as f64 / (img.width() * img.height()) as f64
    }

    fn panel(title: &str, values: Vec<Vec<Option<f64>>>) -> Panel {
        let notes = values.iter().map(|row| vec![String::new(); row.len()]).collect();
        Panel { title: title.into(), values, notes }
    }

    #[test]
    fn cells_are_filled_for_one_row_or_one_column() {
        let dir = tempfile::tempdir().unwrap();
        let labels = |n: usize| (0..n).map(|k| k.to_string()).collect::<Vec<_>>();
        for (rows, cols) in [(1, 3), (3, 1), (2, 2)] {
            let (x, y) = (labels(cols), labels(rows));
            let axes = Axes { x_desc: "x", x_labels: &x, y_desc: "y", y_labels: &y };
            let values: Vec<Vec<Option<f64>>> =
                (0..rows).map(|r| (0..cols).map(|c| Some((1 + r * cols + c) as f64)).collect()).collect();
            let out = dir.path().join(format!("{rows}x{cols}.png"));
            heat_map(&out, "t", &axes, &[panel("a", values.clone()), panel("b", values)], true).unwrap();
            // The plot area is about half the image; a collapsed row or column draws almost nothing.
            let share = coloured_share(&out);
            assert!(share > 0.25, "{rows}x{cols}: {share}");
        }
    }
}
