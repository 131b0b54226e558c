//! Draws the bench: a header saying who and whether connected, the keys, the open offers and jobs
//! with their time left, the line being typed and the log, newest first. Plain text redrawn
//! whole (a few dozen lines, once a second or on a change), so it reads the same in any terminal
//! and in a captured pane.

use std::io::Write;

use crossterm::{cursor, queue, style, terminal};

use super::board::{Board, Prompt};
use crate::cli::output::{instant, priority_name, state_name};
use crate::cli::time::format_span;
use crate::domain::Timestamp;
use crate::proto;

/// Who the bench works for, for the header.
#[derive(Debug, Clone)]
pub(super) struct Header {
    pub(super) lab: String,
    pub(super) name: String,
    pub(super) addr: String,
}

/// The screen's lines for a terminal `width` wide and `height` high.
pub(super) fn lines(board: &Board, header: &Header, now: Timestamp, height: usize) -> Vec<String> {
    let mut out = Vec::new();
    let link = match &board.connected {
        Ok(()) => format!("connected to {}", header.addr),
        Err(why) => format!("RECONNECTING to {} ({why})", header.addr),
    };
    out.push(format!(
        "labctl jobs work: {} {} | {link}",
        header.lab, header.name
    ));
    out.push(
        "keys: up/down select  a accept  d decline  r sample received  e enter results  f fail  \
         q quit"
            .into(),
    );
    let pending = board.pending();
    out.push(if pending > 0 {
        format!("{pending} action(s) waiting for the broker")
    } else {
        String::new()
    });
    out.push(format!(
        "   {:<14} {:<8} {:<9} {:<12} {:<6} {}",
        "ORDER", "PRIORITY", "STATE", "TESTS", "TRUST", "TIME LEFT"
    ));
    let rows = board.rows();
    let selected = board.selected();
    if rows.is_empty() {
        out.push("   no open offers or jobs: new offers appear here as they arrive".into());
    }
    for job in rows {
        let mark = if selected.as_deref() == Some(job.id.as_str()) {
            ">"
        } else {
            " "
        };
        out.push(format!(
            " {mark} {:<14} {:<8} {:<9} {:<12} {:<6} {}",
            job.order_number,
            priority_name(job.priority),
            state_name(job.state),
            job.tests.join(","),
            job.trust,
            time_left(job, now)
        ));
    }
    out.push(String::new());
    if let Some((prompt, text)) = &board.prompt {
        let ask = match prompt {
            Prompt::Decline { .. } => "decline: why (the trust sees it)",
            Prompt::Results { .. } => "results, e.g. K=4.1mmol/L UE=5.2mmol/L",
            Prompt::Fail { .. } => "fail: haemolysed | insufficient | unlabelled | other DETAIL",
        };
        out.push(format!("{ask} (Enter to send, Esc to cancel)> {text}_"));
        out.push(String::new());
    }
    for line in board.log_lines() {
        if out.len() >= height {
            break;
        }
        out.push(line.clone());
    }
    out.truncate(height);
    out
}

/// The countdown that matters for a job: the lease while offered, else the sample's life.
fn time_left(job: &proto::Job, now: Timestamp) -> String {
    let offered = job.state == proto::RequestState::Offered as i32;
    let (t, what) = if offered {
        (job.lease_expires_at.as_ref(), "to accept")
    } else {
        (job.sample_deadline.as_ref(), "until the sample spoils")
    };
    match t {
        None => "-".into(),
        Some(t) => {
            let left = instant(t).millis_since(now);
            if left <= 0 {
                if offered {
                    "lease ran out".into()
                } else {
                    "sample past its deadline".into()
                }
            } else {
                format!("{} {what}", format_span(left))
            }
        }
    }
}

/// Draws `lines` over the whole terminal.
pub(super) fn draw(w: &mut impl Write, lines: &[String], width: usize) -> std::io::Result<()> {
    queue!(w, terminal::Clear(terminal::ClearType::All))?;
    for (row, line) in lines.iter().enumerate() {
        let shown: String = line.chars().take(width).collect();
        queue!(
            w,
            cursor::MoveTo(0, u16::try_from(row).unwrap_or(u16::MAX)),
            style::Print(shown)
        )?;
    }
    w.flush()
}
