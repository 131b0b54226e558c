//! The bench's connection: one Work stream that reconnects by itself, resuming after the last
//! event seen, and a ledger of the actions sent but not yet answered. An action leaves the
//! ledger only with the broker's answer, or, after a reconnect, once the job shows it took
//! effect; until then it is (re)sent, so an action is never dropped and never reported done
//! without the broker's word.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::{Code, Status};

use super::super::Ctx;
use super::super::error::{CliError, Subject};
use crate::client::Client;
use crate::proto;
use crate::proto::work_request::Action;

/// First pause before reconnecting; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Actions the stream may hold queued for sending.
const QUEUED: usize = 64;

/// What the link tells the screen.
#[derive(Debug)]
pub(super) enum Update {
    /// One of the lab's events, each once, in order.
    Event(proto::JobEvent),
    /// An action the broker carried out (its job after it; none after a decline).
    Done { tag: u64, job: Option<proto::Job> },
    /// An action the broker refused, with the operator's line.
    Refused { tag: u64, why: String },
    /// The connection dropped; actions are kept and sent on reconnecting.
    Down(String),
    /// Connected again.
    Up,
    /// Reconnecting cannot help (the token was revoked, say).
    Fatal(CliError),
}

/// One action in the ledger.
#[derive(Debug, Clone)]
struct Entry {
    action: Action,
    /// Sent on a stream that later dropped (and so sent again): it may have taken effect
    /// unanswered.
    unsure: bool,
}

/// Statuses that reconnecting cannot fix.
fn is_fatal(code: Code) -> bool {
    matches!(
        code,
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::Unimplemented
    )
}

/// The job an action is about.
pub(super) fn job_id(action: &Action) -> &str {
    match action {
        Action::Accept(a) => &a.id,
        Action::Decline(a) => &a.id,
        Action::Receive(a) => &a.id,
        Action::PostResults(a) => &a.id,
        Action::Fail(a) => &a.id,
        Action::Watch(_) => "",
    }
}

/// Whether the job, as the broker now holds it (`None`: this lab no longer sees it), shows that
/// the action took effect.
fn took_effect(action: &Action, job: Option<&proto::Job>) -> bool {
    use proto::RequestState as S;
    let Some(job) = job else {
        // Only a decline makes a job this lab held disappear from its view.
        return matches!(action, Action::Decline(_));
    };
    let state = S::try_from(job.state).unwrap_or(S::Unspecified);
    match action {
        Action::Accept(_) => matches!(state, S::Accepted | S::Received | S::Resulted),
        Action::Receive(_) => matches!(state, S::Received | S::Resulted),
        Action::PostResults(_) => state == S::Resulted,
        Action::Fail(_) => state == S::Failed,
        Action::Decline(_) | Action::Watch(_) => false,
    }
}

/// Starts the link: `actions` in (tag, action), updates out.
pub(super) async fn start(
    ctx: &Ctx,
) -> Result<(mpsc::Sender<(u64, Action)>, mpsc::Receiver<Update>), CliError> {
    let ctx = Ctx {
        settings: ctx.settings.clone(),
        out: ctx.out.clone(),
    };
    // The first connection fails fast: a wrong address or token should be heard at once.
    let first = open(&ctx, 0).await?;
    let (actions_tx, actions) = mpsc::channel(QUEUED);
    let (tx, updates) = mpsc::channel(256);
    tokio::spawn(run(ctx, first, actions, tx));
    Ok((actions_tx, updates))
}

type Stream = (
    Client,
    crate::client::WorkSender,
    tonic::Streaming<proto::WorkResponse>,
);

async fn open(ctx: &Ctx, after: u64) -> Result<Stream, CliError> {
    let client = ctx.connect_streaming().await?;
    let (sender, replies) = client
        .work(
            proto::WatchOffersRequest {
                after_sequence: after,
                kinds: Vec::new(),
            },
            QUEUED,
        )
        .await
        .map_err(|s| ctx.status(&s, Subject::Job))?;
    Ok((client, sender, replies))
}

async fn run(
    ctx: Ctx,
    first: Stream,
    mut actions: mpsc::Receiver<(u64, Action)>,
    tx: mpsc::Sender<Update>,
) {
    let mut ledger: BTreeMap<u64, Entry> = BTreeMap::new();
    let mut after = 0;
    let mut stream = Some(first);
    loop {
        let (client, sender, mut replies) = match stream.take() {
            Some(s) => s,
            None => match reconnect(&ctx, after, &mut actions, &mut ledger, &tx).await {
                Some(s) => s,
                None => return,
            },
        };
        // Settle what the last stream left unanswered: done if the job shows it, else send again.
        let mut lost = None;
        let mut settled = Vec::new();
        for (tag, entry) in ledger.iter().filter(|(_, e)| e.unsure) {
            let id = job_id(&entry.action).to_string();
            let job = match client.labs().get_job(proto::GetJobRequest { id }).await {
                Ok(j) => Some(j.into_inner()),
                Err(s) if s.code() == Code::NotFound => None,
                Err(s) => {
                    lost = Some(s.message().to_string());
                    break;
                }
            };
            if took_effect(&entry.action, job.as_ref()) {
                settled.push((*tag, job));
            }
        }
        for (tag, job) in settled {
            ledger.remove(&tag);
            let _ = tx.send(Update::Done { tag, job }).await;
        }
        if lost.is_none() {
            for (tag, entry) in &ledger {
                if !sender.send(*tag, entry.action.clone()).await {
                    lost = Some("the stream closed".into());
                    break;
                }
            }
        }
        if lost.is_none() {
            let _ = tx.send(Update::Up).await;
        }
        while lost.is_none() {
            tokio::select! {
                action = actions.recv() => {
                    let Some((tag, action)) = action else { return };
                    ledger.insert(tag, Entry { action: action.clone(), unsure: false });
                    if !sender.send(tag, action).await {
                        lost = Some("the stream closed".into());
                    }
                }
                reply = replies.message() => match reply {
                    Ok(Some(proto::WorkResponse { item: Some(item) })) => match item {
                        proto::work_response::Item::Event(e) => {
                            if e.sequence > after {
                                after = e.sequence;
                                if tx.send(Update::Event(e)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        proto::work_response::Item::Result(r) => {
                            answer(&ctx, &client, &mut ledger, r, &tx).await;
                        }
                    },
                    Ok(Some(_)) => {}
                    Ok(None) => lost = Some("the broker closed the stream".into()),
                    Err(s) if is_fatal(s.code()) => {
                        let _ = tx.send(Update::Fatal(ctx.status(&s, Subject::Job))).await;
                        return;
                    }
                    Err(s) => lost = Some(s.message().to_string()),
                },
            }
        }
        for entry in ledger.values_mut() {
            entry.unsure = true;
        }
        let why = lost.unwrap_or_default();
        if tx.send(Update::Down(why)).await.is_err() {
            return;
        }
    }
}

/// Takes an answer off the ledger and tells the screen. A refusal of an action sent again after
/// a reconnect may only mean the first sending took effect: the job says which.
async fn answer(
    ctx: &Ctx,
    client: &Client,
    ledger: &mut BTreeMap<u64, Entry>,
    r: proto::WorkResult,
    tx: &mpsc::Sender<Update>,
) {
    let Some(entry) = ledger.remove(&r.tag) else {
        return;
    };
    let update = match r.error {
        None => Update::Done {
            tag: r.tag,
            job: r.job,
        },
        Some(e) => {
            let status = Status::new(Code::from(e.code), e.message);
            let job = match client
                .labs()
                .get_job(proto::GetJobRequest {
                    id: job_id(&entry.action).to_string(),
                })
                .await
            {
                Ok(j) => Some(j.into_inner()),
                Err(_) => None,
            };
            if entry.unsure && took_effect(&entry.action, job.as_ref()) {
                Update::Done { tag: r.tag, job }
            } else {
                Update::Refused {
                    tag: r.tag,
                    why: ctx.status(&status, Subject::Job).to_string(),
                }
            }
        }
    };
    let _ = tx.send(update).await;
}

/// Reconnects with backoff, taking new actions into the ledger meanwhile; `None` when the
/// screen has gone or reconnecting cannot help.
async fn reconnect(
    ctx: &Ctx,
    after: u64,
    actions: &mut mpsc::Receiver<(u64, Action)>,
    ledger: &mut BTreeMap<u64, Entry>,
    tx: &mpsc::Sender<Update>,
) -> Option<Stream> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                action = actions.recv() => {
                    let (tag, action) = action?;
                    // Never sent: nothing to settle, it goes out on the next stream.
                    ledger.insert(tag, Entry { action, unsure: false });
                }
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        match open(ctx, after).await {
            Ok(s) => return Some(s),
            Err(CliError::Unavailable(_)) => continue,
            Err(e @ (CliError::Denied(_) | CliError::Usage(_))) => {
                let _ = tx.send(Update::Fatal(e)).await;
                return None;
            }
            Err(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::RequestState as S;

    fn job(state: S) -> proto::Job {
        proto::Job {
            id: "x".into(),
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn an_unanswered_action_counts_as_done_only_when_the_job_shows_it() {
        let accept = Action::Accept(proto::AcceptJobRequest::default());
        let receive = Action::Receive(proto::ReceiveSampleRequest::default());
        let decline = Action::Decline(proto::DeclineJobRequest::default());
        let results = Action::PostResults(proto::PostResultsRequest::default());
        let fail = Action::Fail(proto::FailJobRequest::default());
        assert!(!took_effect(&accept, Some(&job(S::Offered))));
        assert!(took_effect(&accept, Some(&job(S::Accepted))));
        assert!(took_effect(&accept, Some(&job(S::Received))));
        assert!(!took_effect(&accept, None), "gone is not accepted");
        assert!(!took_effect(&receive, Some(&job(S::Accepted))));
        assert!(took_effect(&receive, Some(&job(S::Received))));
        assert!(
            took_effect(&decline, None),
            "a declined job leaves the lab's view"
        );
        assert!(!took_effect(&decline, Some(&job(S::Offered))));
        assert!(took_effect(&results, Some(&job(S::Resulted))));
        assert!(!took_effect(&results, Some(&job(S::Received))));
        assert!(took_effect(&fail, Some(&job(S::Failed))));
        assert!(!took_effect(&fail, Some(&job(S::Resulted))));
    }
}
