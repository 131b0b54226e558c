//! The broker server: recovers the store, then wires the engine and the gRPC services onto a bound
//! listener.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::api::{Context, DirectoryApi, LabApi, RequestApi};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::engine::{Engine, Views};
use crate::error::Error;
use crate::proto;
use crate::proto::directory_service_server::DirectoryServiceServer;
use crate::proto::lab_service_server::LabServiceServer;
use crate::proto::request_service_server::RequestServiceServer;
use crate::store::{self, Directory};

/// Largest message the broker accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Serves the broker on `listener` until `shutdown` resolves, then stops taking calls, ends watch
/// streams with UNAVAILABLE (so clients reconnect), and returns once in-flight calls are done.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener has no address: {e}")))?;
    let demo_tokens = config.demo && addr.ip().is_loopback();
    if demo_tokens {
        tracing::warn!(listen = %addr, "demo mode: plaintext, demo tokens accepted on loopback");
    }
    // Recover before serving: nothing is answered from a state that is not yet what is durable.
    let data_dir = config.data_dir.clone();
    let (directory, options) = (Directory::from(&config), config.store);
    let recovered = tokio::task::spawn_blocking(move || store::open(&data_dir, directory, options))
        .await
        .map_err(|e| Error::Internal(format!("recovery stopped: {e}")))?
        .map_err(|e| {
            Error::Internal(format!(
                "cannot open the data directory {}: {e}",
                config.data_dir.display()
            ))
        })?;
    let views = Arc::new(Views::new(&recovered.router, config.retention_ms));
    views.restore_events(recovered.events);
    let (engine, sequencer) = Engine::start(
        recovered.router,
        Box::new(recovered.journal),
        views,
        config.clock.clone(),
    )?;
    let auth = Authenticator::new(
        config.trusts.keys().cloned(),
        config.labs.iter().map(|l| l.ods.clone()),
        demo_tokens,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Context {
        engine: engine.clone(),
        auth,
        shutdown: stop_rx,
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in [
        "",
        "labaid.v1.RequestService",
        "labaid.v1.LabService",
        "labaid.v1.DirectoryService",
    ] {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;

    tracing::info!(
        listen = %addr,
        labs = config.labs.len(),
        trusts = config.trusts.len(),
        data_dir = %config.data_dir.display(),
        "broker serving"
    );
    let stopping_engine = engine.clone();
    let stopping_health = health.clone();
    let graceful = async move {
        shutdown.await;
        tracing::info!("shutting down");
        stopping_engine.stop_accepting();
        for name in [
            "",
            "labaid.v1.RequestService",
            "labaid.v1.LabService",
            "labaid.v1.DirectoryService",
        ] {
            stopping_health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        let _ = stop_tx.send(true);
    };
    let result = Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(
            RequestServiceServer::new(RequestApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            LabServiceServer::new(LabApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            DirectoryServiceServer::new(DirectoryApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), graceful)
        .await
        .map_err(|e| Error::Internal(format!("server: {e}")));
    drop(ctx);
    drop(engine);
    // The sequencer ends once every engine handle is gone; wait so the journal is complete.
    let _ = tokio::task::spawn_blocking(move || sequencer.join()).await;
    tracing::info!("broker stopped");
    result
}
