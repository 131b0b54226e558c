//! RequestService: trusts submit, read, list, cancel and watch their own requests.

use tonic::{Request, Response, Status};

use super::{Context, list_filters, page_size, page_token, parse_id};
use crate::audit::Action;
use crate::auth::caller;
use crate::domain::{BoundedText, MAX_NOTE_CHARS, NewRequest, RequestId};
use crate::engine::Asked;
use crate::error::Error;
use crate::proto;
use crate::proto::request_service_server::RequestService;
use crate::routing::{Command, Reply};
use crate::wire::{KindFilter, raw_submission, request_event_to, request_to};

/// The trusts' service.
#[derive(Debug, Clone)]
pub struct RequestApi {
    ctx: Context,
}

impl RequestApi {
    /// The service over a shared context.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

fn request_reply(reply: Reply) -> Result<(proto::Request, bool), Error> {
    match reply {
        Reply::Request { request, replayed } => Ok((request_to(&request), replayed)),
        other => Err(Error::Internal(format!("unexpected reply {other:?}"))),
    }
}

#[tonic::async_trait]
impl RequestService for RequestApi {
    async fn submit_request(
        &self,
        request: Request<proto::SubmitRequestRequest>,
    ) -> Result<Response<proto::SubmitRequestResponse>, Status> {
        let who = caller(&request)?;
        let engine = &self.ctx.engine;
        let raw = raw_submission(request.into_inner())?;
        let new = NewRequest::validate(&raw, engine.views().catalogue(), engine.now())
            .map_err(Error::InvalidArgument)?;
        // The audit entry names the request the reply holds: the new one, or the original
        // when this is a resubmission.
        let asked = Asked {
            who: &who,
            action: Action::RequestSubmit,
            request: None,
            reason: None,
        };
        let command = Command::Submit {
            trust: who.org.clone(),
            id: RequestId::generate(),
            request: new,
        };
        let reply = engine.execute_as(asked, command).await?;
        let Reply::Request { request, replayed } = reply else {
            return Err(Error::Internal(format!("unexpected reply {reply:?}")).into());
        };
        tracing::Span::current().record("request.id", tracing::field::display(request.id));
        let request = request_to(&request);
        tracing::debug!(request.id = %request.id, org = %who.org, replayed, "request submitted");
        Ok(Response::new(proto::SubmitRequestResponse {
            request: Some(request),
            replayed,
        }))
    }

    async fn get_request(
        &self,
        request: Request<proto::GetRequestRequest>,
    ) -> Result<Response<proto::Request>, Status> {
        let who = caller(&request)?;
        let id = parse_id(&request.get_ref().id)?;
        let r = self
            .ctx
            .engine
            .views()
            .request(&id)
            .filter(|r| r.trust == who.org)
            .ok_or_else(|| Error::NotFound(format!("request {id} not found")))?;
        self.ctx
            .audit
            .record(&who, Action::RequestGet, Some(&id))
            .await?;
        Ok(Response::new(request_to(&r)))
    }

    async fn list_requests(
        &self,
        request: Request<proto::ListRequestsRequest>,
    ) -> Result<Response<proto::ListRequestsResponse>, Status> {
        let who = caller(&request)?;
        let m = request.into_inner();
        let (states, priorities) = list_filters(&m.states, &m.priorities)?;
        let limit = page_size(m.page_size)?;
        let before = page_token(&m.page_token)?;
        let order = m.order_number.as_str();
        let (page, next) = self.ctx.engine.views().list(&who.org, before, limit, |r| {
            r.trust == who.org
                && (states.is_empty() || states.contains(&r.state))
                && (priorities.is_empty() || priorities.contains(&r.submission.priority))
                && (order.is_empty() || r.submission.order_number.as_str() == order)
        });
        self.ctx
            .audit
            .record_list(&who, Action::RequestList, page.iter().map(|r| r.id))
            .await?;
        Ok(Response::new(proto::ListRequestsResponse {
            requests: page.iter().map(|r| request_to(r)).collect(),
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn cancel_request(
        &self,
        request: Request<proto::CancelRequestRequest>,
    ) -> Result<Response<proto::Request>, Status> {
        let who = caller(&request)?;
        let m = request.into_inner();
        let id = parse_id(&m.id)?;
        let reason = BoundedText::parse(&m.reason, MAX_NOTE_CHARS)
            .map_err(|e| Error::invalid("reason", e))?;
        let asked = Asked {
            who: &who,
            action: Action::RequestCancel,
            request: Some(id),
            reason: None,
        };
        let command = Command::Cancel {
            trust: who.org.clone(),
            id,
            reason,
        };
        let reply = self.ctx.engine.execute_as(asked, command).await?;
        tracing::info!(request.id = %id, org = %who.org, "request cancelled");
        Ok(Response::new(request_reply(reply)?.0))
    }

    type WatchRequestEventsStream = super::EventStream<proto::RequestEvent>;

    async fn watch_request_events(
        &self,
        request: Request<proto::WatchRequestEventsRequest>,
    ) -> Result<Response<Self::WatchRequestEventsStream>, Status> {
        let who = caller(&request)?;
        let kinds = KindFilter::request_kinds(&request.get_ref().kinds)?;
        let slot = self.ctx.watches.acquire(&who.org)?;
        self.ctx
            .audit
            .record(&who, Action::RequestWatch, None)
            .await?;
        let after = request.get_ref().after_sequence;
        let log = self.ctx.engine.views().log(&who.org);
        Ok(Response::new(super::watch::stream(
            log,
            after,
            slot,
            self.ctx.shutdown.clone(),
            move |e| request_event_to(e, kinds),
        )))
    }
}
