//! `labctl`, the command line of lab operators (and of trust staff whose systems are down): the
//! clap definitions, the one place parsed options become settings, and dispatch to one module per
//! command group. Errors come back as [`CliError`]; the binary prints them and exits with
//! [`CliError::exit_code`].

mod capacity;
mod catalogue;
pub(crate) mod config;
mod coordinator;
mod error;
mod follow;
mod jobs;
mod observations;
mod offers;
mod output;
mod requests;
mod retry;
mod status;
mod time;
mod work;

use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory as _, Parser, Subcommand};
use tonic::Status;

pub use error::{CliError, EXIT_CODES_HELP};

use crate::client::{Client, ConnectOptions, TlsFiles};
use crate::domain::{Priority, RequestId, RequestState};
use crate::proto;
use config::Settings;
use error::Subject;
use output::{Format, Output};

/// How long a one-shot command waits for the broker's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// labctl: work pathology mutual-aid requests on a labaid broker.
///
/// Lab operators watch offers, accept or decline them, record samples and post results; trust
/// staff submit, follow and cancel requests; coordinators watch the network and act on labs that
/// went dark. Which organisation you act for comes from your token (for the demo broker,
/// LABAID_TOKEN=demo:RJ7 for a lab, demo:RJ1 for a trust, demo:coordinator for a coordinator).
///
/// Settings come from flags, then the environment (LABAID_ADDR, LABAID_TOKEN, LABAID_CA,
/// LABAID_CERT, LABAID_KEY, LABAID_PROFILE), then the profile file
/// (~/.config/labaid/labctl.toml, with keys addr, token, ca, cert, key), then defaults.
#[derive(Debug, Parser)]
#[command(name = "labctl", version, after_help = EXIT_CODES_HELP, max_term_width = 100)]
pub struct Args {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct GlobalOpts {
    /// Broker address, or several comma-separated for brokers sharing one PostgreSQL store (the
    /// one that leads is used) [env: LABAID_ADDR] [default: http://127.0.0.1:50051]
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) addr: Option<String>,
    /// Bearer token naming your organisation [env: LABAID_TOKEN]. Prefer the variable or the
    /// profile: a command line is visible to other users of the machine.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub(crate) token: Option<String>,
    /// CA that issued the broker's TLS certificate, PEM [env: LABAID_CA]; turns on TLS
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// Client certificate for mutual TLS, PEM, naming your ODS code [env: LABAID_CERT]
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) cert: Option<PathBuf>,
    /// Private key of the client certificate, PEM [env: LABAID_KEY]
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// Profile file [env: LABAID_PROFILE] [default: ~/.config/labaid/labctl.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) profile: Option<PathBuf>,
    /// Output format: table for people, json for scripts (one document, or one per line when
    /// watching)
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Table)]
    pub(crate) output: Format,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lab: watch offers made to this lab, live
    #[command(subcommand)]
    Offers(offers::OffersCommand),
    /// Lab: list, show and work this lab's jobs
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Lab: show or set this lab's capacity per test
    #[command(subcommand)]
    Capacity(capacity::CapacityCommand),
    /// Lab: show this lab's status, or set it to online, draining or offline
    Status(status::StatusArgs),
    /// List the tests the broker can route, with sample stability and turnaround
    Catalogue,
    /// Trust: submit, list, show, watch and cancel requests
    #[command(subcommand)]
    Requests(requests::RequestsCommand),
    /// Coordinator: the network at a glance, lab status and reassigning stranded jobs
    #[command(subcommand)]
    Coordinator(coordinator::CoordinatorCommand),
    /// Show the connection settings in effect (secrets masked)
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (bash, zsh or fish) to stdout
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the address, token (masked), TLS files and profile in effect, and where each came from
    Show,
}

/// Shells labctl writes completions for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// A clinical priority on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PriorityArg {
    /// Immediately
    Stat,
    /// As soon as possible
    Asap,
    /// Urgent
    Urgent,
    /// Routine
    Routine,
}

impl PriorityArg {
    pub(crate) fn domain(self) -> Priority {
        match self {
            Self::Stat => Priority::Stat,
            Self::Asap => Priority::Asap,
            Self::Urgent => Priority::Urgent,
            Self::Routine => Priority::Routine,
        }
    }

    pub(crate) fn proto(self) -> proto::Priority {
        crate::wire::priority_to(self.domain())
    }
}

/// A state filter on the command line.
pub(crate) fn parse_state(raw: &str) -> Result<proto::RequestState, String> {
    RequestState::parse(raw).map(crate::wire::state_to)
}

/// A job or request id, checked before anything is sent.
pub(crate) fn parse_id(raw: &str) -> Result<String, CliError> {
    RequestId::parse(raw).map(|id| id.to_string()).map_err(|_| {
        CliError::Usage(format!(
            "{raw:?} is not a job or request id (ids look like 3f2c8a1e-...); list them with \
             `labctl jobs list` or `labctl requests list`"
        ))
    })
}

/// What every command needs: the settings in effect and where to print.
#[derive(Debug)]
pub(crate) struct Ctx {
    settings: Settings,
    out: Output,
}

impl Ctx {
    /// A client for one-shot calls: each call gives up after [`CALL_TIMEOUT`].
    pub(crate) async fn connect(&self) -> Result<Client, CliError> {
        self.connect_with(|e| e.timeout(CALL_TIMEOUT)).await
    }

    /// A client for long-lived watches: no call timeout, HTTP/2 pings to notice a dead link.
    pub(crate) async fn connect_streaming(&self) -> Result<Client, CliError> {
        self.connect_with(|e| {
            e.http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
        })
        .await
    }

    async fn connect_with(
        &self,
        configure: impl Fn(tonic::transport::Endpoint) -> tonic::transport::Endpoint
        + Send
        + Sync
        + 'static,
    ) -> Result<Client, CliError> {
        let s = &self.settings;
        let tls = match (&s.ca, &s.cert, &s.key) {
            (Some(ca), cert, key) => {
                if cert.is_some() != key.is_some() {
                    return Err(CliError::Usage(
                        "--cert and --key go together (LABAID_CERT and LABAID_KEY)".into(),
                    ));
                }
                Some(TlsFiles {
                    ca: ca.value.clone(),
                    cert: cert.as_ref().map(|c| c.value.clone()),
                    key: key.as_ref().map(|k| k.value.clone()),
                })
            }
            (None, None, None) if s.addr.value.starts_with("https://") => {
                return Err(CliError::Usage(
                    "an https:// address needs --ca (or LABAID_CA): the CA that issued the \
                     broker's certificate"
                        .into(),
                ));
            }
            (None, None, None) => None,
            (None, _, _) => {
                return Err(CliError::Usage(
                    "--cert and --key need --ca (or LABAID_CA) to verify the broker".into(),
                ));
            }
        };
        let options = ConnectOptions {
            addr: s.addr.value.clone(),
            token: s.token.as_ref().map(|t| t.value.clone()),
            connect_timeout: Some(CONNECT_TIMEOUT),
            tls,
        };
        Client::connect_with(&options, configure)
            .await
            .map_err(|e| error::from_client(&e, &s.addr.value))
    }

    /// The operator's error for a broker status.
    pub(crate) fn status(&self, status: &Status, subject: Subject) -> CliError {
        error::from_status(status, subject, &self.settings.addr.value)
    }

    /// Where to print.
    pub(crate) fn out(&self) -> &Output {
        &self.out
    }
}

/// Runs one labctl command.
pub fn run(args: Args) -> Result<(), CliError> {
    let Args { global, command } = args;
    if let Command::Completions { shell } = command {
        let shell = match shell {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        };
        clap_complete::generate(
            shell,
            &mut Args::command(),
            "labctl",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    let settings = config::resolve(&global, &|name| std::env::var(name).ok())?;
    let ctx = Ctx {
        settings,
        out: Output::new(global.output),
    };
    if let Command::Config(ConfigCommand::Show) = command {
        return config::show(&ctx.settings, &ctx.out);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("cannot start: {e}")))?;
    runtime.block_on(async {
        match command {
            Command::Offers(c) => offers::run(&ctx, c).await,
            Command::Jobs(c) => jobs::run(&ctx, c).await,
            Command::Capacity(c) => capacity::run(&ctx, c).await,
            Command::Status(a) => status::run(&ctx, a).await,
            Command::Catalogue => catalogue::run(&ctx).await,
            Command::Requests(c) => requests::run(&ctx, c).await,
            Command::Coordinator(c) => coordinator::run(&ctx, c).await,
            Command::Config(_) | Command::Completions { .. } => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn every_subcommand_and_flag_has_help() {
        fn check(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{path} {id} has no help");
            }
            for sub in cmd.get_subcommands() {
                assert!(
                    sub.get_about().is_some(),
                    "{path} {} has no help",
                    sub.get_name()
                );
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        check(&Args::command(), "labctl");
    }

    #[test]
    fn collected_at_takes_a_relative_time_that_looks_like_a_flag() {
        let args = Args::try_parse_from([
            "labctl",
            "requests",
            "submit",
            "--nhs-number",
            "9434765919",
            "--tests",
            "K,UE",
            "--priority",
            "stat",
            "--collected-at",
            "-20m",
            "--order-number",
            "ORD-1",
        ]);
        assert!(args.is_ok(), "{args:?}");
    }
}
