//! `labctl offers watch`: a live view of the offers made to this lab (priority, tests, sample
//! deadline, lease time left), updated as offers arrive, are taken or expire. On a terminal the
//! view is redrawn in place every second; piped, it prints one line per event; with
//! `--output json`, one JSON event per line.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use clap::Subcommand;

use super::error::CliError;
use super::follow::{self, Feed};
use super::output::{
    Output, Style, Table, instant, job_event_json, job_event_name, priority_name, priority_style,
    relative, time_left,
};
use super::{Ctx, time};
use crate::client::Client;
use crate::domain::Timestamp;
use crate::proto;

/// Events kept under the live table.
const RECENT: usize = 8;

#[derive(Debug, Subcommand)]
pub(crate) enum OffersCommand {
    /// Watch offers to this lab as they arrive, are taken or expire; reconnects by itself; Ctrl-C
    /// to stop
    Watch {
        /// Start after this event sequence number (0 replays every retained event, which rebuilds
        /// the list of open offers)
        #[arg(long, default_value_t = 0, value_name = "SEQUENCE")]
        after: u64,
    },
}

/// The lab's event stream.
struct OfferFeed;

impl Feed for OfferFeed {
    type Event = proto::JobEvent;

    async fn open(
        &self,
        client: Client,
        after: u64,
    ) -> Result<tonic::Streaming<proto::JobEvent>, tonic::Status> {
        client
            .labs()
            .watch_offers(proto::WatchOffersRequest {
                after_sequence: after,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    fn sequence(event: &proto::JobEvent) -> u64 {
        event.sequence
    }
}

/// The open offers and the last few events.
#[derive(Debug, Default)]
struct View {
    open: BTreeMap<String, proto::Job>,
    recent: VecDeque<String>,
}

impl View {
    fn apply(&mut self, e: &proto::JobEvent, line: String) {
        if let Some(job) = &e.job {
            if e.kind == proto::JobEventKind::Offered as i32
                && job.state == proto::RequestState::Offered as i32
            {
                self.open.insert(job.id.clone(), job.clone());
            } else {
                self.open.remove(&job.id);
            }
        }
        self.recent.push_back(line);
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    /// The screen: open offers, most urgent first, then recent events.
    fn render(&self, out: &Output, now: Timestamp) -> String {
        let mut offers: Vec<&proto::Job> = self.open.values().collect();
        offers.sort_by_key(|j| {
            (
                std::cmp::Reverse(j.priority),
                j.sample_deadline.as_ref().map(instant),
            )
        });
        let mut text = format!(
            "{} open offer(s) at {} UTC; accept with `labctl jobs accept ID`; Ctrl-C to stop\n\n",
            offers.len(),
            time::format_clock(now)
        );
        if offers.is_empty() {
            text.push_str("no open offers\n");
        } else {
            let mut table = Table::new([
                "ID",
                "PRIORITY",
                "TESTS",
                "TRUST",
                "ORDER",
                "SAMPLE DEADLINE",
                "LEASE LEFT",
            ]);
            for j in offers {
                let left = time_left(j.lease_expires_at.as_ref(), now);
                let urgent = j
                    .lease_expires_at
                    .as_ref()
                    .is_some_and(|t| instant(t).millis_since(now) < 30_000);
                table.styled_row(vec![
                    (j.id.clone(), Style::Plain),
                    (priority_name(j.priority).into(), priority_style(j.priority)),
                    (j.tests.join(","), Style::Plain),
                    (j.trust.clone(), Style::Plain),
                    (j.order_number.clone(), Style::Plain),
                    (relative(j.sample_deadline.as_ref(), now), Style::Plain),
                    (left, if urgent { Style::Red } else { Style::Plain }),
                ]);
            }
            text.push_str(&table.render(out));
        }
        if !self.recent.is_empty() {
            text.push_str("\nrecent:\n");
            for line in &self.recent {
                text.push_str("  ");
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }
}

/// One event as a line: time, kind, job, priority, tests, trust, deadline, lease.
fn event_line(out: &Output, e: &proto::JobEvent, now: Timestamp) -> String {
    let when = e
        .time
        .as_ref()
        .map(|t| time::format_clock(instant(t)))
        .unwrap_or_default();
    let kind = job_event_name(e.kind);
    let style = match proto::JobEventKind::try_from(e.kind) {
        Ok(proto::JobEventKind::Offered) => Style::Yellow,
        Ok(proto::JobEventKind::LeaseExpired | proto::JobEventKind::Cancelled) => Style::Red,
        Ok(proto::JobEventKind::Withdrawn) => Style::Dim,
        _ => Style::Plain,
    };
    let Some(j) = &e.job else {
        return format!("{when}  #{} {kind}", e.sequence);
    };
    let mut line = format!(
        "{when}  #{:<5} {}  {}  {:<7} {:<10} {} {}",
        e.sequence,
        out.paint(&format!("{kind:<13}"), style),
        j.id,
        priority_name(j.priority),
        j.tests.join(","),
        j.trust,
        j.order_number,
    );
    if e.kind == proto::JobEventKind::Offered as i32 {
        line.push_str(&format!(
            "  deadline {}  lease {} left",
            relative(j.sample_deadline.as_ref(), now),
            time_left(j.lease_expires_at.as_ref(), now)
        ));
    } else if !j.status_detail.is_empty() {
        line.push_str(&format!("  {}", j.status_detail));
    }
    line
}

pub(crate) async fn run(ctx: &Ctx, command: OffersCommand) -> Result<(), CliError> {
    let OffersCommand::Watch { after } = command;
    let interrupted = follow::interrupted()?;
    tokio::pin!(interrupted);
    let mut events = follow::start(ctx, OfferFeed, after).await?;
    let out = ctx.out();
    let live = out.is_tty() && !out.is_json();
    if !live && !out.is_json() {
        eprintln!("labctl: watching offers; Ctrl-C to stop");
    }
    let mut view = View::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let redraw = |view: &View| {
        // Clear the screen and home the cursor, then draw.
        out.line(&format!(
            "\x1b[H\x1b[2J{}",
            view.render(out, Timestamp::now()).trim_end()
        ))
    };
    loop {
        // Stdout's reader went away (`| head`): no one to watch for.
        if out.closed() {
            return Ok(());
        }
        tokio::select! {
            () = &mut interrupted => return Ok(()),
            _ = tick.tick(), if live => redraw(&view)?,
            event = events.recv() => match event {
                None => return Ok(()),
                Some(Err(e)) => return Err(e),
                Some(Ok(e)) => {
                    if out.is_json() {
                        out.json_line(&job_event_json(&e))?;
                        continue;
                    }
                    let line = event_line(out, &e, Timestamp::now());
                    if live {
                        view.apply(&e, line);
                        redraw(&view)?;
                    } else {
                        out.line(&line)?;
                    }
                }
            },
        }
    }
}
