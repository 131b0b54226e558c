//! What the bench shows and what its keys do: the lab's open offers and jobs (kept current from
//! the event stream), the selected one, a line being typed, the actions awaiting the broker and
//! a log of what happened. No I/O: keys in, actions out, so the screen and the link stay apart.

use std::collections::{BTreeMap, VecDeque};

use super::link::job_id;
use crate::cli::observations::parse_obs;
use crate::domain::{Catalogue, Timestamp};
use crate::proto;
use crate::proto::work_request::Action;

/// Lines of the log kept.
const LOG_LINES: usize = 200;
/// Events this much older than the bench by its own clock still fill the log: the broker's
/// clock may differ from this machine's. Older ones were replayed to rebuild the list.
const CLOCK_SLACK_MS: i64 = 60_000;

/// A key the bench understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key {
    Char(char),
    Up,
    Down,
    Enter,
    Backspace,
    Escape,
    Interrupt,
}

/// What is being typed, and for which job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Prompt {
    Decline { id: String },
    Results { id: String },
    Fail { id: String },
}

/// What a key asks of the caller besides redrawing.
#[derive(Debug, PartialEq)]
pub(super) enum Outcome {
    Nothing,
    Send(u64, Action),
    Quit,
}

/// The bench's state.
#[derive(Debug)]
pub(super) struct Board {
    jobs: BTreeMap<String, proto::Job>,
    selected: Option<String>,
    pub(super) prompt: Option<(Prompt, String)>,
    /// Actions sent and not yet answered, by tag: what they were, to say so when answered.
    pending: BTreeMap<u64, (String, Action)>,
    next_tag: u64,
    log: VecDeque<String>,
    pub(super) connected: Result<(), String>,
    quit_asked: bool,
    started: Timestamp,
    catalogue: Catalogue,
}

/// Open states: the jobs the bench lists.
fn is_open(state: i32) -> bool {
    use proto::RequestState as S;
    matches!(
        S::try_from(state),
        Ok(S::Offered | S::Accepted | S::Received)
    )
}

impl Board {
    pub(super) fn new(catalogue: Catalogue, now: Timestamp) -> Self {
        Self {
            jobs: BTreeMap::new(),
            selected: None,
            prompt: None,
            pending: BTreeMap::new(),
            next_tag: 1,
            log: VecDeque::new(),
            connected: Ok(()),
            quit_asked: false,
            started: now,
            catalogue,
        }
    }

    /// The open jobs in the order shown: offers first, soonest lease end first, then the rest by
    /// sample deadline.
    pub(super) fn rows(&self) -> Vec<&proto::Job> {
        let mut rows: Vec<&proto::Job> = self.jobs.values().collect();
        let key = |j: &proto::Job| {
            let offered = j.state == proto::RequestState::Offered as i32;
            let t = if offered {
                j.lease_expires_at.as_ref()
            } else {
                j.sample_deadline.as_ref()
            };
            (
                !offered,
                t.map_or((i64::MAX, 0), |t| (t.seconds, t.nanos)),
                j.id.clone(),
            )
        };
        rows.sort_by_key(|j| key(j));
        rows
    }

    /// The selected job's id (the first row when none was chosen, or the chosen one left).
    pub(super) fn selected(&self) -> Option<String> {
        let rows = self.rows();
        self.selected
            .as_ref()
            .filter(|id| self.jobs.contains_key(*id))
            .cloned()
            .or_else(|| rows.first().map(|j| j.id.clone()))
    }

    pub(super) fn log_lines(&self) -> impl Iterator<Item = &String> {
        self.log.iter()
    }

    pub(super) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Adds a line to the log, stamped with `now`.
    pub(super) fn note(&mut self, now: Timestamp, line: impl Into<String>) {
        let line = format!("{} {}", crate::cli::time::format_clock(now), line.into());
        self.log.push_front(line);
        self.log.truncate(LOG_LINES);
    }

    fn label(&self, id: &str) -> String {
        self.jobs
            .get(id)
            .map_or_else(|| id.to_string(), |j| j.order_number.clone())
    }

    /// Applies one of the lab's events. Events from well before the bench started (replayed to
    /// rebuild the list) change the list without filling the log.
    pub(super) fn event(&mut self, e: proto::JobEvent) {
        use proto::JobEventKind as K;
        let Some(job) = e.job else { return };
        let at = e
            .time
            .as_ref()
            .map_or(self.started, crate::cli::output::instant);
        let kind = K::try_from(e.kind).unwrap_or(K::Unspecified);
        let gone = matches!(
            kind,
            K::Declined | K::LeaseExpired | K::Withdrawn | K::Cancelled
        ) || !is_open(job.state);
        let line = match kind {
            K::Offered => Some(format!(
                "new offer {}: {} {} from {}",
                job.order_number,
                crate::cli::output::priority_name(job.priority),
                job.tests.join(","),
                job.trust
            )),
            K::LeaseExpired => Some(format!(
                "offer {} expired and went to another lab",
                job.order_number
            )),
            K::Withdrawn => Some(format!("offer {} was withdrawn", job.order_number)),
            K::Cancelled => Some(format!(
                "{} was CANCELLED by the trust: do not run it",
                job.order_number
            )),
            _ => None,
        };
        if let Some(line) = line
            && at.millis_since(self.started) >= -CLOCK_SLACK_MS
        {
            self.note(at, line);
        }
        if gone {
            self.jobs.remove(&job.id);
        } else {
            self.jobs.insert(job.id.clone(), job);
        }
    }

    /// The broker carried out an action.
    pub(super) fn done(&mut self, now: Timestamp, tag: u64, job: Option<proto::Job>) {
        let Some((label, action)) = self.pending.remove(&tag) else {
            return;
        };
        let line = match &action {
            Action::Accept(_) => format!("accepted {label}"),
            Action::Decline(_) => format!("declined {label}; it goes to another lab"),
            Action::Receive(_) => format!("received the sample of {label}"),
            Action::PostResults(_) => {
                let critical = job.as_ref().is_some_and(|j| {
                    j.results
                        .iter()
                        .any(|o| crate::cli::output::is_critical(o.flag))
                });
                if critical {
                    format!("results posted for {label}: CRITICAL, phone the clinician too")
                } else {
                    format!("results posted for {label}")
                }
            }
            Action::Fail(_) => format!("failed {label}; the trust is told to recollect"),
            Action::Watch(_) => return,
        };
        self.note(now, line);
        match job {
            Some(j) if is_open(j.state) => {
                self.jobs.insert(j.id.clone(), j);
            }
            _ => {
                self.jobs.remove(job_id(&action));
            }
        }
    }

    /// The broker refused an action.
    pub(super) fn refused(&mut self, now: Timestamp, tag: u64, why: &str) {
        if let Some((label, action)) = self.pending.remove(&tag) {
            let verb = match action {
                Action::Accept(_) => "accept",
                Action::Decline(_) => "decline",
                Action::Receive(_) => "record the sample of",
                Action::PostResults(_) => "post results for",
                Action::Fail(_) => "fail",
                Action::Watch(_) => return,
            };
            self.note(now, format!("could NOT {verb} {label}: {why}"));
        }
    }

    /// Queues an action on the selected job, answering with the tag to send it under.
    fn act(&mut self, now: Timestamp, id: String, action: Action, verb: &str) -> Outcome {
        let tag = self.next_tag;
        self.next_tag += 1;
        let label = self.label(&id);
        let line = match &self.connected {
            Ok(()) => format!("{verb} {label}: sent, waiting for the broker"),
            Err(_) => format!("{verb} {label}: kept, sent on reconnecting"),
        };
        self.note(now, line);
        self.pending.insert(tag, (label, action.clone()));
        Outcome::Send(tag, action)
    }

    /// Handles one key.
    pub(super) fn key(&mut self, now: Timestamp, key: Key) -> Outcome {
        if self.prompt.is_some() {
            return self.prompt_key(now, key);
        }
        let quit_asked = std::mem::take(&mut self.quit_asked);
        let selected = self.selected();
        let state = selected
            .as_ref()
            .and_then(|id| self.jobs.get(id))
            .and_then(|j| proto::RequestState::try_from(j.state).ok());
        match key {
            Key::Char('q') | Key::Interrupt => {
                if self.pending.is_empty() || quit_asked {
                    return Outcome::Quit;
                }
                self.quit_asked = true;
                let n = self.pending.len();
                self.note(
                    now,
                    format!(
                        "{n} action(s) not yet confirmed by the broker: press q again to quit \
                         anyway"
                    ),
                );
                Outcome::Nothing
            }
            Key::Up | Key::Char('k') => {
                self.step(-1);
                Outcome::Nothing
            }
            Key::Down | Key::Char('j') => {
                self.step(1);
                Outcome::Nothing
            }
            Key::Char(c @ ('a' | 'd' | 'r' | 'e' | 'f')) => {
                let Some(id) = selected else {
                    self.note(now, "no job selected");
                    return Outcome::Nothing;
                };
                use proto::RequestState as S;
                let label = self.label(&id);
                match (c, state) {
                    ('a', Some(S::Offered)) => {
                        let action = Action::Accept(proto::AcceptJobRequest { id: id.clone() });
                        self.act(now, id, action, "accept")
                    }
                    ('d', Some(S::Offered)) => {
                        self.prompt = Some((Prompt::Decline { id }, String::new()));
                        Outcome::Nothing
                    }
                    ('r', Some(S::Accepted)) => {
                        let action =
                            Action::Receive(proto::ReceiveSampleRequest { id: id.clone() });
                        self.act(now, id, action, "receive")
                    }
                    ('e', Some(S::Received)) => {
                        self.prompt = Some((Prompt::Results { id }, String::new()));
                        Outcome::Nothing
                    }
                    ('f', Some(S::Accepted | S::Received)) => {
                        self.prompt = Some((Prompt::Fail { id }, String::new()));
                        Outcome::Nothing
                    }
                    (c, _) => {
                        let needs = match c {
                            'a' | 'd' => "an open offer",
                            'r' => "an accepted job",
                            'e' => "a job whose sample was received",
                            _ => "an accepted or received job",
                        };
                        self.note(
                            now,
                            format!("{label}: that key needs {needs}; pick another with up/down"),
                        );
                        Outcome::Nothing
                    }
                }
            }
            _ => Outcome::Nothing,
        }
    }

    fn step(&mut self, by: isize) {
        let rows: Vec<String> = self.rows().iter().map(|j| j.id.clone()).collect();
        if rows.is_empty() {
            return;
        }
        let at = self
            .selected()
            .and_then(|id| rows.iter().position(|r| *r == id))
            .unwrap_or(0);
        let next = at.saturating_add_signed(by).min(rows.len() - 1);
        self.selected = Some(rows[next].clone());
    }

    fn prompt_key(&mut self, now: Timestamp, key: Key) -> Outcome {
        let Some((prompt, text)) = self.prompt.as_mut() else {
            return Outcome::Nothing;
        };
        match key {
            Key::Char(c) => {
                text.push(c);
                Outcome::Nothing
            }
            Key::Backspace => {
                text.pop();
                Outcome::Nothing
            }
            Key::Escape | Key::Interrupt => {
                self.prompt = None;
                Outcome::Nothing
            }
            Key::Up | Key::Down => Outcome::Nothing,
            Key::Enter => {
                let (prompt, text) = (prompt.clone(), text.trim().to_string());
                match self.submit(&prompt, &text) {
                    Ok((action, verb)) => {
                        self.prompt = None;
                        let id = job_id(&action).to_string();
                        self.act(now, id, action, verb)
                    }
                    // The line stays, to be corrected.
                    Err(why) => {
                        self.note(now, why);
                        Outcome::Nothing
                    }
                }
            }
        }
    }

    /// The action a typed line asks for, checked as the one-shot commands check it.
    fn submit(&self, prompt: &Prompt, text: &str) -> Result<(Action, &'static str), String> {
        match prompt {
            Prompt::Decline { id } => {
                if text.is_empty() {
                    return Err("say why the lab declines (the trust sees it)".into());
                }
                Ok((
                    Action::Decline(proto::DeclineJobRequest {
                        id: id.clone(),
                        reason: text.to_string(),
                    }),
                    "decline",
                ))
            }
            Prompt::Results { id } => {
                let raw = text
                    .split_whitespace()
                    .map(parse_obs)
                    .collect::<Result<Vec<_>, _>>()?;
                if raw.is_empty() {
                    return Err("type the results, e.g. K=4.1mmol/L UE=5.2mmol/L".into());
                }
                let job = self.jobs.get(id).ok_or("the job is no longer this lab's")?;
                // The one-shot command's advice names its flag; here the line is typed bare.
                let observations = crate::cli::jobs::validate_results(job, &raw, &self.catalogue)
                    .map_err(|e| e.to_string().replace("--obs ", ""))?;
                Ok((
                    Action::PostResults(proto::PostResultsRequest {
                        id: id.clone(),
                        observations,
                    }),
                    "post results for",
                ))
            }
            Prompt::Fail { id } => {
                let (word, detail) = text.split_once(' ').unwrap_or((text, ""));
                let reason = match word.to_ascii_lowercase().as_str() {
                    "haemolysed" => proto::FailureReason::Haemolysed,
                    "insufficient" => proto::FailureReason::Insufficient,
                    "unlabelled" => proto::FailureReason::Unlabelled,
                    "other" if !detail.trim().is_empty() => proto::FailureReason::Other,
                    "other" => return Err("say what was wrong after `other`".into()),
                    _ => {
                        return Err(
                            "start with haemolysed, insufficient, unlabelled or other".into()
                        );
                    }
                };
                Ok((
                    Action::Fail(proto::FailJobRequest {
                        id: id.clone(),
                        reason: reason as i32,
                        detail: detail.trim().to_string(),
                    }),
                    "fail",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::proto_time;

    const ID: &str = "01a24993-ba08-7003-ae15-0dc79ad9fcd8";

    fn board() -> (Board, Timestamp) {
        let catalogue = crate::Config::demo().expect("demo").catalogue;
        let now = Timestamp::from_millis(1_800_000_000_000);
        (Board::new((*catalogue).clone(), now), now)
    }

    fn offer(now: Timestamp, state: proto::RequestState) -> proto::JobEvent {
        proto::JobEvent {
            sequence: 1,
            time: Some(proto_time(now)),
            kind: proto::JobEventKind::Offered as i32,
            job: Some(proto::Job {
                id: ID.into(),
                order_number: "ORD-1".into(),
                trust: "RJ1".into(),
                tests: vec!["K".into()],
                state: state as i32,
                lease_expires_at: Some(proto_time(now.plus_minutes(2))),
                ..Default::default()
            }),
        }
    }

    fn typed(b: &mut Board, now: Timestamp, text: &str) -> Outcome {
        for c in text.chars() {
            assert_eq!(b.key(now, Key::Char(c)), Outcome::Nothing);
        }
        b.key(now, Key::Enter)
    }

    #[test]
    fn a_accepts_the_selected_offer_and_it_is_done_only_with_the_brokers_answer() {
        let (mut b, now) = board();
        b.event(offer(now, proto::RequestState::Offered));
        assert_eq!(b.rows().len(), 1);
        let Outcome::Send(tag, Action::Accept(a)) = b.key(now, Key::Char('a')) else {
            panic!("an accept");
        };
        assert_eq!(a.id, ID);
        assert_eq!(b.pending(), 1);
        assert!(!b.log_lines().any(|l| l.contains("accepted ORD-1")));
        let mut job = offer(now, proto::RequestState::Accepted).job;
        if let Some(j) = job.as_mut() {
            j.state = proto::RequestState::Accepted as i32;
        }
        b.done(now, tag, job);
        assert_eq!(b.pending(), 0);
        assert!(b.log_lines().any(|l| l.ends_with("accepted ORD-1")));
        assert_eq!(b.rows()[0].state, proto::RequestState::Accepted as i32);
    }

    #[test]
    fn a_key_that_the_jobs_state_does_not_allow_sends_nothing_and_says_why() {
        let (mut b, now) = board();
        b.event(offer(now, proto::RequestState::Offered));
        assert_eq!(b.key(now, Key::Char('r')), Outcome::Nothing);
        assert!(b.log_lines().any(|l| l.contains("needs an accepted job")));
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn declining_asks_for_a_reason_and_keeps_the_line_until_one_is_given() {
        let (mut b, now) = board();
        b.event(offer(now, proto::RequestState::Offered));
        assert_eq!(b.key(now, Key::Char('d')), Outcome::Nothing);
        assert_eq!(b.key(now, Key::Enter), Outcome::Nothing);
        assert!(b.prompt.is_some(), "an empty reason keeps the prompt");
        let Outcome::Send(_, Action::Decline(d)) = typed(&mut b, now, "analyser down") else {
            panic!("a decline");
        };
        assert_eq!((d.id.as_str(), d.reason.as_str()), (ID, "analyser down"));
        assert!(b.prompt.is_none());
    }

    #[test]
    fn results_are_checked_before_sending_and_fail_takes_a_reason_word() {
        let (mut b, now) = board();
        b.event(offer(now, proto::RequestState::Received));
        assert_eq!(b.key(now, Key::Char('e')), Outcome::Nothing);
        assert_eq!(typed(&mut b, now, "UE=5"), Outcome::Nothing);
        assert!(b.log_lines().any(|l| l.contains("nothing was sent")));
        for _ in 0..4 {
            b.key(now, Key::Backspace);
        }
        let Outcome::Send(_, Action::PostResults(p)) = typed(&mut b, now, "K=4.1") else {
            panic!("results");
        };
        assert_eq!(p.observations.len(), 1);
        assert_eq!(p.observations[0].unit, "mmol/L", "the catalogue's unit");

        assert_eq!(b.key(now, Key::Char('f')), Outcome::Nothing);
        assert_eq!(typed(&mut b, now, "sticky"), Outcome::Nothing);
        b.key(now, Key::Escape);
        assert_eq!(b.key(now, Key::Char('f')), Outcome::Nothing);
        let Outcome::Send(_, Action::Fail(f)) = typed(&mut b, now, "other tube cracked") else {
            panic!("a fail");
        };
        assert_eq!(f.reason, proto::FailureReason::Other as i32);
        assert_eq!(f.detail, "tube cracked");
    }

    #[test]
    fn quitting_with_actions_unanswered_asks_twice() {
        let (mut b, now) = board();
        b.event(offer(now, proto::RequestState::Offered));
        assert_eq!(b.key(now, Key::Char('q')), Outcome::Quit, "nothing pending");
        assert!(matches!(b.key(now, Key::Char('a')), Outcome::Send(..)));
        assert_eq!(b.key(now, Key::Char('q')), Outcome::Nothing);
        assert!(b.log_lines().any(|l| l.contains("not yet confirmed")));
        assert_eq!(b.key(now, Key::Char('q')), Outcome::Quit);
    }

    #[test]
    fn a_withdrawn_or_declined_offer_leaves_the_list() {
        let (mut b, now) = board();
        b.event(offer(now, proto::RequestState::Offered));
        let mut gone = offer(now, proto::RequestState::Queued);
        gone.kind = proto::JobEventKind::Withdrawn as i32;
        b.event(gone);
        assert!(b.rows().is_empty());
        assert!(b.log_lines().any(|l| l.contains("withdrawn")));
    }
}
