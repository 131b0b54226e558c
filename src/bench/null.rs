//! The baseline: a null RequestService that answers SubmitRequest at once with a Request built
//! from the input, without authenticating, routing or storing, so the bench can measure plain
//! gRPC on this machine with the same messages.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::{Request, Response, Status};

use crate::proto;
use crate::proto::request_service_server::{RequestService, RequestServiceServer};

/// The null service.
#[derive(Debug, Clone, Default)]
pub struct NullRequests;

#[tonic::async_trait]
impl RequestService for NullRequests {
    async fn submit_request(
        &self,
        request: Request<proto::SubmitRequestRequest>,
    ) -> Result<Response<proto::SubmitRequestResponse>, Status> {
        let m = request.into_inner();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let now = prost_types::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        };
        let request = proto::Request {
            id: uuid::Uuid::new_v4().to_string(),
            order_number: m.order_number,
            trust: String::new(),
            patient: m.patient,
            tests: m.tests,
            priority: m.priority,
            collected_at: m.collected_at,
            sample_deadline: None,
            state: proto::RequestState::Queued as i32,
            lab: String::new(),
            submitted_at: Some(now),
            updated_at: Some(now),
            predicted_result_at: None,
            results: Vec::new(),
            failure_reason: 0,
            clinical_note: m.clinical_note,
            status_detail: String::new(),
        };
        Ok(Response::new(proto::SubmitRequestResponse {
            request: Some(request),
            replayed: false,
        }))
    }

    async fn get_request(
        &self,
        _: Request<proto::GetRequestRequest>,
    ) -> Result<Response<proto::Request>, Status> {
        Err(Status::unimplemented("the null service only submits"))
    }

    async fn list_requests(
        &self,
        _: Request<proto::ListRequestsRequest>,
    ) -> Result<Response<proto::ListRequestsResponse>, Status> {
        Err(Status::unimplemented("the null service only submits"))
    }

    async fn cancel_request(
        &self,
        _: Request<proto::CancelRequestRequest>,
    ) -> Result<Response<proto::Request>, Status> {
        Err(Status::unimplemented("the null service only submits"))
    }

    type WatchRequestEventsStream = tokio_stream::Empty<Result<proto::RequestEvent, Status>>;

    async fn watch_request_events(
        &self,
        _: Request<proto::WatchRequestEventsRequest>,
    ) -> Result<Response<Self::WatchRequestEventsStream>, Status> {
        Err(Status::unimplemented("the null service only submits"))
    }
}

/// Serves the null service on `addr` until the process is killed (the bench runs it as a child,
/// `labaid-bench --serve-null ADDR`, so that its CPU and memory are its own, as the broker's are).
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(RequestServiceServer::new(NullRequests))
        .serve(addr)
        .await?;
    Ok(())
}
