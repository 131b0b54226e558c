//! CoordinatorService: the incident coordinator's overview, and decisions about labs that went
//! dark. Shows no patient data.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{Context, parse_id};
use crate::audit::Action;
use crate::auth::{Principal, Role, caller};
use crate::domain::{
    BoundedText, LabStatus, MAX_NOTE_CHARS, OdsCode, Priority, Request as Job, RequestId,
    RequestState,
};
use crate::engine::Asked;
use crate::error::Error;
use crate::proto;
use crate::proto::coordinator_service_server::CoordinatorService;
use crate::routing::{Command, Reply};
use crate::wire::{lab_to, priority_to, state_to, status_from, status_to, test_codes};

/// The coordinators' service.
#[derive(Debug, Clone)]
pub struct CoordinatorApi {
    ctx: Context,
}

impl CoordinatorApi {
    /// The service over a shared context.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl CoordinatorService for CoordinatorApi {
    async fn get_overview(
        &self,
        request: Request<proto::GetOverviewRequest>,
    ) -> Result<Response<proto::Overview>, Status> {
        let who = caller(&request)?;
        self.ctx
            .audit
            .record(&who, Action::CoordinatorOverview, None)
            .await?;
        let engine = &self.ctx.engine;
        let views = engine.views();
        let waits = views.oldest_waits(engine.now());
        let mut queues: Vec<proto::PriorityQueue> = views
            .waiting()
            .into_iter()
            .map(|(p, waiting)| proto::PriorityQueue {
                priority: priority_to(p) as i32,
                waiting: u32::try_from(waiting).unwrap_or(u32::MAX),
                oldest_wait_seconds: waits
                    .iter()
                    .find(|(q, _)| *q == p)
                    .map_or(0, |(_, w)| *w as u32),
            })
            .collect();
        queues.reverse();
        let labs = views.labs();
        let offers_open = Priority::ALL
            .iter()
            .map(|p| {
                self.ctx
                    .metrics
                    .requests
                    .with_label_values(&[RequestState::Offered.as_str(), p.as_str()])
                    .get()
            })
            .sum::<i64>();
        let mut stranded = Vec::new();
        for lab in labs.iter().filter(|l| l.status == LabStatus::Offline) {
            let mut before = None;
            loop {
                let (jobs, next) = views.list(&lab.config.ods, before, usize::MAX, |r| {
                    r.is_job_of(&lab.config.ods) && r.state == RequestState::Accepted
                });
                stranded.extend(jobs.iter().map(|r| proto::StrandedJob {
                    id: r.id.to_string(),
                    trust: r.trust.to_string(),
                    lab: lab.config.ods.to_string(),
                    priority: priority_to(r.submission.priority) as i32,
                    tests: test_codes(r),
                }));
                match next {
                    Some(n) => before = Some(n),
                    None => break,
                }
            }
        }
        Ok(Response::new(proto::Overview {
            queues,
            offers_open: u32::try_from(offers_open.max(0)).unwrap_or(u32::MAX),
            stranded,
            labs: labs.iter().map(lab_to).collect(),
        }))
    }

    async fn set_lab_status(
        &self,
        request: Request<proto::SetLabStatusRequest>,
    ) -> Result<Response<proto::SetLabStatusResponse>, Status> {
        let who = caller(&request)?;
        let m = request.into_inner();
        let status = status_from(m.status)
            .ok_or_else(|| Error::invalid("status", "must be one of online, draining, offline"))?;
        let (lab, status, withdrawn) =
            set_lab_status(&self.ctx, &who, &m.lab, status, &m.reason).await?;
        Ok(Response::new(proto::SetLabStatusResponse {
            lab: lab.to_string(),
            status: status_to(status) as i32,
            offers_withdrawn: withdrawn,
        }))
    }

    async fn reassign_job(
        &self,
        request: Request<proto::ReassignJobRequest>,
    ) -> Result<Response<proto::ReassignJobResponse>, Status> {
        let who = caller(&request)?;
        let m = request.into_inner();
        let id = parse_id(&m.id)?;
        let request = reassign_job(&self.ctx, &who, id, &m.reason).await?;
        Ok(Response::new(proto::ReassignJobResponse {
            id: id.to_string(),
            state: state_to(request.state) as i32,
            lab: request
                .lab
                .as_ref()
                .filter(|_| request.state == RequestState::Offered)
                .map(ToString::to_string)
                .unwrap_or_default(),
        }))
    }
}

/// Sets `lab`'s status for coordinator `who` and audits it with the `reason` given (optional over
/// gRPC, for callers that predate it): the one path of the gRPC call and the coordinator page.
/// Returns the lab, its status now and the offers withdrawn.
pub(crate) async fn set_lab_status(
    ctx: &Context,
    who: &Principal,
    lab: &str,
    status: LabStatus,
    reason: &str,
) -> Result<(OdsCode, LabStatus, u32), Error> {
    who.require(Role::Coordinator)?;
    let lab = OdsCode::parse(lab).map_err(|e| Error::invalid("lab", e))?;
    let reason = match reason.trim() {
        "" => None,
        r => Some(BoundedText::parse(r, MAX_NOTE_CHARS).map_err(|e| Error::invalid("reason", e))?),
    };
    if ctx.engine.views().lab(&lab).is_none() {
        return Err(Error::NotFound(format!("lab {lab} not found")));
    }
    let asked = Asked {
        who,
        action: Action::CoordinatorLabStatus,
        request: None,
        reason: reason.as_ref().map(BoundedText::as_str),
    };
    let command = Command::SetStatus {
        lab: lab.clone(),
        status,
    };
    let reply = ctx.engine.execute_as(asked, command).await?;
    let Reply::Status { status, withdrawn } = reply else {
        return Err(Error::Internal(format!("unexpected reply {reply:?}")));
    };
    tracing::info!(lab = %lab, status = status.as_str(), withdrawn, "lab status set by a coordinator");
    Ok((lab, status, withdrawn))
}

/// Returns accepted job `id` to the queue for coordinator `who`, with a required `reason`, and
/// audits it: the one path of the gRPC call and the coordinator page.
pub(crate) async fn reassign_job(
    ctx: &Context,
    who: &Principal,
    id: RequestId,
    reason: &str,
) -> Result<Arc<Job>, Error> {
    who.require(Role::Coordinator)?;
    if reason.trim().is_empty() {
        return Err(Error::invalid(
            "reason",
            "is required: say why the job is reassigned",
        ));
    }
    let reason =
        BoundedText::parse(reason, MAX_NOTE_CHARS).map_err(|e| Error::invalid("reason", e))?;
    let asked = Asked {
        who,
        action: Action::CoordinatorReassign,
        request: Some(id),
        reason: Some(reason.as_str()),
    };
    let command = Command::Reassign {
        id,
        reason: reason.clone(),
    };
    let reply = ctx.engine.execute_as(asked, command).await?;
    let Reply::Request { request, .. } = reply else {
        return Err(Error::Internal(format!("unexpected reply {reply:?}")));
    };
    tracing::info!(request.id = %id, "job reassigned by a coordinator");
    Ok(request)
}
