//! The four plots of a run, each as SVG and PNG: turnaround over time per priority, waiting
//! requests per priority, a lab utilisation heatmap, and expiries and failures over time. Text is
//! drawn with a bundled font (DejaVu Sans) through plotters' pure-Rust glyph renderer, so a PNG
//! needs no system font library.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::domain::{LabStatus, RequestState, Timestamp};

use super::SimError;
use super::calendar::{hour_of_day, weekday, weekday_name};
use super::run::Run;
use super::scenario::{REPORT_ORDER, priority_index};
use super::summary::quantile;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const SIZE: (u32, u32) = (1200, 700);

/// Colours per priority index (routine, urgent, asap, stat).
const PRIORITY_COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
];

fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bundled font is a valid TrueType file; a failure would show as missing text.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// The names of the plot files (without extension), in the order the page shows them.
pub const PLOTS: [&str; 4] = ["turnaround", "waiting", "utilisation", "expiries"];

/// Draws every plot into `dir` as `NAME.svg` and `NAME.png`.
pub fn draw_all(run: &Run, dir: &Path) -> Result<(), SimError> {
    fonts();
    let data = PlotData::new(run);
    for name in PLOTS {
        let svg = dir.join(format!("{name}.svg"));
        let png = dir.join(format!("{name}.png"));
        let err = |message: String| SimError::Plot {
            name: name.to_string(),
            message,
        };
        draw(name, &data, SVGBackend::new(&svg, SIZE).into_drawing_area()).map_err(err)?;
        draw(
            name,
            &data,
            BitMapBackend::new(&png, SIZE).into_drawing_area(),
        )
        .map_err(err)?;
    }
    Ok(())
}

fn draw<DB: DrawingBackend>(
    name: &str,
    d: &PlotData<'_>,
    root: DrawingArea<DB, Shift>,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    match name {
        "turnaround" => turnaround(d, &root),
        "waiting" => waiting(d, &root),
        "utilisation" => utilisation(d, &root),
        _ => expiries(d, &root),
    }?;
    root.present().map_err(|e| e.to_string())
}

/// What the plots share: the time axis and the run. The axis counts hours for runs of two days
/// or less and days beyond, so that its labels fall on round clock times.
struct PlotData<'a> {
    run: &'a Run,
    start: i64,
    /// Hours per unit of the x axis (1 or 24).
    unit: f64,
    /// Length of the x axis, in its units.
    span: f64,
}

impl<'a> PlotData<'a> {
    fn new(run: &'a Run) -> Self {
        let start = run.scenario.start.millis();
        let hours = ((run.ended_at.max(start + run.scenario.duration_ms) - start) as f64
            / 3_600_000.0)
            .ceil()
            .max(1.0);
        let unit = if hours > 48.0 { 24.0 } else { 1.0 };
        Self {
            run,
            start,
            unit,
            span: hours / unit,
        }
    }

    /// Hours since the start.
    fn h(&self, ms: i64) -> f64 {
        (ms - self.start) as f64 / 3_600_000.0
    }

    /// Position on the x axis of an instant.
    fn x(&self, ms: i64) -> f64 {
        self.h(ms) / self.unit
    }

    /// Position on the x axis of an hour since the start.
    fn xh(&self, hours: f64) -> f64 {
        hours / self.unit
    }

    /// A position on the x axis as a day and clock label, e.g. `Mon 08:00`.
    fn label(&self, x: &f64) -> String {
        let t = Timestamp::from_millis(self.start + (x * self.unit * 3_600_000.0).round() as i64);
        format!("{} {:02}:00", weekday_name(weekday(t)), hour_of_day(t))
    }

    /// Scenario events as hours, for the dashed markers.
    fn events(&self) -> Vec<f64> {
        self.run
            .scenario
            .events
            .iter()
            .map(|e| self.x(e.at.millis()))
            .collect()
    }
}

fn e2s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn markers<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    d: &PlotData<'_>,
    ymax: f64,
) -> Result<(), String> {
    let grey = RGBColor(120, 120, 120);
    for x in d.events() {
        chart
            .draw_series(DashedLineSeries::new(
                [(x, 0.0), (x, ymax)],
                6,
                4,
                grey.stroke_width(1),
            ))
            .map_err(e2s)?;
    }
    Ok(())
}

fn turnaround<DB: DrawingBackend>(
    d: &PlotData<'_>,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    let (title, body) = root.split_vertically(40);
    title
        .draw_text(
            "Turnaround (collection to result) per priority: p50 solid, p90 thin, target dashed",
            &("sans-serif", 22).into_font().color(&BLACK),
            (20, 10),
        )
        .map_err(e2s)?;
    let panels = body.split_evenly((2, 2));
    let buckets = (d.span * d.unit).ceil() as usize;
    for (panel, p) in panels.iter().zip(REPORT_ORDER) {
        let i = priority_index(p);
        let mut per_hour: Vec<Vec<f64>> = vec![Vec::new(); buckets + 1];
        for life in d.run.lives.iter().filter(|l| l.priority == p) {
            if let (Some(t), Some(f)) = (life.turnaround_minutes(), life.finished_at) {
                let b = (d.h(f).floor().max(0.0) as usize).min(buckets);
                per_hour[b].push(t / 60.0);
            }
        }
        let mut p50 = Vec::new();
        let mut p90 = Vec::new();
        for (b, v) in per_hour.iter_mut().enumerate() {
            v.sort_by(f64::total_cmp);
            if let (Some(a), Some(c)) = (quantile(v, 0.5), quantile(v, 0.9)) {
                p50.push((d.xh(b as f64 + 0.5), a));
                p90.push((d.xh(b as f64 + 0.5), c));
            }
        }
        let target = d.run.scenario.targets_ms[i] as f64 / 3_600_000.0;
        let ymax = p90
            .iter()
            .map(|x| x.1)
            .fold(target * 1.3, f64::max)
            .max(0.5);
        let colour = PRIORITY_COLOURS[i];
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{} (target {:.0} h)", p.as_str(), target),
                ("sans-serif", 18),
            )
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..d.span, 0.0..ymax)
            .map_err(e2s)?;
        chart
            .configure_mesh()
            .x_labels(8)
            .x_label_formatter(&|h| d.label(h))
            .y_desc("hours")
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(e2s)?;
        markers(&mut chart, d, ymax)?;
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, target), (d.span, target)],
                10,
                6,
                BLACK.stroke_width(2),
            ))
            .map_err(e2s)?;
        chart
            .draw_series(LineSeries::new(p90, colour.stroke_width(1)))
            .map_err(e2s)?;
        chart
            .draw_series(LineSeries::new(p50, colour.stroke_width(3)))
            .map_err(e2s)?;
    }
    Ok(())
}

fn waiting<DB: DrawingBackend>(
    d: &PlotData<'_>,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    let ymax = d
        .run
        .samples
        .iter()
        .flat_map(|s| s.waiting)
        .max()
        .unwrap_or(0)
        .max(5) as f64
        * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(
            "Requests waiting for a lab with room, per priority",
            ("sans-serif", 24),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..d.span, 0.0..ymax)
        .map_err(e2s)?;
    chart
        .configure_mesh()
        .x_labels(12)
        .x_label_formatter(&|h| d.label(h))
        .y_desc("waiting requests")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e2s)?;
    markers(&mut chart, d, ymax)?;
    for p in REPORT_ORDER {
        let i = priority_index(p);
        let colour = PRIORITY_COLOURS[i];
        let points: Vec<(f64, f64)> = d
            .run
            .samples
            .iter()
            .map(|s| (d.x(s.at), f64::from(s.waiting[i])))
            .collect();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(e2s)?
            .label(p.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e2s)?;
    Ok(())
}

/// White (idle) through yellow to dark red (full); grey while offline.
fn heat(u: f64) -> RGBColor {
    let u = u.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64, t: f64| (a + (b - a) * t).round() as u8;
    if u < 0.5 {
        let t = u / 0.5;
        RGBColor(255, lerp(255.0, 210.0, t), lerp(255.0, 60.0, t))
    } else {
        let t = (u - 0.5) / 0.5;
        RGBColor(
            lerp(255.0, 150.0, t),
            lerp(210.0, 0.0, t),
            lerp(60.0, 20.0, t),
        )
    }
}

fn utilisation<DB: DrawingBackend>(
    d: &PlotData<'_>,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    let labs = &d.run.scenario.labs;
    let n = labs.len();
    let (main, legend) = root.split_horizontally(SIZE.0 - 110);
    let mut chart = ChartBuilder::on(&main)
        .caption(
            "Lab utilisation: share of each lab's busiest test's capacity in use (grey: offline)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..d.span, 0.0..n as f64)
        .map_err(e2s)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(12)
        .x_label_formatter(&|h| d.label(h))
        .y_labels(0)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e2s)?;
    // One cell per sample step and lab; the lab listed first is drawn at the top.
    let step = d.xh(f64::from(d.run.scenario.sample_minutes) / 60.0);
    let cells = d.run.samples.iter().flat_map(|s| {
        (0..n).map(move |i| {
            let x = d.x(s.at);
            let row = (n - 1 - i) as f64;
            let colour = if s.status[i] == LabStatus::Offline {
                RGBColor(170, 170, 170)
            } else {
                heat(s.utilisation(i))
            };
            Rectangle::new([(x, row + 0.05), (x + step, row + 0.95)], colour.filled())
        })
    });
    chart.draw_series(cells).map_err(e2s)?;
    // Lab names beside their rows, left of the plot, where the chart maps each row's middle.
    let style = ("sans-serif", 16).into_font().color(&BLACK);
    for (i, l) in labs.iter().enumerate() {
        let (_, y) = chart.backend_coord(&(0.0, (n - 1 - i) as f64 + 0.5));
        main.draw_text(l.ods.as_str(), &style, (18, y - 8))
            .map_err(e2s)?;
    }
    let legend = legend.margin(60, 60, 10, 10);
    let (_, lh) = legend.dim_in_pixel();
    let lh = lh.max(1);
    for y in 0..lh {
        let u = 1.0 - f64::from(y) / f64::from(lh);
        legend
            .draw(&Rectangle::new(
                [(10, y as i32), (40, y as i32 + 1)],
                heat(u).filled(),
            ))
            .map_err(e2s)?;
    }
    let style = ("sans-serif", 14).into_font().color(&BLACK);
    for (u, label) in [(1.0, "100%"), (0.5, "50%"), (0.0, "0%")] {
        let y = ((1.0 - u) * f64::from(lh - 1)) as i32;
        legend
            .draw_text(label, &style, (45, y.max(0)))
            .map_err(e2s)?;
    }
    Ok(())
}

fn expiries<DB: DrawingBackend>(
    d: &PlotData<'_>,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    let buckets = (d.span * d.unit).ceil() as usize + 1;
    let mut expired = vec![0u32; buckets];
    let mut failed = vec![0u32; buckets];
    for life in &d.run.lives {
        let Some(f) = life.finished_at else { continue };
        let b = (d.h(f).floor().max(0.0) as usize).min(buckets - 1);
        match life.state {
            RequestState::Expired => expired[b] += 1,
            RequestState::Failed => failed[b] += 1,
            _ => {}
        }
    }
    let ymax = expired
        .iter()
        .zip(&failed)
        .map(|(a, b)| a + b)
        .max()
        .unwrap_or(0)
        .max(4) as f64
        * 1.15;
    let mut chart = ChartBuilder::on(root)
        .caption(
            "Samples to recollect per hour: expired before any lab could finish (red), unusable at the lab (orange)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..d.span, 0.0..ymax)
        .map_err(e2s)?;
    chart
        .configure_mesh()
        .x_labels(12)
        .x_label_formatter(&|h| d.label(h))
        .y_desc("samples per hour")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e2s)?;
    markers(&mut chart, d, ymax)?;
    let red = RGBColor(214, 39, 40);
    let orange = RGBColor(255, 160, 60);
    chart
        .draw_series(
            expired
                .iter()
                .enumerate()
                .filter(|(_, v)| **v > 0)
                .map(|(b, v)| {
                    Rectangle::new(
                        [(d.xh(b as f64), 0.0), (d.xh(b as f64 + 0.9), f64::from(*v))],
                        red.filled(),
                    )
                }),
        )
        .map_err(e2s)?
        .label("expired")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], red.filled()));
    chart
        .draw_series(
            failed
                .iter()
                .enumerate()
                .filter(|(_, v)| **v > 0)
                .map(|(b, v)| {
                    let base = f64::from(expired[b]);
                    Rectangle::new(
                        [
                            (d.xh(b as f64), base),
                            (d.xh(b as f64 + 0.9), base + f64::from(*v)),
                        ],
                        orange.filled(),
                    )
                }),
        )
        .map_err(e2s)?
        .label("failed (haemolysed, insufficient)")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], orange.filled()));
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e2s)?;
    Ok(())
}
