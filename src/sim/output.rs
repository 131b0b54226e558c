//! Writes a run's output folder: summary, CSV files, plots and `index.html`.

use std::path::Path;

use super::run::Run;
use super::summary::{Summary, render, render_comparison, summarise};
use super::{SimError, csv, html, plots};

fn write(path: &Path, text: &str) -> Result<(), SimError> {
    std::fs::write(path, text).map_err(|source| SimError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes everything about `run` into `dir` (created if missing); returns the summary and its
/// text.
pub fn write_run(run: &Run, dir: &Path) -> Result<(Summary, String), SimError> {
    std::fs::create_dir_all(dir).map_err(|source| SimError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let summary = summarise(run);
    let text = render(run, &summary);
    write(&dir.join("summary.txt"), &text)?;
    write(&dir.join("requests.csv"), &csv::requests(run))?;
    write(&dir.join("timeseries.csv"), &csv::timeseries(run))?;
    write(&dir.join("priorities.csv"), &csv::priorities(&summary))?;
    write(&dir.join("labs.csv"), &csv::labs(&summary))?;
    plots::draw_all(run, dir)?;
    write(&dir.join("index.html"), &html::page(run, &text, &summary))?;
    Ok((summary, text))
}

/// Writes two runs into `dir/a` and `dir/b` and the comparison page into `dir`; returns the
/// comparison table.
pub fn write_comparison(a: &Run, b: &Run, dir: &Path) -> Result<String, SimError> {
    let (sa, _) = write_run(a, &dir.join("a"))?;
    let (sb, _) = write_run(b, &dir.join("b"))?;
    let table = render_comparison((a, &sa), (b, &sb));
    write(&dir.join("comparison.txt"), &table)?;
    write(&dir.join("index.html"), &html::comparison(a, b, &table))?;
    Ok(table)
}
