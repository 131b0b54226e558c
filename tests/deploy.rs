//! The deployment files in `deploy/` parse and agree with the broker: Kubernetes manifests,
//! compose, Prometheus, the systemd unit, the Dockerfile, the example config (which must load and
//! serve), and the Grafana dashboard (whose queries must name only metrics a real broker exports).
//!
//! Docker and kubectl are not available where these tests run, so the files are checked by
//! parsing them and by the rules below, not by building an image or applying manifests.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::*;
use labaid::Config;
use labaid::proto::work_request::Action;
use labaid::proto::work_response::Item;
use labaid::proto::{self, Priority};
use serde::Deserialize as _;
use serde_yaml_ng::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a YAML file (`---` separated).
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect();
    assert!(!docs.is_empty(), "{} has no YAML document", path.display());
    docs
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// `v[a][b]...`, panicking with the path when a step is missing.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for (i, key) in path.iter().enumerate() {
        cur = cur
            .get(*key)
            .unwrap_or_else(|| panic!("missing {}", path[..=i].join(".")));
    }
    cur
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

fn seq_at<'a>(v: &'a Value, path: &[&str]) -> &'a Vec<Value> {
    at(v, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("{} is not a list", path.join(".")))
}

#[test]
fn every_yaml_file_in_deploy_parses() {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    let names: BTreeSet<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(deploy_dir())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for expected in [
        "compose.yaml",
        "prometheus.yml",
        "k8s/statefulset.yaml",
        "k8s/service.yaml",
        "k8s/secret.yaml",
        "k8s/pdb.yaml",
        "k8s/configmap.yaml",
    ] {
        assert!(names.contains(expected), "deploy/{expected} is missing");
    }
    for file in &files {
        yaml_docs(file);
    }
}

/// Every document of every file in deploy/k8s, checked for the fields `kubectl apply` needs.
fn k8s_objects() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir().join("k8s"), &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in files {
        for doc in yaml_docs(&file) {
            let api = str_at(&doc, &["apiVersion"]);
            let kind = str_at(&doc, &["kind"]);
            let name = str_at(&doc, &["metadata", "name"]);
            assert!(
                !api.is_empty() && !kind.is_empty() && !name.is_empty(),
                "{}: apiVersion, kind and metadata.name must be set",
                file.display()
            );
            out.push((file.clone(), doc));
        }
    }
    out
}

fn one_of<'a>(objects: &'a [(PathBuf, Value)], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|(_, o)| str_at(o, &["kind"]) == kind)
        .map(|(_, o)| o)
        .collect()
}

/// The labels a selector's matchLabels (or a Service's selector map) require.
fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .expect("a label map")
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn selects(selector: &BTreeMap<String, String>, pod: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| pod.get(k) == Some(v))
}

#[test]
fn kubernetes_manifests_fit_together() {
    let objects = k8s_objects();
    let expected_api = [
        ("StatefulSet", "apps/v1"),
        ("Service", "v1"),
        ("Secret", "v1"),
        ("ConfigMap", "v1"),
        ("PodDisruptionBudget", "policy/v1"),
    ];
    for (kind, api) in expected_api {
        let found = one_of(&objects, kind);
        assert!(!found.is_empty(), "no {kind} in deploy/k8s");
        for o in found {
            assert_eq!(str_at(o, &["apiVersion"]), api, "{kind}");
        }
    }
    // One namespace for everything namespaced.
    for (file, o) in &objects {
        if str_at(o, &["kind"]) != "Namespace" {
            assert_eq!(
                str_at(o, &["metadata", "namespace"]),
                "labaid",
                "{}",
                file.display()
            );
        }
    }

    let sts = one_of(&objects, "StatefulSet");
    assert_eq!(sts.len(), 1);
    let sts = sts[0];
    assert_eq!(
        at(sts, &["spec", "replicas"]).as_u64(),
        Some(1),
        "the embedded store is single-writer: one replica"
    );
    let pod_labels = labels(at(sts, &["spec", "template", "metadata", "labels"]));
    assert!(selects(
        &labels(at(sts, &["spec", "selector", "matchLabels"])),
        &pod_labels
    ));
    let pod = at(sts, &["spec", "template", "spec"]);
    assert_eq!(
        at(pod, &["securityContext", "runAsNonRoot"]).as_bool(),
        Some(true)
    );
    let containers = seq_at(pod, &["containers"]);
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let ports: BTreeMap<&str, u64> = seq_at(c, &["ports"])
        .iter()
        .map(|p| {
            (
                str_at(p, &["name"]),
                at(p, &["containerPort"]).as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports.get("grpc"), Some(&50051));
    assert_eq!(ports.get("metrics"), Some(&9464));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(str_at(c, &[probe, "httpGet", "path"]), path, "{probe}");
        let port = str_at(c, &[probe, "httpGet", "port"]);
        assert_eq!(
            ports.get(port),
            Some(&9464),
            "{probe} uses the metrics port"
        );
    }
    for r in ["cpu", "memory"] {
        assert!(
            at(c, &["resources", "requests", r]).as_str().is_some(),
            "resources.requests.{r}"
        );
    }
    let env: BTreeMap<&str, &str> = seq_at(c, &["env"])
        .iter()
        .map(|e| (str_at(e, &["name"]), str_at(e, &["value"])))
        .collect();
    assert_eq!(
        env.get("LABAID_METRICS_LISTEN"),
        Some(&"0.0.0.0:9464"),
        "the probes and Prometheus reach the metrics listener from outside the container"
    );
    let mounts: BTreeMap<&str, &str> = seq_at(c, &["volumeMounts"])
        .iter()
        .map(|m| (str_at(m, &["name"]), str_at(m, &["mountPath"])))
        .collect();
    assert_eq!(mounts.get("data"), Some(&"/var/lib/labaid"));
    assert_eq!(env.get("LABAID_DATA_DIR"), Some(&"/var/lib/labaid"));
    let config_file = Path::new(env["LABAID_CONFIG"]);
    assert_eq!(
        Some(Path::new(mounts["config"])),
        config_file.parent(),
        "LABAID_CONFIG is in the ConfigMap's mount"
    );
    assert_eq!(mounts.get("tls"), Some(&"/etc/labaid/tls"));

    // The persistent volume for the store.
    let claims = seq_at(sts, &["spec", "volumeClaimTemplates"]);
    assert_eq!(claims.len(), 1);
    assert_eq!(str_at(&claims[0], &["metadata", "name"]), "data");
    assert!(
        at(&claims[0], &["spec", "resources", "requests", "storage"])
            .as_str()
            .is_some()
    );

    // Volumes name the Secret and ConfigMap that exist.
    let volumes = seq_at(pod, &["volumes"]);
    let secret_name = str_at(one_of(&objects, "Secret")[0], &["metadata", "name"]);
    let configmap = one_of(&objects, "ConfigMap")[0];
    let configmap_name = str_at(configmap, &["metadata", "name"]);
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| str_at(v, &["name"]) == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    assert_eq!(
        str_at(volume("tls"), &["secret", "secretName"]),
        secret_name
    );
    assert_eq!(
        str_at(volume("config"), &["configMap", "name"]),
        configmap_name
    );
    let secret = one_of(&objects, "Secret")[0];
    assert_eq!(str_at(secret, &["type"]), "kubernetes.io/tls");
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(
            at(secret, &["stringData", key]).as_str().is_some(),
            "Secret key {key}"
        );
    }

    // The ConfigMap carries the example config, which names the mounted TLS files.
    let embedded = str_at(configmap, &["data", "labaid.toml"]);
    assert_eq!(
        embedded,
        read(&deploy_dir().join("labaid.example.toml")),
        "k8s/configmap.yaml must embed deploy/labaid.example.toml verbatim"
    );
    let config = Config::from_toml(embedded, config_file).expect("the ConfigMap's config loads");
    let tls = config.tls.expect("TLS");
    let tls_dir = Path::new(mounts["tls"]);
    assert_eq!(tls.cert, tls_dir.join("tls.crt"));
    assert_eq!(tls.key, tls_dir.join("tls.key"));
    assert_eq!(tls.client_ca, Some(tls_dir.join("ca.crt")));

    // Services: a headless one for the StatefulSet, and ports that exist on the pod.
    let services = one_of(&objects, "Service");
    let headless = services
        .iter()
        .find(|s| str_at(s, &["metadata", "name"]) == str_at(sts, &["spec", "serviceName"]))
        .expect("the StatefulSet's serviceName names a Service");
    assert_eq!(str_at(headless, &["spec", "clusterIP"]), "None");
    for s in &services {
        assert!(selects(&labels(at(s, &["spec", "selector"])), &pod_labels));
        for p in seq_at(s, &["spec", "ports"]) {
            let target = str_at(p, &["targetPort"]);
            assert!(ports.contains_key(target), "Service targetPort {target}");
        }
    }

    // The disruption budget covers the pod.
    let pdb = one_of(&objects, "PodDisruptionBudget")[0];
    assert!(selects(
        &labels(at(pdb, &["spec", "selector", "matchLabels"])),
        &pod_labels
    ));
    assert!(
        at(pdb, &["spec", "minAvailable"]).as_u64().is_some()
            || at(pdb, &["spec", "maxUnavailable"]).as_u64().is_some()
    );
}

#[test]
fn compose_runs_the_broker_with_its_volume_and_prometheus() {
    let compose = &yaml_docs(&deploy_dir().join("compose.yaml"))[0];
    let broker = at(compose, &["services", "broker"]);
    let volumes: Vec<&str> = seq_at(broker, &["volumes"])
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let data = volumes
        .iter()
        .find(|v| v.ends_with(":/var/lib/labaid"))
        .expect("the broker mounts a volume at /var/lib/labaid");
    let data_volume = data.split(':').next().unwrap();
    assert!(
        at(compose, &["volumes"]).get(data_volume).is_some(),
        "the data volume {data_volume} is a named volume"
    );
    // Bind mounts are relative to deploy/ and must exist.
    for v in volumes.iter().filter(|v| v.starts_with("./")) {
        let src = v.split(':').next().unwrap();
        assert!(deploy_dir().join(src).exists(), "compose mounts {src}");
    }
    let context = deploy_dir().join(str_at(broker, &["build", "context"]));
    assert!(
        context
            .join(str_at(broker, &["build", "dockerfile"]))
            .is_file(),
        "the build names deploy/Dockerfile relative to its context"
    );
    let ports: Vec<&str> = seq_at(broker, &["ports"])
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(ports.iter().any(|p| p.ends_with(":50051")));

    let prometheus = at(compose, &["services", "prometheus"]);
    assert!(str_at(prometheus, &["image"]).starts_with("prom/prometheus"));
    assert!(
        seq_at(prometheus, &["volumes"])
            .iter()
            .any(|v| v.as_str().unwrap().starts_with("./prometheus.yml:"))
    );

    // Prometheus scrapes the broker's metrics port by its compose service name.
    let prom = &yaml_docs(&deploy_dir().join("prometheus.yml"))[0];
    let jobs = seq_at(prom, &["scrape_configs"]);
    let job = jobs
        .iter()
        .find(|j| str_at(j, &["job_name"]) == "labaid")
        .expect("a labaid scrape job");
    assert_eq!(str_at(job, &["metrics_path"]), "/metrics");
    let targets: Vec<&str> = seq_at(job, &["static_configs"])
        .iter()
        .flat_map(|s| seq_at(s, &["targets"]).iter().map(|t| t.as_str().unwrap()))
        .collect();
    assert_eq!(targets, ["broker:9464"]);
}

#[test]
fn the_example_config_loads_and_sets_every_key() {
    let path = deploy_dir().join("labaid.example.toml");
    let config = Config::load(&path).expect("deploy/labaid.example.toml loads");
    assert_eq!(config.listen.to_string(), "0.0.0.0:50051");
    assert_eq!(
        config.metrics_listen.map(|a| a.to_string()).as_deref(),
        Some("0.0.0.0:9464")
    );
    assert_eq!(config.data_dir, Path::new("/var/lib/labaid"));
    assert!(config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()));
    assert_eq!(config.tokens.len(), 2);
    assert_eq!(config.edges.len(), 1);
    // The example directory is the bundled demo.
    let demo = Config::demo().unwrap();
    assert_eq!(config.trusts, demo.trusts);
    assert_eq!(config.labs.len(), demo.labs.len());
    assert_eq!(config.catalogue.len(), demo.catalogue.len());

    // Every key the config file knows is written out (not left to its default).
    let table: toml::Table = toml::from_str(&read(&path)).unwrap();
    for key in [
        "listen",
        "metrics_listen",
        "shutdown_grace_seconds",
        "heartbeat_timeout_seconds",
        "data_dir",
        "min_free_bytes",
        "audit",
        "retention_days",
        "leases",
        "test",
        "trust",
        "lab",
        "tls",
        "allow_plaintext_loopback",
        "token",
        "edge",
        "coordinators",
        "limits",
    ] {
        assert!(table.contains_key(key), "the example sets {key}");
    }
    let keys =
        |t: &str| -> BTreeSet<String> { table[t].as_table().unwrap().keys().cloned().collect() };
    assert_eq!(keys("leases"), set(&["stat", "asap", "urgent", "routine"]));
    assert_eq!(keys("tls"), set(&["cert", "key", "client_ca"]));
    assert_eq!(
        keys("limits"),
        set(&[
            "rate_per_second",
            "burst",
            "watches_per_org",
            "streams_per_connection",
            "request_timeout_seconds",
            "keepalive_seconds",
            "audit_bytes_per_second",
            "audit_burst_bytes",
            "connections_per_peer",
            "handshake_timeout_seconds",
        ])
    );
    assert_eq!(keys("audit"), set(&["rotate_bytes", "rotate_daily"]));
    let test_keys: BTreeSet<String> = table["test"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t.as_table().unwrap().keys().cloned())
        .collect();
    assert_eq!(
        test_keys,
        set(&[
            "code",
            "name",
            "discipline",
            "specimen",
            "stability_hours",
            "tat_minutes",
            "unit",
            "critical_low",
            "critical_high",
        ])
    );
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The example config is not only valid but serves: over TLS with a development PKI standing in
/// for the files it names (the harness binds loopback and a temporary data directory).
#[tokio::test]
async fn the_example_config_serves_over_tls() {
    let mut config = Config::load(&deploy_dir().join("labaid.example.toml")).unwrap();
    let pki_dir = tempfile::tempdir().unwrap();
    let orgs: Vec<_> = config.trusts.keys().cloned().collect();
    let pki = labaid::auth::devpki::generate(pki_dir.path(), orgs).unwrap();
    config.tls = Some(labaid::config::TlsPaths {
        cert: pki.server_cert,
        key: pki.server_key,
        client_ca: Some(pki.ca),
    });
    config.data_dir = PathBuf::from(labaid::config::DEFAULT_DATA_DIR);
    let broker = TestBroker::spawn_with(config).await;
    assert_eq!(http_get(broker.ops_addr, "/readyz").await.0, 200);
    broker.shutdown().await;
}

/// `Key=value` lines of a unit file, by section (continuation lines joined).
fn unit_file(text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut section = String::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        let full = std::mem::take(&mut pending) + line;
        if full.starts_with('[') && full.ends_with(']') {
            section = full[1..full.len() - 1].to_string();
            continue;
        }
        let (k, v) = full
            .split_once('=')
            .unwrap_or_else(|| panic!("not a Key=value line: {full}"));
        sections
            .entry(section.clone())
            .or_default()
            .push((k.trim().to_string(), v.trim().to_string()));
    }
    sections
}

#[test]
fn the_systemd_unit_is_hardened() {
    let unit = unit_file(&read(&deploy_dir().join("systemd/labaid-broker.service")));
    for s in ["Unit", "Service", "Install"] {
        assert!(unit.contains_key(s), "[{s}]");
    }
    let service: BTreeMap<&str, &str> = unit["Service"]
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("StateDirectory", "labaid"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("CapabilityBoundingSet", ""),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(service.get(key), Some(&value), "{key}");
    }
    assert!(
        service.get("DynamicUser") == Some(&"yes") || service.contains_key("User"),
        "DynamicUser=yes or a dedicated User="
    );
    assert!(matches!(
        service.get("Restart"),
        Some(&"on-failure" | &"always")
    ));
    let exec = service["ExecStart"];
    assert!(exec.starts_with("/usr/local/bin/labaid-broker "), "{exec}");
    assert!(exec.contains("--config /etc/labaid/labaid.toml"), "{exec}");
    assert!(exec.contains("--data-dir /var/lib/labaid"), "{exec}");
    // Stopping waits longer than the broker's own grace period.
    let example = Config::load(&deploy_dir().join("labaid.example.toml")).unwrap();
    let stop: u64 = service["TimeoutStopSec"].parse().unwrap();
    assert!(stop > example.shutdown_grace.as_secs());
}

#[test]
fn the_dockerfile_builds_from_files_that_exist_and_runs_as_non_root() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = read(&deploy_dir().join("Dockerfile"));
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let from: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(from.len(), 2, "multi-stage: build and runtime");
    assert!(from[0].contains("rust:") && from[0].ends_with(" AS build"));
    assert!(from[1].contains("debian:") && from[1].contains("-slim"));
    assert!(text.contains("cargo build --release --locked --bin labaid-broker --bin labctl"));
    // Every COPY from the build context names something in the repository.
    for l in lines
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let parts: Vec<&str> = l.split_whitespace().skip(1).collect();
        for src in &parts[..parts.len() - 1] {
            assert!(root.join(src).exists(), "COPY {src}: not in the repository");
        }
    }
    // The sources embed the demo directory, so the build needs it.
    assert!(text.contains("COPY deploy/demo ./deploy/demo"));
    let user = lines
        .iter()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(
        !user.contains("root") && !user.ends_with(" 0"),
        "{user}: not root"
    );
    assert!(lines.contains(&"VOLUME [\"/var/lib/labaid\"]"));
    assert!(lines.contains(&"EXPOSE 50051 9464"));
    assert!(text.contains("HEALTHCHECK") && text.contains("/readyz"));
    assert!(text.contains("LABAID_METRICS_LISTEN=0.0.0.0:9464"));
}

/// Every panel, rows' nested panels included.
fn panels(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    for p in v["panels"].as_array().into_iter().flatten() {
        out.push(p.clone());
        panels(p, out);
    }
}

/// The `labaid_*` names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("labaid_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Runs a walkthrough that moves every metric: an offer declined and routed again, accepted,
/// received and resulted with a critical value; a request that expires at once; one that queues.
async fn exercised_metrics() -> String {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let r = submit(&trust, submission("DASH-1", Priority::Stat, broker.now())).await;
    broker
        .client(&r.lab)
        .await
        .labs()
        .decline_job(proto::DeclineJobRequest {
            id: r.id.clone(),
            reason: "analyser down".into(),
        })
        .await
        .unwrap();
    let r = get_request(&trust, &r.id).await;
    assert_eq!(r.state, proto::RequestState::Offered as i32, "routed again");
    let lab = broker.client(&r.lab).await;
    broker.advance(std::time::Duration::from_secs(30));
    accept_and_receive(&lab, &r.id).await;
    broker.advance(std::time::Duration::from_secs(40 * 60));
    lab.labs()
        .post_results(proto::PostResultsRequest {
            id: r.id.clone(),
            observations: vec![proto::Observation {
                test: "K".into(),
                value: "7.0".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    // Collected 3 h 5 min ago, K keeps 4 h: no lab can finish in time, so it expires at once.
    let expired = submit(
        &trust,
        submission_of(
            "DASH-2",
            Priority::Stat,
            &["K"],
            broker.now().plus_minutes(-185),
        ),
    )
    .await;
    assert_eq!(expired.state, proto::RequestState::Expired as i32);
    close_all_labs(&broker).await;
    trust
        .requests()
        .submit_request(submission("DASH-3", Priority::Routine, broker.now()))
        .await
        .unwrap();
    // An action on a Work stream (the job is resulted, so accepting it is refused), so that the
    // actions' counter has a series.
    let (actions, outbound) = tokio::sync::mpsc::channel(2);
    for (tag, action) in [
        (0, Action::Watch(proto::WatchOffersRequest::default())),
        (
            1,
            Action::Accept(proto::AcceptJobRequest { id: r.id.clone() }),
        ),
    ] {
        let message = proto::WorkRequest {
            tag,
            action: Some(action),
        };
        actions.send(message).await.unwrap();
    }
    let mut replies = lab
        .labs()
        .work(tokio_stream::wrappers::ReceiverStream::new(outbound))
        .await
        .unwrap()
        .into_inner();
    while !matches!(next(&mut replies).await.item, Some(Item::Result(_))) {}
    let (status, body) = http_get(broker.ops_addr, "/metrics").await;
    assert_eq!(status, 200);
    broker.shutdown().await;
    body
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_the_broker_exports() {
    let path = deploy_dir().join("grafana/labaid-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&read(&path)).expect("valid JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let mut all = Vec::new();
    panels(&dashboard, &mut all);
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    for p in &all {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: id"
        );
        assert!(p["gridPos"]["w"].is_u64(), "{title}: gridPos");
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("a PromQL expr");
            for (open, close) in [('(', ')'), ('[', ']'), ('{', '}')] {
                assert_eq!(
                    expr.matches(open).count(),
                    expr.matches(close).count(),
                    "{title}: unbalanced {open}{close} in {expr}"
                );
            }
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{title}: {expr} names no labaid metric");
            used.extend(names);
        }
    }

    let exposition = scrape(&exercised_metrics().await);
    // A histogram's buckets come back under its family name (exported as `<name>_bucket`), its
    // `_sum` and `_count` under theirs.
    let exported: BTreeSet<String> = exposition
        .samples
        .iter()
        .flat_map(|s| match s.value {
            prometheus_parse::Value::Histogram(_) => {
                vec![s.metric.clone(), format!("{}_bucket", s.metric)]
            }
            _ => vec![s.metric.clone()],
        })
        .collect();
    // Every family the broker exports has a `# HELP` line.
    let families: BTreeSet<String> = exposition.docs.keys().cloned().collect();
    assert!(!families.is_empty(), "no metric families in the exposition");
    for name in &used {
        let known = exported.contains(name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| exported.contains(&format!("{name}{s}")));
        assert!(
            known,
            "the dashboard queries {name}, which the broker does not export"
        );
    }
    // And the other way: every metric the broker exports is on the dashboard.
    for family in &families {
        let shown = used.iter().any(|u| {
            u == family
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| *u == format!("{family}{s}"))
        });
        assert!(shown, "{family} is exported but not on the dashboard");
    }
}
