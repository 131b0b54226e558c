//! How handlers record a change: the request updated copy-on-write, events numbered per
//! organisation, and the replies and messages the handlers share.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::Router;
use super::command::{Outcome, Reply};
use crate::domain::{OdsCode, Request, RequestId, Timestamp};
use crate::routing::event::{Event, EventKind, JobEventKind, TrustEventKind};
use crate::routing::rejection::Rejection;

impl Router {
    pub(super) fn update(
        &mut self,
        id: &RequestId,
        now: Timestamp,
        out: &mut Outcome,
        f: impl FnOnce(&mut Request),
    ) {
        if let Some(r) = self.state.requests.get_mut(id) {
            let r = Arc::make_mut(r);
            f(r);
            r.updated_at = now;
            out.requests.push(*id);
        }
    }

    fn emit(
        &mut self,
        org: &OdsCode,
        id: &RequestId,
        kind: EventKind,
        now: Timestamp,
        out: &mut Outcome,
    ) {
        let request = self.state.requests[id].clone();
        let sequence = next_sequence(&mut self.state.sequences, org);
        out.events.push(Event {
            org: org.clone(),
            sequence,
            time: now,
            kind,
            request,
        });
    }

    pub(super) fn emit_trust(
        &mut self,
        id: &RequestId,
        kind: TrustEventKind,
        now: Timestamp,
        out: &mut Outcome,
    ) {
        let request = self.state.requests[id].clone();
        let sequence = next_sequence(&mut self.state.sequences, &request.trust);
        out.events.push(Event {
            org: request.trust.clone(),
            sequence,
            time: now,
            kind: EventKind::Trust(kind),
            request,
        });
    }

    pub(super) fn emit_lab(
        &mut self,
        lab: &OdsCode,
        id: &RequestId,
        kind: JobEventKind,
        now: Timestamp,
        out: &mut Outcome,
    ) {
        self.emit(lab, id, EventKind::Lab(kind), now, out);
    }

    pub(super) fn reply(&self, id: &RequestId) -> Reply {
        Reply::Request {
            request: self.state.requests[id].clone(),
            replayed: false,
        }
    }
}

/// The next number in `org`'s event sequence. Looks up before inserting: `entry` would clone the
/// code for every event.
fn next_sequence(sequences: &mut FxHashMap<OdsCode, u64>, org: &OdsCode) -> u64 {
    match sequences.get_mut(org) {
        Some(seq) => {
            *seq += 1;
            *seq
        }
        None => {
            sequences.insert(org.clone(), 1);
            1
        }
    }
}

pub(super) fn not_found(what: &str, id: &RequestId) -> Rejection {
    Rejection::NotFound(format!("{what} {id} not found"))
}

/// A short duration for messages, e.g. `40 s` or `3 min`.
pub fn human_duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}
