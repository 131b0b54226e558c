//! One term as leader: the engine started on the recovered core, the gRPC services (and the
//! coordinator page) served until shutdown or until the term's leadership is lost, then the
//! drain: new work refused, health NOT_SERVING, watch streams ended with UNAVAILABLE, in-flight
//! calls given the grace period, and the sequencer's last batch made durable or refused. A lost
//! term hands its connections to a standby server first, and the broker carries on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use super::{
    MAX_MESSAGE_BYTES, Recovered, Shared, StandbyServer, authenticator, limited, set_health,
    stopped,
};
use crate::accept::SharedIncoming;
use crate::api::{Context, CoordinatorApi, DirectoryApi, LabApi, RequestApi};
use crate::audit::AuditLog;
use crate::auth::{Gate, Role, WatchLimiter};
use crate::engine::{Engine, Views};
use crate::error::Error;
use crate::ops::{DeposedLayer, Presence, RpcLayer};
use crate::proto;
use crate::proto::coordinator_service_server::CoordinatorServiceServer;
use crate::proto::directory_service_server::DirectoryServiceServer;
use crate::proto::lab_service_server::LabServiceServer;
use crate::proto::request_service_server::RequestServiceServer;
use crate::wire::frames::FramingLayer;

/// How a term ended.
pub(super) enum Ended {
    /// The broker is shutting down.
    Shutdown,
    /// Leadership was lost; the standby server already answers on the listener.
    Deposed(StandbyServer),
}

/// Serves one term as leader on `shared`'s listeners, from `recovered`, until shutdown or the
/// end of its leadership, and drains it.
pub(super) async fn serve(
    shared: &Shared,
    audit: AuditLog,
    recovered: Recovered,
    on_ready: &mut Option<oneshot::Sender<()>>,
) -> Result<Ended, Error> {
    let config = &shared.config;
    let Recovered {
        router,
        events,
        journal,
        carried,
        on_fatal,
        mut deposed,
    } = recovered;
    // Before anything new is recorded: the trail's lines must follow the journal's order.
    let restoring = (audit.clone(), config.data_dir.clone());
    tokio::task::spawn_blocking(move || restoring.0.restore(&restoring.1, &carried))
        .await
        .map_err(|e| Error::Internal(format!("restoring the audit trail stopped: {e}")))??;
    let views = Arc::new(Views::new(
        &router,
        events,
        config.retention_ms,
        shared.metrics.clone(),
    ));
    let (engine, sequencer) = Engine::start(crate::engine::Parts {
        router,
        journal,
        views,
        clock: config.clock.clone(),
        metrics: shared.metrics.clone(),
        audit: audit.clone(),
        on_fatal,
    })?;
    set_slot(shared, Some(engine.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let auth = authenticator(config, shared.demo_tokens, shared.limiter.clone());
    let ctx = Context {
        engine: engine.clone(),
        auth,
        shutdown: stop_rx.clone(),
        audit,
        watches: WatchLimiter::new(config.limits.watches_per_org),
        presence: Arc::new(Presence::default()),
        metrics: shared.metrics.clone(),
    };
    let web_task = match &shared.web {
        Some(listener) => {
            let listener = listener
                .try_clone()
                .and_then(TcpListener::from_std)
                .map_err(|e| Error::Internal(format!("coordinator page listener: {e}")))?;
            let mut web_ctx = ctx.clone();
            // Demo tokens on the page only when the page, too, is on loopback.
            web_ctx.auth = authenticator(
                config,
                shared.demo_tokens && shared.web_addr.is_some_and(|a| a.ip().is_loopback()),
                shared.limiter.clone(),
            );
            let mut stopped = stop_rx.clone();
            Some(tokio::spawn(crate::web::serve_web(
                listener,
                web_ctx,
                config.trusts.keys().cloned().collect(),
                config.labs.iter().map(|l| l.ods.clone()).collect(),
                shared.web_tls.clone(),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            )))
        }
        None => None,
    };
    if let Some(timeout) = config.heartbeat_timeout {
        tokio::spawn(crate::ops::watch_heartbeats(
            engine.clone(),
            ctx.presence.clone(),
            config.clock.clone(),
            timeout,
        ));
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

    let (drain_tx, drain_rx) = oneshot::channel::<()>();
    // Set when the term is lost, so that the standby server takes the next connections.
    let handed_over = Arc::new(AtomicBool::new(false));
    let grace = config.shutdown_grace;
    let gated = Arc::new(ctx.auth.clone());
    let server = limited(Server::builder(), &config.limits)
        .layer(RpcLayer::new(shared.metrics.clone()))
        .layer(FramingLayer)
        // Only a broker on PostgreSQL can be deposed: on one disk its term ends only at shutdown.
        .layer(tower::util::option_layer(config.store_url.as_ref().map(
            |_| DeposedLayer {
                leader: shared.leader.clone(),
                deposed: deposed.clone(),
            },
        )))
        .add_service(shared.health_service.clone())
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(InterceptedService::new(
            RequestServiceServer::new(RequestApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            Gate::for_role(gated.clone(), Role::Trust),
        ))
        .add_service(InterceptedService::new(
            LabServiceServer::new(LabApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            Gate::for_role(gated.clone(), Role::Lab),
        ))
        .add_service(InterceptedService::new(
            DirectoryServiceServer::new(DirectoryApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            Gate::any_role(gated.clone()),
        ))
        .add_service(InterceptedService::new(
            CoordinatorServiceServer::new(CoordinatorApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            Gate::for_role(gated, Role::Coordinator),
        ))
        .serve_with_incoming_shutdown(
            SharedIncoming {
                conns: shared.conns.clone(),
                done: Some(handed_over.clone()),
            },
            async move {
                let _ = drain_rx.await;
            },
        );
    shared.ready.set(true);
    set_health(&shared.health, ServingStatus::Serving).await;
    tracing::info!(listen = %shared.addr, "broker serving");
    if let Some(on_ready) = on_ready.take() {
        let _ = on_ready.send(());
    }

    // The server future owns the services and so engine handles: it must be dropped (not just
    // abandoned after the grace period) before the sequencer can finish.
    let mut lost = false;
    let mut standby = None;
    let result = {
        let mut server = std::pin::pin!(server);
        let mut shutdown = shared.shutdown.clone();
        let ending = async {
            tokio::select! {
                () = stopped(&mut shutdown) => false,
                () = term_lost(&mut deposed) => true,
            }
        };
        tokio::select! {
            r = &mut server => r,
            deposed = ending => {
                lost = deposed;
                if lost {
                    tracing::warn!(grace_secs = grace.as_secs(), "no longer the leader; draining and going back to standby");
                } else {
                    tracing::info!(grace_secs = grace.as_secs(), "shutting down");
                }
                // Refuse new work first, tell health checkers and watchers, then let tonic drain.
                engine.stop_accepting();
                shared.ready.set(false);
                set_slot(shared, None);
                set_health(&shared.health, ServingStatus::NotServing).await;
                if lost {
                    handed_over.store(true, Ordering::SeqCst);
                    standby = Some(StandbyServer::start(shared));
                }
                let _ = stop_tx.send(true);
                let _ = drain_tx.send(());
                // Bounded drain: calls still running after the grace period are cut off; their
                // commands, if any reached the sequencer, are durable or were never acknowledged.
                match tokio::time::timeout(grace, &mut server).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!(grace_secs = grace.as_secs(), "calls still running after the grace period; stopping anyway");
                        Ok(())
                    }
                }
            }
        }
    }
    .map_err(|e| Error::Internal(format!("server: {e}")));
    drop(ctx);
    set_slot(shared, None);
    // Connection tasks that outlived the grace period may still hold engine handles, so the
    // sequencer is told to stop rather than left to notice the last handle go.
    engine.close();
    drop(engine);
    if let Some(task) = web_task {
        // Open live feeds end at the stop signal; the grace period bounds anything else.
        let _ = tokio::time::timeout(grace, task).await;
    }
    // Wait for the sequencer, so the journal is complete and synced (or its last batch refused).
    let _ = tokio::task::spawn_blocking(move || sequencer.join()).await;
    result?;
    Ok(match standby {
        Some(standby) if lost => {
            tracing::info!("stepped down; a standby again");
            Ended::Deposed(standby)
        }
        _ => Ended::Shutdown,
    })
}

/// Resolves once the term's leadership is lost; never for a term that cannot lose it.
async fn term_lost(deposed: &mut watch::Receiver<bool>) {
    if deposed.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn set_slot(shared: &Shared, engine: Option<Engine>) {
    if let Ok(mut slot) = shared.engine_slot.write() {
        *slot = engine;
    }
}
