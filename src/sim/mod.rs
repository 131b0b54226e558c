//! labaid-sim: the broker's own routing core run in virtual time over a scenario (a directory, a
//! demand, lab behaviour and events), with reports, CSV, plots and an HTML page for an incident
//! team to rehearse the next outage.

pub mod calendar;
pub mod csv;
pub mod demand;
pub mod html;
pub mod output;
pub mod plots;
pub mod record;
pub mod run;
pub mod scenario;
pub mod summary;

use std::path::PathBuf;

pub use run::{Run, run};
pub use scenario::{Scenario, load};
pub use summary::{Summary, summarise};

/// What can go wrong in a simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario file breaks a rule: named by file, line and field.
    #[error("{}:{line}: {field}: {message}", path.display())]
    Scenario {
        /// The file.
        path: PathBuf,
        /// Line, from 1.
        line: usize,
        /// The field at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An output could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A plot could not be drawn.
    #[error("cannot draw {name}: {message}")]
    Plot {
        /// The plot.
        name: String,
        /// Why.
        message: String,
    },
    /// A conservation check failed: a bug in the simulator or the core, never a scenario's fault.
    #[error("conservation check failed: {0}")]
    Conservation(String),
    /// The scenario asks for something the simulator cannot do.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl SimError {
    /// The exit code: 2 for a bad scenario or an unreadable file, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Scenario { .. } | Self::Read { .. } => 2,
            _ => 1,
        }
    }
}
