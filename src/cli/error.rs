//! labctl's one error type: a line a tired operator understands, and the exit code it maps to.
//! Every broker status and connection failure is turned into one of these here, and nowhere else.

use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::client::ClientError;
use crate::domain::Violations;

/// The exit codes, as `labctl --help` documents them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (an interrupted watch also exits 0)
  1  anything else (a file could not be read, an internal broker error, a rate limit)
  2  usage: bad flags or arguments, or input that fails validation, locally or at the broker
  3  not found: no such job or request for this organisation
  4  not allowed in the current state, or lost to another operator (e.g. the offer expired or
     another operator accepted it first; the order number was used for a different request)
  5  broker unreachable or unavailable (connection refused, timed out, shutting down)
  6  not authenticated or not permitted (no or bad token; a trust calling a lab command)";

/// What went wrong, by the exit code it maps to. The message is the whole line printed after
/// `labctl: `, and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or input that fails validation (exit 2).
    #[error("{0}")]
    Usage(String),
    /// No such job or request (exit 3).
    #[error("{0}")]
    NotFound(String),
    /// Not allowed in the current state, or lost a race (exit 4).
    #[error("{0}")]
    Conflict(String),
    /// The broker cannot be reached or is unavailable (exit 5).
    #[error("{0}")]
    Unavailable(String),
    /// Not authenticated or not permitted (exit 6).
    #[error("{0}")]
    Denied(String),
    /// Anything else (exit 1).
    #[error("{0}")]
    Other(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Other(_) => 1,
            Self::Usage(_) => 2,
            Self::NotFound(_) => 3,
            Self::Conflict(_) => 4,
            Self::Unavailable(_) => 5,
            Self::Denied(_) => 6,
        }
    }
}

/// What a call was about, for the advice on NOT_FOUND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subject {
    /// A lab's job or offer.
    Job,
    /// A trust's request.
    Request,
    /// Anything else.
    Other,
}

/// Maps a broker status to the operator's error. `addr` is the broker address in effect.
pub(crate) fn from_status(status: &Status, subject: Subject, addr: &str) -> CliError {
    let msg = status.message().trim();
    if status.code() == Code::Unknown
        && msg.contains("h2 protocol error")
        && addr.starts_with("http://")
    {
        // A plaintext client talking to a TLS listener fails inside HTTP/2, not with a status.
        return CliError::Unavailable(format!(
            "the broker at {addr} did not answer plaintext gRPC ({msg}); if it serves TLS, use an \
             https:// address with --ca (and --cert/--key for mutual TLS)"
        ));
    }
    match status.code() {
        Code::InvalidArgument => {
            let violations: Vec<(String, String)> = status
                .get_details_bad_request()
                .map(|b| {
                    b.field_violations
                        .into_iter()
                        .map(|v| (v.field, v.description))
                        .collect()
                })
                .unwrap_or_default();
            if violations.is_empty() {
                CliError::Usage(format!("the broker refused the input: {msg}"))
            } else {
                CliError::Usage(format!(
                    "the broker refused the input: {}",
                    describe(violations.iter().map(|(f, d)| (f.as_str(), d.as_str())))
                ))
            }
        }
        Code::NotFound => CliError::NotFound(match subject {
            Subject::Job => {
                format!("{msg}: it is not an offer or job of this lab; see `labctl jobs list`")
            }
            Subject::Request => {
                format!("{msg}: it is not a request of this trust; see `labctl requests list`")
            }
            Subject::Other => msg.to_string(),
        }),
        Code::FailedPrecondition | Code::Aborted => CliError::Conflict(msg.to_string()),
        Code::AlreadyExists => CliError::Conflict(format!(
            "{msg}: use a new order number, or resubmit exactly the same request"
        )),
        Code::Unauthenticated => CliError::Denied(format!(
            "not authenticated: {msg}; set LABAID_TOKEN or --token (see `labctl config show`)"
        )),
        Code::PermissionDenied => CliError::Denied(format!(
            "not permitted: {msg}; check which token is in effect with `labctl config show`"
        )),
        Code::DeadlineExceeded => CliError::Unavailable(format!(
            "the broker at {addr} did not answer in time; try again shortly"
        )),
        Code::Unavailable => {
            if looks_like_transport(msg) {
                CliError::Unavailable(unreachable(addr, msg))
            } else {
                CliError::Unavailable(format!(
                    "the broker at {addr} is unavailable ({msg}); try again shortly"
                ))
            }
        }
        Code::ResourceExhausted => CliError::Other(format!(
            "the broker is limiting calls ({msg}); wait a moment and retry"
        )),
        Code::Unknown if looks_like_transport(msg) => CliError::Unavailable(unreachable(addr, msg)),
        Code::Internal => CliError::Other(format!(
            "the broker failed ({msg}); try again, and tell the coordinator if it keeps happening"
        )),
        code => CliError::Other(format!("the broker answered {code:?}: {msg}")),
    }
}

/// Maps a failure to make a client.
pub(crate) fn from_client(err: &ClientError, addr: &str) -> CliError {
    match err {
        ClientError::Address { .. } => CliError::Usage(format!(
            "{err}; use a URL such as http://127.0.0.1:50051 in --addr or LABAID_ADDR"
        )),
        ClientError::Tls(reason) => CliError::Usage(format!(
            "cannot set up TLS ({reason}); check --ca, --cert and --key"
        )),
        ClientError::Token => CliError::Usage(
            "the token contains characters that cannot be sent in a header; check LABAID_TOKEN"
                .into(),
        ),
        ClientError::NoLeader { .. } => CliError::Unavailable(format!(
            "{err}; check --addr or LABAID_ADDR, and that one of the brokers leads"
        )),
        ClientError::Connect { source, .. } => {
            // The innermost cause is the one a person recognises ("Connection refused").
            let mut cause: &dyn std::error::Error = source;
            while let Some(next) = cause.source() {
                cause = next;
            }
            CliError::Unavailable(unreachable(addr, &cause.to_string()))
        }
    }
}

fn unreachable(addr: &str, cause: &str) -> String {
    format!(
        "cannot reach the broker at {addr} ({cause}); check --addr or LABAID_ADDR, and that the \
         broker is running"
    )
}

fn looks_like_transport(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    [
        "transport",
        "connect",
        "connection",
        "broken pipe",
        "h2 protocol",
        "tcp",
    ]
    .iter()
    .any(|w| m.contains(w))
}

/// Local validation failures as one line that names the flags to fix.
pub(crate) fn from_violations(v: &Violations) -> CliError {
    CliError::Usage(format!(
        "{}; nothing was sent",
        describe(
            v.0.iter()
                .map(|v| (v.field.as_str(), v.description.as_str()))
        )
    ))
}

/// `--nhs-number is not a valid NHS number (check digit); --tests must name at least one test`
fn describe<'a>(violations: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    violations
        .map(|(field, description)| format!("{} {description}", flag_for(field)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The labctl flag (or a readable name) for a field of a broker message.
fn flag_for(field: &str) -> String {
    let flag = match field {
        "order_number" => "--order-number",
        "patient.nhs_number" => "--nhs-number",
        "patient.family_name" => "--family-name",
        "patient.given_name" => "--given-name",
        "patient.birth_date" => "--birth-date",
        "tests" => "--tests",
        "priority" => "--priority",
        "collected_at" => "--collected-at",
        "clinical_note" => "--note",
        "reason" => "--reason",
        "detail" => "--detail",
        "observations" => "results:",
        "id" => "the id",
        "capacity" => "the capacity",
        "test" => "the test",
        _ => {
            // observations[2].value -> "observation 3 value"
            if let Some(rest) = field.strip_prefix("observations[")
                && let Some((index, part)) = rest.split_once("].")
                && let Ok(i) = index.parse::<usize>()
            {
                return format!("observation {} {part}", i + 1);
            }
            return field.to_string();
        }
    };
    flag.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_status_maps_to_its_documented_exit_code() {
        let cases = [
            (Code::InvalidArgument, 2),
            (Code::NotFound, 3),
            (Code::FailedPrecondition, 4),
            (Code::Aborted, 4),
            (Code::AlreadyExists, 4),
            (Code::Unavailable, 5),
            (Code::DeadlineExceeded, 5),
            (Code::Unauthenticated, 6),
            (Code::PermissionDenied, 6),
            (Code::Internal, 1),
            (Code::ResourceExhausted, 1),
        ];
        for (code, exit) in cases {
            let e = from_status(&Status::new(code, "x"), Subject::Other, "http://b");
            assert_eq!(e.exit_code(), exit, "{code:?}");
        }
    }

    #[test]
    fn the_server_message_is_kept_and_advice_added() {
        let e = from_status(
            &Status::failed_precondition("offer expired 40 s ago and went to another lab"),
            Subject::Job,
            "http://b",
        );
        assert_eq!(
            e.to_string(),
            "offer expired 40 s ago and went to another lab"
        );
        let e = from_status(
            &Status::not_found("job 1 not found"),
            Subject::Job,
            "http://b",
        );
        assert!(e.to_string().contains("labctl jobs list"), "{e}");
    }

    #[test]
    fn violations_name_the_flags_to_fix() {
        let mut v = Violations::default();
        v.add(
            "patient.nhs_number",
            "is not a valid NHS number (check digit)",
        );
        v.add("observations[0].value", "is required");
        let e = from_violations(&v);
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            "--nhs-number is not a valid NHS number (check digit); observation 1 value is \
             required; nothing was sent"
        );
    }
}
