//! The broker's record of a request: the states of its life cycle, why a lab failed a sample or
//! will not be offered it again, and a lab's status.

use serde::{Deserialize, Serialize};

use super::{NewRequest, Observation, OdsCode, RequestId, Timestamp};

/// Where a request is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RequestState {
    /// Waiting for an eligible lab.
    Queued,
    /// Offered to one lab under a lease.
    Offered,
    /// Accepted by the lab.
    Accepted,
    /// The sample arrived at the lab.
    Received,
    /// Final: results posted.
    Resulted,
    /// Final: the sample could not be used.
    Failed,
    /// Final: no lab could finish before the sample deadline.
    Expired,
    /// Final: cancelled by the trust.
    Cancelled,
}

impl RequestState {
    /// Every state, in life-cycle order.
    pub const ALL: [RequestState; 8] = [
        Self::Queued,
        Self::Offered,
        Self::Accepted,
        Self::Received,
        Self::Resulted,
        Self::Failed,
        Self::Expired,
        Self::Cancelled,
    ];

    /// True for QUEUED and OFFERED: no lab has taken the sample on, so it may still expire.
    pub fn can_expire(self) -> bool {
        matches!(self, Self::Queued | Self::Offered)
    }

    /// True for RESULTED, FAILED, EXPIRED and CANCELLED.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Resulted | Self::Failed | Self::Expired | Self::Cancelled
        )
    }

    /// Lower-case name, e.g. `offered`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Offered => "offered",
            Self::Accepted => "accepted",
            Self::Received => "received",
            Self::Resulted => "resulted",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a lower-case name.
    pub fn parse(raw: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(raw.trim()))
            .ok_or_else(|| {
                "must be one of queued, offered, accepted, received, resulted, failed, expired, cancelled".into()
            })
    }
}

/// Why a lab could not use a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureReason {
    /// Haemolysed.
    Haemolysed,
    /// Too little sample.
    Insufficient,
    /// Unlabelled or mislabelled.
    Unlabelled,
    /// Another reason, explained in the detail.
    Other,
}

impl FailureReason {
    /// Lower-case name, e.g. `haemolysed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Haemolysed => "haemolysed",
            Self::Insufficient => "insufficient",
            Self::Unlabelled => "unlabelled",
            Self::Other => "other",
        }
    }

    /// Parses a lower-case name.
    pub fn parse(raw: &str) -> Result<Self, String> {
        [
            Self::Haemolysed,
            Self::Insufficient,
            Self::Unlabelled,
            Self::Other,
        ]
        .into_iter()
        .find(|r| r.as_str().eq_ignore_ascii_case(raw.trim()))
        .ok_or_else(|| "must be one of haemolysed, insufficient, unlabelled, other".into())
    }
}

/// Whether a lab takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LabStatus {
    /// Takes new offers.
    Online,
    /// Keeps its work, takes no new offers.
    Draining,
    /// Takes no new offers; open offers are withdrawn.
    Offline,
}

impl LabStatus {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Draining => "draining",
            Self::Offline => "offline",
        }
    }

    /// Parses a lower-case name.
    pub fn parse(raw: &str) -> Result<Self, String> {
        [Self::Online, Self::Draining, Self::Offline]
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(raw.trim()))
            .ok_or_else(|| "must be one of online, draining, offline".into())
    }
}

/// Why a lab will not be offered a request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExclusionReason {
    /// The lab declined.
    Declined,
    /// The lease ran out.
    LeaseExpired,
    /// A coordinator took the job away (the lab went offline before the sample arrived).
    Reassigned,
}

/// A lab that will not be offered this request again, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclusion {
    /// The lab.
    pub lab: OdsCode,
    /// Why.
    pub reason: ExclusionReason,
    /// When.
    pub at: Timestamp,
}

/// The broker's record of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Broker-assigned id.
    pub id: RequestId,
    /// Order of submission across the broker; used for listing and tie-breaks.
    pub ordinal: u64,
    /// Requesting trust.
    pub trust: OdsCode,
    /// What the trust submitted.
    pub submission: NewRequest,
    /// When the sample spoils.
    pub deadline: Timestamp,
    /// The latest moment some capable lab could still finish in time; past it the request expires.
    pub expire_at: Timestamp,
    /// Current state.
    pub state: RequestState,
    /// The lab that holds (or last held) the request.
    pub lab: Option<OdsCode>,
    /// When the broker accepted the submission.
    pub submitted_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// While OFFERED: when the lease runs out.
    pub lease_expires_at: Option<Timestamp>,
    /// Predicted result time at the holding lab.
    pub predicted_result_at: Option<Timestamp>,
    /// Courier minutes from the trust to the holding lab.
    pub transport_minutes: u32,
    /// Results once RESULTED.
    pub results: Vec<Observation>,
    /// Reason once FAILED.
    pub failure: Option<FailureReason>,
    /// Last explanation of a change.
    pub status_detail: String,
    /// Labs that will not be offered this request again.
    pub excluded: Vec<Exclusion>,
    /// When the holding lab accepted it.
    pub accepted_at: Option<Timestamp>,
    /// How many offers have been made for it.
    pub offers: u32,
}

impl Request {
    /// True when `lab` was excluded for this request.
    pub fn excludes(&self, lab: &OdsCode) -> bool {
        self.excluded.iter().any(|e| &e.lab == lab)
    }

    /// Whether `lab` may see this request as a job: it holds (or last held) it.
    pub fn is_job_of(&self, lab: &OdsCode) -> bool {
        self.lab.as_ref() == Some(lab)
    }

    /// Whether the lab that holds the job may see patient identifiers: only once it has accepted.
    pub fn patient_visible_to_lab(&self) -> bool {
        self.accepted_at.is_some()
    }
}
