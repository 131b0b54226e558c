//! `labctl coordinator overview|labs|set-status|reassign`: the incident coordinator's view of the
//! network and decisions about labs that went dark, over the CoordinatorService (a coordinator's
//! token, e.g. LABAID_TOKEN=demo:coordinator for the demo broker).

use clap::Subcommand;
use serde_json::{Value, json};

use super::error::{CliError, Subject};
use super::output::{Output, Style, Table, lab_status_name, priority_name, state_name};
use super::{Ctx, parse_id};
use crate::domain::MAX_NOTE_CHARS;
use crate::proto;

#[derive(Debug, Subcommand)]
pub(crate) enum CoordinatorCommand {
    /// Waiting requests per priority with the oldest wait, open offers, stranded jobs, and labs
    Overview,
    /// Every lab: status, and capacity and jobs in flight per test
    Labs,
    /// Set a lab's status on its behalf (e.g. offline when it stopped answering); offline also
    /// withdraws its open offers, which are routed to other labs
    SetStatus {
        /// The lab's ODS code, e.g. RJ7
        lab: String,
        /// The new status
        #[arg(value_enum)]
        status: StatusArg,
        /// Why, e.g. "analyser down, phoned 04:20" (recorded in the audit trail; no patient data)
        #[arg(long)]
        reason: String,
    },
    /// Take an accepted job whose sample has not arrived from its lab and route it again
    Reassign {
        /// The job's id
        id: String,
        /// Why (recorded, and shown to the trust and the lab), e.g. "lab offline"
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum StatusArg {
    /// Take new offers
    Online,
    /// Keep current work, take no new offers
    Draining,
    /// Take no new offers; open offers are withdrawn and routed again
    Offline,
}

/// A reason is required and bounded, checked before anything is sent.
fn reason(raw: &str) -> Result<String, CliError> {
    let r = raw.trim();
    if r.is_empty() {
        return Err(CliError::Usage(
            "--reason is required: say why, e.g. --reason \"analyser down\"".into(),
        ));
    }
    if r.chars().count() > MAX_NOTE_CHARS {
        return Err(CliError::Usage(format!(
            "--reason is longer than {MAX_NOTE_CHARS} characters"
        )));
    }
    Ok(r.to_string())
}

pub(crate) async fn run(ctx: &Ctx, command: CoordinatorCommand) -> Result<(), CliError> {
    match command {
        CoordinatorCommand::Overview => overview(ctx).await,
        CoordinatorCommand::Labs => labs(ctx).await,
        CoordinatorCommand::SetStatus {
            lab,
            status,
            reason: why,
        } => {
            let why = reason(&why)?;
            let status = match status {
                StatusArg::Online => proto::LabStatus::Online,
                StatusArg::Draining => proto::LabStatus::Draining,
                StatusArg::Offline => proto::LabStatus::Offline,
            };
            let client = ctx.connect().await?;
            let resp = client
                .coordinator()
                .set_lab_status(proto::SetLabStatusRequest {
                    lab: lab.trim().to_ascii_uppercase(),
                    status: status as i32,
                    reason: why,
                })
                .await
                .map_err(|s| ctx.status(&s, Subject::Other))?
                .into_inner();
            let out = ctx.out();
            let name = lab_status_name(resp.status);
            if out.is_json() {
                return out.json(&json!({
                    "lab": resp.lab,
                    "status": name,
                    "offers_withdrawn": resp.offers_withdrawn,
                }));
            }
            let mut line = format!("{} is now {name}", resp.lab);
            if resp.offers_withdrawn > 0 {
                line.push_str(&format!(
                    "; {} open offer(s) withdrawn and routed to other labs",
                    resp.offers_withdrawn
                ));
            }
            out.line(&line)
        }
        CoordinatorCommand::Reassign { id, reason: why } => {
            let id = parse_id(&id)?;
            let why = reason(&why)?;
            let client = ctx.connect().await?;
            let resp = client
                .coordinator()
                .reassign_job(proto::ReassignJobRequest { id, reason: why })
                .await
                .map_err(|s| ctx.status(&s, Subject::Other))?
                .into_inner();
            let out = ctx.out();
            let state = state_name(resp.state);
            if out.is_json() {
                return out.json(&json!({
                    "id": resp.id,
                    "state": state,
                    "lab": (!resp.lab.is_empty()).then_some(&resp.lab),
                }));
            }
            out.line(&if resp.lab.is_empty() {
                format!("{} reassigned: now {state}", resp.id)
            } else {
                format!("{} reassigned: now {state} to {}", resp.id, resp.lab)
            })
        }
    }
}

async fn fetch_overview(ctx: &Ctx) -> Result<proto::Overview, CliError> {
    let client = ctx.connect().await?;
    Ok(client
        .coordinator()
        .get_overview(proto::GetOverviewRequest {})
        .await
        .map_err(|s| ctx.status(&s, Subject::Other))?
        .into_inner())
}

fn lab_json(l: &proto::Lab) -> Value {
    json!({
        "ods": l.ods,
        "name": l.name,
        "status": lab_status_name(l.status),
        "tests": l.tests.iter().map(|t| json!({
            "test": t.test,
            "capacity": t.capacity,
            "in_flight": t.in_flight,
        })).collect::<Vec<_>>(),
    })
}

fn wait(seconds: u32) -> String {
    match seconds {
        0 => "-".into(),
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn status_style(status: i32) -> Style {
    match lab_status_name(status) {
        "online" => Style::Green,
        "draining" => Style::Yellow,
        _ => Style::Red,
    }
}

fn labs_table(out: &Output, labs: &[proto::Lab]) -> Result<(), CliError> {
    let mut table = Table::new(["LAB", "STATUS", "IN FLIGHT", "CAPACITY", "NAME"]);
    for l in labs {
        let (used, cap) = l.tests.iter().fold((0u64, 0u64), |(u, c), t| {
            (u + u64::from(t.in_flight), c + u64::from(t.capacity))
        });
        table.styled_row(vec![
            (l.ods.clone(), Style::Plain),
            (
                lab_status_name(l.status).to_string(),
                status_style(l.status),
            ),
            (used.to_string(), Style::Plain),
            (cap.to_string(), Style::Plain),
            (l.name.clone(), Style::Plain),
        ]);
    }
    out.table(&table)
}

async fn overview(ctx: &Ctx) -> Result<(), CliError> {
    let o = fetch_overview(ctx).await?;
    let out = ctx.out();
    if out.is_json() {
        return out.json(&json!({
            "queues": o.queues.iter().map(|q| json!({
                "priority": priority_name(q.priority),
                "waiting": q.waiting,
                "oldest_wait_seconds": q.oldest_wait_seconds,
            })).collect::<Vec<_>>(),
            "offers_open": o.offers_open,
            "stranded": o.stranded.iter().map(|s| json!({
                "id": s.id,
                "trust": s.trust,
                "lab": s.lab,
                "priority": priority_name(s.priority),
                "tests": s.tests,
            })).collect::<Vec<_>>(),
            "labs": o.labs.iter().map(lab_json).collect::<Vec<_>>(),
        }));
    }
    let mut queues = Table::new(["PRIORITY", "WAITING", "OLDEST WAIT"]);
    for q in &o.queues {
        queues.row([
            priority_name(q.priority).to_string(),
            q.waiting.to_string(),
            wait(q.oldest_wait_seconds),
        ]);
    }
    out.table(&queues)?;
    out.line(&format!("Open offers: {}", o.offers_open))?;
    if o.stranded.is_empty() {
        out.line("Stranded jobs: none")?;
    } else {
        out.line(&format!(
            "Stranded jobs (accepted at an offline lab, sample not arrived): {}",
            o.stranded.len()
        ))?;
        let mut stranded = Table::new(["JOB", "TRUST", "LAB", "PRIORITY", "TESTS"]);
        for s in &o.stranded {
            stranded.row([
                s.id.clone(),
                s.trust.clone(),
                s.lab.clone(),
                priority_name(s.priority).to_string(),
                s.tests.join(","),
            ]);
        }
        out.table(&stranded)?;
    }
    labs_table(out, &o.labs)
}

async fn labs(ctx: &Ctx) -> Result<(), CliError> {
    let o = fetch_overview(ctx).await?;
    let out = ctx.out();
    if out.is_json() {
        return out.json(&json!({ "labs": o.labs.iter().map(lab_json).collect::<Vec<_>>() }));
    }
    let mut table = Table::new(["LAB", "STATUS", "TEST", "IN FLIGHT", "CAPACITY"]);
    for l in &o.labs {
        for (i, t) in l.tests.iter().enumerate() {
            let first = i == 0;
            table.styled_row(vec![
                (
                    if first { l.ods.clone() } else { String::new() },
                    Style::Plain,
                ),
                (
                    if first {
                        lab_status_name(l.status).to_string()
                    } else {
                        String::new()
                    },
                    status_style(l.status),
                ),
                (t.test.clone(), Style::Plain),
                (t.in_flight.to_string(), Style::Plain),
                (t.capacity.to_string(), Style::Plain),
            ]);
        }
    }
    out.table(&table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_required_and_bounded() {
        assert!(matches!(reason("  "), Err(CliError::Usage(_))));
        assert!(matches!(reason(&"x".repeat(501)), Err(CliError::Usage(_))));
        assert_eq!(reason(" lab down ").unwrap(), "lab down");
    }

    #[test]
    fn waits_read_in_hours_and_minutes() {
        assert_eq!(wait(0), "-");
        assert_eq!(wait(59), "59s");
        assert_eq!(wait(3 * 3600 + 5 * 60), "3h05m");
    }
}
