//! labctl: the command line of lab operators and trust staff. Parses arguments, runs the command
//! in the library, prints any error once as one line, and exits with its documented code.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = labaid::cli::Args::parse();
    match labaid::cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("labctl: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
