//! LabService: labs watch their offers, work their jobs, and report capacity and status.

use tonic::{Request, Response, Status, Streaming};

use super::{Context, list_filters, page_size, page_token, parse_id};
use crate::audit::Action;
use crate::auth::{Principal, caller};
use crate::domain::{
    BoundedText, Catalogue, FailureReason, MAX_NOTE_CHARS, Observation, OdsCode, RawObservation,
    RequestId, TestCode, TestSet, Violations,
};
use crate::engine::Asked;
use crate::error::Error;
use crate::proto;
use crate::proto::lab_service_server::LabService;
use crate::routing::{Command, Reply};
use crate::wire::{
    KindFilter, capacity_to, failure_from, flag_from, job_event_to, job_to, status_from, status_to,
};

impl super::work::Actor for LabApi {
    async fn act(&self, who: &Principal, action: proto::WorkRequest) -> proto::WorkResult {
        self.act_on(who, action).await
    }
}

/// Highest capacity a lab may set for one test.
const MAX_CAPACITY: u32 = 100_000;
/// Most observations one PostResults may carry.
pub(crate) const MAX_OBSERVATIONS: usize = 256;

/// A PostResults call's observations, each checked against the job's `tests`; every mistake is
/// named in one reply.
pub(crate) fn validate_observations(
    observations: &[proto::Observation],
    tests: &TestSet,
    catalogue: &Catalogue,
) -> Result<Vec<Observation>, Error> {
    let mut v = Violations::default();
    let obs: Vec<Observation> = observations
        .iter()
        .enumerate()
        .filter_map(|(i, o)| {
            let raw = RawObservation {
                test: &o.test,
                analyte: &o.analyte,
                value: &o.value,
                unit: &o.unit,
                reference_range: &o.reference_range,
                flag: flag_from(o.flag),
            };
            Observation::validate(
                &format!("observations[{i}]"),
                &raw,
                tests,
                catalogue,
                &mut v,
            )
        })
        .collect();
    if v.is_empty() {
        Ok(obs)
    } else {
        Err(Error::InvalidArgument(v))
    }
}

/// The labs' service.
#[derive(Debug, Clone)]
pub struct LabApi {
    ctx: Context,
}

impl LabApi {
    /// The service over a shared context.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    /// The calling lab, heard from now (every call is a heartbeat).
    fn lab<T>(&self, request: &Request<T>) -> Result<Principal, Error> {
        let who = caller(request)?;
        self.ctx.presence.touch(&who.org, self.ctx.engine.now());
        Ok(who)
    }

    /// Opens the lab's event stream (WatchOffers, or the first message of a Work stream).
    async fn watch(
        &self,
        who: &Principal,
        m: &proto::WatchOffersRequest,
    ) -> Result<super::EventStream<proto::JobEvent>, Error> {
        let kinds = KindFilter::job_kinds(&m.kinds)?;
        let slot = self.ctx.watches.acquire(&who.org)?;
        self.ctx
            .audit
            .record(who, Action::OffersWatch, None)
            .await?;
        let log = self.ctx.engine.views().log(&who.org);
        let present = self.ctx.presence.watching(&who.org, self.ctx.engine.now());
        Ok(super::watch::stream(
            log,
            m.after_sequence,
            (slot, present),
            self.ctx.shutdown.clone(),
            move |e| job_event_to(e, kinds),
        ))
    }

    /// Runs one action of a Work stream as its call would, charged to the lab's rate limit as a
    /// call is.
    async fn act_on(&self, who: &Principal, m: proto::WorkRequest) -> proto::WorkResult {
        use proto::work_request::Action as Do;
        let name = match &m.action {
            Some(Do::Watch(_)) => "watch",
            Some(Do::Accept(_)) => "accept",
            Some(Do::Decline(_)) => "decline",
            Some(Do::Receive(_)) => "receive",
            Some(Do::PostResults(_)) => "post_results",
            Some(Do::Fail(_)) => "fail",
            None => "none",
        };
        let outcome = async {
            self.ctx.auth.charge(&who.org)?;
            self.ctx.presence.touch(&who.org, self.ctx.engine.now());
            match m.action {
                Some(Do::Accept(a)) => self.accept(who, a).await.map(Some),
                Some(Do::Decline(a)) => self.decline(who, a).await.map(|_| None),
                Some(Do::Receive(a)) => self.receive(who, a).await.map(Some),
                Some(Do::PostResults(a)) => self.post(who, a).await.map(Some),
                Some(Do::Fail(a)) => self.fail(who, a).await.map(Some),
                Some(Do::Watch(_)) => Err(Error::invalid(
                    "action",
                    "watch may only be the first message of a Work stream",
                )),
                None => Err(Error::invalid("action", "is required")),
            }
        }
        .await;
        super::work::answer(m.tag, name, outcome, &self.ctx.metrics)
    }

    /// Runs `command` on the job `id` as `who`, audited as `action`.
    async fn job_command(
        &self,
        who: &Principal,
        action: Action,
        id: RequestId,
        command: Command,
    ) -> Result<proto::Job, Error> {
        let asked = Asked {
            who,
            action,
            request: Some(id),
            reason: None,
        };
        match self.ctx.engine.execute_as(asked, command).await? {
            Reply::Request { request, .. } => Ok(job_to(&request)),
            other => Err(Error::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Accepts an open offer (AcceptJob, or an action on a Work stream).
    async fn accept(
        &self,
        who: &Principal,
        m: proto::AcceptJobRequest,
    ) -> Result<proto::Job, Error> {
        let id = parse_id(&m.id)?;
        let job = self
            .job_command(
                who,
                Action::JobAccept,
                id,
                Command::Accept {
                    lab: who.org.clone(),
                    id,
                },
            )
            .await?;
        tracing::debug!(request.id = %id, org = %who.org, "job accepted");
        Ok(job)
    }

    /// Declines an open offer.
    async fn decline(
        &self,
        who: &Principal,
        m: proto::DeclineJobRequest,
    ) -> Result<proto::DeclineJobResponse, Error> {
        let id = parse_id(&m.id)?;
        if m.reason.trim().is_empty() {
            return Err(Error::invalid(
                "reason",
                "is required: say why the lab declines",
            ));
        }
        let reason = BoundedText::parse(&m.reason, MAX_NOTE_CHARS)
            .map_err(|e| Error::invalid("reason", e))?;
        let asked = Asked {
            who,
            action: Action::JobDecline,
            request: Some(id),
            reason: None,
        };
        self.ctx
            .engine
            .execute_as(
                asked,
                Command::Decline {
                    lab: who.org.clone(),
                    id,
                    reason,
                },
            )
            .await?;
        tracing::info!(request.id = %id, org = %who.org, "job declined");
        Ok(proto::DeclineJobResponse { id: id.to_string() })
    }

    /// Records that an accepted job's sample arrived.
    async fn receive(
        &self,
        who: &Principal,
        m: proto::ReceiveSampleRequest,
    ) -> Result<proto::Job, Error> {
        let id = parse_id(&m.id)?;
        let job = self
            .job_command(
                who,
                Action::JobReceive,
                id,
                Command::Receive {
                    lab: who.org.clone(),
                    id,
                },
            )
            .await?;
        Ok(job)
    }

    /// Posts a received job's results.
    async fn post(
        &self,
        who: &Principal,
        m: proto::PostResultsRequest,
    ) -> Result<proto::Job, Error> {
        let id = parse_id(&m.id)?;
        if m.observations.len() > MAX_OBSERVATIONS {
            return Err(Error::invalid(
                "observations",
                format!("at most {MAX_OBSERVATIONS} per call"),
            ));
        }
        let views = self.ctx.engine.views();
        // Validate against the job's tests only when the caller holds the job; otherwise the
        // sequencer answers NOT_FOUND (or why the offer was lost) before looking at results.
        let observations = match views.request(&id).filter(|r| r.is_job_of(&who.org)) {
            Some(job) => {
                validate_observations(&m.observations, &job.submission.tests, views.catalogue())?
            }
            None => Vec::new(),
        };
        let job = self
            .job_command(
                who,
                Action::JobResults,
                id,
                Command::PostResults {
                    lab: who.org.clone(),
                    id,
                    observations,
                },
            )
            .await?;
        tracing::debug!(request.id = %id, org = %who.org, "results posted");
        Ok(job)
    }

    /// Fails a job whose sample cannot be used.
    async fn fail(&self, who: &Principal, m: proto::FailJobRequest) -> Result<proto::Job, Error> {
        let id = parse_id(&m.id)?;
        let reason = failure_from(m.reason).ok_or_else(|| {
            Error::invalid(
                "reason",
                "must be one of haemolysed, insufficient, unlabelled, other",
            )
        })?;
        let detail = BoundedText::parse(&m.detail, MAX_NOTE_CHARS)
            .map_err(|e| Error::invalid("detail", e))?;
        if reason == FailureReason::Other && detail.as_str().trim().is_empty() {
            return Err(Error::invalid(
                "detail",
                "is required when the reason is other",
            ));
        }
        let job = self
            .job_command(
                who,
                Action::JobFail,
                id,
                Command::Fail {
                    lab: who.org.clone(),
                    id,
                    reason,
                    detail,
                },
            )
            .await?;
        tracing::info!(request.id = %id, org = %who.org, reason = reason.as_str(), "job failed");
        Ok(job)
    }

    fn capacity(&self, lab: &OdsCode) -> Result<proto::Capacity, Error> {
        let state = self.ctx.engine.views().lab(lab).ok_or_else(|| {
            Error::PermissionDenied(format!("{lab} is not a lab in the directory"))
        })?;
        Ok(proto::Capacity {
            lab: lab.to_string(),
            tests: capacity_to(&state),
        })
    }
}

#[tonic::async_trait]
impl LabService for LabApi {
    type WatchOffersStream = super::EventStream<proto::JobEvent>;

    async fn watch_offers(
        &self,
        request: Request<proto::WatchOffersRequest>,
    ) -> Result<Response<Self::WatchOffersStream>, Status> {
        let who = self.lab(&request)?;
        Ok(Response::new(self.watch(&who, request.get_ref()).await?))
    }

    type WorkStream = super::work::WorkStream;

    async fn work(
        &self,
        request: Request<Streaming<proto::WorkRequest>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let who = self.lab(&request)?;
        let mut inbound = request.into_inner();
        let Some(proto::work_request::Action::Watch(watch)) =
            inbound.message().await?.and_then(|m| m.action)
        else {
            return Err(Error::invalid(
                "action",
                "the first message of a Work stream must be watch",
            )
            .into());
        };
        let events = self.watch(&who, &watch).await?;
        Ok(Response::new(super::work::serve(
            self.clone(),
            who,
            inbound,
            events,
        )))
    }

    async fn list_jobs(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let who = self.lab(&request)?;
        let m = request.into_inner();
        let (states, priorities) = list_filters(&m.states, &m.priorities)?;
        let limit = page_size(m.page_size)?;
        let before = page_token(&m.page_token)?;
        let (page, next) = self.ctx.engine.views().list(&who.org, before, limit, |r| {
            r.is_job_of(&who.org)
                && (states.is_empty() || states.contains(&r.state))
                && (priorities.is_empty() || priorities.contains(&r.submission.priority))
        });
        let seen = page.iter().filter(|r| r.patient_visible_to_lab());
        self.ctx
            .audit
            .record_list(&who, Action::JobList, seen.map(|r| r.id))
            .await?;
        Ok(Response::new(proto::ListJobsResponse {
            jobs: page.iter().map(|r| job_to(r)).collect(),
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let who = self.lab(&request)?;
        let id = parse_id(&request.get_ref().id)?;
        let job = self
            .ctx
            .engine
            .views()
            .request(&id)
            .filter(|r| r.is_job_of(&who.org))
            .ok_or_else(|| Error::NotFound(format!("job {id} not found")))?;
        if job.patient_visible_to_lab() {
            self.ctx
                .audit
                .record(&who, Action::JobGet, Some(&id))
                .await?;
        }
        Ok(Response::new(job_to(&job)))
    }

    async fn accept_job(
        &self,
        request: Request<proto::AcceptJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let who = self.lab(&request)?;
        Ok(Response::new(
            self.accept(&who, request.into_inner()).await?,
        ))
    }

    async fn decline_job(
        &self,
        request: Request<proto::DeclineJobRequest>,
    ) -> Result<Response<proto::DeclineJobResponse>, Status> {
        let who = self.lab(&request)?;
        Ok(Response::new(
            self.decline(&who, request.into_inner()).await?,
        ))
    }

    async fn receive_sample(
        &self,
        request: Request<proto::ReceiveSampleRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let who = self.lab(&request)?;
        Ok(Response::new(
            self.receive(&who, request.into_inner()).await?,
        ))
    }

    async fn post_results(
        &self,
        request: Request<proto::PostResultsRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let who = self.lab(&request)?;
        Ok(Response::new(self.post(&who, request.into_inner()).await?))
    }

    async fn fail_job(
        &self,
        request: Request<proto::FailJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let who = self.lab(&request)?;
        Ok(Response::new(self.fail(&who, request.into_inner()).await?))
    }

    async fn get_capacity(
        &self,
        request: Request<proto::GetCapacityRequest>,
    ) -> Result<Response<proto::Capacity>, Status> {
        let who = self.lab(&request)?;
        Ok(Response::new(self.capacity(&who.org)?))
    }

    async fn set_capacity(
        &self,
        request: Request<proto::SetCapacityRequest>,
    ) -> Result<Response<proto::Capacity>, Status> {
        let who = self.lab(&request)?;
        let m = request.into_inner();
        let test = TestCode::parse(&m.test).map_err(|e| Error::invalid("test", e))?;
        if m.capacity > MAX_CAPACITY {
            return Err(
                Error::invalid("capacity", format!("must be at most {MAX_CAPACITY}")).into(),
            );
        }
        let asked = Asked {
            who: &who,
            action: Action::LabCapacity,
            request: None,
            reason: None,
        };
        let command = Command::SetCapacity {
            lab: who.org.clone(),
            test: test.clone(),
            capacity: m.capacity,
        };
        match self.ctx.engine.execute_as(asked, command).await? {
            Reply::Capacity(state) => {
                tracing::info!(org = %who.org, test = %test, capacity = m.capacity, "capacity set");
                Ok(Response::new(proto::Capacity {
                    lab: who.org.to_string(),
                    tests: capacity_to(&state),
                }))
            }
            other => Err(Error::Internal(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn who_am_i(
        &self,
        request: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::WhoAmIResponse>, Status> {
        let who = self.lab(&request)?;
        let state = self.ctx.engine.views().lab(&who.org).ok_or_else(|| {
            Error::PermissionDenied(format!("{} is not a lab in the directory", who.org))
        })?;
        Ok(Response::new(proto::WhoAmIResponse {
            organisation: who.org.to_string(),
            name: state.config.name.clone(),
            role: who.role.as_str().to_string(),
            status: status_to(state.status) as i32,
            tests: capacity_to(&state),
        }))
    }

    async fn set_status(
        &self,
        request: Request<proto::SetStatusRequest>,
    ) -> Result<Response<proto::SetStatusResponse>, Status> {
        let who = self.lab(&request)?;
        let status = status_from(request.get_ref().status)
            .ok_or_else(|| Error::invalid("status", "must be one of online, draining, offline"))?;
        let asked = Asked {
            who: &who,
            action: Action::LabStatus,
            request: None,
            reason: None,
        };
        let command = Command::SetStatus {
            lab: who.org.clone(),
            status,
        };
        match self.ctx.engine.execute_as(asked, command).await? {
            Reply::Status { status, withdrawn } => {
                tracing::info!(org = %who.org, status = status.as_str(), withdrawn, "lab status set");
                Ok(Response::new(proto::SetStatusResponse {
                    lab: who.org.to_string(),
                    status: status_to(status) as i32,
                    offers_withdrawn: withdrawn,
                }))
            }
            other => Err(Error::Internal(format!("unexpected reply {other:?}")).into()),
        }
    }
}
