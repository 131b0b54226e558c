//! labaid-edge: connects a trust's systems to labaid in their own standards: HL7 v2 orders and
//! results over MLLP, and a FHIR R4 facade, either or both in one process. Parses arguments,
//! sets up logging and runs the library until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = labaid::edge::Args::parse();
    labaid::telemetry::init(args.log_format());
    let config = match args.validate(&|name| std::env::var(name).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("labaid-edge: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("labaid-edge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(labaid::edge::run(config, labaid::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "labaid-edge stopped");
            eprintln!("labaid-edge: {e}");
            ExitCode::FAILURE
        }
    }
}
