//! Configuration: the directory (trusts, labs, agreements), the catalogue, leases, listen address
//! and data directory, from a TOML file or the bundled south-east London demo, validated once at
//! start.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

mod security;

pub use security::{Limits, TlsPaths};
use security::{
    RawAudit, RawEdge, RawLimits, RawTls, RawToken, SecurityFile, build_audit, build_security,
};

use crate::audit::AuditOptions;
use crate::auth::{EdgeGrant, TokenHash};
use crate::domain::Clock;
use crate::domain::{Catalogue, MINUTE_MS, OdsCode, TestCode, TestDef};
use crate::engine::SystemClock;
use crate::routing::{DefaultPolicy, LabConfig, Leases, RoutingPolicy};
use crate::store::{Directory, StoreOptions};

/// The bundled demo catalogue.
pub const DEMO_CATALOGUE: &str = include_str!("../../deploy/demo/catalogue.toml");
/// The bundled demo directory of south-east London.
pub const DEMO_DIRECTORY: &str = include_str!("../../deploy/demo/se-london.toml");
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Default address of the metrics and health HTTP listener.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// Default address of the coordinator page.
pub const DEFAULT_WEB_LISTEN: &str = "127.0.0.1:8080";
/// Default time in-flight calls get to finish at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u32 = 10;
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "labaid-data";
/// Default retention of finished requests.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
/// Default free-space floor of the data directory: below it new work is refused.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 256 * 1024 * 1024;

/// A configuration that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("config file {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A value breaks a rule.
    #[error("config: {0}")]
    Invalid(String),
}

/// Everything the broker needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Address of the metrics and health HTTP listener; `None` turns it off.
    pub metrics_listen: Option<SocketAddr>,
    /// Address of the coordinator page; `None` turns it off.
    pub web_listen: Option<SocketAddr>,
    /// How long in-flight calls get to finish once shutdown begins.
    pub shutdown_grace: std::time::Duration,
    /// A lab silent this long (no call, no open watch) is marked OFFLINE; `None` turns this off.
    pub heartbeat_timeout: Option<std::time::Duration>,
    /// Where the store keeps its files.
    pub data_dir: PathBuf,
    /// New work is refused while the data directory's filesystem has fewer bytes free (0: never).
    pub min_free_bytes: u64,
    /// How the audit trail is rotated.
    pub audit: AuditOptions,
    /// The test catalogue.
    pub catalogue: Arc<Catalogue>,
    /// Trusts by ODS code, with their names.
    pub trusts: BTreeMap<OdsCode, String>,
    /// Partner labs.
    pub labs: Vec<LabConfig>,
    /// Offer leases.
    pub leases: Leases,
    /// How long finished requests are kept, in milliseconds.
    pub retention_ms: i64,
    /// True when running the bundled demo (no config file): demo tokens are accepted on loopback.
    pub demo: bool,
    /// The clock timers run on; tests use a manual one.
    pub clock: Arc<dyn Clock>,
    /// How the store syncs and when it snapshots.
    pub store: StoreOptions,
    /// Which eligible lab a request is offered to; recovery rebuilds the core with it.
    pub policy: Arc<dyn RoutingPolicy>,
    /// `postgres://…` for the PostgreSQL store (`store_url`); `None` for the file store in
    /// `data_dir`. It may not hold a password.
    pub store_url: Option<String>,
    /// The PostgreSQL password's file (`store_password_file`); else `LABAID_PG_PASSWORD`.
    pub store_password_file: Option<PathBuf>,
    /// The gRPC address a standby sends callers to while this broker leads (`advertise`);
    /// the bound listener's address when unset.
    pub advertise: Option<String>,
    /// TLS for the listener; without it the broker serves plaintext on loopback only.
    pub tls: Option<TlsPaths>,
    /// Serve plaintext on a loopback listener with a config file (the demo may without this).
    pub allow_plaintext_loopback: bool,
    /// Bearer tokens (hashes only) for sites without a PKI.
    pub tokens: Vec<TokenHash>,
    /// Trusted edges (labaid-edge processes) and the organisations each may call on behalf of.
    pub edges: Vec<EdgeGrant>,
    /// Organisations whose client certificates act as coordinators.
    pub coordinators: BTreeSet<OdsCode>,
    /// Abuse limits.
    pub limits: Limits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    metrics_listen: Option<String>,
    web_listen: Option<String>,
    shutdown_grace_seconds: Option<u32>,
    heartbeat_timeout_seconds: Option<u32>,
    data_dir: Option<PathBuf>,
    min_free_bytes: Option<u64>,
    audit: Option<RawAudit>,
    store_url: Option<String>,
    store_password_file: Option<PathBuf>,
    advertise: Option<String>,
    retention_days: Option<u32>,
    #[serde(default)]
    leases: LeaseMinutes,
    #[serde(default, rename = "test")]
    tests: Vec<RawTest>,
    #[serde(default, rename = "trust")]
    trusts: Vec<RawTrust>,
    #[serde(default, rename = "lab")]
    labs: Vec<RawLab>,
    tls: Option<RawTls>,
    allow_plaintext_loopback: Option<bool>,
    #[serde(default, rename = "token")]
    tokens: Vec<RawToken>,
    #[serde(default, rename = "edge")]
    edges: Vec<RawEdge>,
    coordinators: Option<Vec<String>>,
    limits: Option<RawLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseMinutes {
    #[serde(default = "two")]
    stat: u32,
    #[serde(default = "five")]
    asap: u32,
    #[serde(default = "ten")]
    urgent: u32,
    #[serde(default = "thirty")]
    routine: u32,
}

fn two() -> u32 {
    2
}
fn five() -> u32 {
    5
}
fn ten() -> u32 {
    10
}
fn thirty() -> u32 {
    30
}

impl Default for LeaseMinutes {
    fn default() -> Self {
        Self {
            stat: 2,
            asap: 5,
            urgent: 10,
            routine: 30,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    code: String,
    name: String,
    #[serde(default)]
    discipline: String,
    #[serde(default)]
    specimen: String,
    stability_hours: f64,
    tat_minutes: u32,
    unit: Option<String>,
    critical_low: Option<f64>,
    critical_high: Option<f64>,
    loinc: Option<String>,
    snomed: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    ods: String,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLab {
    ods: String,
    name: String,
    tests: Vec<String>,
    capacity: BTreeMap<String, u32>,
    transport_minutes: BTreeMap<String, u32>,
    agreements: Vec<String>,
}

impl Config {
    /// The directory the store pins: the catalogue, trusts, labs, leases and retention.
    pub fn directory(&self) -> Directory {
        Directory::new(
            self.catalogue.clone(),
            self.trusts.clone(),
            self.labs.clone(),
            self.leases,
            self.retention_ms,
        )
    }

    /// The bundled south-east London demo, listening on the default address.
    pub fn demo() -> Result<Self, ConfigError> {
        let catalogue = parse_toml::<FileConfig>(DEMO_CATALOGUE, Path::new("<demo catalogue>"))?;
        let directory = parse_toml::<FileConfig>(DEMO_DIRECTORY, Path::new("<demo directory>"))?;
        let mut config = Self::build(
            FileConfig {
                tests: catalogue.tests,
                ..directory
            },
            None,
        )?;
        config.demo = true;
        Ok(config)
    }

    /// Loads a config file; tests it leaves out come from the bundled catalogue.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses config text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let file = parse_toml::<FileConfig>(text, origin)?;
        let fallback = if file.tests.is_empty() {
            Some(parse_toml::<FileConfig>(DEMO_CATALOGUE, Path::new("<demo catalogue>"))?.tests)
        } else {
            None
        };
        Self::build(file, fallback)
    }

    fn build(
        mut file: FileConfig,
        fallback_tests: Option<Vec<RawTest>>,
    ) -> Result<Self, ConfigError> {
        let invalid = ConfigError::Invalid;
        let security_file = SecurityFile {
            tls: file.tls.take(),
            allow_plaintext_loopback: file.allow_plaintext_loopback.take(),
            tokens: std::mem::take(&mut file.tokens),
            edges: std::mem::take(&mut file.edges),
            coordinators: file.coordinators.take(),
            limits: file.limits.take(),
        };
        let listen = file
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_LISTEN)
            .parse::<SocketAddr>()
            .map_err(|e| invalid(format!("listen: {e} (expected e.g. 127.0.0.1:50051)")))?;
        let metrics_listen = match file
            .metrics_listen
            .as_deref()
            .unwrap_or(DEFAULT_METRICS_LISTEN)
        {
            "" | "off" => None,
            addr => Some(addr.parse::<SocketAddr>().map_err(|e| {
                invalid(format!(
                    "metrics_listen: {e} (expected e.g. 127.0.0.1:9464, or \"off\")"
                ))
            })?),
        };
        let web_listen = match file.web_listen.as_deref().unwrap_or(DEFAULT_WEB_LISTEN) {
            "" | "off" => None,
            addr => Some(addr.parse::<SocketAddr>().map_err(|e| {
                invalid(format!(
                    "web_listen: {e} (expected e.g. 127.0.0.1:8080, or \"off\")"
                ))
            })?),
        };
        let grace = file
            .shutdown_grace_seconds
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS);
        if grace == 0 || grace > 600 {
            return Err(invalid("shutdown_grace_seconds must be 1 to 600".into()));
        }
        let heartbeat_timeout = match file.heartbeat_timeout_seconds {
            None | Some(0) => None,
            Some(s) if s < 10 => {
                return Err(invalid(
                    "heartbeat_timeout_seconds must be 0 (off) or at least 10".into(),
                ));
            }
            Some(s) => Some(std::time::Duration::from_secs(u64::from(s))),
        };
        let tests = fallback_tests.unwrap_or(file.tests);
        let catalogue = Catalogue::new(
            tests
                .into_iter()
                .map(|t| {
                    let code = TestCode::parse(&t.code)
                        .map_err(|e| invalid(format!("test {}: code {e}", t.code)))?;
                    if !(t.stability_hours > 0.0 && t.stability_hours <= 24.0 * 365.0) {
                        return Err(invalid(format!(
                            "test {code}: stability_hours must be positive"
                        )));
                    }
                    Ok(TestDef {
                        code,
                        name: t.name,
                        discipline: t.discipline,
                        specimen: t.specimen,
                        stability_minutes: (t.stability_hours * 60.0).round() as u32,
                        turnaround_minutes: t.tat_minutes,
                        unit: t.unit,
                        critical_low: t.critical_low,
                        critical_high: t.critical_high,
                        loinc: t.loinc,
                        snomed: t.snomed,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        )
        .map_err(invalid)?;
        if catalogue.is_empty() {
            return Err(invalid("the catalogue has no tests".into()));
        }
        let mut trusts = BTreeMap::new();
        for t in file.trusts {
            let ods =
                OdsCode::parse(&t.ods).map_err(|e| invalid(format!("trust {}: ods {e}", t.ods)))?;
            if trusts.insert(ods.clone(), t.name).is_some() {
                return Err(invalid(format!("trust {ods} is listed twice")));
            }
        }
        let mut labs = Vec::new();
        let mut lab_codes = BTreeSet::new();
        for l in file.labs {
            let ods =
                OdsCode::parse(&l.ods).map_err(|e| invalid(format!("lab {}: ods {e}", l.ods)))?;
            if trusts.contains_key(&ods) || !lab_codes.insert(ods.clone()) {
                return Err(invalid(format!("organisation {ods} is listed twice")));
            }
            let mut capacity = BTreeMap::new();
            for t in &l.tests {
                let code =
                    TestCode::parse(t).map_err(|e| invalid(format!("lab {ods}: test {t} {e}")))?;
                if catalogue.get(&code).is_none() {
                    return Err(invalid(format!(
                        "lab {ods}: test {code} is not in the catalogue"
                    )));
                }
                let cap = l.capacity.get(code.as_str()).copied().ok_or_else(|| {
                    invalid(format!("lab {ods}: no capacity given for test {code}"))
                })?;
                capacity.insert(code, cap);
            }
            if let Some(extra) = l.capacity.keys().find(|k| !l.tests.contains(k)) {
                return Err(invalid(format!(
                    "lab {ods}: capacity for {extra}, which it does not perform"
                )));
            }
            let mut agreements = BTreeSet::new();
            for a in &l.agreements {
                let trust = OdsCode::parse(a)
                    .map_err(|e| invalid(format!("lab {ods}: agreement {a}: {e}")))?;
                if !trusts.contains_key(&trust) {
                    return Err(invalid(format!(
                        "lab {ods}: agreement with {trust}, which is not a trust in the directory"
                    )));
                }
                if !l.transport_minutes.contains_key(trust.as_str()) {
                    return Err(invalid(format!(
                        "lab {ods}: no transport_minutes from {trust}"
                    )));
                }
                agreements.insert(trust);
            }
            let transport_minutes = l
                .transport_minutes
                .iter()
                .map(|(k, v)| {
                    OdsCode::parse(k)
                        .map(|c| (c, *v))
                        .map_err(|e| invalid(format!("lab {ods}: transport_minutes {k}: {e}")))
                })
                .collect::<Result<_, _>>()?;
            labs.push(LabConfig {
                ods,
                name: l.name,
                capacity,
                transport_minutes,
                agreements,
            });
        }
        if trusts.is_empty() || labs.is_empty() {
            return Err(invalid(
                "the directory needs at least one [[trust]] and one [[lab]]".into(),
            ));
        }
        let minutes = |m: u32, name: &str| {
            if m == 0 || m > 24 * 60 {
                Err(invalid(format!("leases.{name} must be 1 to 1440 minutes")))
            } else {
                Ok(i64::from(m) * MINUTE_MS)
            }
        };
        let leases = Leases {
            stat_ms: minutes(file.leases.stat, "stat")?,
            asap_ms: minutes(file.leases.asap, "asap")?,
            urgent_ms: minutes(file.leases.urgent, "urgent")?,
            routine_ms: minutes(file.leases.routine, "routine")?,
        };
        let retention_days = file.retention_days.unwrap_or(DEFAULT_RETENTION_DAYS);
        if retention_days == 0 {
            return Err(invalid("retention_days must be at least 1".into()));
        }
        let security = build_security(security_file, &trusts, &labs)?;
        let audit = build_audit(file.audit)?;
        Ok(Self {
            listen,
            metrics_listen,
            web_listen,
            shutdown_grace: std::time::Duration::from_secs(u64::from(grace)),
            heartbeat_timeout,
            data_dir: file
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            min_free_bytes: file.min_free_bytes.unwrap_or(DEFAULT_MIN_FREE_BYTES),
            audit,
            catalogue: Arc::new(catalogue),
            trusts,
            labs,
            leases,
            retention_ms: i64::from(retention_days) * 24 * 60 * MINUTE_MS,
            demo: false,
            clock: Arc::new(SystemClock),
            store: StoreOptions::default(),
            policy: Arc::new(DefaultPolicy),
            store_url: file.store_url,
            store_password_file: file.store_password_file,
            advertise: file.advertise,
            tls: security.tls,
            allow_plaintext_loopback: security.allow_plaintext_loopback,
            tokens: security.tokens,
            edges: security.edges,
            coordinators: security.coordinators,
            limits: security.limits,
        })
    }
}

fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, origin: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_demo_loads() {
        let c = Config::demo().unwrap();
        assert_eq!(c.trusts.len(), 2);
        assert_eq!(c.labs.len(), 6);
        assert_eq!(c.catalogue.len(), 11);
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.demo);
    }

    #[test]
    fn an_agreement_with_an_unknown_trust_is_refused() {
        let text = r#"
[[trust]]
ods = "RJ1"
name = "A"
[[lab]]
ods = "RJ7"
name = "B"
tests = ["K"]
capacity = { K = 1 }
transport_minutes = { RJ1 = 10 }
agreements = ["RJ9"]
"#;
        let err = Config::from_toml(text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("RJ9"), "{err}");
    }

    const SMALL: &str = r#"
[[trust]]
ods = "RJ1"
name = "A"
[[lab]]
ods = "RJ7"
name = "B"
tests = ["K"]
capacity = { K = 1 }
transport_minutes = { RJ1 = 10 }
agreements = ["RJ1"]
"#;

    #[test]
    fn the_audit_trail_settings_are_read_and_checked() {
        let c = Config::from_toml(SMALL, Path::new("x.toml")).unwrap();
        assert_eq!(c.audit, AuditOptions::default());
        assert_eq!(c.min_free_bytes, DEFAULT_MIN_FREE_BYTES);
        let text = format!(
            "min_free_bytes = 0\n{SMALL}\n[audit]\nrotate_bytes = 8192\nrotate_daily = true\n\
             [limits]\naudit_bytes_per_second = 5000\naudit_burst_bytes = 70000\n"
        );
        let c = Config::from_toml(&text, Path::new("x.toml")).unwrap();
        assert_eq!(c.min_free_bytes, 0);
        assert_eq!(
            c.audit,
            AuditOptions {
                rotate_bytes: 8192,
                rotate_daily: true
            }
        );
        assert_eq!(
            (c.limits.audit_bytes_per_second, c.limits.audit_burst_bytes),
            (5000, 70000)
        );
        for (bad, named) in [
            ("[audit]\nrotate_bytes = 10\n", "audit.rotate_bytes"),
            ("[limits]\naudit_burst_bytes = 1000\n", "audit_burst_bytes"),
            ("[limits]\naudit_bytes_per_second = 0\n", "at least 1"),
        ] {
            let err = Config::from_toml(&format!("{SMALL}\n{bad}"), Path::new("x.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_the_file_named() {
        let err = Config::from_toml("lisen = \"x\"", Path::new("bad.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.toml"), "{err}");
    }
}
