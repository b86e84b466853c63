//! PNG plots for the report: per-class accuracy of every model, residual norms on the forget
//! vs retain set, loss curves. Rendered in memory (text in the embedded DejaVu Sans, so no
//! system fonts are needed) and written atomically.

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::Report;

const W: u32 = 900;
const H: u32 = 500;
// matplotlib's tab10.
const COLOURS: [RGBColor; 10] = [
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
];

fn font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // DejaVu Sans (crates/rfa/assets, free licence in DejaVuSans.LICENSE).
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            include_bytes!("../assets/DejaVuSans.ttf"),
        );
    });
}

fn e<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("plotting: {err:?}")
}

fn save(buf: Vec<u8>, path: &Path) -> Result<()> {
    let img = image::RgbImage::from_raw(W, H, buf)
        .ok_or_else(|| anyhow!("plot buffer has the wrong size"))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    lora_core::tensors::write_atomic(path, &png)?;
    Ok(())
}

/// Test accuracy per class, one bar per model.
pub fn per_class_accuracy(report: &Report, path: &Path) -> Result<()> {
    font();
    let mut buf = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let classes = report.classes.len();
        let mut chart = ChartBuilder::on(&root)
            .caption("Test accuracy per class (%)", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(60)
            .y_label_area_size(45)
            .build_cartesian_2d((0..classes).into_segmented(), 0f64..100f64)
            .map_err(e)?;
        let names = report.classes.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(classes)
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    names.get(*i).map(|n| n.chars().take(11).collect()).unwrap_or_default()
                }
                SegmentValue::Last => String::new(),
            })
            .y_desc("accuracy (%)")
            .draw()
            .map_err(e)?;
        let k = report.models.len().max(1) as u32;
        for (j, m) in report.models.iter().enumerate() {
            let colour = COLOURS[j % COLOURS.len()];
            let bars = m
                .per_class_test_accuracy
                .iter()
                .enumerate()
                .filter_map(|(c, a)| a.map(|a| (c, a)))
                .map(|(c, a)| {
                    // One segment per class, split into k bars.
                    let mut r = Rectangle::new(
                        [(SegmentValue::Exact(c), 0.0), (SegmentValue::Exact(c + 1), a)],
                        colour.filled(),
                    );
                    let seg = (W - 70) / classes.max(1) as u32;
                    let left = 4 + j as u32 * (seg - 8) / k;
                    r.set_margin(0, 0, left, seg.saturating_sub(left + (seg - 8) / k));
                    r
                });
            chart.draw_series(bars).map_err(e)?.label(m.name.clone()).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
            });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    save(buf, path)
}

/// Histogram of the per-sample residual norm on Df and on Dr (the unlearned model).
pub fn residual_norms(forget: &[f32], retain: &[f32], path: &Path) -> Result<()> {
    font();
    let max = forget.iter().chain(retain).fold(1e-6f32, |m, &v| m.max(v)) as f64 * 1.05;
    let bins = 40usize;
    let hist = |v: &[f32]| {
        let mut h = vec![0f64; bins];
        v.iter().for_each(|&x| h[((x as f64 / max * bins as f64) as usize).min(bins - 1)] += 1.0);
        let n = v.len().max(1) as f64;
        h.iter_mut().for_each(|c| *c /= n);
        h
    };
    let (hf, hr) = (hist(forget), hist(retain));
    let top = hf.iter().chain(&hr).fold(0.0f64, |m, &v| m.max(v)) * 1.1 + 1e-9;
    let mut buf = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Residual-feature norm per sample (mean over adapted layers)",
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..max, 0f64..top)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("mean ||r_l||")
            .y_desc("share of samples")
            .draw()
            .map_err(e)?;
        for (j, (h, name)) in [(hr, "retain set Dr"), (hf, "forget set Df")].into_iter().enumerate()
        {
            let colour = COLOURS[j];
            let w = max / bins as f64;
            chart
                .draw_series(h.into_iter().enumerate().map(|(i, v)| {
                    Rectangle::new(
                        [(i as f64 * w, 0.0), ((i + 1) as f64 * w, v)],
                        colour.mix(0.5).filled(),
                    )
                }))
                .map_err(e)?
                .label(name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.mix(0.5).filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    save(buf, path)
}

/// Loss curves: each series is (name, x values, y values).
pub fn loss_curves(
    title: &str,
    x_desc: &str,
    series: &[(String, Vec<f64>, Vec<f64>)],
    path: &Path,
) -> Result<()> {
    font();
    let xmax = series.iter().flat_map(|s| s.1.iter()).fold(1.0f64, |m, &v| m.max(v));
    let ymax = series
        .iter()
        .flat_map(|s| s.2.iter())
        .filter(|v| v.is_finite())
        .fold(1e-9f64, |m, &v| m.max(v))
        * 1.1;
    let mut buf = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(e)?;
        chart.configure_mesh().x_desc(x_desc).y_desc("loss").draw().map_err(e)?;
        for (j, (name, xs, ys)) in series.iter().enumerate() {
            let colour = COLOURS[j % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    xs.iter().copied().zip(ys.iter().copied()),
                    colour.stroke_width(2),
                ))
                .map_err(e)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 14, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    save(buf, path)
}

/// One labelled point per entry (name, x, y), x on a log scale (times span orders of magnitude).
pub fn scatter_log_x(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    points: &[(String, f64, f64)],
    path: &Path,
) -> Result<()> {
    font();
    let xs = points.iter().map(|p| p.1).filter(|x| *x > 0.0 && x.is_finite());
    let (xmin, xmax) = xs.fold((f64::MAX, 0f64), |(a, b), x| (a.min(x), b.max(x)));
    let (xmin, xmax) = if xmax > 0.0 { (xmin / 1.5, xmax * 1.5) } else { (0.1, 10.0) };
    let ymax = points.iter().map(|p| p.2).filter(|v| v.is_finite()).fold(1e-9f64, f64::max) * 1.15;
    let mut buf = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d((xmin..xmax).log_scale(), 0f64..ymax)
            .map_err(e)?;
        chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw().map_err(e)?;
        for (j, (name, x, y)) in points.iter().enumerate() {
            if !(x.is_finite() && y.is_finite() && *x > 0.0) {
                continue;
            }
            let colour = COLOURS[j % COLOURS.len()];
            chart
                .draw_series(std::iter::once(Circle::new((*x, *y), 6, colour.filled())))
                .map_err(e)?
                .label(name.clone())
                .legend(move |(x, y)| Circle::new((x + 6, y), 5, colour.filled()));
            chart
                .draw_series(std::iter::once(Text::new(
                    name.clone(),
                    (*x, *y),
                    ("sans-serif", 13).into_font().color(&BLACK),
                )))
                .map_err(e)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    save(buf, path)
}
