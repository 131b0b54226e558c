//! Output for people and for scripts: aligned tables, colour only on a terminal (and never with
//! NO_COLOR), relative times, and the JSON form of every message labctl prints.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use super::error::CliError;
use super::time;
use crate::domain::Timestamp;
use crate::proto;

/// How data is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned tables and sentences, for people.
    #[default]
    Table,
    /// JSON: one document, or one per line for watch commands.
    Json,
}

/// A colour or weight for a table cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Plain,
    Bold,
    Dim,
    Red,
    Green,
    Yellow,
    Cyan,
}

impl Style {
    fn code(self) -> &'static str {
        match self {
            Self::Plain => "",
            Self::Bold => "\x1b[1m",
            Self::Dim => "\x1b[2m",
            Self::Red => "\x1b[1;31m",
            Self::Green => "\x1b[32m",
            Self::Yellow => "\x1b[33m",
            Self::Cyan => "\x1b[36m",
        }
    }
}

/// Where and how to print.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    format: Format,
    color: bool,
    tty: bool,
    /// Stdout's reader went away (`labctl ... watch | head -1`): a watch then has no one to
    /// follow for, and ends.
    closed: Arc<AtomicBool>,
}

impl Output {
    /// Output in `format`; colour only when stdout is a terminal and NO_COLOR is unset or empty.
    pub(crate) fn new(format: Format) -> Self {
        let tty = std::io::stdout().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            format,
            color: tty && !no_color && format == Format::Table,
            tty,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// True for `--output json`.
    pub(crate) fn is_json(&self) -> bool {
        self.format == Format::Json
    }

    /// True when stdout is a terminal (a watch may then redraw in place).
    pub(crate) fn is_tty(&self) -> bool {
        self.tty
    }

    /// True once a write found stdout's reader gone.
    pub(crate) fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// `text` in `style`, when colour is on.
    pub(crate) fn paint(&self, text: &str, style: Style) -> String {
        if self.color && style != Style::Plain {
            format!("{}{text}\x1b[0m", style.code())
        } else {
            text.to_string()
        }
    }

    /// Writes `text` and a newline to stdout. A closed pipe (`labctl ... | head`) is not an error,
    /// but is remembered (see [`Output::closed`]).
    pub(crate) fn line(&self, text: &str) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(CliError::Other(format!("cannot write the output: {e}"))),
        }
    }

    /// One JSON document, pretty-printed.
    pub(crate) fn json(&self, value: &Value) -> Result<(), CliError> {
        self.line(&serde_json::to_string_pretty(value).unwrap_or_default())
    }

    /// One JSON document on one line (watch commands).
    pub(crate) fn json_line(&self, value: &Value) -> Result<(), CliError> {
        self.line(&value.to_string())
    }

    /// A table.
    pub(crate) fn table(&self, table: &Table) -> Result<(), CliError> {
        self.line(table.render(self).trim_end_matches('\n'))
    }
}

/// A table with aligned columns; cell widths count characters, never colour codes.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<(String, Style)>>,
}

impl Table {
    /// A table with these column headers.
    pub(crate) fn new<const N: usize>(headers: [&str; N]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row of plain cells.
    pub(crate) fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows
            .push(cells.into_iter().map(|c| (c, Style::Plain)).collect());
    }

    /// Adds a row of styled cells.
    pub(crate) fn styled_row(&mut self, cells: Vec<(String, Style)>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, columns separated by two spaces.
    pub(crate) fn render(&self, out: &Output) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, (cell, _)) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut text = String::new();
        let headers: Vec<(String, Style)> = self
            .headers
            .iter()
            .map(|h| (h.clone(), Style::Bold))
            .collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, style)) in row.iter().enumerate().take(columns) {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(&out.paint(cell, *style));
                if i + 1 < row.len() {
                    let pad = widths[i].saturating_sub(cell.chars().count());
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

pub(crate) use crate::wire::{from_ts as instant, ts as proto_time};

/// `in 3 h 40 min`, or `-` when absent.
pub(crate) fn relative(t: Option<&prost_types::Timestamp>, now: Timestamp) -> String {
    t.map(|t| time::relative(instant(t), now))
        .unwrap_or_else(|| "-".into())
}

/// Time left on a lease: `1 min 58 s`, `expired`, or `-`.
pub(crate) fn time_left(t: Option<&prost_types::Timestamp>, now: Timestamp) -> String {
    match t {
        None => "-".into(),
        Some(t) => {
            let left = instant(t).millis_since(now);
            if left <= 0 {
                "expired".into()
            } else {
                time::format_span(left)
            }
        }
    }
}

fn time_json(t: Option<&prost_types::Timestamp>) -> Value {
    t.map(|t| Value::String(time::format_rfc3339(instant(t))))
        .unwrap_or(Value::Null)
}

/// `stat`, `urgent`, ...
pub(crate) fn priority_name(p: i32) -> &'static str {
    crate::wire::priority_from(p).map_or("unknown", crate::domain::Priority::as_str)
}

/// `offered`, `resulted`, ...
pub(crate) fn state_name(s: i32) -> &'static str {
    crate::wire::state_from(s).map_or("unknown", crate::domain::RequestState::as_str)
}

fn failure_name(r: i32) -> Option<&'static str> {
    crate::wire::failure_from(r).map(crate::domain::FailureReason::as_str)
}

/// `normal`, `critical-high`, ...
pub(crate) fn flag_name(f: i32) -> &'static str {
    match proto::ObservationFlag::try_from(f) {
        Ok(proto::ObservationFlag::Normal) => "normal",
        Ok(proto::ObservationFlag::Low) => "low",
        Ok(proto::ObservationFlag::High) => "high",
        Ok(proto::ObservationFlag::Abnormal) => "abnormal",
        Ok(proto::ObservationFlag::CriticalLow) => "critical-low",
        Ok(proto::ObservationFlag::CriticalHigh) => "critical-high",
        _ => "",
    }
}

/// `online`, `draining`, `offline`.
pub(crate) fn lab_status_name(s: i32) -> &'static str {
    match proto::LabStatus::try_from(s) {
        Ok(proto::LabStatus::Online) => "online",
        Ok(proto::LabStatus::Draining) => "draining",
        Ok(proto::LabStatus::Offline) => "offline",
        _ => "unknown",
    }
}

/// `offered`, `lease-expired`, ...
pub(crate) fn job_event_name(k: i32) -> &'static str {
    match proto::JobEventKind::try_from(k) {
        Ok(proto::JobEventKind::Offered) => "offered",
        Ok(proto::JobEventKind::Accepted) => "accepted",
        Ok(proto::JobEventKind::Declined) => "declined",
        Ok(proto::JobEventKind::LeaseExpired) => "lease-expired",
        Ok(proto::JobEventKind::Withdrawn) => "withdrawn",
        Ok(proto::JobEventKind::Cancelled) => "cancelled",
        Ok(proto::JobEventKind::Received) => "received",
        Ok(proto::JobEventKind::Resulted) => "resulted",
        Ok(proto::JobEventKind::Failed) => "failed",
        _ => "unknown",
    }
}

/// `state-changed`, `critical-result`, ...
pub(crate) fn request_event_name(k: i32) -> &'static str {
    match proto::RequestEventKind::try_from(k) {
        Ok(proto::RequestEventKind::StateChanged) => "state-changed",
        Ok(proto::RequestEventKind::Resulted) => "resulted",
        Ok(proto::RequestEventKind::CriticalResult) => "critical-result",
        Ok(proto::RequestEventKind::Expired) => "expired",
        Ok(proto::RequestEventKind::LabOffline) => "lab-offline",
        Ok(proto::RequestEventKind::Failed) => "failed",
        _ => "unknown",
    }
}

/// Parses `--kind` of a request watch: a request event kind by the name [`request_event_name`]
/// prints for it (`resulted`, `critical-result`, ...), to its proto value.
pub(crate) fn request_event_kind_arg() -> impl clap::builder::TypedValueParser<Value = i32> {
    use clap::builder::TypedValueParser as _;
    let kinds = || (1..).map_while(|k| proto::RequestEventKind::try_from(k).ok().map(|_| k));
    let names: Vec<&'static str> = kinds().map(request_event_name).collect();
    clap::builder::PossibleValuesParser::new(names).map(move |name| {
        // The parser above let through only these names.
        kinds()
            .find(|&k| request_event_name(k) == name)
            .unwrap_or_default()
    })
}

/// The colour of a state: attention for offers, green for results, red for what needs recollection.
pub(crate) fn state_style(s: i32) -> Style {
    match proto::RequestState::try_from(s) {
        Ok(proto::RequestState::Offered) => Style::Yellow,
        Ok(proto::RequestState::Accepted | proto::RequestState::Received) => Style::Cyan,
        Ok(proto::RequestState::Resulted) => Style::Green,
        Ok(proto::RequestState::Failed | proto::RequestState::Expired) => Style::Red,
        Ok(proto::RequestState::Cancelled) => Style::Dim,
        _ => Style::Plain,
    }
}

/// Stat stands out.
pub(crate) fn priority_style(p: i32) -> Style {
    if p == proto::Priority::Stat as i32 {
        Style::Red
    } else {
        Style::Plain
    }
}

/// True for a critical flag.
pub(crate) fn is_critical(flag: i32) -> bool {
    flag == proto::ObservationFlag::CriticalLow as i32
        || flag == proto::ObservationFlag::CriticalHigh as i32
}

fn patient_json(p: Option<&proto::Patient>) -> Value {
    p.map(|p| {
        json!({
            "nhs_number": p.nhs_number,
            "family_name": p.family_name,
            "given_name": p.given_name,
            "birth_date": p.birth_date,
        })
    })
    .unwrap_or(Value::Null)
}

/// An observation as JSON.
pub(crate) fn observation_json(o: &proto::Observation) -> Value {
    json!({
        "test": o.test,
        "analyte": o.analyte,
        "value": o.value,
        "unit": o.unit,
        "reference_range": o.reference_range,
        "flag": flag_name(o.flag),
    })
}

/// A job as JSON.
pub(crate) fn job_json(j: &proto::Job) -> Value {
    json!({
        "id": j.id,
        "trust": j.trust,
        "order_number": j.order_number,
        "patient": patient_json(j.patient.as_ref()),
        "tests": j.tests,
        "priority": priority_name(j.priority),
        "state": state_name(j.state),
        "collected_at": time_json(j.collected_at.as_ref()),
        "sample_deadline": time_json(j.sample_deadline.as_ref()),
        "lease_expires_at": time_json(j.lease_expires_at.as_ref()),
        "predicted_result_at": time_json(j.predicted_result_at.as_ref()),
        "transport_minutes": j.transport_minutes,
        "results": j.results.iter().map(observation_json).collect::<Vec<_>>(),
        "failure_reason": failure_name(j.failure_reason),
        "clinical_note": j.clinical_note,
        "status_detail": j.status_detail,
    })
}

/// A request as JSON.
pub(crate) fn request_json(r: &proto::Request) -> Value {
    json!({
        "id": r.id,
        "order_number": r.order_number,
        "trust": r.trust,
        "patient": patient_json(r.patient.as_ref()),
        "tests": r.tests,
        "priority": priority_name(r.priority),
        "state": state_name(r.state),
        "lab": if r.lab.is_empty() { Value::Null } else { json!(r.lab) },
        "collected_at": time_json(r.collected_at.as_ref()),
        "sample_deadline": time_json(r.sample_deadline.as_ref()),
        "submitted_at": time_json(r.submitted_at.as_ref()),
        "updated_at": time_json(r.updated_at.as_ref()),
        "predicted_result_at": time_json(r.predicted_result_at.as_ref()),
        "results": r.results.iter().map(observation_json).collect::<Vec<_>>(),
        "failure_reason": failure_name(r.failure_reason),
        "clinical_note": r.clinical_note,
        "status_detail": r.status_detail,
    })
}

/// A lab's event as JSON.
pub(crate) fn job_event_json(e: &proto::JobEvent) -> Value {
    json!({
        "sequence": e.sequence,
        "time": time_json(e.time.as_ref()),
        "kind": job_event_name(e.kind),
        "job": e.job.as_ref().map(job_json),
    })
}

/// A trust's event as JSON.
pub(crate) fn request_event_json(e: &proto::RequestEvent) -> Value {
    json!({
        "sequence": e.sequence,
        "time": time_json(e.time.as_ref()),
        "kind": request_event_name(e.kind),
        "request": e.request.as_ref().map(request_json),
    })
}

/// Capacity rows as JSON.
pub(crate) fn capacity_json(c: &proto::Capacity) -> Value {
    json!({
        "lab": c.lab,
        "tests": c.tests.iter().map(|t| json!({
            "test": t.test,
            "capacity": t.capacity,
            "in_flight": t.in_flight,
            "free": t.capacity.saturating_sub(t.in_flight),
        })).collect::<Vec<_>>(),
    })
}

/// A catalogue entry as JSON.
pub(crate) fn test_json(t: &proto::TestDefinition) -> Value {
    json!({
        "code": t.code,
        "name": t.name,
        "discipline": t.discipline,
        "specimen": t.specimen,
        "stability_minutes": t.stability_minutes,
        "turnaround_minutes": t.turnaround_minutes,
        "unit": t.unit,
        "critical_low": t.critical_low,
        "critical_high": t.critical_high,
        "loinc": t.loinc,
        "snomed": t.snomed,
    })
}

/// A list of results as `K 5.1 mmol/L (3.5-5.3) CRITICAL-HIGH` lines.
pub(crate) fn observation_lines(out: &Output, results: &[proto::Observation]) -> Vec<String> {
    results
        .iter()
        .map(|o| {
            let name = if o.analyte.is_empty() {
                o.test.clone()
            } else {
                format!("{}.{}", o.test, o.analyte)
            };
            let mut line = format!("{name} {}", o.value);
            if !o.unit.is_empty() {
                line.push(' ');
                line.push_str(&o.unit);
            }
            if !o.reference_range.is_empty() {
                line.push_str(&format!(" (ref {})", o.reference_range));
            }
            let flag = flag_name(o.flag);
            if is_critical(o.flag) {
                line.push_str(&out.paint(
                    &format!(" {}: phone the clinician", flag.to_uppercase()),
                    Style::Red,
                ));
            } else if !flag.is_empty() && flag != "normal" {
                line.push_str(&format!(" [{flag}]"));
            }
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_event_kind_is_taken_by_the_name_labctl_prints() {
        let command = clap::Command::new("watch").arg(
            clap::Arg::new("kind")
                .long("kind")
                .value_parser(request_event_kind_arg()),
        );
        for k in 1..=6 {
            let name = request_event_name(k);
            let parsed = command
                .clone()
                .try_get_matches_from(["watch", "--kind", name])
                .unwrap();
            assert_eq!(parsed.get_one::<i32>("kind"), Some(&k), "{name}");
        }
        assert!(
            command
                .try_get_matches_from(["watch", "--kind", "unknown"])
                .is_err()
        );
    }

    fn plain() -> Output {
        Output {
            format: Format::Table,
            color: false,
            tty: false,
            closed: Arc::default(),
        }
    }

    #[test]
    fn columns_align_on_characters_and_the_last_is_not_padded() {
        let mut t = Table::new(["ID", "STATE"]);
        t.row(["a".into(), "offered".into()]);
        t.row(["ééé-long".into(), "x".into()]);
        assert_eq!(
            t.render(&plain()),
            "ID        STATE\na         offered\nééé-long  x\n"
        );
    }

    #[test]
    fn colour_codes_do_not_count_towards_widths() {
        let out = Output {
            color: true,
            ..plain()
        };
        let mut t = Table::new(["A", "B"]);
        t.styled_row(vec![("x".into(), Style::Red), ("y".into(), Style::Plain)]);
        let text = t.render(&out);
        assert!(text.contains("\x1b[1;31mx\x1b[0m  y"), "{text:?}");
    }

    #[test]
    fn times_in_json_are_rfc3339() {
        let t = proto_time(Timestamp::from_millis(1_717_407_600_000));
        assert_eq!(time_json(Some(&t)), json!("2024-06-03T09:40:00Z"));
        assert_eq!(time_json(None), Value::Null);
    }
}
