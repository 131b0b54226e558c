//! The security and abuse settings of the config file: TLS, tokens, coordinators, limits
//! per organisation and connection, and how the audit trail is kept.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;
use crate::audit::AuditOptions;
use crate::auth::{EdgeGrant, EdgeId, Role, TokenHash};
use crate::domain::OdsCode;
use crate::routing::LabConfig;

/// The smallest size `[audit] rotate_bytes` may set (other than 0, never by size).
const MIN_ROTATE_BYTES: u64 = 4096;
/// The smallest audit burst: a list call's page of 1000 ids must fit in one.
const MIN_AUDIT_BURST_BYTES: u64 = 64 * 1024;

/// The broker's certificate and key, and the CA its clients' certificates must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// PEM certificate chain of the broker.
    pub cert: PathBuf,
    /// PEM private key of the broker.
    pub key: PathBuf,
    /// PEM CA for client certificates (mutual TLS); without it only tokens authenticate.
    pub client_ca: Option<PathBuf>,
}

impl TlsPaths {
    /// TLS from the three flags: none at all is plaintext; a CA alone, or a certificate without
    /// its key, is a mistake.
    pub fn from_parts(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<Option<Self>, ConfigError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert,
                key,
                client_ca,
            })),
            (None, None) if client_ca.is_none() => Ok(None),
            _ => Err(ConfigError::Invalid(
                "tls: give the broker's certificate and key together (--tls-cert and --tls-key); \
                 --client-ca needs them too"
                    .into(),
            )),
        }
    }
}

/// Limits against abuse. The defaults are generous so that benchmarks are not throttled.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Calls per second each organisation may sustain.
    pub rate_per_second: u32,
    /// Calls an organisation may make at once before the rate applies.
    pub burst: u32,
    /// Open watch streams per organisation.
    pub watches_per_org: usize,
    /// Concurrent HTTP/2 streams (calls) per connection.
    pub streams_per_connection: u32,
    /// Longest a unary call (or the start of a stream) may take.
    pub request_timeout: std::time::Duration,
    /// HTTP/2 keepalive ping interval; dead peers are dropped after one more interval.
    pub keepalive: std::time::Duration,
    /// Bytes of audit entries each organisation's calls may add per second, sustained.
    pub audit_bytes_per_second: u64,
    /// Bytes of audit entries an organisation may add at once before that rate applies.
    pub audit_burst_bytes: u64,
    /// Open gRPC connections from one IP address; more are closed as they arrive.
    pub connections_per_peer: usize,
    /// Longest a new gRPC connection may take to finish its TLS handshake and send the HTTP/2
    /// preface and its first frame; a connection that has not is closed.
    pub handshake_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rate_per_second: 2000,
            burst: 4000,
            watches_per_org: 64,
            streams_per_connection: 256,
            request_timeout: std::time::Duration::from_secs(30),
            keepalive: std::time::Duration::from_secs(30),
            audit_bytes_per_second: 1024 * 1024,
            audit_burst_bytes: 8 * 1024 * 1024,
            connections_per_peer: 64,
            handshake_timeout: std::time::Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    rate_per_second: Option<u32>,
    burst: Option<u32>,
    watches_per_org: Option<usize>,
    streams_per_connection: Option<u32>,
    request_timeout_seconds: Option<u64>,
    keepalive_seconds: Option<u64>,
    audit_bytes_per_second: Option<u64>,
    audit_burst_bytes: Option<u64>,
    connections_per_peer: Option<usize>,
    handshake_timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    org: String,
    role: String,
    sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEdge {
    id: String,
    speaks_for: Vec<String>,
    sha256: Option<String>,
}

/// The security part of a config file, checked against the directory.
pub(super) struct Security {
    pub(super) tls: Option<TlsPaths>,
    pub(super) allow_plaintext_loopback: bool,
    pub(super) tokens: Vec<TokenHash>,
    pub(super) edges: Vec<EdgeGrant>,
    pub(super) coordinators: BTreeSet<OdsCode>,
    pub(super) limits: Limits,
}

pub(super) fn build_security(
    file: SecurityFile,
    trusts: &BTreeMap<OdsCode, String>,
    labs: &[LabConfig],
) -> Result<Security, ConfigError> {
    let invalid = ConfigError::Invalid;
    let coordinators = file
        .coordinators
        .unwrap_or_else(|| vec![crate::auth::COORDINATOR_ORG.to_string()])
        .iter()
        .map(|c| OdsCode::parse(c).map_err(|e| invalid(format!("coordinators: {c}: {e}"))))
        .collect::<Result<BTreeSet<_>, _>>()?;
    let is_lab = |o: &OdsCode| labs.iter().any(|l| &l.ods == o);
    if let Some(c) = coordinators
        .iter()
        .find(|c| trusts.contains_key(*c) || is_lab(c))
    {
        return Err(invalid(format!(
            "coordinators: {c} is already a trust or lab in the directory"
        )));
    }
    let mut tokens = Vec::new();
    for t in file.tokens {
        let org = OdsCode::parse(&t.org).map_err(|e| invalid(format!("token {}: {e}", t.org)))?;
        let role = Role::parse(&t.role).map_err(|e| invalid(format!("token {org}: {e}")))?;
        let fits = match role {
            Role::Trust => trusts.contains_key(&org),
            Role::Lab => is_lab(&org),
            Role::Coordinator => !trusts.contains_key(&org) && !is_lab(&org),
        };
        if !fits {
            return Err(invalid(format!(
                "token {org}: role {} does not match the directory",
                role.as_str()
            )));
        }
        let sha256 =
            TokenHash::parse_hex(&t.sha256).map_err(|e| invalid(format!("token {org}: {e}")))?;
        if tokens.iter().any(|x: &TokenHash| x.sha256 == sha256) {
            return Err(invalid(format!(
                "token {org}: the same hash is listed twice"
            )));
        }
        tokens.push(TokenHash { org, role, sha256 });
    }
    let edges = build_edges(file.edges, trusts, labs, &tokens)?;
    let d = Limits::default();
    let limits = match file.limits {
        None => d,
        Some(l) => Limits {
            rate_per_second: l.rate_per_second.unwrap_or(d.rate_per_second),
            burst: l.burst.unwrap_or(d.burst),
            watches_per_org: l.watches_per_org.unwrap_or(d.watches_per_org),
            streams_per_connection: l.streams_per_connection.unwrap_or(d.streams_per_connection),
            request_timeout: l
                .request_timeout_seconds
                .map_or(d.request_timeout, std::time::Duration::from_secs),
            keepalive: l
                .keepalive_seconds
                .map_or(d.keepalive, std::time::Duration::from_secs),
            audit_bytes_per_second: l.audit_bytes_per_second.unwrap_or(d.audit_bytes_per_second),
            audit_burst_bytes: l.audit_burst_bytes.unwrap_or(d.audit_burst_bytes),
            connections_per_peer: l.connections_per_peer.unwrap_or(d.connections_per_peer),
            handshake_timeout: l
                .handshake_timeout_seconds
                .map_or(d.handshake_timeout, std::time::Duration::from_secs),
        },
    };
    if limits.rate_per_second == 0
        || limits.burst == 0
        || limits.watches_per_org == 0
        || limits.streams_per_connection == 0
        || limits.request_timeout.is_zero()
        || limits.keepalive.is_zero()
        || limits.audit_bytes_per_second == 0
        || limits.connections_per_peer == 0
        || limits.handshake_timeout.is_zero()
    {
        return Err(invalid("limits: every limit must be at least 1".into()));
    }
    if limits.audit_burst_bytes < MIN_AUDIT_BURST_BYTES {
        return Err(invalid(format!(
            "limits.audit_burst_bytes must be at least {MIN_AUDIT_BURST_BYTES}, so that a list \
             call's full page fits"
        )));
    }
    Ok(Security {
        tls: file.tls.map(|t| TlsPaths {
            cert: t.cert,
            key: t.key,
            client_ca: t.client_ca,
        }),
        allow_plaintext_loopback: file.allow_plaintext_loopback.unwrap_or(false),
        tokens,
        edges,
        coordinators,
        limits,
    })
}

/// The `[[edge]]` entries: each id once, speaking for at least one trust or lab of the
/// directory (never a coordinator), its token's hash (if any) unlike every other token's.
fn build_edges(
    raw: Vec<RawEdge>,
    trusts: &BTreeMap<OdsCode, String>,
    labs: &[LabConfig],
    tokens: &[TokenHash],
) -> Result<Vec<EdgeGrant>, ConfigError> {
    let invalid = ConfigError::Invalid;
    let mut edges: Vec<EdgeGrant> = Vec::new();
    for e in raw {
        let id = EdgeId::parse(&e.id).map_err(|why| invalid(format!("edge: {why}")))?;
        if edges.iter().any(|g| g.id == id) {
            return Err(invalid(format!("edge {id}: listed twice")));
        }
        if e.speaks_for.is_empty() {
            return Err(invalid(format!(
                "edge {id}: speaks_for must name at least one trust or lab"
            )));
        }
        let mut speaks_for = BTreeSet::new();
        for raw_org in &e.speaks_for {
            let org = OdsCode::parse(raw_org)
                .map_err(|why| invalid(format!("edge {id}: speaks_for {raw_org}: {why}")))?;
            if !trusts.contains_key(&org) && !labs.iter().any(|l| l.ods == org) {
                return Err(invalid(format!(
                    "edge {id}: speaks_for {org}, which is not a trust or lab in the directory"
                )));
            }
            speaks_for.insert(org);
        }
        let sha256 = match e.sha256 {
            Some(hex) => {
                let sha = TokenHash::parse_hex(&hex)
                    .map_err(|why| invalid(format!("edge {id}: {why}")))?;
                let taken = tokens.iter().any(|t| t.sha256 == sha)
                    || edges.iter().any(|g| g.sha256 == Some(sha));
                if taken {
                    return Err(invalid(format!(
                        "edge {id}: its token hash is already another token's"
                    )));
                }
                Some(sha)
            }
            None => None,
        };
        edges.push(EdgeGrant {
            id,
            speaks_for,
            sha256,
        });
    }
    Ok(edges)
}

/// The security keys of the file, split off before the directory is built.
pub(super) struct SecurityFile {
    pub(super) tls: Option<RawTls>,
    pub(super) allow_plaintext_loopback: Option<bool>,
    pub(super) tokens: Vec<RawToken>,
    pub(super) edges: Vec<RawEdge>,
    pub(super) coordinators: Option<Vec<String>>,
    pub(super) limits: Option<RawLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    rotate_bytes: Option<u64>,
    rotate_daily: Option<bool>,
}

pub(super) fn build_audit(raw: Option<RawAudit>) -> Result<AuditOptions, ConfigError> {
    let d = AuditOptions::default();
    let Some(raw) = raw else {
        return Ok(d);
    };
    let rotate_bytes = raw.rotate_bytes.unwrap_or(d.rotate_bytes);
    if rotate_bytes != 0 && rotate_bytes < MIN_ROTATE_BYTES {
        return Err(ConfigError::Invalid(format!(
            "audit.rotate_bytes must be 0 (never by size) or at least {MIN_ROTATE_BYTES}"
        )));
    }
    Ok(AuditOptions {
        rotate_bytes,
        rotate_daily: raw.rotate_daily.unwrap_or(d.rotate_daily),
    })
}
