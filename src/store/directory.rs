//! The directory a data directory was made for: the catalogue, trusts, labs, leases and retention.
//! Snapshots carry it: the journal after a snapshot is replayed under it, and a changed config is
//! applied only after that replay.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::{Catalogue, OdsCode};
use crate::routing::{LabConfig, Leases, Router, RoutingPolicy};

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

impl Directory {
    /// The directory made of these parts, labs put in the canonical order (by ODS code).
    pub fn new(
        catalogue: Arc<Catalogue>,
        trusts: BTreeMap<OdsCode, String>,
        mut labs: Vec<LabConfig>,
        leases: Leases,
        retention_ms: i64,
    ) -> Self {
        labs.sort_by(|a, b| a.ods.cmp(&b.ods));
        Self {
            catalogue,
            trusts,
            labs,
            leases,
            retention_ms,
        }
    }

    /// A core with this directory, no requests, and `policy`.
    pub fn router(&self, policy: Arc<dyn RoutingPolicy>) -> Router {
        Router::with_policy(
            self.catalogue.clone(),
            self.trusts.clone(),
            self.labs.clone(),
            self.leases,
            self.retention_ms,
            policy,
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
