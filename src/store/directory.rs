//! The directory a data directory was made for: the catalogue, trusts, labs, leases and retention.
//! Snapshots carry it: the journal after a snapshot is replayed under it, and a changed config is
//! applied only after that replay.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::domain::{Catalogue, OdsCode};
use crate::routing::{LabConfig, Leases, Router};

/// The configured directory, in a canonical order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Directory {
    /// The test catalogue.
    pub catalogue: Arc<Catalogue>,
    /// Trusts and their names.
    pub trusts: BTreeMap<OdsCode, String>,
    /// Labs as configured (not their live capacity or status), by ODS code.
    pub labs: Vec<LabConfig>,
    /// Offer leases.
    pub leases: Leases,
    /// How long finished requests are kept, in milliseconds.
    pub retention_ms: i64,
}

impl From<&Config> for Directory {
    fn from(config: &Config) -> Self {
        let mut labs = config.labs.clone();
        labs.sort_by(|a, b| a.ods.cmp(&b.ods));
        Self {
            catalogue: config.catalogue.clone(),
            trusts: config.trusts.clone(),
            labs,
            leases: config.leases,
            retention_ms: config.retention_ms,
        }
    }
}

impl Directory {
    /// A core with this directory and no requests.
    pub fn router(&self) -> Router {
        Router::new(
            self.catalogue.clone(),
            self.trusts.clone(),
            self.labs.clone(),
            self.leases,
            self.retention_ms,
        )
    }

    /// What differs from `other`, one phrase each (empty when they are the same).
    pub fn differences(&self, other: &Directory) -> Vec<String> {
        let mut out = Vec::new();
        if self.catalogue != other.catalogue {
            out.push("the test catalogue".to_string());
        }
        if self.trusts != other.trusts {
            out.push("the trusts".to_string());
        }
        let codes = |d: &Directory| d.labs.iter().map(|l| l.ods.clone()).collect::<Vec<_>>();
        if codes(self) != codes(other) {
            out.push("the set of labs".to_string());
        } else {
            for (a, b) in self.labs.iter().zip(&other.labs) {
                if a != b {
                    out.push(format!("lab {}", a.ods));
                }
            }
        }
        if self.leases != other.leases {
            out.push("the offer leases".to_string());
        }
        if self.retention_ms != other.retention_ms {
            out.push("retention_days".to_string());
        }
        out
    }
}
