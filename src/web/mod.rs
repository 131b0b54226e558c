//! The incident room: the coordinator page the broker serves on its own listener (`--web-listen`),
//! with every asset embedded. Coordinators sign in with their token (or client certificate under
//! mutual TLS); the page follows the network live over server-sent events and acts through the
//! same audited commands as the gRPC CoordinatorService.

mod actions;
mod feed;
pub mod model;
mod pages;
mod session;
pub mod tls;
mod tracker;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::api::Context;
use crate::domain::OdsCode;
use feed::Feed;
use session::Sessions;

pub use tls::WebTls;

/// What the page's handlers share.
#[derive(Debug, Clone)]
struct Web {
    ctx: Context,
    sessions: Arc<Sessions>,
    /// The live feed, running while someone views the page.
    feed: Arc<Feed>,
    /// True under TLS: the cookie is `Secure`.
    secure: bool,
}

/// Serves the coordinator page on `listener` (over TLS when `tls` is given) until `shutdown`
/// resolves. `trusts` and `labs` are the directory's organisations, whose events the page follows
/// while a coordinator has it open.
pub async fn serve_web(
    listener: TcpListener,
    ctx: Context,
    trusts: Vec<OdsCode>,
    labs: Vec<OdsCode>,
    tls: Option<WebTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let feed = Arc::new(Feed::new(
        ctx.engine.clone(),
        ctx.presence.clone(),
        ctx.metrics.clone(),
        trusts,
        labs,
        ctx.shutdown.clone(),
    ));
    let web = Web {
        ctx,
        sessions: Arc::new(Sessions::default()),
        feed,
        secure: tls.is_some(),
    };
    let app = Router::new()
        .route("/", get(pages::index))
        .route("/signin", get(pages::signin_form).post(pages::signin))
        .route("/signout", post(pages::signout))
        .route("/app.js", get(pages::script))
        .route("/app.css", get(pages::style))
        .route("/api/session", get(pages::session))
        .route("/api/snapshot", get(pages::snapshot))
        .route("/events", get(pages::events))
        .route("/api/labs/{lab}/status", post(actions::set_status))
        .route("/api/jobs/{id}/reassign", post(actions::reassign))
        .layer(axum::middleware::from_fn(pages::security_headers))
        .with_state(web);
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            axum::serve(
                tls::TlsListener::new(listener, tls),
                app.into_make_service_with_connect_info::<tls::PeerCerts>(),
            )
            .with_graceful_shutdown(shutdown)
            .await
        }
    }
}
