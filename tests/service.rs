//! The server as tools see it: gRPC health and reflection, so grpcurl works without protos.

mod common;

use common::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn health_reports_serving_for_the_broker_and_each_service() {
    let broker = TestBroker::spawn().await;
    let mut health = HealthClient::new(broker.client_with_token(None).await.channel());
    for service in [
        "",
        "labaid.v1.RequestService",
        "labaid.v1.LabService",
        "labaid.v1.DirectoryService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn reflection_lists_the_labaid_services() {
    let broker = TestBroker::spawn().await;
    let mut reflection =
        ServerReflectionClient::new(broker.client_with_token(None).await.channel());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "labaid.v1.RequestService",
        "labaid.v1.LabService",
        "labaid.v1.DirectoryService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    broker.shutdown().await;
}
