//! PNG charts of a run (feature `chart`): one image per test image, a panel per workload
//! with one bar per cell, stacked pull / create / run medians, like the reference
//! snapshotter's published chart. Drawn with `plotters` on a bitmap, text with DejaVu Sans
//! (Debian's fonts-dejavu-core) through plotters' embedded ab_glyph renderer.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use super::format::secs;
use super::report::Results;
use super::BenchError;

/// The TTF file used for text.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const PULL: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const CREATE: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const RUN: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);

fn register_font() -> Result<(), BenchError> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes =
            std::fs::read(FONT).map_err(|e| format!("{FONT} (package fonts-dejavu-core): {e}"))?;
        let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, leaked)
            .map_err(|_| format!("{FONT} is not a usable font"))
    })
    .clone()
    .map_err(BenchError::Chart)
}

fn chart_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Chart(e.to_string())
}

/// Draws `chart-<image>.png` for every image in `results` into `dir`; returns the files.
pub fn draw(results: &Results, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    register_font()?;
    let mut images: Vec<String> = results.rows().into_iter().map(|r| r.0).collect();
    images.dedup();
    let mut files = Vec::new();
    for image in images {
        let path = dir.join(format!("chart-{image}.png"));
        draw_image(results, &image, &path)?;
        files.push(path);
    }
    Ok(files)
}

/// Draws `chart-<profile>.png` into `dir`: one panel per image × workload of the run, the
/// warm overlayfs baseline as an extra bar (the broad set's chart per link profile).
pub fn draw_profile(results: &Results, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    register_font()?;
    let name = results
        .info
        .profile
        .as_ref()
        .map(|p| p.name.clone())
        .unwrap_or_else(|| "run".into());
    let path = dir.join(format!("chart-{name}.png"));
    let panels = results.rows();
    draw_panels(
        results,
        &panels,
        &format!("link {name}: time to ready, pull + create + run (median seconds)"),
        &path,
    )?;
    Ok(vec![path])
}

fn draw_image(results: &Results, image: &str, path: &Path) -> Result<(), BenchError> {
    let panels: Vec<(String, String)> = results
        .rows()
        .into_iter()
        .filter(|r| r.0 == image)
        .collect();
    draw_panels(
        results,
        &panels,
        &format!("{image}: pull + create + run (median seconds)"),
        path,
    )
}

fn draw_panels(
    results: &Results,
    panels: &[(String, String)],
    heading: &str,
    path: &Path,
) -> Result<(), BenchError> {
    let single_image = panels.windows(2).all(|w| w[0].0 == w[1].0);
    let cols = panels.len().clamp(1, 3);
    let rows = panels.len().div_ceil(cols).max(1);
    let (pw, ph) = (if cols == 1 { 760u32 } else { 560 }, 420u32);
    let root =
        BitMapBackend::new(path, (pw * cols as u32, ph * rows as u32 + 80)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_err)?;
    let (title, body) = root.split_vertically(80);
    let i = &results.info;
    title
        .draw_text(
            heading,
            &("sans-serif", 24).into_font().color(&BLACK),
            (16, 12),
        )
        .map_err(chart_err)?;
    title
        .draw_text(
            &format!(
                "{} ms RTT, {} Mbit/s, n = {}, load avg {} at start; labels: median total",
                i.rtt_ms,
                i.rate_mbit,
                i.runs,
                i.load_start
                    .first()
                    .map(|l| format!("{l:.1}"))
                    .unwrap_or_default()
            ),
            &("sans-serif", 15).into_font().color(&BLACK.mix(0.7)),
            (16, 46),
        )
        .map_err(chart_err)?;
    let legend_x = (pw * cols as u32) as i32 - 290;
    for (k, (name, color)) in [("pull", PULL), ("create", CREATE), ("run", RUN)]
        .iter()
        .enumerate()
    {
        let x = legend_x + 95 * k as i32;
        title
            .draw(&Rectangle::new([(x, 46), (x + 16, 62)], color.filled()))
            .map_err(chart_err)?;
        title
            .draw_text(
                name,
                &("sans-serif", 16).into_font().color(&BLACK),
                (x + 22, 45),
            )
            .map_err(chart_err)?;
    }
    let areas = body.split_evenly((rows, cols));
    for ((image, w), area) in panels.iter().zip(areas.iter()) {
        let caption = if single_image {
            w.clone()
        } else {
            format!("{image} / {w}")
        };
        draw_panel(results, image, w, &caption, area)?;
    }
    root.present().map_err(chart_err)?;
    Ok(())
}

fn draw_panel(
    results: &Results,
    image: &str,
    workload: &str,
    caption: &str,
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
) -> Result<(), BenchError> {
    let med = |c, f: fn(&super::runner::Sample) -> f64| {
        results
            .summary(image, workload, c, |s| Some(f(s)))
            .map(|s| s.median)
            .unwrap_or(0.0)
    };
    // (label, pull, create, run, total)
    let mut bars: Vec<(String, f64, f64, f64, f64)> = results
        .cells
        .iter()
        .map(|c| {
            (
                match (c.snapshotter, c.variant) {
                    (super::plan::Snapshotter::Overlayfs, super::plan::Variant::Orig) => {
                        "overlayfs".to_string()
                    }
                    (super::plan::Snapshotter::Stargz, v) => format!("peer {}", v.tag()),
                    (s, v) => format!("{} {}", s.name(), v.tag()),
                },
                med(*c, |s| s.pull_s),
                med(*c, |s| s.create_s),
                med(*c, |s| s.run_s),
                med(*c, |s| s.total_s),
            )
        })
        .collect();
    let base: Vec<&super::runner::Sample> = results.baseline_samples(image, workload).collect();
    if !base.is_empty() {
        let m = |f: fn(&super::runner::Sample) -> f64| {
            super::stats::Summary::of(base.iter().map(|s| f(s)))
                .map(|s| s.median)
                .unwrap_or(0.0)
        };
        bars.insert(
            0,
            (
                "warm".into(),
                0.0,
                m(|s| s.create_s),
                m(|s| s.run_s),
                m(|s| s.total_s),
            ),
        );
    }
    let ymax = bars
        .iter()
        .map(|b| b.1 + b.2 + b.3)
        .fold(0.0f64, f64::max)
        .max(0.01)
        * 1.18;
    let n = bars.len().max(1) as u32;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(58)
        .y_label_area_size(52)
        .build_cartesian_2d((0u32..n - 1).into_segmented(), 0f64..ymax)
        .map_err(chart_err)?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("seconds")
        .x_labels(bars.len())
        .x_label_style(("sans-serif", 12))
        .y_label_style(("sans-serif", 13))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(chart_err)?;
    let parts: [(&str, RGBColor); 3] = [("pull", PULL), ("create", CREATE), ("run", RUN)];
    for (k, (name, color)) in parts.iter().enumerate() {
        let rects = bars.iter().enumerate().map(|(i, b)| {
            let vals = [b.1, b.2, b.3];
            let y0: f64 = vals[..k].iter().sum();
            let y1 = y0 + vals[k];
            let mut r = Rectangle::new(
                [
                    (SegmentValue::Exact(i as u32), y0),
                    (SegmentValue::Exact(i as u32 + 1), y1),
                ],
                color.filled(),
            );
            r.set_margin(0, 0, 14, 14);
            r
        });
        let _ = name;
        chart.draw_series(rects).map_err(chart_err)?;
    }
    // label: the median total (as in the tables), above the stacked medians
    let totals = bars
        .iter()
        .enumerate()
        .filter(|(_, b)| b.1 + b.2 + b.3 > 0.0)
        .map(|(i, b)| {
            Text::new(
                secs(b.4),
                (
                    SegmentValue::CenterOf(i as u32),
                    b.1 + b.2 + b.3 + ymax * 0.01,
                ),
                ("sans-serif", 14)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        });
    chart.draw_series(totals).map_err(chart_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::plan::{Cell, Snapshotter, Variant};
    use crate::bench::runner::Sample;

    fn sample(workload: &str, cell: Cell, pull: f64) -> Sample {
        Sample {
            round: 0,
            image: "pydeb".into(),
            workload: workload.into(),
            cell,
            ok: true,
            error: None,
            pull_s: pull,
            create_s: 0.1,
            run_s: 0.5,
            first_output_s: Some(pull + 0.5),
            total_s: pull + 0.6,
            link_bytes: 1,
            requests: 1,
            rss_peak_kib: None,
            lazy_mounts: None,
            pull_method: String::new(),
            load1: None,
            baseline: false,
            fetches: Vec::new(),
        }
    }

    #[test]
    fn draws_a_png_per_image() {
        if !Path::new(FONT).exists() {
            eprintln!("SKIP: {FONT} missing (fonts-dejavu-core)");
            return;
        }
        let ov = Cell::new(Snapshotter::Overlayfs, Variant::Orig);
        let peer = Cell::new(Snapshotter::Stargz, Variant::Esgz);
        let r = Results {
            cells: vec![ov, peer],
            samples: vec![
                sample("print", ov, 8.6),
                sample("print", peer, 0.4),
                sample("imports", ov, 8.7),
                sample("imports", peer, 0.5),
            ],
            ..Default::default()
        };
        let wd = crate::workdir::Workdir::new("bchart").unwrap();
        let files = draw(&r, wd.path()).unwrap();
        assert_eq!(files, vec![wd.join("chart-pydeb.png")]);
        let png = std::fs::read(&files[0]).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() > 5000, "a chart with text, not an empty image");
        let mut r = r;
        r.info.profile = Some(crate::bench::plan::LinkProfile::dc());
        let mut warm = sample("print", ov, 0.0);
        warm.baseline = true;
        r.samples.push(warm);
        let files = draw_profile(&r, wd.path()).unwrap();
        assert_eq!(files, vec![wd.join("chart-dc.png")]);
        assert!(std::fs::read(&files[0]).unwrap().len() > 5000);
    }
}
