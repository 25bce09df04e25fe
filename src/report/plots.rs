//! Figures of training histories, as PNG and SVG: loss and accuracy per epoch (train dashed, test
//! solid, one colour per run), a zoom on the test loss around its minimum with the best epoch
//! marked, and the train/test gap per epoch. Colours are the Okabe-Ito palette, which reads for
//! colour-blind people.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use super::analysis;
use crate::error::{Error, Result};
use crate::fsio;
use crate::training::History;

/// Okabe-Ito colours (black last).
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(230, 159, 0),   // orange
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(240, 228, 66),  // yellow
    RGBColor(0, 0, 0),       // black
];

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 1000;
const FONT: &str = "sans-serif";

/// One run to draw.
pub struct Series<'a> {
    pub label: &'a str,
    pub history: &'a History,
}

fn register_font() {
    static FONT_ONCE: Once = Once::new();
    FONT_ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            let bytes = match style {
                FontStyle::Bold => dejavu::sans::bold(),
                _ => dejavu::sans::regular(),
            };
            let _ = plotters::style::register_font(FONT, style, bytes);
        }
    });
}

/// Draws the four-panel figure for `series` into `<stem>.png` and `<stem>.svg` (atomically).
/// Returns the two paths.
pub fn write_figure(series: &[Series], title: &str, stem: &Path) -> Result<Vec<PathBuf>> {
    register_font();
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    write_png(series, title, &png)?;
    write_svg(series, title, &svg)?;
    Ok(vec![png, svg])
}

/// Draws the figure as a PNG file.
pub fn write_png(series: &[Series], title: &str, path: &Path) -> Result<()> {
    register_font();
    let tmp = fsio::temp_path(path);
    let drawn = {
        let root = BitMapBackend::new(&tmp, (WIDTH, HEIGHT)).into_drawing_area();
        draw(root, series, title)
    };
    finish_png(drawn, &tmp, path)
}

/// Draws the figure as an SVG file.
pub fn write_svg(series: &[Series], title: &str, path: &Path) -> Result<()> {
    register_font();
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (WIDTH, HEIGHT)).into_drawing_area();
        draw(root, series, title).map_err(|m| Error::io(path, std::io::Error::other(m)))?;
    }
    fsio::write_text(path, &text)
}

/// The value range of `values`, padded by 5% (and never empty).
fn padded(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    (lo - pad)..(hi + pad)
}

/// Tick labels: epochs as integers, values with a fixed number of decimals (no "-0.00").
fn epoch_label(v: &f64) -> String {
    format!("{:.0}", v)
}

fn value_label(v: &f64) -> String {
    let text = format!("{:.2}", v);
    if text == "-0.00" { "0.00".into() } else { text }
}

/// A panel with epochs on the x axis: caption, axis descriptions, integer epoch ticks.
fn epoch_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: &str,
    x: Range<f64>,
    y: Range<f64>,
    y_desc: &str,
    x_ticks: usize,
) -> std::result::Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String>
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_labels(x_ticks)
        .x_label_formatter(&epoch_label)
        .y_label_formatter(&value_label)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .draw()
        .map_err(err)?;
    Ok(chart)
}

/// The four panels of a figure: loss and accuracy per epoch, the zoom on the best epoch, the gap.
fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    series: &[Series],
    title: &str,
) -> std::result::Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            &format!("{title}  (solid: test, dashed: train)"),
            (FONT, 26).into_font().style(FontStyle::Bold),
        )
        .map_err(err)?;
    let panels = root.split_evenly((2, 2));
    let epochs = series
        .iter()
        .map(|s| s.history.epochs.len())
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let x_ticks = (epochs as usize).min(10);

    // Loss and accuracy per epoch, train dashed and test solid.
    let metrics: [(&str, &str, Pick); 2] = [
        ("Loss per epoch", "loss (cross-entropy)", |r| {
            (r.loss, r.val_loss)
        }),
        ("Accuracy per epoch", "accuracy", |r| (r.acc, r.val_acc)),
    ];
    for (panel, (caption, y_desc, pick)) in panels.iter().zip(metrics) {
        draw_metric(panel, series, caption, y_desc, pick, epochs, x_ticks)?;
    }
    draw_zoom(&panels[2], series, epochs)?;
    draw_gap(&panels[3], series, epochs, x_ticks)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Which pair of values a metric panel plots: (train, test).
type Pick = fn(&crate::training::EpochRecord) -> (f64, f64);

/// One metric per epoch, train dashed and test solid, with a legend.
fn draw_metric<DB: DrawingBackend>(
    panel: &DrawingArea<DB, Shift>,
    series: &[Series],
    caption: &str,
    y_desc: &str,
    pick: Pick,
    epochs: f64,
    x_ticks: usize,
) -> std::result::Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let range = padded(series.iter().flat_map(|s| {
        s.history.epochs.iter().flat_map(move |r| {
            let (a, b) = pick(r);
            [a, b]
        })
    }));
    let mut chart = epoch_chart(panel, caption, 1.0..epochs, range, y_desc, x_ticks)?;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let train: Vec<(f64, f64)> = s
            .history
            .epochs
            .iter()
            .map(|r| (r.epoch as f64, pick(r).0))
            .collect();
        let test: Vec<(f64, f64)> = s
            .history
            .epochs
            .iter()
            .map(|r| (r.epoch as f64, pick(r).1))
            .collect();
        chart
            .draw_series(DashedLineSeries::new(train, 8, 5, color.stroke_width(2)))
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(test, color.stroke_width(2)))
            .map_err(err)?
            .label(s.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(if caption.starts_with("Loss") {
            SeriesLabelPosition::UpperRight
        } else {
            SeriesLabelPosition::LowerRight
        })
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The test loss around its minimum, each run's best epoch marked and named.
fn draw_zoom<DB: DrawingBackend>(
    panel: &DrawingArea<DB, Shift>,
    series: &[Series],
    epochs: f64,
) -> std::result::Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let bests: Vec<(usize, f64)> = series
        .iter()
        .filter_map(|s| s.history.best().map(|b| (b.epoch, b.val_loss)))
        .collect();
    let (lo_e, hi_e) = bests
        .iter()
        .fold((usize::MAX, 0), |(lo, hi), &(e, _)| (lo.min(e), hi.max(e)));
    let window = ((epochs as usize) / 6).max(5);
    let x0 = lo_e.saturating_sub(window).max(1) as f64;
    let x1 = ((hi_e + window) as f64).min(epochs).max(x0 + 1.0);
    let in_window = |e: usize| (e as f64) >= x0 && (e as f64) <= x1;
    let range = padded(series.iter().flat_map(|s| {
        s.history
            .epochs
            .iter()
            .filter(move |r| in_window(r.epoch))
            .map(|r| r.val_loss)
    }));
    let mut chart = epoch_chart(
        panel,
        "Test loss around its minimum (best epoch marked)",
        x0..x1,
        range.clone(),
        "test loss",
        ((x1 - x0) as usize + 1).min(10),
    )?;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let test: Vec<(f64, f64)> = s
            .history
            .epochs
            .iter()
            .filter(|r| in_window(r.epoch))
            .map(|r| (r.epoch as f64, r.val_loss))
            .collect();
        chart
            .draw_series(LineSeries::new(test, color.stroke_width(2)))
            .map_err(err)?;
        if let Some(best) = s.history.best() {
            let (x, y) = (best.epoch as f64, best.val_loss);
            chart
                .draw_series(std::iter::once(DashedPathElement::new(
                    vec![(x, range.start), (x, range.end)],
                    4,
                    4,
                    color.stroke_width(1),
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Circle::new((x, y), 6, color.filled())))
                .map_err(err)?;
            let (px, py) = chart.backend_coord(&(x0, range.end));
            panel
                .draw(&Text::new(
                    format!(
                        "{}: best epoch {} (test loss {:.4})",
                        s.label, best.epoch, best.val_loss
                    ),
                    (
                        px + 12 - panel.get_base_pixel().0,
                        py + 8 + 18 * i as i32 - panel.get_base_pixel().1,
                    ),
                    (FONT, 15).into_font().color(&color),
                ))
                .map_err(err)?;
        }
    }

    Ok(())
}

/// The train/test gap per epoch.
fn draw_gap<DB: DrawingBackend>(
    panel: &DrawingArea<DB, Shift>,
    series: &[Series],
    epochs: f64,
    x_ticks: usize,
) -> std::result::Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let gaps: Vec<Vec<(usize, f64)>> = series.iter().map(|s| analysis::gap(s.history)).collect();
    let mut range = padded(gaps.iter().flatten().map(|&(_, g)| g));
    range.start = range.start.min(0.0);
    let mut chart = epoch_chart(
        panel,
        "Train/test gap: test loss minus train loss",
        1.0..epochs,
        range,
        "loss gap",
        x_ticks,
    )?;
    for (i, g) in gaps.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                g.iter().map(|&(e, v)| (e as f64, v)),
                color.stroke_width(2),
            ))
            .map_err(err)?;
    }
    Ok(())
}

/// The confusion matrix as a heat map (rows: true class, columns: predicted), with counts.
pub fn write_confusion(confusion: &[[usize; 10]; 10], title: &str, path: &Path) -> Result<()> {
    register_font();
    let tmp = fsio::temp_path(path);
    let drawn = (|| -> std::result::Result<(), String> {
        let root = BitMapBackend::new(&tmp, (900, 820)).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<_>| format!("{e}");
        root.fill(&WHITE).map_err(err)?;
        let max = confusion
            .iter()
            .flatten()
            .copied()
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 24))
            .margin(15)
            .x_label_area_size(110)
            .y_label_area_size(110)
            .build_cartesian_2d(-0.5f64..9.5, -0.5f64..9.5)
            .map_err(err)?;
        let names = crate::data::CLASS_NAMES;
        let name_at = |v: f64, flip: bool| -> String {
            let i = v.round() as i64;
            let i = if flip { 9 - i } else { i };
            if (v - v.round()).abs() > 0.01 || !(0..10).contains(&i) {
                return String::new();
            }
            names[i as usize].to_string()
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(20)
            .y_labels(20)
            .x_label_formatter(&|v| name_at(*v, false))
            .y_label_formatter(&|v| name_at(*v, true))
            .x_desc("predicted class")
            .y_desc("true class")
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 16))
            .draw()
            .map_err(err)?;
        for (t, row) in confusion.iter().enumerate() {
            for (p, &count) in row.iter().enumerate() {
                // Viridis-like ramp from white to dark blue, readable in grey.
                let v = (count as f64 / max).sqrt();
                let color = RGBColor(
                    (255.0 * (1.0 - v) + 8.0 * v) as u8,
                    (255.0 * (1.0 - v) + 48.0 * v) as u8,
                    (255.0 * (1.0 - v) + 107.0 * v) as u8,
                );
                let (x, y) = (p as f64, 9.0 - t as f64);
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                        color.filled(),
                    )))
                    .map_err(err)?;
                let text_color = if v > 0.5 { WHITE } else { BLACK };
                chart
                    .draw_series(std::iter::once(Text::new(
                        count.to_string(),
                        (x - 0.2, y + 0.15),
                        (FONT, 14).into_font().color(&text_color),
                    )))
                    .map_err(err)?;
            }
        }
        root.present().map_err(err)
    })();
    finish_png(drawn, &tmp, path)
}

/// A grid of misclassified images (`(pixels, true class, predicted class)`), upscaled, each
/// captioned on two lines: the true class, then "-> predicted" (one line overflowed the cell for
/// long names such as "Ankle boot -> Sneaker").
pub fn write_misclassified(
    examples: &[(&[u8], usize, usize)],
    title: &str,
    path: &Path,
) -> Result<()> {
    register_font();
    const COLS: usize = 8;
    const SCALE: i32 = 3;
    const CELL_WIDTH: i32 = 112;
    const CAPTION_LINE: i32 = 14;
    const CELL_HEIGHT: i32 = 28 * SCALE + 2 * CAPTION_LINE + 8;
    const TOP: i32 = 40;
    let rows = examples.len().div_ceil(COLS).max(1) as i32;
    let tmp = fsio::temp_path(path);
    let drawn = (|| -> std::result::Result<(), String> {
        let size = (COLS as i32 * CELL_WIDTH, rows * CELL_HEIGHT + TOP);
        let root = BitMapBackend::new(&tmp, (size.0 as u32, size.1 as u32)).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<_>| format!("{e}");
        root.fill(&WHITE).map_err(err)?;
        root.draw(&Text::new(title.to_string(), (10, 8), (FONT, 20)))
            .map_err(err)?;
        let names = crate::data::CLASS_NAMES;
        for (k, (pixels, truth, predicted)) in examples.iter().enumerate() {
            let cx = (k % COLS) as i32 * CELL_WIDTH;
            let cy = (k / COLS) as i32 * CELL_HEIGHT + TOP;
            let x0 = cx + (CELL_WIDTH - 28 * SCALE) / 2;
            for (i, &v) in pixels.iter().enumerate() {
                let (px, py) = (x0 + (i % 28) as i32 * SCALE, cy + (i / 28) as i32 * SCALE);
                let shade = 255 - v; // dark on light reads better on a white page
                root.draw(&Rectangle::new(
                    [(px, py), (px + SCALE, py + SCALE)],
                    RGBColor(shade, shade, shade).filled(),
                ))
                .map_err(err)?;
            }
            let below = cy + 28 * SCALE + 4;
            root.draw(&Text::new(
                short(names[*truth]).to_string(),
                (cx + 6, below),
                (FONT, 12).into_font().color(&BLACK),
            ))
            .map_err(err)?;
            root.draw(&Text::new(
                format!("-> {}", short(names[*predicted])),
                (cx + 6, below + CAPTION_LINE),
                (FONT, 12).into_font().color(&PALETTE[1]),
            ))
            .map_err(err)?;
        }
        root.present().map_err(err)
    })();
    finish_png(drawn, &tmp, path)
}

fn short(name: &str) -> &str {
    name.split('/').next().unwrap_or(name)
}

fn finish_png(drawn: std::result::Result<(), String>, tmp: &Path, path: &Path) -> Result<()> {
    match drawn {
        Ok(()) => {
            let file = std::fs::File::open(tmp).map_err(|e| Error::io(tmp, e))?;
            file.sync_all().map_err(|e| Error::io(tmp, e))?;
            fsio::commit(tmp, path)
        }
        Err(message) => {
            let _ = std::fs::remove_file(tmp);
            Err(Error::io(path, std::io::Error::other(message)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misclassified_grid_has_a_two_line_caption_row_under_each_image()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("fmnist-grid-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("grid.png");
        let pixels = [128u8; 784];
        // Nine examples: two rows of eight cells.
        let examples: Vec<(&[u8], usize, usize)> =
            (0..9).map(|k| (&pixels[..], 9, k % 9)).collect();
        write_misclassified(&examples, "grid", &path)?;
        let picture = image::open(&path)?.to_rgb8();
        std::fs::remove_dir_all(&dir)?;
        assert_eq!(picture.dimensions(), (8 * 112, 2 * 120 + 40));
        // The first image (grey 128, upscaled 3x, centred in its 112-pixel cell) ends at row
        // 40 + 84; its two caption lines sit below it and above the next row of images.
        assert_eq!(picture.get_pixel(56, 40 + 42).0, [127, 127, 127]);
        let inked = |rows: std::ops::Range<u32>| {
            rows.flat_map(|y| (0..112).map(move |x| (x, y)))
                .filter(|&(x, y)| picture.get_pixel(x, y).0 != [255, 255, 255])
                .count()
        };
        assert!(inked(40 + 86..40 + 102) > 20, "no first caption line");
        assert!(inked(40 + 102..40 + 118) > 20, "no second caption line");
        assert_eq!(inked(40 + 84..40 + 86), 0);
        Ok(())
    }
}
