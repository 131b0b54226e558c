//! DirectoryService: the labs and the test catalogue, for every authenticated organisation.

use tonic::{Request, Response, Status};

use super::Context;
use crate::proto;
use crate::proto::directory_service_server::DirectoryService;
use crate::wire::{lab_to, test_to};

/// The directory service.
#[derive(Debug, Clone)]
pub struct DirectoryApi {
    ctx: Context,
}

impl DirectoryApi {
    /// The service over a shared context.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl DirectoryService for DirectoryApi {
    async fn list_labs(
        &self,
        _request: Request<proto::ListLabsRequest>,
    ) -> Result<Response<proto::ListLabsResponse>, Status> {
        let labs = self.ctx.engine.views().labs();
        Ok(Response::new(proto::ListLabsResponse {
            labs: labs.iter().map(lab_to).collect(),
        }))
    }

    async fn list_tests(
        &self,
        _request: Request<proto::ListTestsRequest>,
    ) -> Result<Response<proto::ListTestsResponse>, Status> {
        let catalogue = self.ctx.engine.views().catalogue();
        Ok(Response::new(proto::ListTestsResponse {
            tests: catalogue.iter().map(test_to).collect(),
        }))
    }
}
