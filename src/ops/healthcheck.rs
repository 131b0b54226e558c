//! `labaid-broker health`: asks a running broker over gRPC health whether it serves, with the
//! same TLS and client-certificate options as labctl, for scripts, container health checks and
//! systemd. The answer is one line and an exit code.

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::client::{Client, ClientError, ConnectOptions, TlsFiles};

/// What to ask, and where.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// The broker's address, `http://` or `https://`.
    pub addr: String,
    /// TLS files; `None` for plaintext.
    pub tls: Option<TlsFiles>,
    /// The service to ask about; empty for the whole broker.
    pub service: String,
    /// Longest to wait for the connection, and then for the answer.
    pub timeout: Duration,
}

/// Why the broker is not healthy, or could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    /// It answered, but does not serve (recovering its store, draining or stopping).
    #[error("{addr} answers {status}: it is starting, draining or stopping")]
    NotServing {
        /// The broker's address.
        addr: String,
        /// The status it gave.
        status: &'static str,
    },
    /// It does not know the service asked about.
    #[error("{addr} has no service {service:?} (ask about \"\" or labaid.v1.LabService ...)")]
    UnknownService {
        /// The broker's address.
        addr: String,
        /// The service asked about.
        service: String,
    },
    /// The options cannot work (e.g. https without a CA).
    #[error("{0}")]
    Usage(String),
    /// No answer: nothing listening, TLS refused, or too slow.
    #[error("cannot ask {addr}: {reason}")]
    Unreachable {
        /// The broker's address.
        addr: String,
        /// Why, as one line.
        reason: String,
    },
}

impl Unhealthy {
    /// 1 when the broker answered that it does not serve, 2 when it could not be asked.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NotServing { .. } | Self::UnknownService { .. } => 1,
            Self::Usage(_) | Self::Unreachable { .. } => 2,
        }
    }
}

/// An error and its causes on one line: tonic's transport errors say little at the top.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// Asks the broker; Ok when it serves.
pub async fn check(opts: &HealthCheck) -> Result<(), Unhealthy> {
    if opts.tls.is_none() && opts.addr.starts_with("https://") {
        return Err(Unhealthy::Usage(
            "an https:// address needs --ca (or LABAID_CA): the CA that issued the broker's \
             certificate"
                .into(),
        ));
    }
    let unreachable = |reason: String| Unhealthy::Unreachable {
        addr: opts.addr.clone(),
        reason,
    };
    let options = ConnectOptions {
        addr: opts.addr.clone(),
        token: None,
        connect_timeout: Some(opts.timeout),
        tls: opts.tls.clone(),
    };
    let timeout = opts.timeout;
    let client = Client::connect_with(&options, move |e| e.timeout(timeout))
        .await
        .map_err(|e| match e {
            ClientError::Address { .. } | ClientError::Tls(_) | ClientError::Token => {
                Unhealthy::Usage(e.to_string())
            }
            ClientError::Connect { source, .. } => unreachable(chain(&source)),
            // Every address answered, and none serves: each is a standby or not up yet.
            ClientError::NoLeader { .. } => Unhealthy::NotServing {
                addr: opts.addr.clone(),
                status: "NOT_SERVING",
            },
        })?;
    let answer = HealthClient::new(client.channel())
        .check(HealthCheckRequest {
            service: opts.service.clone(),
        })
        .await;
    let status = match answer {
        Ok(r) => r.into_inner().status(),
        Err(s) if s.code() == tonic::Code::NotFound => {
            return Err(Unhealthy::UnknownService {
                addr: opts.addr.clone(),
                service: opts.service.clone(),
            });
        }
        Err(s) => {
            let code = crate::ops::code_name(s.code() as i32);
            return Err(unreachable(if s.message().is_empty() {
                code.to_string()
            } else {
                format!("{code}: {}", s.message())
            }));
        }
    };
    match status {
        ServingStatus::Serving => Ok(()),
        other => Err(Unhealthy::NotServing {
            addr: opts.addr.clone(),
            status: other.as_str_name(),
        }),
    }
}
