//! labaid-broker: the labaid gRPC server, its security tools (tokens, development
//! certificates, audit verification) and its health check.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use labaid::Config;
use labaid::audit::{self, Verdict};
use labaid::auth::{self, EdgeId, Role, devpki};
use labaid::config::TlsPaths;
use labaid::domain::OdsCode;
use labaid::ops::healthcheck::{self, HealthCheck};
use labaid::ops::systemd;
use labaid::telemetry::{self, LogFormat};

// Every call allocates its messages, request and events on one thread and frees them on another;
// mimalloc's per-thread heaps take that without the contention of glibc's arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The labaid broker: routes urgent blood-test requests from trusts to partner NHS labs.
///
/// With no config file it runs the bundled south-east London demo on loopback.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Args {
    /// Address to listen on [default: 127.0.0.1:50051, or the config file's `listen`].
    #[arg(long, env = "LABAID_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Config file (TOML); without one the bundled demo directory is used.
    #[arg(long, env = "LABAID_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the metrics and health HTTP listener (`/metrics`, `/healthz`, `/readyz`)
    /// [default: 127.0.0.1:9464, or the config file's `metrics_listen`].
    #[arg(long, env = "LABAID_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Address of the coordinator page (served over TLS when the broker has TLS), or "off"
    /// [default: 127.0.0.1:8080, or the config file's `web_listen`].
    #[arg(long, env = "LABAID_WEB_LISTEN", value_parser = parse_web_listen)]
    web_listen: Option<WebListen>,
    /// Directory the store keeps its journal, snapshots and audit log in [default: ./labaid-data,
    /// or the config file's `data_dir`].
    #[arg(long, env = "LABAID_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// `postgres://user@host:port/db` to keep the journal in PostgreSQL, shared by several
    /// brokers with one leader [or the config file's `store_url`]. No password here: it comes
    /// from `store_password_file` or LABAID_PG_PASSWORD.
    #[arg(long, env = "LABAID_STORE")]
    store: Option<String>,
    /// A file holding the PostgreSQL password [or the config file's `store_password_file`;
    /// else LABAID_PG_PASSWORD].
    #[arg(long, env = "LABAID_STORE_PASSWORD_FILE")]
    store_password_file: Option<PathBuf>,
    /// The gRPC address callers of a standby are sent to while this broker leads
    /// [default: the listen address, or the config file's `advertise`].
    #[arg(long, env = "LABAID_ADVERTISE")]
    advertise: Option<String>,
    /// Journal bytes between full snapshots; an eighth of it triggers an incremental one (what
    /// changed), until those add up to half the last full one. On PostgreSQL the same, counted
    /// in journal row bytes, for snapshot rows.
    #[arg(long, env = "LABAID_SNAPSHOT_MIN_BYTES", default_value_t = labaid::store::DEFAULT_SNAPSHOT_MIN_BYTES)]
    snapshot_min_bytes: u64,
    /// Start even when acknowledged changes are missing from the journal (a segment deleted, cut
    /// or damaged): carry on from what is readable, log what was dropped, and rename later
    /// segments to *.lost. Without it such a start is refused, naming the file and the loss.
    #[arg(long)]
    accept_data_loss: bool,
    /// The broker's TLS certificate chain (PEM) [or the config file's `[tls] cert`].
    #[arg(long, env = "LABAID_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The broker's TLS private key (PEM) [or `[tls] key`].
    #[arg(long, env = "LABAID_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA for client certificates (PEM): turns on mutual TLS [or `[tls] client_ca`].
    #[arg(long, env = "LABAID_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = Format::Text, env = "LABAID_LOG_FORMAT")]
    log_format: Format,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bearer tokens for sites without a PKI.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Writes a development PKI (CA, server and per-organisation client certificates, and one
    /// per trusted edge) to DIR.
    DevCerts {
        /// Output directory (created if missing).
        dir: PathBuf,
        /// Config file whose directory names the organisations [default: the bundled demo].
        #[arg(long, env = "LABAID_CONFIG")]
        config: Option<PathBuf>,
        /// Another name for the server certificate besides localhost and 127.0.0.1 (a DNS name
        /// or IP address, e.g. a compose service or Kubernetes Service name); repeatable.
        #[arg(long = "server-name", value_name = "NAME")]
        server_names: Vec<String>,
        /// A trusted edge to issue a client certificate for (`edge-<ID>.pem`, naming
        /// `urn:labaid:edge:<ID>`), besides those the config's `[[edge]]` entries name; repeatable.
        #[arg(long = "edge", value_name = "ID", value_parser = EdgeId::parse)]
        edges: Vec<EdgeId>,
    },
    /// The tamper-evident audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Checks a running broker over gRPC health: exit 0 when it serves, 1 when it answers that
    /// it does not (starting, draining, stopping), 2 when it cannot be asked; one line of reason.
    Health(HealthArgs),
}

/// Where and how to ask; the same settings (and variables) as labctl's.
#[derive(Debug, clap::Args)]
struct HealthArgs {
    /// Broker address.
    #[arg(long, env = "LABAID_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// CA that issued the broker's TLS certificate, PEM; turns on TLS.
    #[arg(long, env = "LABAID_CA")]
    ca: Option<PathBuf>,
    /// Client certificate for mutual TLS, PEM.
    #[arg(long, env = "LABAID_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key of the client certificate, PEM.
    #[arg(long, env = "LABAID_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// The service to ask about, e.g. labaid.v1.LabService; empty for the whole broker.
    #[arg(long, default_value = "")]
    service: String,
    /// Seconds to wait for the connection, and then for the answer.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    timeout: u64,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Creates a token: prints it once, with the config entry (its hash) to add.
    Create {
        /// The organisation's ODS code.
        #[arg(long)]
        org: String,
        /// Its role: trust, lab or coordinator.
        #[arg(long)]
        role: String,
    },
    /// Creates a token for a trusted edge (labaid-edge calling on behalf of the organisations
    /// whose client certificates it verified): prints it once, with the `[[edge]]` entry to add.
    CreateEdge {
        /// The edge's id (lower-case letters, digits, hyphens), named in the audit trail.
        #[arg(long)]
        id: String,
        /// An ODS code of a trust or lab it may speak for; repeat for several.
        #[arg(long = "speaks-for", required = true)]
        speaks_for: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Checks the hash chain across `audit.log` and the files rotated out of it; exit 0 when
    /// intact, 1 when broken (naming the file and its first bad entry, or a missing file).
    Verify {
        /// The broker's data directory.
        #[arg(long, env = "LABAID_DATA_DIR", default_value = labaid::config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Writes the verified trail, every file in order, as JSON lines (to stdout, or --out);
    /// exit 1 if it is broken.
    Export {
        /// The broker's data directory.
        #[arg(long, env = "LABAID_DATA_DIR", default_value = labaid::config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Output file [default: stdout].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only the entries that name this request (or job) id, alone or among a list call's:
        /// who saw or changed it. The whole trail is still verified.
        #[arg(long, value_name = "ID")]
        request: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// Human-readable lines.
    Text,
    /// JSON lines.
    Json,
}

fn main() -> ExitCode {
    let huge_pages_off = labaid::memory::disable_transparent_huge_pages();
    let args = Args::parse();
    telemetry::init(match args.log_format {
        Format::Text => LogFormat::Text,
        Format::Json => LogFormat::Json,
    });
    if let Err(err) = huge_pages_off {
        tracing::warn!(error = %err, "cannot turn transparent huge pages off");
    }
    // Exit codes: 0 fine; 1 a failure (for `audit`, a broken chain); 2 an audit log unreadable.
    let failure = if matches!(args.command, Some(Command::Audit(_))) {
        2
    } else {
        1
    };
    let result = match args.command {
        Some(Command::Token(TokenCommand::Create { org, role })) => token_create(&org, &role),
        Some(Command::Token(TokenCommand::CreateEdge { id, speaks_for })) => {
            token_create_edge(&id, &speaks_for)
        }
        Some(Command::DevCerts {
            dir,
            config,
            server_names,
            edges,
        }) => dev_certs(&dir, config.as_deref(), &server_names, &edges),
        Some(Command::Audit(AuditCommand::Verify { data_dir })) => audit_verify(&data_dir),
        Some(Command::Audit(AuditCommand::Export {
            data_dir,
            out,
            request,
        })) => audit_export(&data_dir, out.as_deref(), request.as_deref()),
        Some(Command::Health(h)) => return health(h),
        None => run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(failure)
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::demo()?,
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(metrics) = args.metrics_listen {
        config.metrics_listen = Some(metrics);
    }
    if let Some(WebListen(web)) = args.web_listen {
        config.web_listen = web;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(url) = args.store {
        config.store_url = Some(url);
    }
    if let Some(file) = args.store_password_file {
        config.store_password_file = Some(file);
    }
    if let Some(advertise) = args.advertise {
        config.advertise = Some(advertise);
    }
    config.store.snapshot_min_bytes = args.snapshot_min_bytes;
    config.store.accept_data_loss = args.accept_data_loss;
    // Each flag overrides the same key of the config file's [tls].
    let (cert, key, client_ca) = config
        .tls
        .take()
        .map(|t| (Some(t.cert), Some(t.key), t.client_ca))
        .unwrap_or_default();
    config.tls = TlsPaths::from_parts(
        args.tls_cert.or(cert),
        args.tls_key.or(key),
        args.client_ca.or(client_ca),
    )?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    runtime.block_on(async {
        let grpc = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let ops = match config.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for metrics on {addr}"))?,
            ),
            None => None,
        };
        let web = match config.web_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for the coordinator page on {addr}"))?,
            ),
            None => None,
        };
        // systemd hears READY=1 once the store is recovered and the broker serves on bound
        // listeners, and STOPPING=1 when a signal starts the drain.
        let (ready, serving) = tokio::sync::oneshot::channel();
        let listen = grpc.local_addr().context("the listener has no address")?;
        tokio::spawn(systemd::notify_when_ready(serving, listen));
        let listeners = labaid::Listeners {
            grpc,
            ops,
            web,
            on_ready: Some(ready),
        };
        let shutdown = systemd::stopping_after(labaid::shutdown_signal());
        labaid::serve_on(listeners, config, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `--web-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
struct WebListen(Option<std::net::SocketAddr>);

fn parse_web_listen(raw: &str) -> Result<WebListen, String> {
    match raw {
        "off" => Ok(WebListen(None)),
        addr => addr
            .parse()
            .map(|a| WebListen(Some(a)))
            .map_err(|e| format!("{e} (expected e.g. 127.0.0.1:8080, or off)")),
    }
}

fn token_create(org: &str, role: &str) -> anyhow::Result<ExitCode> {
    let org = OdsCode::parse(org).map_err(|e| anyhow::anyhow!("--org: {e}"))?;
    let role = Role::parse(role).map_err(|e| anyhow::anyhow!("--role: {e}"))?;
    let new = auth::create_token(&org, role)?;
    println!("token (shown once; give it to {org} over a secure channel):");
    println!("{}", new.token);
    println!();
    println!("add to the broker's config file, then restart it (remove the entry to revoke):");
    print!("{}", new.config_entry);
    Ok(ExitCode::SUCCESS)
}

fn token_create_edge(id: &str, speaks_for: &[String]) -> anyhow::Result<ExitCode> {
    let id = auth::EdgeId::parse(id).map_err(|e| anyhow::anyhow!("--id: {e}"))?;
    let orgs = speaks_for
        .iter()
        .map(|o| OdsCode::parse(o).map_err(|e| anyhow::anyhow!("--speaks-for {o}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let new = auth::create_edge_token(&id, &orgs)?;
    println!("token (shown once; give it to the operator of edge {id} over a secure channel):");
    println!("{}", new.token);
    println!();
    println!("add to the broker's config file, then restart it (remove the entry to revoke):");
    print!("{}", new.config_entry);
    Ok(ExitCode::SUCCESS)
}

fn dev_certs(
    dir: &std::path::Path,
    config: Option<&std::path::Path>,
    server_names: &[String],
    edges: &[EdgeId],
) -> anyhow::Result<ExitCode> {
    let config = match config {
        Some(path) => Config::load(path)?,
        None => Config::demo()?,
    };
    let edge_ids: std::collections::BTreeSet<EdgeId> = config
        .edges
        .iter()
        .map(|e| e.id.clone())
        .chain(edges.iter().cloned())
        .collect();
    let orgs: Vec<OdsCode> = config
        .trusts
        .keys()
        .cloned()
        .chain(config.labs.iter().map(|l| l.ods.clone()))
        .chain(config.coordinators.iter().cloned())
        .collect();
    let pki = devpki::generate_for(dir, orgs, server_names)?;
    for id in &edge_ids {
        devpki::issue_edge(&pki.dir, id)?;
    }
    println!(
        "wrote ca.pem, ca.key, server.pem, server.key and certificates for {} to {}",
        pki.orgs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        pki.dir.display()
    );
    if !edge_ids.is_empty() {
        let names: Vec<String> = edge_ids.iter().map(|id| format!("edge-{id}")).collect();
        println!("and for the trusted edges: {}", names.join(", "));
    }
    println!("development only: ca.key can issue certificates for any organisation");
    Ok(ExitCode::SUCCESS)
}

fn report(verdict: Verdict) -> ExitCode {
    match verdict {
        Verdict::Intact {
            entries,
            files,
            head,
        } => {
            eprintln!("audit log intact: {entries} entries in {files} files, head {head}");
            ExitCode::SUCCESS
        }
        Verdict::Broken(broken) => {
            eprintln!("{broken}");
            ExitCode::from(1)
        }
    }
}

/// Refuses a directory that holds no audit file at all: a mistyped path is not an intact trail.
fn ensure_trail(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let files = audit::chain_files(data_dir)
        .with_context(|| format!("cannot read {}", data_dir.display()))?;
    anyhow::ensure!(
        !files.is_empty(),
        "no audit log in {} (neither {} nor rotated audit-*.log files)",
        data_dir.display(),
        audit::AUDIT_FILE
    );
    Ok(())
}

fn audit_verify(data_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    ensure_trail(data_dir)?;
    Ok(report(audit::verify(data_dir)?))
}

fn audit_export(
    data_dir: &std::path::Path,
    out: Option<&std::path::Path>,
    request: Option<&str>,
) -> anyhow::Result<ExitCode> {
    ensure_trail(data_dir)?;
    // Written as the trail writes ids, whatever case it was given in.
    let request = request
        .map(labaid::domain::RequestId::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--request: {e}"))?
        .map(|id| id.to_string());
    let request = request.as_deref();
    let verdict = match out {
        Some(file) => {
            let mut w = std::io::BufWriter::new(
                std::fs::File::create(file)
                    .with_context(|| format!("cannot create {}", file.display()))?,
            );
            let v = audit::export(data_dir, &mut w, request)?;
            std::io::Write::flush(&mut w)?;
            v
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            audit::export(data_dir, &mut lock, request)?
        }
    };
    Ok(report(verdict))
}

fn health(h: HealthArgs) -> ExitCode {
    if h.ca.is_none() && h.cert.is_some() {
        eprintln!(
            "labaid-broker health: --cert and --key need --ca (or LABAID_CA) to verify the broker"
        );
        return ExitCode::from(2);
    }
    let check = HealthCheck {
        addr: h.addr,
        tls: h.ca.map(|ca| labaid::client::TlsFiles {
            ca,
            cert: h.cert,
            key: h.key,
        }),
        service: h.service,
        timeout: std::time::Duration::from_secs(h.timeout),
    };
    let outcome = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(healthcheck::check(&check)),
        Err(e) => {
            eprintln!("labaid-broker health: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(()) => {
            println!("{} is serving", check.addr);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("labaid-broker health: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
