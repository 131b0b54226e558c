//! `labctl jobs ...`: a lab's jobs (open offers included): list, show, accept, decline, record the
//! sample, post results, fail; `jobs work` is the interactive bench (in `work/`).

use std::path::PathBuf;

use clap::Subcommand;

use super::error::{CliError, Subject, from_violations};
use super::observations::{RawObservation, parse_file, parse_obs};
use super::output::{
    Output, Style, Table, instant, job_json, observation_lines, priority_name, priority_style,
    relative, state_name, state_style, time_left,
};
use super::{Ctx, PriorityArg, catalogue, parse_id, parse_state};
use crate::domain::{Observation, TestSet, Timestamp, Violations};
use crate::proto;

#[derive(Debug, Subcommand)]
pub(crate) enum JobsCommand {
    /// Work offers and jobs interactively at the bench: offers appear as they arrive with their
    /// lease counting down; one key accepts, declines, records the sample or enters results.
    /// Reconnects by itself; an action is shown done only once the broker has confirmed it
    Work,
    /// List this lab's jobs and open offers, newest first
    List {
        /// Only jobs in these states (comma-separated): queued, offered, accepted, received,
        /// resulted, failed, expired, cancelled
        #[arg(long, value_delimiter = ',', value_parser = parse_state, value_name = "STATE")]
        status: Vec<proto::RequestState>,
        /// Only jobs of these priorities (comma-separated)
        #[arg(long, value_delimiter = ',', value_enum, value_name = "PRIORITY")]
        priority: Vec<PriorityArg>,
        /// Most jobs to show, 1 to 1000
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Show one job in full (patient details once accepted)
    Show {
        /// The job's id
        id: String,
    },
    /// Accept an open offer: the sample will come to this lab
    Accept {
        /// The job's id
        id: String,
    },
    /// Decline an open offer; it goes to another lab at once and never comes back here
    Decline {
        /// The job's id
        id: String,
        /// Why (shown to the trust), e.g. "analyser down"
        #[arg(long)]
        reason: String,
    },
    /// Record that the sample of an accepted job has arrived
    Receive {
        /// The job's id
        id: String,
    },
    /// Post results for a job whose sample has arrived: one or more for every requested test
    Result {
        /// The job's id
        id: String,
        /// A result, TEST[.ANALYTE]=VALUE[UNIT][;ref=RANGE][;flag=FLAG], e.g. K=5.1mmol/L (the
        /// unit defaults to the catalogue's); repeat for more
        #[arg(long = "obs", value_name = "RESULT")]
        obs: Vec<String>,
        /// Read results from a CSV file (header: test,value[,analyte,unit,reference_range,flag])
        /// or a JSON file (an array of objects with those keys); - for stdin
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Fail a job whose sample cannot be used; the trust is told to recollect
    Fail {
        /// The job's id
        id: String,
        /// Why the sample cannot be used
        #[arg(long, value_enum)]
        reason: FailReason,
        /// More detail (required with --reason other)
        #[arg(long)]
        detail: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FailReason {
    /// The sample was haemolysed
    Haemolysed,
    /// Too little sample
    Insufficient,
    /// Unlabelled or mislabelled
    Unlabelled,
    /// Another reason, given in --detail
    Other,
}

pub(crate) async fn run(ctx: &Ctx, command: JobsCommand) -> Result<(), CliError> {
    let out = ctx.out();
    let fail = |s: tonic::Status| ctx.status(&s, Subject::Job);
    match command {
        JobsCommand::Work => super::work::run(ctx).await,
        JobsCommand::List {
            status,
            priority,
            limit,
        } => {
            let client = ctx.connect().await?;
            let priorities: Vec<_> = priority.iter().map(|p| p.proto()).collect();
            let jobs = client
                .list_jobs(&status, &priorities, limit)
                .await
                .map_err(fail)?;
            print_list(out, &jobs)
        }
        JobsCommand::Show { id } => {
            let id = parse_id(&id)?;
            let client = ctx.connect().await?;
            let job = client
                .labs()
                .get_job(proto::GetJobRequest { id })
                .await
                .map_err(fail)?
                .into_inner();
            print_job(out, &job)
        }
        JobsCommand::Accept { id } => {
            let id = parse_id(&id)?;
            let client = ctx.connect().await?;
            let job = client
                .labs()
                .accept_job(proto::AcceptJobRequest { id })
                .await
                .map_err(fail)?
                .into_inner();
            let now = Timestamp::now();
            done(
                out,
                &job,
                format!(
                    "accepted {}: {} {} from {}, order {}; sample deadline {}",
                    job.id,
                    priority_name(job.priority),
                    job.tests.join(","),
                    job.trust,
                    job.order_number,
                    relative(job.sample_deadline.as_ref(), now)
                ),
            )
        }
        JobsCommand::Decline { id, reason } => {
            let id = parse_id(&id)?;
            if reason.trim().is_empty() {
                return Err(CliError::Usage(
                    "--reason must say why the lab declines (the trust sees it)".into(),
                ));
            }
            let client = ctx.connect().await?;
            let resp = client
                .labs()
                .decline_job(proto::DeclineJobRequest { id, reason })
                .await
                .map_err(fail)?
                .into_inner();
            if out.is_json() {
                out.json(&serde_json::json!({ "id": resp.id, "declined": true }))
            } else {
                out.line(&format!(
                    "declined {}; the broker is offering it to another lab",
                    resp.id
                ))
            }
        }
        JobsCommand::Receive { id } => {
            let id = parse_id(&id)?;
            let client = ctx.connect().await?;
            let job = client
                .labs()
                .receive_sample(proto::ReceiveSampleRequest { id })
                .await
                .map_err(fail)?
                .into_inner();
            let line = format!(
                "sample of {} received (order {}); post results with `labctl jobs result {} --obs ...`",
                job.id, job.order_number, job.id
            );
            done(out, &job, line)
        }
        JobsCommand::Result { id, obs, file } => {
            let id = parse_id(&id)?;
            let mut raw = obs
                .iter()
                .map(|o| parse_obs(o).map_err(CliError::Usage))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(path) = &file {
                raw.extend(read_results_file(path)?);
            }
            if raw.is_empty() {
                return Err(CliError::Usage(
                    "give the results with --obs TEST=VALUE (e.g. --obs K=5.1mmol/L) or --file FILE"
                        .into(),
                ));
            }
            let client = ctx.connect().await?;
            let job = client
                .labs()
                .get_job(proto::GetJobRequest { id: id.clone() })
                .await
                .map_err(fail)?
                .into_inner();
            let catalogue = catalogue::fetch(ctx, &client).await?;
            let observations = validate_results(&job, &raw, &catalogue)?;
            let job = client
                .labs()
                .post_results(proto::PostResultsRequest { id, observations })
                .await
                .map_err(fail)?
                .into_inner();
            let mut line = format!("results posted for {} (order {})", job.id, job.order_number);
            if job
                .results
                .iter()
                .any(|o| super::output::is_critical(o.flag))
            {
                line.push_str(&out.paint(
                    "; CRITICAL result: the trust is alerted, phone the clinician too",
                    Style::Red,
                ));
            }
            done(out, &job, line)
        }
        JobsCommand::Fail { id, reason, detail } => {
            let id = parse_id(&id)?;
            let detail = detail.unwrap_or_default();
            if reason == FailReason::Other && detail.trim().is_empty() {
                return Err(CliError::Usage(
                    "--detail is required with --reason other: say what was wrong with the sample"
                        .into(),
                ));
            }
            let reason = match reason {
                FailReason::Haemolysed => proto::FailureReason::Haemolysed,
                FailReason::Insufficient => proto::FailureReason::Insufficient,
                FailReason::Unlabelled => proto::FailureReason::Unlabelled,
                FailReason::Other => proto::FailureReason::Other,
            };
            let client = ctx.connect().await?;
            let job = client
                .labs()
                .fail_job(proto::FailJobRequest {
                    id,
                    reason: reason as i32,
                    detail,
                })
                .await
                .map_err(fail)?
                .into_inner();
            let line = format!("failed {}: {}", job.id, job.status_detail);
            done(out, &job, line)
        }
    }
}

/// Prints the job as JSON, or the one-line summary.
fn done(out: &Output, job: &proto::Job, line: String) -> Result<(), CliError> {
    if out.is_json() {
        out.json(&job_json(job))
    } else {
        out.line(&line)
    }
}

fn read_results_file(path: &std::path::Path) -> Result<Vec<RawObservation>, CliError> {
    let name = path.display().to_string();
    let text = if name == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| CliError::Other(format!("cannot read the results file {name}: {e}")))?;
    parse_file(&text, &name)
}

/// Checks the results with the broker's own rules, against the job's tests, before sending.
pub(crate) fn validate_results(
    job: &proto::Job,
    raw: &[RawObservation],
    catalogue: &crate::domain::Catalogue,
) -> Result<Vec<proto::Observation>, CliError> {
    let tests = TestSet::parse(&job.tests, catalogue)
        .map_err(|e| CliError::Other(format!("the job's tests are not in the catalogue: {e}")))?;
    let mut v = Violations::default();
    let mut observations = Vec::with_capacity(raw.len());
    for (i, o) in raw.iter().enumerate() {
        // A bare `K=5.1` takes the catalogue's unit for the test.
        let unit = if o.unit.is_empty() && o.analyte.is_empty() {
            crate::domain::TestCode::parse(&o.test)
                .ok()
                .and_then(|c| catalogue.get(&c).and_then(|d| d.unit.clone()))
                .unwrap_or_default()
        } else {
            o.unit.clone()
        };
        let raw_obs = crate::domain::RawObservation {
            test: &o.test,
            analyte: &o.analyte,
            value: &o.value,
            unit: &unit,
            reference_range: &o.reference_range,
            flag: o.flag,
        };
        if let Some(ok) = Observation::validate(
            &format!("observations[{i}]"),
            &raw_obs,
            &tests,
            catalogue,
            &mut v,
        ) {
            observations.push(ok);
        }
    }
    for code in tests.codes() {
        if !raw
            .iter()
            .any(|o| o.test.trim().eq_ignore_ascii_case(code.as_str()))
        {
            v.add(
                "observations",
                format!("no result for requested test {code}: add --obs {code}=VALUE"),
            );
        }
    }
    if !v.is_empty() {
        return Err(from_violations(&v));
    }
    Ok(observations
        .into_iter()
        .map(|o| proto::Observation {
            test: o.test.to_string(),
            analyte: o.analyte,
            value: o.value,
            unit: o.unit,
            reference_range: o.reference_range,
            flag: crate::wire::flag_to(o.flag) as i32,
        })
        .collect())
}

fn print_list(out: &Output, jobs: &[proto::Job]) -> Result<(), CliError> {
    if out.is_json() {
        return out.json(&serde_json::json!({
            "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(),
        }));
    }
    if jobs.is_empty() {
        return out.line("no jobs");
    }
    let now = Timestamp::now();
    let mut table = Table::new([
        "ID",
        "PRIORITY",
        "STATE",
        "TESTS",
        "TRUST",
        "ORDER",
        "SAMPLE DEADLINE",
        "LEASE LEFT",
    ]);
    for j in jobs {
        let offered = j.state == proto::RequestState::Offered as i32;
        table.styled_row(vec![
            (j.id.clone(), Style::Plain),
            (priority_name(j.priority).into(), priority_style(j.priority)),
            (state_name(j.state).into(), state_style(j.state)),
            (j.tests.join(","), Style::Plain),
            (j.trust.clone(), Style::Plain),
            (j.order_number.clone(), Style::Plain),
            (relative(j.sample_deadline.as_ref(), now), Style::Plain),
            (
                if offered {
                    time_left(j.lease_expires_at.as_ref(), now)
                } else {
                    "-".into()
                },
                Style::Plain,
            ),
        ]);
    }
    out.table(&table)
}

fn print_job(out: &Output, j: &proto::Job) -> Result<(), CliError> {
    if out.is_json() {
        return out.json(&job_json(j));
    }
    let now = Timestamp::now();
    let when = |t: Option<&prost_types::Timestamp>| match t {
        Some(ts) => format!(
            "{} ({})",
            super::time::format_rfc3339(instant(ts)),
            super::time::relative(instant(ts), now)
        ),
        None => "-".into(),
    };
    let mut table = Table::new(["FIELD", "VALUE"]);
    let mut add = |k: &str, v: String| table.row([k.to_string(), v]);
    add("id", j.id.clone());
    add(
        "state",
        out.paint(state_name(j.state), state_style(j.state)),
    );
    add("priority", priority_name(j.priority).into());
    add("tests", j.tests.join(","));
    add("trust", j.trust.clone());
    add("order number", j.order_number.clone());
    match &j.patient {
        Some(p) => {
            let name = format!("{} {}", p.given_name, p.family_name);
            if !name.trim().is_empty() {
                add("patient", name.trim().to_string());
            }
            add("NHS number", p.nhs_number.clone());
            if !p.birth_date.is_empty() {
                add("birth date", p.birth_date.clone());
            }
        }
        None => add("patient", "(shown once the job is accepted)".into()),
    }
    add("collected", when(j.collected_at.as_ref()));
    add("sample deadline", when(j.sample_deadline.as_ref()));
    if j.state == proto::RequestState::Offered as i32 {
        add(
            "lease",
            format!("{} left", time_left(j.lease_expires_at.as_ref(), now)),
        );
    }
    add("predicted result", when(j.predicted_result_at.as_ref()));
    add("transport", format!("{} min", j.transport_minutes));
    if !j.clinical_note.is_empty() {
        add("clinical note", j.clinical_note.clone());
    }
    if !j.status_detail.is_empty() {
        add("detail", j.status_detail.clone());
    }
    for (i, line) in observation_lines(out, &j.results).into_iter().enumerate() {
        add(if i == 0 { "results" } else { "" }, line);
    }
    // The header row adds nothing for a record: print the rows only.
    let text = table.render(out);
    out.line(
        text.split_once('\n')
            .map_or("", |(_, rest)| rest)
            .trim_end(),
    )
}
