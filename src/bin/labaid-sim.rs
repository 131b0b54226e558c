//! labaid-sim: rehearse an incident with the broker's own routing core in virtual time.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use labaid::sim::{self, SimError, output};

/// Runs a scenario (a TOML file: directory, demand, lab behaviour, events) through labaid's
/// routing core in virtual time, prints the summary and writes CSV files, plots and index.html.
#[derive(Debug, Parser)]
#[command(name = "labaid-sim", version)]
struct Opts {
    /// The scenario file.
    scenario: PathBuf,
    /// Output folder for summary.txt, the CSV files, the plots (SVG and PNG) and index.html.
    #[arg(long, default_value = "sim-out")]
    out: PathBuf,
    /// A second scenario to run and show side by side (written to OUT/a and OUT/b).
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Use this seed instead of the scenario's.
    #[arg(long)]
    seed: Option<u64>,
}

fn run_one(path: &Path, seed: Option<u64>) -> Result<(sim::Run, f64), SimError> {
    let mut scenario = sim::load(path)?;
    if let Some(seed) = seed {
        scenario.seed = seed;
    }
    let total = (scenario.duration_ms + scenario.drain_ms).max(1) as u64;
    // Hidden when stderr is not a terminal, so pipes and CI logs stay clean.
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {percent}% of virtual time") {
        bar.set_style(style);
    }
    bar.set_message(scenario.name.clone());
    let started = Instant::now();
    let run = sim::run(scenario, &mut |done| bar.set_position(done.max(0) as u64));
    bar.finish_and_clear();
    Ok((run?, started.elapsed().as_secs_f64()))
}

fn speed(run: &sim::Run, secs: f64) -> String {
    format!(
        "simulated {} requests ({} core commands) in {secs:.2} s: {:.0} requests/s",
        run.lives.len(),
        run.commands,
        run.lives.len() as f64 / secs.max(1e-9)
    )
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    let result = (|| -> Result<(), SimError> {
        let (a, secs_a) = run_one(&opts.scenario, opts.seed)?;
        match &opts.compare {
            None => {
                let (_, text) = output::write_run(&a, &opts.out)?;
                print!("{text}");
                println!();
                println!("{}", speed(&a, secs_a));
            }
            Some(other) => {
                let (b, secs_b) = run_one(other, opts.seed)?;
                let table = output::write_comparison(&a, &b, &opts.out)?;
                print!("{table}");
                println!();
                println!("A: {}", speed(&a, secs_a));
                println!("B: {}", speed(&b, secs_b));
            }
        }
        println!("wrote {}", opts.out.join("index.html").display());
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("labaid-sim: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
