//! `labctl requests ...`: a trust's requests: submit (validated locally with the broker's own
//! rules first), list, show, watch (resuming after a dropped connection) and cancel.

use clap::Subcommand;

use super::error::{CliError, Subject, from_violations};
use super::follow::{self, Feed};
use super::output::{
    Output, Style, Table, instant, observation_lines, priority_name, priority_style, relative,
    request_event_json, request_event_kind_arg, request_event_name, request_json, state_name,
    state_style,
};
use super::{Ctx, PriorityArg, catalogue, parse_id, parse_state, retry, time};
use crate::client::Client;
use crate::domain::{NewRequest, RawSubmission, Timestamp};
use crate::proto;

#[derive(Debug, Subcommand)]
pub(crate) enum RequestsCommand {
    /// Submit a request for blood tests on one sample; prints the new request's id
    Submit(SubmitArgs),
    /// List this trust's requests, newest first
    List {
        /// Only requests in these states (comma-separated): queued, offered, accepted, received,
        /// resulted, failed, expired, cancelled
        #[arg(long, value_delimiter = ',', value_parser = parse_state, value_name = "STATE")]
        status: Vec<proto::RequestState>,
        /// Only requests of these priorities (comma-separated)
        #[arg(long, value_delimiter = ',', value_enum, value_name = "PRIORITY")]
        priority: Vec<PriorityArg>,
        /// Most requests to show, 1 to 1000
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Show one request in full, with its results
    Show {
        /// The request's id
        id: String,
    },
    /// Follow this trust's request events and results as they happen; Ctrl-C to stop
    Watch {
        /// Start after this event sequence number (0 replays every retained event)
        #[arg(long, default_value_t = 0, value_name = "SEQUENCE")]
        after: u64,
        /// Show only events of this kind (repeat for several); the broker leaves out the rest
        #[arg(long = "kind", value_name = "KIND", value_parser = request_event_kind_arg())]
        kinds: Vec<i32>,
    },
    /// Cancel a request that is not yet final; a lab that accepted it is told
    Cancel {
        /// The request's id
        id: String,
        /// Why (passed to the lab)
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    /// The trust's own order number, to label the sample; resubmitting the same request with it
    /// is safe
    #[arg(long, value_name = "ORDER")]
    order_number: String,
    /// The patient's NHS number (10 digits)
    #[arg(long, value_name = "NUMBER")]
    nhs_number: String,
    /// Catalogue codes of the tests, comma-separated, e.g. K,UE (see `labctl catalogue`)
    #[arg(long, value_delimiter = ',', required = true, value_name = "CODES")]
    tests: Vec<String>,
    /// Clinical priority
    #[arg(long, value_enum)]
    priority: PriorityArg,
    /// When the sample was collected: RFC 3339 (2024-06-03T09:40:00Z), `now`, or relative such
    /// as -20m or -1h30m
    #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
    collected_at: String,
    /// The patient's family name
    #[arg(long, default_value = "", value_name = "NAME")]
    family_name: String,
    /// The patient's given name
    #[arg(long, default_value = "", value_name = "NAME")]
    given_name: String,
    /// The patient's date of birth, YYYY-MM-DD
    #[arg(long, default_value = "", value_name = "DATE")]
    birth_date: String,
    /// Clinical details for the lab, at most 500 characters
    #[arg(long, default_value = "", value_name = "TEXT")]
    note: String,
}

/// The trust's event stream, of the kinds asked for (every kind when none is).
struct RequestFeed {
    kinds: Vec<i32>,
}

impl Feed for RequestFeed {
    type Event = proto::RequestEvent;

    async fn open(
        &self,
        client: Client,
        after: u64,
    ) -> Result<tonic::Streaming<proto::RequestEvent>, tonic::Status> {
        client
            .requests()
            .watch_request_events(proto::WatchRequestEventsRequest {
                after_sequence: after,
                kinds: self.kinds.clone(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    fn sequence(event: &proto::RequestEvent) -> u64 {
        event.sequence
    }
}

pub(crate) async fn run(ctx: &Ctx, command: RequestsCommand) -> Result<(), CliError> {
    let out = ctx.out();
    let fail = |s: tonic::Status| ctx.status(&s, Subject::Request);
    match command {
        RequestsCommand::Submit(args) => submit(ctx, args).await,
        RequestsCommand::List {
            status,
            priority,
            limit,
        } => {
            let client = ctx.connect().await?;
            let priorities: Vec<_> = priority.iter().map(|p| p.proto()).collect();
            let requests = client
                .list_requests(&status, &priorities, limit)
                .await
                .map_err(fail)?;
            print_list(out, &requests)
        }
        RequestsCommand::Show { id } => {
            let id = parse_id(&id)?;
            let client = ctx.connect().await?;
            let r = client
                .requests()
                .get_request(proto::GetRequestRequest { id })
                .await
                .map_err(fail)?
                .into_inner();
            print_request(out, &r)
        }
        RequestsCommand::Watch { after, kinds } => watch(ctx, after, &kinds).await,
        RequestsCommand::Cancel { id, reason } => {
            let id = parse_id(&id)?;
            let client = ctx.connect().await?;
            let r = client
                .requests()
                .cancel_request(proto::CancelRequestRequest { id, reason })
                .await
                .map_err(fail)?
                .into_inner();
            if out.is_json() {
                out.json(&request_json(&r))
            } else {
                out.line(&format!("cancelled {} (order {})", r.id, r.order_number))
            }
        }
    }
}

async fn submit(ctx: &Ctx, args: SubmitArgs) -> Result<(), CliError> {
    let now = Timestamp::now();
    let collected_at = time::parse_time(&args.collected_at, now)
        .map_err(|e| CliError::Usage(format!("--collected-at: {e}")))?;
    let raw = RawSubmission {
        order_number: args.order_number,
        nhs_number: args.nhs_number,
        family_name: args.family_name,
        given_name: args.given_name,
        birth_date: args.birth_date,
        tests: args.tests,
        priority: Some(args.priority.domain()),
        collected_at: Some(collected_at),
        clinical_note: args.note,
    };
    let client = ctx.connect().await?;
    let catalogue = catalogue::fetch(ctx, &client).await?;
    let new = NewRequest::validate(&raw, &catalogue, now).map_err(|v| from_violations(&v))?;
    let message = proto::SubmitRequestRequest {
        order_number: new.order_number.as_str().to_string(),
        patient: Some(proto::Patient {
            nhs_number: new.patient.nhs_number.as_str().to_string(),
            family_name: new.patient.family_name.as_str().to_string(),
            given_name: new.patient.given_name.as_str().to_string(),
            birth_date: new.patient.birth_date.clone(),
        }),
        tests: new.tests.codes().iter().map(ToString::to_string).collect(),
        priority: args.priority.proto() as i32,
        collected_at: Some(super::output::proto_time(new.collected_at)),
        clinical_note: new.clinical_note.as_str().to_string(),
    };
    let (r, replayed) = match client.requests().submit_request(message.clone()).await {
        Ok(resp) => {
            let resp = resp.into_inner();
            let r = resp
                .request
                .ok_or_else(|| CliError::Other("the broker answered without the request".into()))?;
            (r, resp.replayed)
        }
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            let relative = retry::is_relative(&args.collected_at);
            (
                original_of(ctx, &client, &message, relative, now, &s).await?,
                true,
            )
        }
        Err(s) => return Err(ctx.status(&s, Subject::Request)),
    };
    print_submitted(ctx.out(), &r, replayed)
}

/// The original request of a retried submission that the broker refused as different: the
/// original when only a relative collection time moved with the clock, else the refusal, naming
/// the flags that differ.
async fn original_of(
    ctx: &Ctx,
    client: &Client,
    retry: &proto::SubmitRequestRequest,
    relative: bool,
    now: Timestamp,
    refusal: &tonic::Status,
) -> Result<proto::Request, CliError> {
    let original = client
        .request_by_order(&retry.order_number)
        .await
        .map_err(|s| ctx.status(&s, Subject::Request))?;
    // Purged since, or never this trust's: the broker's own answer is all there is to say.
    let Some(original) = original else {
        return Err(ctx.status(refusal, Subject::Request));
    };
    let differ = retry::differing_flags(&original, retry, relative, now);
    if differ.is_empty() {
        return Ok(original);
    }
    Err(CliError::Conflict(format!(
        "order number {} was already used for request {}, which differs in {}; resubmit with \
         the original values, or use a new order number for a new request",
        retry.order_number,
        original.id,
        differ.join(", ")
    )))
}

/// Prints a submitted (or already submitted) request: its id alone on stdout, so
/// `ID=$(labctl requests submit ...)` works, and the story on stderr.
fn print_submitted(out: &Output, r: &proto::Request, replayed: bool) -> Result<(), CliError> {
    if out.is_json() {
        return out.json(&serde_json::json!({
            "request": request_json(r),
            "replayed": replayed,
        }));
    }
    out.line(&r.id)?;
    let mut story = format!(
        "labctl: {} {} ({}, {}): {}",
        if replayed {
            "already submitted"
        } else {
            "submitted"
        },
        r.order_number,
        priority_name(r.priority),
        r.tests.join(","),
        state_name(r.state)
    );
    if !r.lab.is_empty() {
        story.push_str(&format!(
            " to {}, result expected {}",
            r.lab,
            relative(r.predicted_result_at.as_ref(), Timestamp::now())
        ));
    } else if !r.status_detail.is_empty() {
        story.push_str(&format!(" ({})", r.status_detail));
    }
    eprintln!("{story}");
    Ok(())
}

async fn watch(ctx: &Ctx, after: u64, kinds: &[i32]) -> Result<(), CliError> {
    let interrupted = follow::interrupted()?;
    tokio::pin!(interrupted);
    let feed = RequestFeed {
        kinds: kinds.to_vec(),
    };
    let mut events = follow::start(ctx, feed, after).await?;
    let out = ctx.out();
    if !out.is_json() {
        eprintln!("labctl: following request events; Ctrl-C to stop");
    }
    loop {
        // Stdout's reader went away (`| head`): no one to watch for.
        if out.closed() {
            return Ok(());
        }
        tokio::select! {
            () = &mut interrupted => return Ok(()),
            event = events.recv() => match event {
                None => return Ok(()),
                Some(Err(e)) => return Err(e),
                Some(Ok(e)) => print_event(out, &e)?,
            },
        }
    }
}

fn print_event(out: &Output, e: &proto::RequestEvent) -> Result<(), CliError> {
    if out.is_json() {
        return out.json_line(&request_event_json(e));
    }
    let Some(r) = &e.request else {
        return Ok(());
    };
    let when = e
        .time
        .as_ref()
        .map(|t| time::format_clock(instant(t)))
        .unwrap_or_default();
    let kind = request_event_name(e.kind);
    let kind_style = if e.kind == proto::RequestEventKind::CriticalResult as i32
        || e.kind == proto::RequestEventKind::Failed as i32
        || e.kind == proto::RequestEventKind::Expired as i32
    {
        Style::Red
    } else {
        Style::Plain
    };
    let lab = if r.lab.is_empty() { "-" } else { &r.lab };
    out.line(&format!(
        "{when}  #{:<5} {}  {}  {:<12} {:<9} {:<4} {}",
        e.sequence,
        out.paint(&format!("{kind:<15}"), kind_style),
        r.id,
        r.order_number,
        out.paint(&format!("{:<9}", state_name(r.state)), state_style(r.state)),
        lab,
        r.status_detail
    ))?;
    if e.kind == proto::RequestEventKind::Resulted as i32 {
        for line in observation_lines(out, &r.results) {
            out.line(&format!("          {line}"))?;
        }
    }
    Ok(())
}

fn print_list(out: &Output, requests: &[proto::Request]) -> Result<(), CliError> {
    if out.is_json() {
        return out.json(&serde_json::json!({
            "requests": requests.iter().map(request_json).collect::<Vec<_>>(),
        }));
    }
    if requests.is_empty() {
        return out.line("no requests");
    }
    let now = Timestamp::now();
    let mut table = Table::new([
        "ID",
        "ORDER",
        "PRIORITY",
        "STATE",
        "TESTS",
        "LAB",
        "SAMPLE DEADLINE",
        "UPDATED",
    ]);
    for r in requests {
        table.styled_row(vec![
            (r.id.clone(), Style::Plain),
            (r.order_number.clone(), Style::Plain),
            (priority_name(r.priority).into(), priority_style(r.priority)),
            (state_name(r.state).into(), state_style(r.state)),
            (r.tests.join(","), Style::Plain),
            (
                if r.lab.is_empty() {
                    "-".into()
                } else {
                    r.lab.clone()
                },
                Style::Plain,
            ),
            (relative(r.sample_deadline.as_ref(), now), Style::Plain),
            (relative(r.updated_at.as_ref(), now), Style::Plain),
        ]);
    }
    out.table(&table)
}

fn print_request(out: &Output, r: &proto::Request) -> Result<(), CliError> {
    if out.is_json() {
        return out.json(&request_json(r));
    }
    let now = Timestamp::now();
    let when = |t: Option<&prost_types::Timestamp>| match t {
        Some(ts) => format!(
            "{} ({})",
            time::format_rfc3339(instant(ts)),
            time::relative(instant(ts), now)
        ),
        None => "-".into(),
    };
    let mut table = Table::new(["FIELD", "VALUE"]);
    let mut add = |k: &str, v: String| table.row([k.to_string(), v]);
    add("id", r.id.clone());
    add("order number", r.order_number.clone());
    add(
        "state",
        out.paint(state_name(r.state), state_style(r.state)),
    );
    add("priority", priority_name(r.priority).into());
    add("tests", r.tests.join(","));
    add(
        "lab",
        if r.lab.is_empty() {
            "-".into()
        } else {
            r.lab.clone()
        },
    );
    if let Some(p) = &r.patient {
        let name = format!("{} {}", p.given_name, p.family_name);
        if !name.trim().is_empty() {
            add("patient", name.trim().to_string());
        }
        add("NHS number", p.nhs_number.clone());
        if !p.birth_date.is_empty() {
            add("birth date", p.birth_date.clone());
        }
    }
    add("collected", when(r.collected_at.as_ref()));
    add("sample deadline", when(r.sample_deadline.as_ref()));
    add("submitted", when(r.submitted_at.as_ref()));
    add("updated", when(r.updated_at.as_ref()));
    add("predicted result", when(r.predicted_result_at.as_ref()));
    if !r.clinical_note.is_empty() {
        add("clinical note", r.clinical_note.clone());
    }
    if !r.status_detail.is_empty() {
        add("detail", r.status_detail.clone());
    }
    for (i, line) in observation_lines(out, &r.results).into_iter().enumerate() {
        add(if i == 0 { "results" } else { "" }, line);
    }
    let text = table.render(out);
    out.line(
        text.split_once('\n')
            .map_or("", |(_, rest)| rest)
            .trim_end(),
    )
}
